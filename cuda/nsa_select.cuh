// Device pieces shared by the selection kernels (cuda/nsa_select.cu on mma.sync, cuda/nsa_select_sm90.cu on
// wgmma): the fold of a key tile's per-position probability sums into the selection-block scores, and the top-n.
#pragma once
#include <climits>

#include "cuda/common.cuh"
#include "cuda/fast_div.h"
#include "cuda/kernels.h"

namespace nt::cuda {

// Folds the probability sums of compressed keys c0 .. c0 + nkeys - 1 (colsum(p, cc): position p's sum over its
// group's heads for key c0 + cc) into score[p ncand_max + j]: block j gets p * overlap / d from the keys c with
// [c d, c d + l) meeting [j l', (j + 1) l'), in ascending c (a fixed order, so the scores are deterministic). The
// divisions by d are multiply-highs and the weights overlap / d come from the table `weight` (the same float
// quotients in every kernel): this fold was about a fifth of the mma.sync kernel's stall samples (Nsight Compute,
// 32k). All nth threads of the block take part; one thread per (position, block).
template <class ColSum>
__device__ __forceinline__ void select_fold(float* score, const float* weight, const NsaDims& a, FastDiv div_d, int c0,
                                            int nkeys, int npos, int nth, ColSum&& colsum) {
  const int j_lo = c0 * a.d / a.lp;
  const int j_hi = min(a.ncand_max - 1, ((c0 + nkeys - 1) * a.d + a.l - 1) / a.lp);
  const int nj = j_hi - j_lo + 1;
  for (int e = threadIdx.x; e < npos * nj; e += nth) {
    const int p = e / nj, j = j_lo + (e - p * nj);
    const int first = j * a.lp - a.l < 0 ? 0 : (int)fast_div((uint32_t)(j * a.lp - a.l), div_d) + 1;
    const int cc_lo = max(first, c0) - c0;  // the first key ending past j l'
    const int cc_hi = min((int)fast_div((uint32_t)((j + 1) * a.lp - 1), div_d), c0 + nkeys - 1) - c0;
    float acc = 0.f;
    for (int cc = cc_lo; cc <= cc_hi; ++cc) {
      const int lo = (c0 + cc) * a.d, hi = lo + a.l;
      const int ov = min(hi, (j + 1) * a.lp) - max(lo, j * a.lp);
      if (ov > 0) acc += colsum(p, cc) * weight[ov];
    }
    score[p * a.ncand_max + j] += acc;
  }
}

// The top-n of positions t0 .. t0 + npos - 1 (of the sequence starting at packed row `start`, kv head h) from their
// scores (score[p ncand_max + j]), one warp per position (warp, warp + nwarps, ...): blocks 0, t / l' - 1 and t / l'
// always, the rest by score, ties to the lower index, NaN last (the CPU reference's rule), written ascending into
// block_indices [N, H, n], -1 after them. taken: nwarps x ncand_max bytes, chosen: nwarps x n ints (scratch).
__device__ inline void select_top_n(const float* score, unsigned char* taken, int32_t* chosen, int32_t* block_indices,
                                    const NsaDims& a, int start, int t0, int npos, int h, int warp, int nwarps,
                                    int lane) {
  unsigned char* tk = taken + warp * a.ncand_max;
  int32_t* ch = chosen + warp * a.n;
  for (int p = warp; p < npos; p += nwarps) {
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
    if (a.n <= 32) {  // ascending: lane i's block goes to its rank among the n (distinct) chosen ones
      const int v = lane < a.n ? ch[lane] : INT_MAX;
      int rank = 0;
      for (int k = 0; k < a.n; ++k) rank += __shfl_sync(0xffffffffu, v, k) < v;
      if (lane < a.n) out[rank] = v;
    } else {
      if (lane == 0) {
        for (int i = 1; i < a.n; ++i)
          for (int k = i; k > 0 && ch[k - 1] > ch[k]; --k) {
            const int x = ch[k];
            ch[k] = ch[k - 1], ch[k - 1] = x;
          }
      }
      __syncwarp();
      for (int i = lane; i < a.n; i += 32) out[i] = ch[i];
    }
    __syncwarp();
  }
}
}  // namespace nt::cuda
