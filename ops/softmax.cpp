// Softmax family: forward, backward right below.
#include "ops/softmax.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"

namespace nt {
namespace cpu {
void softmax_forward(const Tensor& x, int64_t dim, bool log, const Tensor& out);
void cross_entropy_forward(const Tensor& logits, const Tensor& target, int64_t ignore_index, const Tensor& loss,
                           const Tensor& lse);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, int64_t ignore_index, const Tensor& lse,
                            const Tensor& grow, const Tensor& dlogits);
}  // namespace cpu

NT_REGISTER_OP(kSoftmax, "softmax", true);
NT_REGISTER_OP(kLogSoftmax, "log_softmax", true);
NT_REGISTER_OP(kCrossEntropy, "cross_entropy", true);

using autograd::Saved;

static Tensor softmax_raw(const char* name, const Tensor& x, int64_t dim, bool log) {
  check_floating(name, x, "x");
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::softmax_forward(x.dim() == 0 ? x.reshape({1}) : x, dim, log, out);
  } else {
    const Tensor xc = x.detach().contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < x.dim(); ++d) (d < dim ? outer : inner) *= d == dim ? 1 : x.size(d);
    NT_CHECK(x.dim() == 0 || x.size(dim) <= INT32_MAX, "{}: on CUDA the softmax dimension must have at most 2^31-1 "
             "elements, got {}", name, x.size(dim));
    NT_ON_CUDA(name, cuda::softmax_forward(x.dtype(), xc.data_ptr(), out.data_ptr(), outer, x.dim() ? x.size(dim) : 1,
                                           inner, log, stream_of(out)));
  }
  return out;
}

Tensor softmax(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "softmax");
  Tensor y = softmax_raw("softmax", x, dim, false);
  if (autograd::needs_grad({&x}))
    autograd::record(kSoftmax, y, {x}, [dim, sy = Saved(y)](const Tensor& g, auto&) {
      const Tensor& y = sy.get();
      return std::vector<Tensor>{y * (g - sum(g * y, {dim}, true))};
    });
  return y;
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "log_softmax");
  Tensor y = softmax_raw("log_softmax", x, dim, true);
  if (autograd::needs_grad({&x}))
    autograd::record(kLogSoftmax, y, {x}, [dim, sy = Saved(y)](const Tensor& g, auto&) {
      return std::vector<Tensor>{g - exp(sy.get()) * sum(g, {dim}, true)};
    });
  return y;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, Reduction reduction) {
  check_floating("cross_entropy", logits, "logits");
  check_index("cross_entropy", target, "target");
  check_same_device("cross_entropy", logits, target);
  NT_CHECK(logits.dim() >= 1, "cross_entropy: logits need a class dim, got shape {}", shape_str(logits.shape()));
  const Shape rows(logits.shape().begin(), logits.shape().end() - 1);
  NT_CHECK(target.shape() == rows, "cross_entropy: logits of shape {} need target of shape {}, got {}",
           shape_str(logits.shape()), shape_str(rows), shape_str(target.shape()));
  const int64_t C = logits.size(-1), N = shape_numel(rows);
  const Tensor x2 = logits.detach().contiguous().reshape({N, C});
  const Tensor t1 = target.contiguous().reshape({N});
  const bool on_cpu = logits.device().is_cpu();
  const bool wants_grad = autograd::needs_grad({&logits});
  // Per-row loss and log-sum-exp: f64 on the CPU (the reference); on the GPU the accumulation type.
  const DType stat_t = on_cpu || logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor loss = empty({N}, stat_t, logits.device()), lse = empty({N}, stat_t, logits.device());
  Tensor out;
  if (on_cpu) {
    cpu::cross_entropy_forward(x2, t1, ignore_index, loss, lse);
    const double count = sum(ne(t1, scalar_tensor((double)ignore_index, t1.dtype())).to(DType::f64)).item();
    {
      autograd::NoGradGuard no_grad;
      if (reduction == Reduction::none) out = loss.reshape(rows).to(logits.dtype());
      else if (reduction == Reduction::sum) out = sum(loss).to(logits.dtype());
      else out = (sum(loss) / count).to(logits.dtype());
    }
    if (wants_grad)
      autograd::record(kCrossEntropy, out, {logits},
                       [=, sx = Saved(x2), st = Saved(t1), sl = Saved(lse), shape = logits.shape()](const Tensor& g, auto&) {
                         Tensor grow;
                         if (reduction == Reduction::none) grow = g.reshape({N}).to(DType::f64).contiguous();
                         else grow = full({N}, g.item() / (reduction == Reduction::mean ? count : 1.0), DType::f64);
                         Tensor dx = empty({N, C}, sx.get().dtype());
                         cpu::cross_entropy_backward(sx.get(), st.get(), ignore_index, sl.get(), grow, dx);
                         return std::vector<Tensor>{dx.reshape(shape)};
                       });
    return out;
  }
#if NT_CUDA
  // GPU: the valid-row count stays on the device; with mean/sum the gradient is written by the forward pass.
  autograd::NoGradGuard no_grad;
  const Tensor count = sum(ne(t1, scalar_tensor((double)ignore_index, t1.dtype(), t1.device())).to(stat_t));
  const bool fused = wants_grad && reduction != Reduction::none;
  NT_CHECK(C <= INT32_MAX, "cross_entropy: on CUDA the number of classes must be at most 2^31-1, got {}", C);
  Tensor dlogits = fused ? empty({N, C}, logits.dtype(), logits.device()) : Tensor();
  {
    DeviceFlag bad(x2);
    cuda::cross_entropy_forward(x2.dtype(), x2.data_ptr(), t1.dtype(), t1.data_ptr(), ignore_index, loss.data_ptr(),
                                lse.data_ptr(), fused ? dlogits.data_ptr() : nullptr,
                                reduction == Reduction::mean ? count.data_ptr() : nullptr, N, C, bad.get(), stream_of(x2));
    bad.check("cross_entropy: a target is out of range for {} classes (expected 0 to {} or ignore_index {})",
             C, C - 1, ignore_index);
  }
  if (reduction == Reduction::none) out = loss.reshape(rows).to(logits.dtype());
  else if (reduction == Reduction::sum) out = sum(loss).to(logits.dtype());
  else out = (sum(loss) / count).to(logits.dtype());
  if (fused) {
    autograd::record(kCrossEntropy, out, {logits}, [d = Saved(dlogits), shape = logits.shape()](const Tensor& g, auto&) {
      const Tensor& dx = d.get();
      return std::vector<Tensor>{(g.item() == 1.0 ? dx : dx * g.to(dx.dtype())).reshape(shape)};
    });
  } else if (wants_grad) {
    autograd::record(kCrossEntropy, out, {logits},
                     [=, sx = Saved(x2), st = Saved(t1), sl = Saved(lse), shape = logits.shape()](const Tensor& g, auto&) {
                       const Tensor& x2 = sx.get();
                       const Tensor grow = g.reshape({N}).to(sl.get().dtype()).contiguous();
                       Tensor dx = empty({N, C}, x2.dtype(), x2.device());
                       cuda::cross_entropy_backward(x2.dtype(), x2.data_ptr(), st.get().dtype(), st.get().data_ptr(),
                                                    ignore_index, sl.get().data_ptr(), grow.data_ptr(), dx.data_ptr(),
                                                    N, C, stream_of(dx));
                       return std::vector<Tensor>{dx.reshape(shape)};
                     });
  }
#else
  no_cuda_kernel("cross_entropy");
#endif
  return out;
}

}  // namespace nt
