// Pre-norm transformer block with pluggable attention and feed-forward layers, and a decoder-only LM.
#pragma once
#include <functional>

#include "nn/attention.h"

namespace nt::nn {

class Block : public Layer {
 public:
  Block(std::shared_ptr<Layer> attn, std::shared_ptr<Layer> mlp, int64_t dim, double eps = 1e-6, const Init& init = {});
  Tensor forward(const Tensor& x) override { return forward(x, ForwardContext{}); }
  Tensor forward(const Tensor& x, const ForwardContext& ctx) override;  // x + attn(norm(x)), then + mlp(norm(.))
  Tensor forward_cached(const Tensor& x, LayerCache& cache);  // the attention layer must support it (Layer::new_cache)
  std::shared_ptr<RMSNorm> attn_norm, mlp_norm;
  std::shared_ptr<Layer> attn, mlp;
};

struct LMConfig {
  int64_t vocab = 256;
  int64_t dim = 128;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 4;
  int64_t mlp_hidden = 0;  // 0: 8/3 * dim rounded up to a multiple of 64
  int64_t max_seq = 256;
  int64_t window = 0;      // sliding-window attention when > 0
  RopeConfig rope;
  bool tie_embeddings = true;
  double norm_eps = 1e-6;
  bool fused_attention = true;  // see AttentionConfig::fused
  // The attention layer of block i (e.g. nsa::NativeSparseAttention); null: CausalSelfAttention from the fields above.
  std::function<std::shared_ptr<Layer>(int64_t layer, std::shared_ptr<const Rotary> rotary, const Init& init)> make_attention;
  // The feed-forward layer of block i (e.g. moe::DeepSeekMoE); null: SwiGLUMLP(dim, hidden()).
  std::function<std::shared_ptr<Layer>(int64_t layer, const Init& init)> make_mlp;
  double init_std = 0.02;  // GPT-2 init: N(0, std), residual projections scaled by 1/sqrt(2 n_layers)
  int64_t hidden() const { return mlp_hidden > 0 ? mlp_hidden : (dim * 8 / 3 + 63) / 64 * 64; }
};

class TransformerLM : public Module {
 public:
  explicit TransformerLM(const LMConfig& cfg, const Init& init = {});
  // [B, T] -> logits [B, T, vocab]; ctx.cu_seqlens marks packed documents (see ForwardContext).
  Tensor forward(const Tensor& idx, const ForwardContext& ctx = {});
  // Mean cross-entropy plus the blocks' auxiliary losses (Layer::aux_loss), if any.
  Tensor loss(const Tensor& idx, const Tensor& targets, int64_t ignore_index = -100, const ForwardContext& ctx = {});
  // The sum of the blocks' auxiliary losses from the last forward (undefined when there are none).
  Tensor aux_loss() const;
  // Decoding with a KV cache: new_cache() for B sequences, then forward_cached() with the prompt [B, T0] and with
  // each next token [B, 1]; returns the logits of the new positions. Equals forward() over the whole sequence.
  std::vector<LayerCache> new_cache(int64_t batch) const;
  Tensor forward_cached(const Tensor& idx, std::vector<LayerCache>& cache);
  LMConfig cfg;
  std::shared_ptr<Embedding> tok_emb;
  std::vector<std::shared_ptr<Block>> layers;
  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<Linear> lm_head;  // null when tied to tok_emb
  std::shared_ptr<Rotary> rotary;
  // Optional wrapper of each block's call in forward(): run_block(i, run, x) must return run(x) (it may add work
  // around it, e.g. activation checkpointing or gathering the block's sharded weights: dist::ShardedAdamW).
  std::function<Tensor(int64_t, const std::function<Tensor(const Tensor&)>&, const Tensor&)> run_block;
  // Activation checkpointing of every block (sets run_block): the forward keeps only each block's input and the
  // backward recomputes the block; one more forward per block for the activation memory of one block. Blocks with
  // auxiliary losses (MoE) are refused at the forward: their losses would get no gradient.
  void checkpoint_blocks();
};

}  // namespace nt::nn
