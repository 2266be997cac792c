// flash_attention's forward on Hopper's warpgroup MMA (cuda/attention_sm90.cu): bf16, head dims a multiple of 8, 16-byte
// aligned (the caller checks these). Returns false without launching when the device is not sm_90a or the head dim is
// not in 72..128.
#pragma once
#include <cuda_runtime.h>

#include "cuda/kernels.h"

namespace nt::cuda {
// warpgroups: 1 (64 queries per block) or 2 (128 queries per block sharing each K/V tile).
bool attention_forward_wgmma(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                             int warpgroups, cudaStream_t stream);
}  // namespace nt::cuda
