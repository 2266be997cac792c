#include "train/memory_budget.h"

namespace nt::train {

MemoryEstimate estimate_training_memory(const nn::LMConfig& c, int64_t B, int64_t T, bool bf16, bool reference_attention) {
  const double head_dim = (double)(c.dim / c.n_heads), kv = (double)c.n_kv_heads * head_dim;
  const double per_layer = 2.0 * c.dim + (double)c.dim * ((double)c.n_heads * head_dim / c.dim) + 2 * kv;  // norms, q, k, v
  const double params = (double)c.vocab * c.dim * (c.tie_embeddings ? 1 : 2) + c.dim +
                        (double)c.n_layers * (per_layer * c.dim + 3.0 * c.dim * c.hidden());
  MemoryEstimate e;
  // f32: param, grad, m, v. bf16: param and grad (2 + 2), master, m, v and the f32 gradient buffer (4 x 4).
  e.weights = params * (bf16 ? 20.0 : 16.0);
  const double es = bf16 ? 2.0 : 4.0, tokens = (double)B * T;
  double act = tokens * (double)c.n_layers * (16.0 * c.dim + 3.0 * c.hidden()) * es + 2.0 * tokens * (double)c.vocab * es;
  if (reference_attention) act += 3.0 * (double)B * c.n_heads * (double)T * T * es * c.n_layers;  // scores, probs, grad
  e.activations = act;
  return e;
}

void check_fits(const MemoryEstimate& e, double available, const std::string& where, int64_t batch, int64_t seq) {
  constexpr double GiB = 1024.0 * 1024 * 1024;
  NT_CHECK(e.total() <= 0.9 * available,
           "train_lm: this configuration needs about {:.1f} GiB ({:.1f} GiB of weights, gradients and optimizer state; "
           "{:.1f} GiB of activations for training.batch={} x model.seq={}) but {} has {:.1f} GiB available; lower "
           "training.batch (training.grad_accum keeps the tokens per step), model.seq or the model size, or use "
           "training.precision=bf16",
           e.total() / GiB, e.weights / GiB, e.activations / GiB, batch, seq, where, available / GiB);
}

}  // namespace nt::train
