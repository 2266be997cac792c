// CPU reference for rope. The backward is the rotation by the opposite angle, so one loop serves both
// (sign = -1 negates sin).
#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

// x, out [N, T, H, D] contiguous; cos, sin [T, D/2] contiguous f64.
void rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved, double sign, const Tensor& out) {
  const int64_t N = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), P = D / 2;
  const double* cp = cos.data<double>();
  const double* sp = sin.data<double>();
  NT_DISPATCH_FLOAT(x.dtype(), "rope", [&] {
    using T_ = scalar_t;
    const T_* xp = static_cast<const T_*>(x.data_ptr());
    T_* op = static_cast<T_*>(out.data_ptr());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t base = ((n * T + t) * H + h) * D;
          for (int64_t i = 0; i < P; ++i) {
            const int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + P;
            const double a = (double)xp[base + ia], b = (double)xp[base + ib];
            const double c = cp[t * P + i], s = sign * sp[t * P + i];
            op[base + ia] = from_double<T_>(a * c - b * s);
            op[base + ib] = from_double<T_>(a * s + b * c);
          }
        }
  });
}

}  // namespace nt::cpu
