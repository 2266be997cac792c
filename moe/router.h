// The DeepSeekMoE router (arXiv 2401.06066; DeepSeek-V3's routing, arXiv 2412.19437): token-to-expert affinities,
// top-k selection, gate weights, the expert-level balance loss, the V3 balancing bias, and load statistics.
//
// Affinities s = softmax(x W^T) (DeepSeekMoE) or sigmoid(x W^T) (V3), W [n_routed, dim]. Selection picks the top_k
// of s + b, b the per-expert bias, which only counts when aux_free; gates are s (never s + b) at the chosen experts,
// divided by their sum when normalize_topk, then times routed_scaling_factor (V3: 2.5). Selection is discrete
// (indices carry no gradient); gates are differentiable. For bf16/fp8 inputs the router computes in f32: a rounding flip changes which expert runs.
#pragma once
#include <string>
#include <vector>

#include "nn/layers.h"

namespace nt::moe {

struct RouterConfig {
  int64_t n_routed = 0, top_k = 0;  // 0 inside MoEConfig: taken from MoEConfig's n_routed and top_k
  std::string affinity = "softmax";  // or "sigmoid" (V3)
  bool normalize_topk = false;       // V3 normalizes (with sigmoid affinities)
  double routed_scaling_factor = 1;  // V3's: the gates are multiplied by it (after normalize_topk); > 0
  double aux_loss_coef = 0.001;      // alpha of the expert-level balance loss; 0 disables it
  bool aux_free = false;             // V3's bias-based balancing instead of the loss
  double bias_update_speed = 0.001;  // gamma of V3
  double seq_aux_loss_coef = 0;      // V3's complementary sequence-wise balance loss (its alpha; 0: off), which
                                     // also applies with aux_free
};

struct RouterOutput {
  Tensor scores;   // s [N, n_routed], differentiable, f32 when x is bf16/fp8
  Tensor gates;    // [N, top_k], x's dtype, differentiable
  Tensor indices;  // [N, top_k] i64 on x's device, best first (ties: lower expert index, as topk)
};

class Router : public nn::Module {
 public:
  Router(int64_t dim, const RouterConfig& cfg, const nn::Init& init = {});
  // x [N, dim].
  RouterOutput forward(const Tensor& x);
  // coef * sum_i f_i P_i with f_i = n_routed / (top_k N) * load_i and P_i = (1/N) sum_t s'_ti, where
  // s'_t = s_t / sum_j s_tj (s itself for softmax; V3's normalized affinities for sigmoid). load: tokens per
  // expert from the same forward. Undefined when aux_loss_coef is 0 or aux_free.
  // load: [E] tokens per expert (any dtype, e.g. ExpertDispatch::load), on the scores' device: no host copy.
  Tensor aux_loss(const Tensor& scores, const Tensor& load) const;
  // V3's sequence-wise balance loss, the same formula per sequence and averaged over the B sequences:
  // seq_aux_loss_coef / B * sum_b sum_i f_bi P_bi, f_bi = n_routed / (top_k T) * (tokens of sequence b that chose
  // expert i), P_bi = (1/T) sum_{t in b} s'_ti. scores [B T, n_routed], indices [B T, top_k] (on the device: no
  // host copy). Undefined when seq_aux_loss_coef is 0 or there is no token.
  Tensor seq_aux_loss(const Tensor& scores, const Tensor& indices, int64_t B, int64_t T) const;
  // V3: b_i += speed * sign(mean load - load_i). Under-loaded experts become more likely to be chosen.
  void update_bias(const std::vector<int64_t>& load);

  // The balancing bias is state but not a parameter (no gradient, not decayed): checkpoints must carry it.
  const std::vector<double>& bias() const { return bias_; }
  void set_bias(std::vector<double> b);

  Tensor weight;  // [n_routed, dim]
  RouterConfig cfg;

 private:
  std::vector<double> bias_;
};

// Tokens per expert and how even that is: max / mean and the coefficient of variation (population std / mean),
// both 1 and 0 for a perfect balance; both 0 when no token was routed.
struct LoadStats {
  std::vector<int64_t> load;
  double max_over_mean = 0, cv = 0;
};
LoadStats load_stats(const std::vector<int64_t>& load);

}  // namespace nt::moe
