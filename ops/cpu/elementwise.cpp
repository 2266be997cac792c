// CPU reference loops for the elementwise family. The math is in ops/elementwise_math.h, shared with CUDA.
#include "ops/cpu/loops.h"
#include "ops/elementwise_math.h"
#include "tensor/convert.h"

namespace nt::cpu {

void unary_forward(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  NT_DISPATCH_FLOAT(x.dtype(), "unary", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op_ = static_cast<T*>(out.data_ptr());
    dispatch_unary(op, [&](auto kind) {
      for_each_offset<2>(out.shape(), {out.strides(), x.strides()}, [&](const auto& o) {
        op_[o[0]] = T(unary_fwd<kind.value, A>((A)xp[o[1]], (A)p0, (A)p1));
      });
    });
  });
}

void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx, double p0,
                    double p1) {
  NT_DISPATCH_FLOAT(x.dtype(), "unary_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T *xp = static_cast<const T*>(x.data_ptr()), *yp = static_cast<const T*>(y.data_ptr()),
            *gp = static_cast<const T*>(dy.data_ptr());
    T* dp = static_cast<T*>(dx.data_ptr());
    const Shape gs = broadcast_strides(dy, dx.shape());
    dispatch_unary(op, [&](auto kind) {
      for_each_offset<4>(dx.shape(), {dx.strides(), x.strides(), y.strides(), gs}, [&](const auto& o) {
        dp[o[0]] = T(unary_bwd<kind.value, A>((A)xp[o[1]], (A)yp[o[2]], (A)gp[o[3]], (A)p0, (A)p1));
      });
    });
  });
}


void binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  const Shape as = broadcast_strides(a, out.shape()), bs = broadcast_strides(b, out.shape());
  NT_DISPATCH_ARITH(a.dtype(), "binary", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T *ap = static_cast<const T*>(a.data_ptr()), *bp = static_cast<const T*>(b.data_ptr());
    dispatch_binary(op, [&](auto kind) {
      if (is_comparison(op)) {
        bool* o_ = static_cast<bool*>(out.data_ptr());
        for_each_offset<3>(out.shape(), {out.strides(), as, bs}, [&](const auto& o) {
          o_[o[0]] = binary_fwd<kind.value, A>((A)ap[o[1]], (A)bp[o[2]]) != A(0);
        });
      } else {
        T* o_ = static_cast<T*>(out.data_ptr());
        for_each_offset<3>(out.shape(), {out.strides(), as, bs}, [&](const auto& o) {
          o_[o[0]] = T(binary_fwd<kind.value, A>((A)ap[o[1]], (A)bp[o[2]]));
        });
      }
    });
  });
}

void where_forward(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  const Shape cs = broadcast_strides(cond, out.shape()), as = broadcast_strides(a, out.shape()),
              bs = broadcast_strides(b, out.shape());
  const bool* cp = static_cast<const bool*>(cond.data_ptr());
  NT_DISPATCH_ARITH(a.dtype(), "where", [&] {
    using T = scalar_t;
    const T *ap = static_cast<const T*>(a.data_ptr()), *bp = static_cast<const T*>(b.data_ptr());
    T* o_ = static_cast<T*>(out.data_ptr());
    for_each_offset<4>(out.shape(), {out.strides(), cs, as, bs},
                       [&](const auto& o) { o_[o[0]] = cp[o[1]] ? ap[o[2]] : bp[o[3]]; });
  });
}

}  // namespace nt::cpu
