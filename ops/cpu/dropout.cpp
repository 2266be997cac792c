// CPU reference for dropout (see ops/dropout.h for the mask stream).
#include "ops/cpu/loops.h"
#include "tensor/convert.h"
#include "tensor/philox.h"

namespace nt::cpu {
// x, out contiguous.
void dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset, const Tensor& out) {
  const int64_t n = x.numel();
  const double scale = 1.0 / (1.0 - p);
  NT_DISPATCH_FLOAT(x.dtype(), "dropout", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    for (int64_t i = 0; i < n; ++i)
      op[i] = philox::uniform_at(seed, offset, (uint64_t)i) >= (float)p ? from_double<T>((double)xp[i] * scale)
                                                                         : from_double<T>(0.0);
  });
}
}  // namespace nt::cpu
