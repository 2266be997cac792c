// CPU reference for embedding: row copies forward, row sums (in index order, so deterministic) backward.
#include <cstring>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

// weight [V, C] contiguous, idx [N] contiguous, out [N, C].
void embedding_forward(const Tensor& weight, const Tensor& idx, const Tensor& out) {
  const int64_t V = weight.size(0), C = weight.size(1), N = idx.numel();
  const size_t es = weight.element_size();
  NT_DISPATCH_INDEX(idx.dtype(), "embedding", [&] {
    const scalar_t* ip = static_cast<const scalar_t*>(idx.data_ptr());
    for (int64_t i = 0; i < N; ++i) {
      const int64_t v = (int64_t)ip[i];
      NT_CHECK(v >= 0 && v < V, "embedding: index {} at position {} is out of range for {} rows (expected 0 to {})",
               v, i, V, V - 1);
      std::memcpy(static_cast<char*>(out.data_ptr()) + i * C * es,
                  static_cast<const char*>(weight.data_ptr()) + v * C * es, C * es);
    }
  });
}

// dweight [V, C] f64 zeroed; dout [N, C].
void embedding_backward(const Tensor& dout, const Tensor& idx, const Tensor& dweight) {
  const int64_t C = dweight.size(1), N = idx.numel();
  double* dw = dweight.data<double>();
  NT_DISPATCH_INDEX(idx.dtype(), "embedding_backward", [&] {
    const scalar_t* ip = static_cast<const scalar_t*>(idx.data_ptr());
    NT_DISPATCH_FLOAT(dout.dtype(), "embedding_backward", [&] {
      using T = scalar_t;
      const T* gp = static_cast<const T*>(dout.data_ptr());
      for (int64_t i = 0; i < N; ++i)
        for (int64_t c = 0; c < C; ++c) dw[(int64_t)ip[i] * C + c] += (double)gp[i * C + c];
    });
  });
}

}  // namespace nt::cpu
