// CPU reference for swiglu, in double.
#include <cmath>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {
namespace {
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace

// gate, up, out contiguous, n elements.
void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  NT_DISPATCH_FLOAT(gate.dtype(), "swiglu", [&] {
    using T = scalar_t;
    const T *g = static_cast<const T*>(gate.data_ptr()), *u = static_cast<const T*>(up.data_ptr());
    T* o = static_cast<T*>(out.data_ptr());
    for (int64_t i = 0; i < out.numel(); ++i) {
      const double a = (double)g[i];
      o[i] = from_double<T>(a * sigmoid(a) * (double)u[i]);
    }
  });
}

// dgate = dy * up * silu'(gate), dup = dy * silu(gate); all contiguous.
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  NT_DISPATCH_FLOAT(gate.dtype(), "swiglu_backward", [&] {
    using T = scalar_t;
    const T *g = static_cast<const T*>(gate.data_ptr()), *u = static_cast<const T*>(up.data_ptr()),
            *d = static_cast<const T*>(dy.data_ptr());
    T *dg = static_cast<T*>(dgate.data_ptr()), *du = static_cast<T*>(dup.data_ptr());
    for (int64_t i = 0; i < gate.numel(); ++i) {
      const double a = (double)g[i], s = sigmoid(a), dd = (double)d[i];
      dg[i] = from_double<T>(dd * (double)u[i] * s * (1.0 + a * (1.0 - s)));
      du[i] = from_double<T>(dd * a * s);
    }
  });
}
}  // namespace nt::cpu
