// flash_attention on Hopper's warpgroup MMA (cuda/attention_sm90.cu): bf16, head dims a multiple of 8, 16-byte
// aligned (the caller checks these). Returns false without launching when the device is not sm_90a or the head dim is
// not in 72..128.
#pragma once
#include <cuda_runtime.h>

#include "cuda/kernels.h"

namespace nt::cuda {
// The device runs sm_90a code and the head dim is 72..128 (bf16 and alignment are the caller's checks).
bool attention_wgmma_available(const AttentionDims& d);
// warpgroups: 1 (64 queries per block) or 2 (128 queries per block sharing each K/V tile).
bool attention_forward_wgmma(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                             int warpgroups, cudaStream_t stream);
// Kernel version 6 (cuda/attention_ws.cu): TMA loads by a producer warp, two consumer warpgroups of 64 queries,
// each one's softmax overlapped with its own wgmma. Same conditions as attention_forward_wgmma.
bool attention_forward_ws(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                          cudaStream_t stream);
// Its backward (attn_bwd_tc's function and arguments, 128-key blocks of two warpgroups): dq into dq_acc (f32,
// zeroed by the caller), dk / dv written, or added into dkv_acc ([N, Hkv, D] dk then dv, f32) when the group is
// split over blocks of gs heads. Needs attention_wgmma_available.
void attention_backward_wgmma(const void* q, const void* k, const void* v, const void* dout, const float* lse,
                              const float* delta, float* dq_acc, void* dk, void* dv, float* dkv_acc, int gs,
                              const AttentionDims& d, cudaStream_t stream);
// Version 7's backward (cuda/attention_ws.cu): attention_backward_wgmma's function and arguments, warp-specialized
// (TMA producer, two consumer warpgroups). Needs attention_wgmma_available.
void attention_backward_ws(const void* q, const void* k, const void* v, const void* dout, const float* lse,
                           const float* delta, float* dq_acc, void* dk, void* dv, float* dkv_acc, int gs,
                           const AttentionDims& d, cudaStream_t stream);
}  // namespace nt::cuda
