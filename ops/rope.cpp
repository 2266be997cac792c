// rope: forward, backward right below (rotation by the opposite angle).
#include "ops/rope.h"

#include <cmath>

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {
namespace cpu {
void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved, double sign, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kRope, "rope", true);

static Tensor rope_raw(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved, double sign) {
  const int64_t T = x.size(-3), H = x.size(-2), D = x.size(-1), N = x.numel() / std::max<int64_t>(T * H * D, 1);
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::rope_forward(x.detach().contiguous().reshape({N, T, H, D}), cos.to(DType::f64).contiguous(),
                      sin.to(DType::f64).contiguous(), interleaved, sign, out.reshape({N, T, H, D}));
  } else {
    const Tensor xc = x.detach().contiguous(), c = cos.detach().to(DType::f32).contiguous(),
                 s = sin.detach().to(DType::f32).contiguous();
    NT_ON_CUDA("rope", cuda::rope_forward(x.dtype(), xc.data_ptr(), c.data<float>(), s.data<float>(), out.data_ptr(), N,
                                          T, H, D, interleaved, (float)sign, stream_of(out)));
  }
  return out;
}

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved) {
  check_floating("rope", x, "x");
  NT_CHECK(x.dim() >= 3, "rope: x must be [..., T, H, D], got shape {}", shape_str(x.shape()));
  const int64_t T = x.size(-3), D = x.size(-1);
  NT_CHECK(D % 2 == 0, "rope: head dim D must be even, got {} (x shape {})", D, shape_str(x.shape()));
  for (auto [t, name] : {std::pair{&cos, "cos"}, std::pair{&sin, "sin"}}) {
    NT_CHECK(t->shape() == (Shape{T, D / 2}), "rope: {} must have shape [{}, {}] (T, D/2) for x of shape {}, got {}",
             name, T, D / 2, shape_str(x.shape()), shape_str(t->shape()));
    check_floating("rope", *t, name);
    check_same_device("rope", x, *t);
  }
  Tensor out = rope_raw(x, cos, sin, interleaved, 1.0);
  if (autograd::needs_grad({&x}))
    autograd::record(kRope, out, {x}, [interleaved, c = autograd::Saved(cos), s = autograd::Saved(sin)](const Tensor& g, auto&) {
      return std::vector<Tensor>{rope_raw(g, c.get(), s.get(), interleaved, -1.0)};
    });
  return out;
}

std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t D, double theta, int64_t start) {
  NT_CHECK(D > 0 && D % 2 == 0, "rope_tables: D must be positive and even, got {}", D);
  NT_CHECK(T >= 0, "rope_tables: T must be >= 0, got {}", T);
  std::vector<double> c(T * (D / 2)), s(T * (D / 2));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double angle = (double)(start + t) * std::pow(theta, -2.0 * (double)i / (double)D);
      c[t * (D / 2) + i] = std::cos(angle), s[t * (D / 2) + i] = std::sin(angle);
    }
  return {from_vector(c, {T, D / 2}), from_vector(s, {T, D / 2})};
}

}  // namespace nt
