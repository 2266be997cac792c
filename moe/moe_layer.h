// DeepSeekMoE (Dai et al. 2024, arXiv 2401.06066) with DeepSeek-V3's routing options: fine-grained routed experts,
// top_k of them per token, plus always-on shared experts fused into one SwiGLU MLP of width n_shared *
// expert_hidden (as DeepSeekMoE does). For x [B, T, dim], each token t:
//   y_t = shared(x_t) + sum over its top_k experts e of g_te * expert_e(x_t)
// Dropless: every token reaches all of its experts, whatever the load. Semantics and formulas: docs/moe.md.
//
// The pieces: Router (affinities, top-k, gates, balance), moe_dispatch (rows sorted by expert, ops/moe.h),
// RoutedExperts (permute, expert GEMMs), and moe_unpermute (rows back to tokens, weighted by the gates).
#pragma once
#include <functional>
#include "moe/experts.h"
#include "moe/router.h"

namespace nt::moe {

struct MoEConfig {
  int64_t dim = 0;
  int64_t n_routed = 64, top_k = 6, n_shared = 2;
  int64_t expert_hidden = 0;  // each fine-grained expert's SwiGLU width
  RouterConfig router;        // its n_routed and top_k may stay 0 (taken from here) or must match
};

class DeepSeekMoE : public nn::Layer {
 public:
  explicit DeepSeekMoE(const MoEConfig& cfg, const nn::Init& init = {});
  // x [B, T, dim] -> [B, T, dim].
  Tensor forward(const Tensor& x) override;

  // Hooks for the training loop.
  // The last forward's balance losses (nn::Layer::aux_loss: TransformerLM::loss adds it): the expert-level one
  // (aux_loss_coef, not with aux_free) plus V3's sequence-wise one (seq_aux_loss_coef), differentiable w.r.t. the
  // router and x; f32 for bf16 layers. Undefined when both are off.
  Tensor aux_loss() const override { return aux_; }
  // Tokens per routed expert in the last forward, on the host (on the GPU the first call after a forward waits
  // for it: the training loop asks at its log steps only).
  std::vector<int64_t> last_load() const;
  using Stats = LoadStats;
  Stats stats() const { return load_stats(last_load()); }
  // aux_free only (a no-op otherwise): call after each optimizer step. Moves the router's bias by the load summed
  // over the training-mode forwards since the previous call (the last load when there is one forward per step;
  // gradient-accumulation micro-batches all count).
  // reduce_load (optional): sums the load over data-parallel ranks in place first, so every rank moves its bias
  // the same way (as one process on the whole batch would).
  void update_bias(const std::function<void(std::vector<int64_t>&)>& reduce_load = {});

  MoEConfig cfg;
  std::shared_ptr<Router> router;          // router.weight
  std::shared_ptr<RoutedExperts> experts;  // experts.w1, experts.w2, experts.w3
  std::shared_ptr<nn::SwiGLUMLP> shared;   // shared.w{1,2,3}.weight; null when n_shared == 0

 private:
  Tensor aux_;
  GroupOffsets last_groups_;  // the last forward's dispatch offsets (on the device on the GPU)
  Tensor load_since_update_;  // [n_routed] i64 on the layer's device, summed over training-mode forwards
};

}  // namespace nt::moe
