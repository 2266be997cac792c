// NSA block selection on tensor cores (bf16): the selection scores from the compressed branch's probabilities and
// the top-n choice, for the branch-wise path (nsa/branches.h), which has the compressed branch's log-sum-exps from
// flash_attention already. Replaces the CUDA-core kernel's re-scoring loop (one warp-wide dot product per
// compressed block and query head), the costliest part of that path at long contexts.
//
// A block of 4 warps owns PB = 64 / G consecutive positions of one sequence and one key/value head: its 64 query
// rows are (position, head of the group), row p G + g, so one warp's 16 rows cover 16 / G positions (G <= 16, a
// power of two). It walks the compressed keys that its last position sees, 64 at a time (K tiles double-buffered by
// cp.async, each warp's Q rows held in registers): S = Q K^T by mma.sync (m16n8k16, f32 accumulation),
// p = exp(scale s - lse) where the block is visible to the row's position, summed over the group's heads by
// shuffles in a fixed order into per-position column sums; one thread per (position, selection block) folds the
// columns of the keys that overlap the block into its score with weights overlap / d, in shared memory. Then one
// warp per position chooses: blocks 0, t/l' - 1 and t/l' always, the rest by score, ties to the lower index, NaN
// last (the CPU reference's rule). Every sum runs in a fixed order, so the choice is deterministic.
// Traffic: q once; each compressed key once per block of positions that sees it (neighbouring blocks share them in
// L2). Shared memory: Q and K tiles, PB x ncand_max scores, the fold's weights by overlap (the host falls back to
// the CUDA-core kernel when that does not fit).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/fast_div.h"
#include "cuda/mma_sm80.cuh"

