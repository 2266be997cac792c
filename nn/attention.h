// Causal self-attention with grouped-query heads (GQA: n_kv_heads divides n_heads; each group of
// n_heads / n_kv_heads query heads shares one key/value head) and an optional sliding window.
//
// causal_attention is the reference, written with ops (scores [B, H, T, T] are materialized): it is what the
// fused op (ops/attention.h) is checked against.
#pragma once
#include "nn/layers.h"
#include "nn/rotary.h"

namespace nt::nn {

// q [B, T, H, D], k and v [B, T, Hkv, D] -> [B, T, H, D]. Query t sees keys s <= t (and s > t - window when
// window > 0). scale defaults to 1/sqrt(D).
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window = 0, double scale = 0);

struct AttentionConfig {
  int64_t dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // 0: full causal attention
  // fused: flash_attention (memory linear in T; packed documents) on the GPU, and on the CPU for packed documents;
  // otherwise causal_attention above, which materializes the scores (and runs on BLAS on the CPU).
  bool fused = true;
};

class CausalSelfAttention : public Layer {
 public:
  CausalSelfAttention(const AttentionConfig& cfg, std::shared_ptr<const Rotary> rotary, const Init& init = {});
  Tensor forward(const Tensor& x) override { return forward(x, ForwardContext{}); }
  Tensor forward(const Tensor& x, const ForwardContext& ctx) override;  // x [B, T, dim]
  std::shared_ptr<Linear> wq, wk, wv, wo;
  AttentionConfig cfg;
  std::shared_ptr<const Rotary> rotary;
};

}  // namespace nt::nn
