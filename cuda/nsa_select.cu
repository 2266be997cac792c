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
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda/mma_sm80.cuh"
#include "cuda/nsa_select.cuh"

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
    select_fold(score, weight, a, div_d, c0, kKeys, npos, kThreadsSel,
                [&](int p, int cc) { return colsum[p * kKeys + cc]; });
  }
  __syncthreads();

  select_top_n(score, taken, chosen, block_indices, a, start, t0, npos, h, warp, 4, lane);
}

// 0: the wgmma kernel (cuda/nsa_select_sm90.cu) where it applies, else this one; 1: this one where it fits
// (NT_NSA_SELECT=mma; comparisons).
int g_select_kernel = [] {
  const char* v = std::getenv("NT_NSA_SELECT");
  return v && std::string(v) == "mma" ? 1 : 0;
}();

bool select_fits(const NsaDims& a) {
  if (a.D % 8 != 0 || a.D > 256 || a.G > 16 || (a.G & (a.G - 1)) != 0) return false;
  const int DP = a.D <= 64 ? 64 : a.D <= 128 ? 128 : 256;
  return select_smem(a, DP).total <= 200 * 1024;
}
}  // namespace

void set_nsa_select_kernel(int version) {
  if (version != 0 && version != 1)
    throw std::invalid_argument("set_nsa_select_kernel: version must be 0 (wgmma where it applies) or 1 (mma.sync), got " +
                                std::to_string(version));
  g_select_kernel = version;
}
int nsa_select_kernel() { return g_select_kernel; }
namespace {
bool g_select_ran_wgmma = false;
}
bool nsa_select_last_wgmma() { return g_select_ran_wgmma; }

bool nsa_select_tc_supported(const NsaDims& a) { return select_fits(a) || nsa_select_wgmma_applies(a); }

void nsa_select_tc(const void* q, const void* k_cmp, const float* lse_cmp, int32_t* block_indices, const NsaDims& a,
                   int max_len, cudaStream_t stream) {
  if (a.N == 0 || max_len == 0) return;
  g_select_ran_wgmma = (g_select_kernel == 0 || !select_fits(a)) &&
                       nsa_select_wgmma(q, k_cmp, lse_cmp, block_indices, a, max_len, stream);
  if (g_select_ran_wgmma) return;
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
