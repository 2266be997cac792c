#include "moe/experts.h"

#include <cmath>

#include "autograd/graph.h"
#include "moe/offload.h"

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
  NT_CHECK(d.n_experts() == n_experts && d.n_tokens == x.size(0),
           "RoutedExperts: dispatch is for {} experts and {} tokens, expected {} and {}", d.n_experts(), d.n_tokens,
           n_experts, x.size(0));
  if (d.n_tokens == 0) return zeros({0, dim}, x.dtype(), x.device());
  const Tensor xs = moe_permute(x, d);  // [N * top_k, dim] in expert order
  if (!staged_) return run(xs, w1, w2, w3, d);
  NT_CHECK(x.device() == staged_->device(), "RoutedExperts: offloaded to {}, but x is on {}", staged_->device().str(),
           x.device().str());
  staged_->ready();
  if (next_offloaded) next_offloaded->prefetch();  // travels while this layer and the next attention compute
  const std::vector<Tensor> w = staged_->device_tensors();
  if (!autograd::grad_enabled()) {
    const Tensor y = run(xs, w[0], w[1], w[2], d);
    staged_->release();
    return y;
  }
  // As fully sharded training does with a block's weights: the copies are freed after the forward, although
  // autograd saved them; a hook on the output stages them again before the backward reaches the experts, and one
  // on the input frees them once the experts' backward is done.
  auto st = staged_;
  const Tensor in = autograd::on_backward(xs, [st] { st->release(); });
  const Tensor y = run(in, w[0], w[1], w[2], d);
  staged_->release();
  return autograd::on_backward(y, [st, prev = prev_offloaded] {
    st->ready();
    if (prev) prev->prefetch();
  });
}

Tensor RoutedExperts::run(const Tensor& xs, const Tensor& a, const Tensor& b, const Tensor& c,
                          const ExpertDispatch& d) const {
  const Tensor h = swiglu(grouped_matmul(xs, a, d.groups), grouped_matmul(xs, c, d.groups));
  return grouped_matmul(h, b, d.groups);
}

void RoutedExperts::offload(Device device) {
  NT_CHECK(!staged_, "RoutedExperts::offload: already offloaded");
  NT_CHECK(device.is_cuda(), "RoutedExperts::offload: the compute device must be a GPU, got {}", device.str());
  for (Tensor* w : {&w1, &w2, &w3}) {
    const bool rg = w->requires_grad();
    *w = w->detach().pin_memory();
    w->requires_grad_(rg);
  }
  staged_ = std::make_shared<HostStagedWeights>(std::vector<Tensor>{w1, w2, w3}, device);
}

void RoutedExperts::prefetch() const {
  if (staged_) staged_->stage();
}

}  // namespace nt::moe
