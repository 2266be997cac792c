#include "nn/rotary.h"

#include <cmath>

#include "ops/device_tables.h"
#if NT_CUDA
#include "cuda/runtime.h"
#endif

namespace nt::nn {

std::vector<double> rope_frequencies(int64_t D, const RopeConfig& cfg) {
  NT_CHECK(D > 0 && D % 2 == 0, "rope: head dim must be positive and even, got {}", D);
  NT_CHECK(cfg.yarn_scale >= 1.0, "rope: yarn_scale must be >= 1, got {}", cfg.yarn_scale);
  std::vector<double> f(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) {
    const double base = std::pow(cfg.theta, -2.0 * (double)i / (double)D);
    if (cfg.yarn_scale == 1.0) {
      f[i] = base;
      continue;
    }
    const double wavelength = 2 * M_PI / base, r = (double)cfg.yarn_original_context / wavelength;
    const double gamma = std::clamp((r - cfg.yarn_alpha) / (cfg.yarn_beta - cfg.yarn_alpha), 0.0, 1.0);
    f[i] = (1 - gamma) * base / cfg.yarn_scale + gamma * base;
  }
  return f;
}

Rotary::Rotary(int64_t D, int64_t max_seq, const RopeConfig& c, Device device) : cfg(c) {
  NT_CHECK(max_seq > 0, "Rotary: max_seq must be positive, got {}", max_seq);
  const std::vector<double> f = rope_frequencies(D, cfg);
  const double mscale = cfg.yarn_scale > 1.0 ? 0.1 * std::log(cfg.yarn_scale) + 1.0 : 1.0;
  std::vector<double> cv(max_seq * (D / 2)), sv(max_seq * (D / 2));
  for (int64_t t = 0; t < max_seq; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      cv[t * (D / 2) + i] = std::cos((double)t * f[i]) * mscale;
      sv[t * (D / 2) + i] = std::sin((double)t * f[i]) * mscale;
    }
  cos = from_vector(cv, {max_seq, D / 2}, DType::f32, device);
  sin = from_vector(sv, {max_seq, D / 2}, DType::f32, device);
}

Tensor Rotary::apply(const Tensor& x, int64_t start) const {
  const int64_t T = x.size(-3);
  NT_CHECK(start >= 0 && start + T <= cos.size(0), "Rotary: positions {}..{} exceed the table of {} positions", start,
           start + T - 1, cos.size(0));
  const auto [cd, sd] = tables(x.device());
  return rope(x, cd.narrow(0, start, T), sd.narrow(0, start, T), cfg.interleaved);
}

Tensor Rotary::apply_packed(const Tensor& x, const std::vector<int32_t>& cu) const {
  NT_CHECK(x.dim() == 3, "Rotary: packed x must be [N, H, D], got {}", shape_str(x.shape()));
  NT_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == x.size(0),
           "Rotary: cu_seqlens must run from 0 to N = {}, got {} entries{}", x.size(0), cu.size(),
           cu.empty() ? std::string() : fmt::format(" from {} to {}", cu.front(), cu.back()));
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    NT_CHECK(cu[b + 1] >= cu[b], "Rotary: cu_seqlens must not decrease, got {} then {} at {}", cu[b], cu[b + 1], b + 1);
    NT_CHECK(cu[b + 1] - cu[b] <= cos.size(0), "Rotary: positions 0..{} of sequence {} exceed the table of {} positions",
             cu[b + 1] - cu[b] - 1, b, cos.size(0));
  }
  if (x.size(0) == 0) return x;
  const Tensor pos = cached_table("rotary positions", std::vector<int64_t>(cu.begin(), cu.end()), DType::i64, x.device(), [&] {
    std::vector<double> p;
    p.reserve(cu.back());
    for (size_t b = 0; b + 1 < cu.size(); ++b)
      for (int32_t t = 0; t < cu[b + 1] - cu[b]; ++t) p.push_back(t);
    return p;
  });
  const auto [cd, sd] = tables(x.device());
  return rope(x, index_select(cd, 0, pos), index_select(sd, 0, pos), cfg.interleaved);
}

std::pair<Tensor, Tensor> Rotary::tables(Device d) const {
  if (cos.device() == d) return {cos, sin};
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [dev, c, s] : copies_)
    if (dev == d) return {c, s};
  copies_.emplace_back(d, cos.to(d), sin.to(d));
#if NT_CUDA
  // Other threads may read the copies on other streams: let the uploads land first (once per device).
  if (d.is_cuda()) cuda::synchronize(d.index);
#endif
  return {std::get<1>(copies_.back()), std::get<2>(copies_.back())};
}

}  // namespace nt::nn
