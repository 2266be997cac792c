// rms_norm and layer_norm: forward, backward right below (dedicated kernels; both share one pair of loops).
#include "ops/norm.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {
namespace cpu {
void norm_forward(bool rms, const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                  const Tensor& stats);
void norm_backward(bool rms, const Tensor& x, const Tensor& w, const Tensor& stats, const Tensor& dy, const Tensor& dx,
                   const Tensor& dw, const Tensor& db);
}  // namespace cpu

NT_REGISTER_OP(kRmsNorm, "rms_norm", true);
NT_REGISTER_OP(kLayerNorm, "layer_norm", true);

using autograd::Saved;

static Tensor norm(const OpKind& kind, bool rms, const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const char* op = kind.name;
  check_floating(op, x, "x");
  NT_CHECK(x.dim() >= 1, "{}: x needs at least 1 dim", op);
  NT_CHECK(eps >= 0, "{}: eps must be >= 0, got {}", op, eps);
  const int64_t C = x.size(-1), R = x.numel() / std::max<int64_t>(C, 1);
  for (auto [t, name] : {std::pair{&w, "weight"}, std::pair{&b, "bias"}}) {
    if (!t->defined()) continue;
    NT_CHECK(t->shape() == Shape{C}, "{}: {} must have shape [{}] (x's last dim), got {}", op, name, C,
             shape_str(t->shape()));
    check_same_dtype(op, x, "x", *t, name);
    check_same_device(op, x, *t);
  }
  const Tensor x2 = x.detach().contiguous().reshape({R, C});
  const Tensor w1 = w.defined() ? w.detach().contiguous() : Tensor(), b1 = b.defined() ? b.detach().contiguous() : Tensor();
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  const bool on_cpu = x.device().is_cpu();
  // Per-row (mean, rstd): f64 on the CPU (the reference); on the GPU the accumulation type (f32, f64 for f64).
  Tensor stats = empty({R, 2}, on_cpu || x.dtype() == DType::f64 ? DType::f64 : DType::f32, x.device());
  if (on_cpu)
    cpu::norm_forward(rms, x2, w1, b1, eps, y.reshape({R, C}), stats);
  else
    NT_ON_CUDA(op, cuda::norm_forward(rms, x.dtype(), x2.data_ptr(), w1.defined() ? w1.data_ptr() : nullptr,
                                      b1.defined() ? b1.data_ptr() : nullptr, eps, y.data_ptr(), stats.data_ptr(), R,
                                      C, stream_of(y)));
  if (autograd::needs_grad({&x, &w, &b}))
    autograd::record(kind, y, {x, w, b},
                     [rms, R, C, sx = Saved(x2), sw = Saved(w1), ss = Saved(stats), xs = x.shape()](
                         const Tensor& g, const std::vector<bool>& n) {
                       const Tensor& x2 = sx.get();
                       const bool on_cpu = x2.device().is_cpu();
                       // dw/db: the CPU adds into f64 zeros (converted below); the CUDA kernels write every
                       // element in x's dtype, saving a memset and a cast launch.
                       auto grad_buf = [&] {
                         return on_cpu ? zeros({C}, ss.get().dtype(), x2.device()) : empty({C}, x2.dtype(), x2.device());
                       };
                       Tensor dx = empty({R, C}, x2.dtype(), x2.device());
                       Tensor dw = n[1] ? grad_buf() : Tensor(), db = n[2] ? grad_buf() : Tensor();
                       const Tensor w = sw.defined() ? sw.get() : Tensor(), gc = g.contiguous().reshape({R, C});
                       if (on_cpu)
                         cpu::norm_backward(rms, x2, w, ss.get(), gc, dx, dw, db);
                       else
                         NT_ON_CUDA("norm_backward", cuda::norm_backward(
                             rms, x2.dtype(), x2.data_ptr(), w.defined() ? w.data_ptr() : nullptr, ss.get().data_ptr(),
                             gc.data_ptr(), dx.data_ptr(), dw.defined() ? dw.data_ptr() : nullptr,
                             db.defined() ? db.data_ptr() : nullptr, R, C, stream_of(dx)));
                       return std::vector<Tensor>{n[0] ? dx.reshape(xs) : Tensor(),
                                                  n[1] ? dw.to(x2.dtype()) : Tensor(),
                                                  n[2] ? db.to(x2.dtype()) : Tensor()};
                     });
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) { return norm(kRmsNorm, true, x, weight, Tensor(), eps); }
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  return norm(kLayerNorm, false, x, weight, bias, eps);
}

}  // namespace nt
