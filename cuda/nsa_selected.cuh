// Device pieces shared by the selected branch's kernels (cuda/nsa_selected.cu, cuda/nsa_selected_sm90.cu).
#pragma once
#include <cuda_bf16.h>

#include "cuda/kernels.h"

namespace nt::cuda {
// The backward's key-centric step works on pieces: the positions (packed rows, ascending) that chose one (kv head,
// selection block) within one chunk of rows, cut into runs of at most per_piece. Pieces are numbered kv head, then
// chunk, then block (segment k = (h nch + chunk) NB + block, nch chunks), so the thread blocks running at once
// share one chunk's q, dout and dq rows in L2 (set_nsa_selected_chunk). Piece p's block and its rows [e0, e1) of
// the sorted rows.
struct SlcPiece {
  int h, start, len, key0, nk, e0, e1;  // kv head, the sequence's first row and length, the block's first key, keys
};
// False past the last piece. piece_seg maps each piece to its segment (slc_piece_segments), so a thread block finds
// its piece with two dependent loads instead of a binary search over the K segments.
__device__ inline bool slc_piece(int p, const int32_t* seg_off, const int32_t* piece_off, const int32_t* piece_seg,
                                 int nch, const NsaDims& a, int per_piece, SlcPiece& pc) {
  const int K = a.H * nch * a.NB;
  if (p >= piece_off[K]) return false;
  const int k = piece_seg[p];
  const int gb = k % a.NB;
  int seq = 0;
  for (int hi = a.nseq; hi - seq > 1;) {  // slc_starts[seq] <= gb < slc_starts[hi]
    const int mid = (seq + hi) / 2;
    if (a.slc_starts[mid] <= gb) seq = mid;
    else hi = mid;
  }
  pc.h = k / a.NB / nch;
  pc.start = a.cu_seqlens[seq], pc.len = a.cu_seqlens[seq + 1] - pc.start;
  pc.key0 = (gb - a.slc_starts[seq]) * a.lp, pc.nk = min(a.lp, pc.len - pc.key0);
  pc.e0 = seg_off[k] + (p - piece_off[k]) * per_piece, pc.e1 = min(seg_off[k + 1], pc.e0 + per_piece);
  return true;
}

// The backward's block-major walk over the pieces (cuda/nsa_selected_sm90.cu): what it computes, and its operands.
enum SlcWalkMode : int { kWalkDkv = 0, kWalkDkvDq = 1 };
struct SlcWalkArgs {
  const uint16_t *q = nullptr, *ks = nullptr, *vs = nullptr, *dout = nullptr;
  const float *lse = nullptr, *delta = nullptr;  // [N HQ]; lse in natural log
  const int32_t *rows = nullptr, *seg_off = nullptr, *piece_off = nullptr, *piece_seg = nullptr;  // the pieces
  int nch = 1;                                                               // their chunks
  float *dk_acc = nullptr, *dv_acc = nullptr;  // f32 [N, H, D], zeroed
  float* row_acc = nullptr;                    // kWalkDkvDq: dq, f32 [N, HQ, D], zeroed
};
// False without launching where the wgmma kernels do not apply (nsa_selected_wgmma_applies). grid bounds the
// pieces; blocks (set_nsa_selected_walk_blocks): 0 launches grid thread blocks, -1 as many as run at once, N > 0
// at most N, each walking pieces gridDim.x apart.
bool nsa_selected_walk_wgmma(int mode, const SlcWalkArgs& w, const NsaDims& a, int per_piece, int64_t grid,
                             int blocks, cudaStream_t stream);

// 4 consecutive values as floats: f32 as they are, bf16 (uint16_t) widened.
__device__ inline float4 slc_load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ inline float4 slc_load4(const uint16_t* p) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// delta = rowsum(dout o) of one (position, head) row, by a whole warp (4 columns per lane; D a multiple of 4): o f32
// or bf16 (the branch alone, whose forward wrote its output in bf16), dout bf16. Every lane gets the sum.
template <typename O>
__device__ inline float slc_row_delta(const O* o, const uint16_t* dout, int D, int lane) {
  float sum = 0.f;
  for (int c = lane * 4; c < D; c += 128) {
    const float4 ov = slc_load4(o + c), dv = slc_load4(dout + c);
    sum += dv.x * ov.x + dv.y * ov.y + dv.z * ov.z + dv.w * ov.w;
  }
#pragma unroll
  for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  return sum;
}
}  // namespace nt::cuda