namespace nt::cuda {
namespace {
using namespace sm80;
constexpr int kRows = 64, kKeys = 64, kThreadsSel = 128;

struct SelectSmem {
  size_t q_k, colsum, score, lse, taken, chosen, weight, total;
};
// Two tile buffers (Q first, then K tiles alternating with the other buffer), column sums, scores, log-sum-exps,
// the top-n's marks and choices, the fold's weights overlap / d for overlaps 0 .. min(l, l').
SelectSmem select_smem(const NsaDims& a, int DP) {
  const int PB = kRows / a.G;
  SelectSmem s;
  s.q_k = 0;
  s.colsum = s.q_k + (size_t)2 * kRows * (DP + 8) * 2;
  s.score = s.colsum + (size_t)PB * kKeys * 4;
  s.lse = s.score + (size_t)PB * a.ncand_max * 4;
  s.taken = s.lse + kRows * 4;
  s.chosen = s.taken + ((size_t)4 * a.ncand_max + 15) / 16 * 16;
  s.weight = s.chosen + (size_t)4 * a.n * 4;
  s.total = s.weight + ((size_t)std::min(a.l, a.lp) + 1) * 4;
  return s;
}

template <int DP>
__global__ void __launch_bounds__(kThreadsSel) nsa_select_tc_kernel(const uint16_t* __restrict__ q,
                                                                   const uint16_t* __restrict__ kc,
                                                                   const float* __restrict__ lse_cmp,
                                                                   int32_t* __restrict__ block_indices, NsaDims a,
                                                                   SelectSmem off) {
  constexpr int LD = DP + 8, CH = DP / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* buf[2] = {reinterpret_cast<uint16_t*>(smem_raw + off.q_k),
                      reinterpret_cast<uint16_t*>(smem_raw + off.q_k) + kRows * LD};
  float* colsum = reinterpret_cast<float*>(smem_raw + off.colsum);  // [PB][64]
  float* score = reinterpret_cast<float*>(smem_raw + off.score);    // [PB][ncand_max]
  float* lse_s = reinterpret_cast<float*>(smem_raw + off.lse);      // [64]
  unsigned char* taken = smem_raw + off.taken;                      // [4 warps][ncand_max]
  int32_t* chosen = reinterpret_cast<int32_t*>(smem_raw + off.chosen);  // [4 warps][n]
  float* weight = reinterpret_cast<float*>(smem_raw + off.weight);      // [min(l, l') + 1]
  const int G = a.G, PB = kRows / G;
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start, cs = a.cmp_starts[seq];
  const int t0 = blockIdx.x * PB;
  if (t0 >= len) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, npos = min(PB, len - t0);
  const int t_last = t0 + npos - 1;
  const int nvis_max = t_last + 1 < a.l ? 0 : (t_last + 1 - a.l) / a.d + 1;
  const int ntiles = (nvis_max + kKeys - 1) / kKeys;
  // K tile i (64 compressed keys from c0 = 64 i) into buf[(i + 1) % 2] by cp.async, zeros past the visible keys.
  auto load_k = [&](int i) {
    uint16_t* Ks = buf[(i + 1) % 2];
    const int c0 = i * kKeys;
    for (int e = threadIdx.x; e < kKeys * CH; e += kThreadsSel) {
      const int r = e / CH, c = (e % CH) * 8;
      const bool ok = c0 + r < nvis_max && c < a.D;
      cp16(Ks + r * LD + c, ok ? kc + ((int64_t)(cs + c0 + r) * a.H + h) * a.D + c : kc, ok);
    }
    cp_commit();
  };

  // Q rows (position p, head g) -> q[start + t0 + p][h G + g] into buf[0]: a position's G heads are contiguous.
  for (int i = threadIdx.x; i < kRows * CH; i += kThreadsSel) {
    const int r = i / CH, c = (i % CH) * 8, p = r / G, g = r % G;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (p < npos && c < a.D)
      v = *reinterpret_cast<const uint4*>(q + ((int64_t)(start + t0 + p) * a.HQ + h * G + g) * a.D + c);
    *reinterpret_cast<uint4*>(buf[0] + r * LD + c) = v;
  }
  if (ntiles > 0) load_k(0);
  if (threadIdx.x < kRows) {
    const int p = threadIdx.x / G, g = threadIdx.x % G;
    lse_s[threadIdx.x] = p < npos ? lse_cmp[(int64_t)(start + t0 + p) * a.HQ + h * G + g] : -INFINITY;
  }
  for (int i = threadIdx.x; i < PB * a.ncand_max; i += kThreadsSel) score[i] = 0.f;
  for (int i = threadIdx.x; i <= min(a.l, a.lp); i += kThreadsSel) weight[i] = (float)i / (float)a.d;
  const FastDiv div_d = fast_div_for((uint32_t)a.d);
  __syncthreads();
  // The warp's 16 Q rows stay in registers (A fragments), which frees buf[0] for K tiles.
  uint32_t qf[DP / 16][4];
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) ldsm_x4(qf[kk], buf[0] + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
  // This thread's two rows (lane / 4 and + 8 of the warp's 16): keys visible to the row's position, its log-sum-exp.
  int nv[2];
  float lse2[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = warp * 16 + lane / 4 + 8 * hh, p = row / G, t = t0 + p;
    const float L = lse_s[row];
    nv[hh] = (p >= npos || L == -INFINITY || t + 1 < a.l) ? 0 : (t + 1 - a.l) / a.d + 1;
    lse2[hh] = L * kLog2e;
  }
  const float sl2 = (float)a.scale * kLog2e;
  __syncthreads();  // every warp holds its Q fragments: buf[0] may take K tile 1

  for (int i = 0; i < ntiles; ++i) {
    const int c0 = i * kKeys;
    if (i + 1 < ntiles) {
      load_k(i + 1);
      cp_async_wait<1>();
    } else {
      cp_wait_all();
    }
    __syncthreads();  // K tile i landed for every thread; the previous tile's folds are done with colsum
    const uint16_t* Ks = buf[(i + 1) % 2];
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk)
#pragma unroll
      for (int jp = 0; jp < 4; ++jp) {
        uint32_t kb[4];
        ldsm_x4(kb, Ks + (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma16816(s[2 * jp], qf[kk], kb[0], kb[1]);
        mma16816(s[2 * jp + 1], qf[kk], kb[2], kb[3]);
      }
    // Probabilities: element (j, e) is row warp 16 + lane / 4 + 8 (e >> 1), key c0 + 8 j + 2 (lane % 4) + (e & 1).
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = c0 + 8 * j + 2 * (lane % 4) + (e & 1);
        s[j][e] = c < nv[e >> 1] ? exp2f(s[j][e] * sl2 - lse2[e >> 1]) : 0.f;
      }
    // Sums over each position's G heads (G consecutive rows), in a fixed order.
    if (G == 16) {  // the warp's 16 rows are one position: add the two row halves, then across lanes
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          float x = s[j][b] + s[j][b + 2];
          for (int o = 4; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
          if (lane < 4) colsum[warp * kKeys + 8 * j + 2 * lane + b] = x;
        }
    } else {
#pragma unroll
      for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int b = 0; b < 2; ++b) {
            float x = s[j][2 * half + b];
            for (int o = 4; o < 4 * G; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
            const int row = warp * 16 + lane / 4 + 8 * half;
            if ((lane / 4) % G == 0) colsum[(row / G) * kKeys + 8 * j + 2 * (lane % 4) + b] = x;
          }
    }
    __syncthreads();  // colsum complete; every warp is done with this K tile
    // Fold the columns into the selection blocks they overlap: block j gets p * overlap / d from the keys c with
    // [c d, c d + l) meeting [j l', (j + 1) l'), in ascending c (a fixed order). The divisions by d are
    // multiply-highs and the weights come from the table (the same float quotients): this fold was about a fifth of
    // the kernel's stall samples (Nsight Compute, 32k).
    const int j_lo = c0 * a.d / a.lp;
    const int j_hi = min(a.ncand_max - 1, ((c0 + kKeys - 1) * a.d + a.l - 1) / a.lp);
    const int nj = j_hi - j_lo + 1;
    for (int e = threadIdx.x; e < PB * nj; e += kThreadsSel) {
      const int p = e / nj, j = j_lo + (e - p * nj);
      if (p >= npos) continue;
      const int first = j * a.lp - a.l < 0 ? 0 : (int)fast_div((uint32_t)(j * a.lp - a.l), div_d) + 1;
      const int cc_lo = max(first, c0) - c0;  // the first key ending past j l'
      const int cc_hi = min((int)fast_div((uint32_t)((j + 1) * a.lp - 1), div_d), c0 + kKeys - 1) - c0;
      float acc = 0.f;
      for (int cc = cc_lo; cc <= cc_hi; ++cc) {
        const int lo = (c0 + cc) * a.d, hi = lo + a.l;
        const int ov = min(hi, (j + 1) * a.lp) - max(lo, j * a.lp);
        if (ov > 0) acc += colsum[p * kKeys + cc] * weight[ov];
      }
      score[p * a.ncand_max + j] += acc;
    }
  }
  __syncthreads();

  // One warp per position: the forced blocks, then the best remaining ones, ascending, -1 after them.
  unsigned char* tk = taken + warp * a.ncand_max;
  int32_t* ch = chosen + warp * a.n;
  for (int p = warp; p < npos; p += 4) {
    const int t = t0 + p, cur = t / a.lp, ncand = cur + 1;
    int32_t* out = block_indices + ((int64_t)(start + t) * a.H + h) * a.n;
    if (ncand <= a.n) {
      for (int i = lane; i < a.n; i += 32) out[i] = i < ncand ? i : -1;
      continue;
    }
    const float* sc = score + p * a.ncand_max;
    for (int j = lane; j < ncand; j += 32) tk[j] = 0;
    __syncwarp();
    if (lane == 0) ch[0] = 0, ch[1] = cur - 1, ch[2] = cur;
    // Each lane keeps the best two of its own candidates j = 1 + lane + 32 i (ascending; a strictly greater score
    // replaces, so ties keep the lower index) and rescans them only when it has won twice since its last scan
    // (j2 == -2); a round is then one argmax over the lanes instead of a pass over every candidate (the 13 passes
    // were ~20% of the kernel's stall samples at 32k, Nsight Compute, H100). Only the owning lane reads or writes
    // tk[j] after the clearing above.
    float b1, b2;
    int j1, j2;
    auto scan = [&] {
      b1 = b2 = -INFINITY, j1 = j2 = -1;
      for (int j = 1 + lane; j < cur - 1; j += 32) {
        if (tk[j]) continue;
        const float x = isnan(sc[j]) ? -INFINITY : sc[j];
        if (j1 < 0 || x > b1) b2 = b1, j2 = j1, b1 = x, j1 = j;
        else if (j2 < 0 || x > b2) b2 = x, j2 = j;
      }
    };
    scan();
    for (int k = 3; k < a.n; ++k) {
      float best = b1;
      int bj = j1;
      for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oj = __shfl_xor_sync(0xffffffffu, bj, o);
        if (oj >= 0 && (bj < 0 || ob > best || (ob == best && oj < bj))) best = ob, bj = oj;
      }
      if (lane == 0) ch[k] = bj;
      if (j1 >= 0 && j1 == bj) {  // this lane's candidate won
        tk[bj] = 1;
        if (j2 == -2) {
          scan();
        } else {
          b1 = b2, j1 = j2;
          if (j2 >= 0) j2 = -2;  // the next best is unknown until a rescan
        }
      }
    }
    __syncwarp();
    if (lane == 0) {
      for (int i = 1; i < a.n; ++i)
        for (int k = i; k > 0 && ch[k - 1] > ch[k]; --k) {
          const int x = ch[k];
          ch[k] = ch[k - 1], ch[k - 1] = x;
        }
    }
    __syncwarp();
    for (int i = lane; i < a.n; i += 32) out[i] = ch[i];
    __syncwarp();
  }
}
}  // namespace

