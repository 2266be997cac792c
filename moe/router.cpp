#include "moe/router.h"

#include <algorithm>
#include <cmath>

#include "ops/dispatch.h"

namespace nt::moe {

Router::Router(int64_t dim, const RouterConfig& c, const nn::Init& init) : cfg(c) {
  NT_CHECK(dim > 0, "Router: dim must be positive, got {}", dim);
  NT_CHECK(cfg.n_routed > 0, "Router: n_routed must be positive, got {}", cfg.n_routed);
  NT_CHECK(cfg.top_k >= 1 && cfg.top_k <= cfg.n_routed, "Router: top_k must be in [1, n_routed = {}], got {}",
           cfg.n_routed, cfg.top_k);
  NT_CHECK(cfg.affinity == "softmax" || cfg.affinity == "sigmoid",
           "Router: affinity must be \"softmax\" or \"sigmoid\", got \"{}\"", cfg.affinity);
  NT_CHECK(cfg.aux_loss_coef >= 0, "Router: aux_loss_coef must be >= 0, got {}", cfg.aux_loss_coef);
  NT_CHECK(cfg.bias_update_speed >= 0, "Router: bias_update_speed must be >= 0, got {}", cfg.bias_update_speed);
  NT_CHECK(cfg.seq_aux_loss_coef >= 0, "Router: seq_aux_loss_coef must be >= 0, got {}", cfg.seq_aux_loss_coef);
  NT_CHECK(cfg.routed_scaling_factor > 0 && std::isfinite(cfg.routed_scaling_factor),
           "Router: routed_scaling_factor must be a positive finite number, got {}", cfg.routed_scaling_factor);
  // nn::Linear's initialization, U(-1/sqrt(dim), 1/sqrt(dim)); the weight lives here so its name is router.weight.
  const double bound = 1.0 / std::sqrt((double)dim);
  const Tensor w = rand({cfg.n_routed, dim}, DType::f64, kCPU, init.gen) * (2 * bound) - bound;
  register_parameter("weight", &weight, w.to(init.dtype).to(init.device));
  bias_.assign(cfg.n_routed, 0.0);
}

void Router::set_bias(std::vector<double> b) {
  NT_CHECK((int64_t)b.size() == cfg.n_routed, "Router::set_bias: expected {} values (one per routed expert), got {}",
           cfg.n_routed, b.size());
  bias_ = std::move(b);
}

RouterOutput Router::forward(const Tensor& x) {
  NT_CHECK(x.dim() == 2 && x.size(1) == weight.size(1), "Router: x must be [N, {}], got {}", weight.size(1),
           shape_str(x.shape()));
  const bool low = x.dtype() != DType::f32 && x.dtype() != DType::f64;
  const Tensor logits = low ? matmul(x.to(DType::f32), weight.to(DType::f32).mT()) : matmul(x, weight.mT());
  const Tensor s = cfg.affinity == "softmax" ? softmax(logits, -1) : sigmoid(logits);
  Tensor chooser = s.detach();
  if (cfg.aux_free) chooser = chooser + from_vector(bias_, {cfg.n_routed}, chooser.dtype(), chooser.device());
  const Tensor idx = topk(chooser, cfg.top_k, -1).indices;
  Tensor g = gather(s, 1, idx);
  if (cfg.normalize_topk) g = g / sum(g, {1}, true);
  if (cfg.routed_scaling_factor != 1) g = g * cfg.routed_scaling_factor;
  return {s, g.dtype() == x.dtype() ? g : g.to(x.dtype()), idx};
}

Tensor Router::aux_loss(const Tensor& s, const Tensor& load) const {
  if (cfg.aux_loss_coef == 0 || cfg.aux_free) return Tensor();
  const int64_t E = cfg.n_routed, N = s.size(0);
  NT_CHECK(s.dim() == 2 && s.size(1) == E, "Router::aux_loss: scores must be [N, {}], got {}", E, shape_str(s.shape()));
  NT_CHECK(load.dim() == 1 && load.numel() == E, "Router::aux_loss: load must be [{}], got {}", E, shape_str(load.shape()));
  check_same_device("Router::aux_loss", s, load);
  NT_CHECK(N > 0, "Router::aux_loss: no tokens");
  // coef * sum_i f_i P_i = coef E / (top_k N^2) * sum_i load_i colsum_i: one weighted sum over the column sums of s'
  // (the loads are integers, exact in f32 up to 2^24 tokens per expert).
  const double c = cfg.aux_loss_coef * (double)E / (double)(cfg.top_k * N) / (double)N;
  const Tensor sn = cfg.affinity == "softmax" ? s : s / sum(s, {1}, true);
  return sum(sum(sn, {0}) * load.to(s.dtype())) * c;
}

Tensor Router::seq_aux_loss(const Tensor& s, const Tensor& idx, int64_t B, int64_t T) const {
  if (cfg.seq_aux_loss_coef == 0 || B * T == 0) return Tensor();
  const int64_t E = cfg.n_routed, K = cfg.top_k;
  NT_CHECK(s.dim() == 2 && s.size(0) == B * T && s.size(1) == E,
           "Router::seq_aux_loss: scores must be [{}, {}], got {}", B * T, E, shape_str(s.shape()));
  NT_CHECK(idx.dim() == 2 && idx.size(0) == B * T && idx.size(1) == K,
           "Router::seq_aux_loss: indices must be [{}, {}], got {}", B * T, K, shape_str(idx.shape()));
  const Tensor sn = cfg.affinity == "softmax" ? s : s / sum(s, {1}, true);
  const Tensor colsum = sum(sn.reshape({B, T, E}), {1});  // [B, E]; the 1 / T is in w
  // Tokens per (sequence, expert), on the scores' device; constants (selection carries no gradient).
  const Tensor counts = scatter_add(zeros({B, E}, s.dtype(), s.device()), 1, idx.reshape({B, T * K}),
                                    ones({B, T * K}, s.dtype(), s.device()));
  const double w = cfg.seq_aux_loss_coef * (double)E / ((double)K * (double)T * (double)T * (double)B);
  return sum(counts * colsum) * w;
}

void Router::update_bias(const std::vector<int64_t>& load) {
  const int64_t E = cfg.n_routed;
  NT_CHECK((int64_t)load.size() == E, "Router::update_bias: load must have {} entries, got {}", E, load.size());
  int64_t total = 0;
  for (int64_t l : load) total += l;
  // load_i < total / E, compared in integers so that an exactly balanced expert stays put.
  for (int64_t i = 0; i < E; ++i) {
    if (load[i] * E < total) bias_[i] += cfg.bias_update_speed;
    else if (load[i] * E > total) bias_[i] -= cfg.bias_update_speed;
  }
}

LoadStats load_stats(const std::vector<int64_t>& load) {
  LoadStats st{load, 0, 0};
  if (load.empty()) return st;
  double total = 0, mx = 0;
  for (int64_t l : load) total += (double)l, mx = std::max(mx, (double)l);
  if (total == 0) return st;
  const double mean = total / (double)load.size();
  double var = 0;
  for (int64_t l : load) var += ((double)l - mean) * ((double)l - mean);
  var /= (double)load.size();
  st.max_over_mean = mx / mean;
  st.cv = std::sqrt(var) / mean;
  return st;
}

}  // namespace nt::moe
