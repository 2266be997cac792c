// Causal self-attention with grouped-query heads (GQA: n_kv_heads divides n_heads; each group of
// n_heads / n_kv_heads query heads shares one key/value head) and an optional sliding window.
//
// causal_attention is the reference, written with ops (scores [B, H, T, T] are materialized): it is what the
// fused op (ops/attention.h) is checked against.
#pragma once
#include "nn/layers.h"
#include "nn/rotary.h"

namespace nt::nn {

// q [B, Tq, H, D], k and v [B, Tk, Hkv, D] with Tk >= Tq -> [B, Tq, H, D]. The queries are the last Tq positions:
// query i is at position t = Tk - Tq + i and sees keys s <= t (and s > t - window when window > 0). scale defaults
// to 1/sqrt(D). (Tk > Tq: decoding against a KV cache.)
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
  // Decoding: x [B, Tn, dim] holds the next Tn positions; their keys and values are appended to the cache and the
  // queries attend to everything cached so far.
  Tensor forward_cached(const Tensor& x, LayerCache& cache) override;
  LayerCache new_cache(int64_t batch, int64_t max_seq, DType dtype, Device device) const override;
  std::shared_ptr<Linear> wq, wk, wv, wo;
  AttentionConfig cfg;
  std::shared_ptr<const Rotary> rotary;
};

}  // namespace nt::nn
