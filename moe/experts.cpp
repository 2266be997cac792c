#include "moe/experts.h"

#include <algorithm>
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

RoutedExperts::Path RoutedExperts::choose(const Dispatch& d) const {
  if (path != Path::automatic) return path;
  const int64_t rows = d.n_tokens * d.top_k;
  return n_experts * d.max_count() <= 2 * rows ? Path::padded : Path::loop;
}

Tensor RoutedExperts::forward(const Tensor& x, const Dispatch& d) const {
  NT_CHECK(x.dim() == 2 && x.size(1) == dim, "RoutedExperts: x must be [N, {}], got {}", dim, shape_str(x.shape()));
  NT_CHECK((int64_t)d.counts.size() == n_experts && d.n_tokens == x.size(0),
           "RoutedExperts: dispatch is for {} experts and {} tokens, expected {} and {}", d.counts.size(), d.n_tokens,
           n_experts, x.size(0));
  if (d.n_tokens == 0) return zeros({0, dim}, x.dtype(), x.device());
  return choose(d) == Path::padded ? forward_padded(x, d) : forward_loop(x, d);
}

Tensor RoutedExperts::forward_loop(const Tensor& x, const Dispatch& d) const {
  const std::vector<Tensor> idx = upload({&d.row_token, &d.slot_row}, x.device());
  std::vector<Tensor> outs;
  for (int64_t e = 0; e < n_experts; ++e) {
    const int64_t n = d.counts[e];
    if (n == 0) continue;
    const Tensor xe = index_select(x, 0, idx[0].narrow(0, d.offsets[e], n));
    const Tensor h = swiglu(matmul(xe, w1.select(0, e)), matmul(xe, w3.select(0, e)));
    outs.push_back(matmul(h, w2.select(0, e)));
  }
  const Tensor rows = outs.size() == 1 ? outs[0] : cat(outs, 0);
  return index_select(rows, 0, idx[1]);
}

Tensor RoutedExperts::forward_padded(const Tensor& x, const Dispatch& d) const {
  const int64_t N = d.n_tokens, K = d.top_k, C = d.max_count(), M = N * K;
  // pad_slot: the slot each padded row serves (padding: slot 0, computed and never read); slot_pad: its inverse.
  std::vector<int64_t> pad_slot(n_experts * C, 0), slot_pad(M);
  for (int64_t s = 0; s < M; ++s) {
    const int64_t e = d.slot_expert[s];
    slot_pad[s] = e * C + (d.slot_row[s] - d.offsets[e]);
    pad_slot[slot_pad[s]] = s;
  }
  const std::vector<Tensor> idx = upload({&pad_slot, &slot_pad}, x.device());
  // Gathering from per-slot copies of x rather than from x keeps every real index unique, so the backward
  // scatter has no colliding adds (only the padding's exact zeros) and is deterministic on the GPU; the k copies of
  // a token's gradient are summed by expand's backward.
  const Tensor x_slot = x.unsqueeze(1).expand({N, K, dim}).reshape({M, dim});
  const Tensor xp = index_select(x_slot, 0, idx[0]).reshape({n_experts, C, dim});
  const Tensor h = swiglu(matmul(xp, w1), matmul(xp, w3));
  return index_select(matmul(h, w2).reshape({n_experts * C, dim}), 0, idx[1]);
}

}  // namespace nt::moe
