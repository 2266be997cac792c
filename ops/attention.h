// Fused causal attention (FlashAttention-style): softmax(q k^T * scale + mask) v without materializing the T x T
// scores; memory is linear in T. Grouped-query heads (Hkv divides H: query head h reads kv head h / (H / Hkv)),
// an optional sliding window, and packed variable-length batches.
//
// Masking: query t of a sequence sees keys s of the same sequence with s <= t, and s > t - window when window > 0.
// The CPU path is the reference (double accumulation); CUDA runs a tensor-core kernel for bf16 with head dims that
// are multiples of 8 up to 256, and a CUDA-core kernel otherwise (f32, f64).
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace nt {

struct AttentionOptions {
  int64_t window = 0;  // 0: full causal attention
  double scale = 0;    // 0: 1 / sqrt(head_dim)
  // Packed sequences: q, k, v are [N, H, D] and sequence b holds rows [cu_seqlens[b], cu_seqlens[b+1]) (starts at
  // 0, non-decreasing, ends at N). Empty: q [B, T, H, D] (each batch row one sequence) or [N, H, D] (one sequence).
  std::vector<int32_t> cu_seqlens;
};

// q [B, T, H, D] or [N, H, D]; k and v [.., Hkv, D] with the same leading dims. Returns q's shape.
// lse (optional): set to each row's log-sum-exp of the scaled scores, f32 [H, N] (N = all query rows), without
// history (the forward computes it anyway; NSA's selection reads it).
Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt = {},
                       Tensor* lse = nullptr);

// For fused backwards that sum several ops' dq (nsa/branches.cpp): flash_attention's backward for contiguous
// [N, H, D] q, out, dout and [N, Hkv, D] k, v (lse as the forward returned it) that adds dq onto dq_acc (f32, q's
// shape) instead of returning it, and writes dk and dv. On CUDA's tensor-core path dq goes straight into dq_acc,
// and delta (optional, f32 [H, N]: rowsum(dout out), computed elsewhere) is used instead of computed. No history.
void flash_attention_backward_add_dq(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                     const Tensor& dout, const Tensor& lse, const AttentionOptions& opt,
                                     const Tensor& dq_acc, const Tensor& dk, const Tensor& dv,
                                     const Tensor& delta = Tensor());

}  // namespace nt