bool nsa_select_tc_supported(const NsaDims& a) {
  if (a.D % 8 != 0 || a.D > 256 || a.G > 16 || (a.G & (a.G - 1)) != 0) return false;
  const int DP = a.D <= 64 ? 64 : a.D <= 128 ? 128 : 256;
  return select_smem(a, DP).total <= 200 * 1024;
}

void nsa_select_tc(const void* q, const void* k_cmp, const float* lse_cmp, int32_t* block_indices, const NsaDims& a,
                   int max_len, cudaStream_t stream) {
  if (a.N == 0 || max_len == 0) return;
  const int PB = kRows / a.G;
  const dim3 grid((unsigned)((max_len + PB - 1) / PB), (unsigned)a.nseq, (unsigned)a.H);
  auto run = [&](auto kernel, int DP) {
    const SelectSmem off = select_smem(a, DP);
    allow_smem(kernel, off.total);
    kernel<<<grid, kThreadsSel, off.total, stream>>>(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k_cmp),
                                                      lse_cmp, block_indices, a, off);
    NT_CUDA_CHECK(cudaGetLastError());
  };
  if (a.D <= 64) run(nsa_select_tc_kernel<64>, 64);
  else if (a.D <= 128) run(nsa_select_tc_kernel<128>, 128);
  else run(nsa_select_tc_kernel<256>, 256);
}

}  // namespace nt::cuda
