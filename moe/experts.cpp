#include "moe/experts.h"

#include <cmath>

namespace nt::moe {

namespace {
// One host-to-device copy of index arrays, returned as 1-D views.
std::vector<Tensor> upload(const std::vector<const std::vector<int64_t>*>& arrays, Device device) {
  std::vector<double> all;
  for (const auto* a : arrays) all.insert(all.end(), a->begin(), a->end());
  const Tensor t = from_vector(all, {(int64_t)all.size()}, DType::i64, device);
  std::vector<Tensor> out;
  int64_t at = 0;
  for (const auto* a : arrays) out.push_back(t.narrow(0, at, (int64_t)a->size())), at += (int64_t)a->size();
  return out;
}
}  // namespace

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

Tensor RoutedExperts::forward(const Tensor& x, const Dispatch& d) const {
  NT_CHECK(x.dim() == 2 && x.size(1) == dim, "RoutedExperts: x must be [N, {}], got {}", dim, shape_str(x.shape()));
  NT_CHECK((int64_t)d.counts.size() == n_experts && d.n_tokens == x.size(0),
           "RoutedExperts: dispatch is for {} experts and {} tokens, expected {} and {}", d.counts.size(), d.n_tokens,
           n_experts, x.size(0));
  if (d.n_tokens == 0) return zeros({0, dim}, x.dtype(), x.device());
  const int64_t N = d.n_tokens, K = d.top_k, M = N * K;
  std::vector<int64_t> row_slot(M);  // the inverse of slot_row
  for (int64_t s = 0; s < M; ++s) row_slot[d.slot_row[s]] = s;
  const std::vector<Tensor> idx = upload({&row_slot, &d.slot_row}, x.device());
  // Gathering from per-slot copies of x rather than from x keeps every index unique, so the backward scatter has
  // no colliding adds and is deterministic on the GPU; the k copies of a token's gradient are summed by expand's
  // backward.
  const Tensor x_slot = x.unsqueeze(1).expand({N, K, dim}).reshape({M, dim});
  const Tensor xs = index_select(x_slot, 0, idx[0]);  // [M, dim] in expert order
  const Tensor h = swiglu(grouped_matmul(xs, w1, d.offsets), grouped_matmul(xs, w3, d.offsets));
  return index_select(grouped_matmul(h, w2, d.offsets), 0, idx[1]);
}

}  // namespace nt::moe
