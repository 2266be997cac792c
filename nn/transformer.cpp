#include "nn/transformer.h"

#include <cmath>

namespace nt::nn {

Block::Block(std::shared_ptr<Layer> a, std::shared_ptr<Layer> m, int64_t dim, double eps, const Init& init) {
  attn_norm = register_module("attn_norm", std::make_shared<RMSNorm>(dim, eps, init));
  attn = register_module("attn", std::move(a));
  mlp_norm = register_module("mlp_norm", std::make_shared<RMSNorm>(dim, eps, init));
  mlp = register_module("mlp", std::move(m));
}
Tensor Block::forward(const Tensor& x, const ForwardContext& ctx) {
  const Tensor h = x + attn->forward(attn_norm->forward(x), ctx);
  return h + mlp->forward(mlp_norm->forward(h), ctx);
}

Tensor Block::forward_cached(const Tensor& x, LayerCache& cache) {
  const Tensor h = x + attn->forward_cached(attn_norm->forward(x), cache);
  return h + mlp->forward(mlp_norm->forward(h));
}

TransformerLM::TransformerLM(const LMConfig& c, const Init& init) : cfg(c) {
  NT_CHECK(cfg.dim % cfg.n_heads == 0, "model: dim ({}) must be a multiple of n_heads ({})", cfg.dim, cfg.n_heads);
  const int64_t head_dim = cfg.dim / cfg.n_heads;
  rotary = std::make_shared<Rotary>(head_dim, cfg.max_seq, cfg.rope, init.device);
  tok_emb = register_module("tok_emb", std::make_shared<Embedding>(cfg.vocab, cfg.dim, init));
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    std::shared_ptr<Layer> attn = cfg.make_attention
        ? cfg.make_attention(i, rotary, init)
        : std::make_shared<CausalSelfAttention>(
              AttentionConfig{cfg.dim, cfg.n_heads, cfg.n_kv_heads, head_dim, cfg.window, cfg.fused_attention}, rotary, init);
    std::shared_ptr<Layer> mlp =
        cfg.make_mlp ? cfg.make_mlp(i, init) : std::make_shared<SwiGLUMLP>(cfg.dim, cfg.hidden(), init);
    layers.push_back(register_module("layers." + std::to_string(i), std::make_shared<Block>(attn, mlp, cfg.dim, cfg.norm_eps, init)));
  }
  norm = register_module("norm", std::make_shared<RMSNorm>(cfg.dim, cfg.norm_eps, init));
  if (!cfg.tie_embeddings) lm_head = register_module("lm_head", std::make_shared<Linear>(cfg.dim, cfg.vocab, false, init));
  // GPT-2 initialization: every matrix N(0, std); the projections into the residual stream (attn.wo, mlp.w2) by
  // another 1/sqrt(2 n_layers), so the residual's variance does not grow with depth (MoE: the shared and the
  // routed experts' output projections likewise).
  autograd::NoGradGuard no_grad;
  for (auto& [name, p] : named_parameters()) {
    if (p.dim() < 2) continue;  // matrices, and stacked expert matrices [E, in, out]
    const bool residual = name.ends_with("attn.wo.weight") || name.ends_with("mlp.w2.weight") ||
                          name.ends_with("mlp.shared.w2.weight") || name.ends_with("mlp.experts.w2");
    const double std = cfg.init_std / (residual ? std::sqrt(2.0 * (double)cfg.n_layers) : 1.0);
    p.copy_(randn(p.shape(), DType::f64, kCPU, init.gen) * std);
  }
}

Tensor TransformerLM::forward(const Tensor& idx, const ForwardContext& ctx) {
  NT_CHECK(idx.dim() == 2, "TransformerLM: tokens must be [B, T], got {}", shape_str(idx.shape()));
  NT_CHECK(idx.size(1) <= cfg.max_seq, "TransformerLM: sequence length {} exceeds max_seq {}", idx.size(1), cfg.max_seq);
  Tensor x = tok_emb->forward(idx);
  if (!ctx.cu_seqlens.empty()) {
    const int64_t n = idx.numel();
    NT_CHECK(ctx.cu_seqlens.front() == 0 && ctx.cu_seqlens.back() == n,
             "TransformerLM: cu_seqlens must run from 0 to B * T = {}, got {} .. {}", n, ctx.cu_seqlens.front(), ctx.cu_seqlens.back());
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    // By value: a wrapper may keep `run` for the backward (recomputation), after this call has returned.
    if (run_block) x = run_block((int64_t)i, [this, i, ctx](const Tensor& h) { return layers[i]->forward(h, ctx); }, x);
    else x = layers[i]->forward(x, ctx);
  }
  x = norm->forward(x);
  return lm_head ? lm_head->forward(x) : matmul(x, tok_emb->weight.mT());
}

void TransformerLM::checkpoint_blocks() {
  run_block = [this](int64_t i, const std::function<Tensor(const Tensor&)>& run, const Tensor& x) {
    const bool training = autograd::grad_enabled();
    Tensor y = autograd::checkpoint([run](const std::vector<Tensor>& in) { return run(in[0]); }, {x});
    const Block& b = *layers[(size_t)i];
    NT_CHECK(!training || !(b.mlp->aux_loss().defined() || b.attn->aux_loss().defined()),
             "TransformerLM::checkpoint_blocks: block {} has an auxiliary loss (MoE), whose gradient the "
             "recomputation would lose (its first pass records nothing)", i);
    return y;
  };
}

Tensor TransformerLM::loss(const Tensor& idx, const Tensor& targets, int64_t ignore_index, const ForwardContext& ctx) {
  Tensor loss = cross_entropy(forward(idx, ctx), targets, ignore_index);
  const Tensor aux = aux_loss();
  return aux.defined() ? loss + aux.to(loss.dtype()) : loss;
}

Tensor TransformerLM::aux_loss() const {
  Tensor total;
  for (const auto& block : layers)
    for (const Layer* l : {block->attn.get(), block->mlp.get()}) {
      const Tensor a = l->aux_loss();
      if (a.defined()) total = total.defined() ? total + a : a;
    }
  return total;
}

std::vector<LayerCache> TransformerLM::new_cache(int64_t batch) const {
  std::vector<LayerCache> out;
  const Tensor& w = tok_emb->weight;
  for (const auto& layer : layers) out.push_back(layer->attn->new_cache(batch, cfg.max_seq, w.dtype(), w.device()));
  return out;
}

Tensor TransformerLM::forward_cached(const Tensor& idx, std::vector<LayerCache>& cache) {
  NT_CHECK(idx.dim() == 2, "TransformerLM: tokens must be [B, T], got {}", shape_str(idx.shape()));
  NT_CHECK(cache.size() == layers.size(), "TransformerLM: a cache of {} layers for a model of {}", cache.size(), layers.size());
  Tensor x = tok_emb->forward(idx);
  for (size_t i = 0; i < layers.size(); ++i) x = layers[i]->forward_cached(x, cache[i]);
  x = norm->forward(x);
  return lm_head ? lm_head->forward(x) : matmul(x, tok_emb->weight.mT());
}

}  // namespace nt::nn
