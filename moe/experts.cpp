#include "moe/experts.h"

#include <cmath>

namespace nt::moe {

RoutedExperts::RoutedExperts(int64_t E, int64_t d, int64_t h, const nn::Init& init) : n_experts(E), dim(d), hidden(h) {
  NT_CHECK(E > 0 && d > 0 && h > 0, "RoutedExperts: n_experts ({}), dim ({}) and hidden ({}) must be positive", E, d,
           h);
  // Each expert as nn::Linear would initialize it: U(-1/sqrt(in), 1/sqrt(in)).
  auto uniform = [&](const Shape& shape, int64_t in) {
    const double bound = 1.0 / std::sqrt((double)in);
    return (rand(shape, DType::f64, kCPU, init.gen) * (2 * bound) - bound).to(init.dtype).to(init.device);
  };
  register_parameter("w1", &w1, uniform({E, d, h}, d));
  register_parameter("w2", &w2, uniform({E, h, d}, h));
  register_parameter("w3", &w3, uniform({E, d, h}, d));
}

Tensor RoutedExperts::forward(const Tensor& x, const ExpertDispatch& d) const {
  NT_CHECK(x.dim() == 2 && x.size(1) == dim, "RoutedExperts: x must be [N, {}], got {}", dim, shape_str(x.shape()));
  NT_CHECK((int64_t)d.counts.size() == n_experts && d.n_tokens == x.size(0),
           "RoutedExperts: dispatch is for {} experts and {} tokens, expected {} and {}", d.counts.size(), d.n_tokens,
           n_experts, x.size(0));
  if (d.n_tokens == 0) return zeros({0, dim}, x.dtype(), x.device());
  const Tensor xs = moe_permute(x, d);  // [N * top_k, dim] in expert order
  const Tensor h = swiglu(grouped_matmul(xs, w1, d.offsets), grouped_matmul(xs, w3, d.offsets));
  return grouped_matmul(h, w2, d.offsets);
}

}  // namespace nt::moe
