#include "nn/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "tensor/philox.h"

namespace nt::nn {

std::vector<double> sampling_distribution(const Tensor& logits, const SamplingConfig& cfg) {
  NT_CHECK(logits.dim() == 1 && logits.numel() > 0, "sampling: logits must be one non-empty row [V], got shape {}",
           shape_str(logits.shape()));
  NT_CHECK(cfg.temperature >= 0, "sampling: temperature must be >= 0, got {}", cfg.temperature);
  NT_CHECK(cfg.top_k >= 0, "sampling: top_k must be >= 0, got {}", cfg.top_k);
  NT_CHECK(cfg.top_p > 0 && cfg.top_p <= 1, "sampling: top_p must be in (0, 1], got {}", cfg.top_p);
  const std::vector<double> l = logits.to_vector();
  const int64_t V = (int64_t)l.size();
  std::vector<int64_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return l[a] > l[b]; });
  std::vector<double> p(V, 0.0);
  if (cfg.temperature == 0) {
    p[order[0]] = 1.0;
    return p;
  }
  const int64_t k = cfg.top_k > 0 ? std::min(cfg.top_k, V) : V;
  double z = 0;
  for (int64_t i = 0; i < k; ++i) z += std::exp((l[order[i]] - l[order[0]]) / cfg.temperature);
  // Nucleus: the shortest prefix (by probability) whose mass reaches top_p; the rest is dropped.
  double mass = 0;
  int64_t keep = 0;
  while (keep < k && (keep == 0 || mass < cfg.top_p - 1e-12)) {
    mass += std::exp((l[order[keep]] - l[order[0]]) / cfg.temperature) / z;
    ++keep;
  }
  for (int64_t i = 0; i < keep; ++i) p[order[i]] = std::exp((l[order[i]] - l[order[0]]) / cfg.temperature) / z / mass;
  return p;
}

int64_t sample_token(const Tensor& logits, const SamplingConfig& cfg, Generator& gen) {
  const std::vector<double> p = sampling_distribution(logits, cfg);
  const double u = philox::uniform_at(gen.seed, gen.advance(1), 0);
  double c = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < (int64_t)p.size(); ++i) {
    if (p[i] == 0) continue;
    c += p[i], last = i;
    if (u < c) return i;
  }
  return last;  // rounding left u just above the total
}

}  // namespace nt::nn
