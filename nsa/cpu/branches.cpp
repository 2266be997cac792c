// CPU reference of the branch-wise path's glue (nsa/branches.cpp; layouts as cuda/nsa_branches.cu): the query
// regrouping is a copy of D-element vectors, the gate mix accumulates in double.
#include <cstring>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

// x, out contiguous; to_regrouped: x [T, HQ, D], out [NC, HQ d, D], idx [NC d] (T: zeros); else x [NC, HQ d, D],
// out [T, HQ, D], idx [T] (NC d: zeros).
void nsa_regroup(const Tensor& x, const Tensor& idx, int64_t d, bool to_regrouped, const Tensor& out) {
  const int64_t D = x.size(2), HQ = to_regrouped ? x.size(1) : x.size(1) / d;
  const int64_t rows_out = idx.numel(), limit = to_regrouped ? x.size(0) : x.size(0) * d;
  const size_t bytes = (size_t)D * dtype_size(x.dtype());
  const int32_t* ip = idx.data<int32_t>();
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  for (int64_t j = 0; j < rows_out; ++j)
    for (int64_t hq = 0; hq < HQ; ++hq) {
      const int64_t s = ip[j];
      const int64_t dst = to_regrouped ? ((j / d) * HQ + hq) * d + j % d : j * HQ + hq;
      const int64_t src = to_regrouped ? s * HQ + hq : ((s / d) * HQ + hq) * d + s % d;
      if (s == limit) std::memset(op + dst * bytes, 0, bytes);
      else std::memcpy(op + dst * bytes, xp + src * bytes, bytes);
    }
}

// o0, o1, o2, out [N, D], gates [N, 3], contiguous, one dtype.
void nsa_mix_forward(const Tensor& o0, const Tensor& o1, const Tensor& o2, const Tensor& gates, const Tensor& out) {
  const int64_t D = o0.size(-1), N = D ? o0.numel() / D : 0;
  NT_DISPATCH_FLOAT(o0.dtype(), "nsa_mix_branches", [&] {
    using T = scalar_t;
    const T *a = o0.data<T>(), *b = o1.data<T>(), *c = o2.data<T>(), *g = gates.data<T>();
    T* y = out.data<T>();
    for (int64_t n = 0; n < N; ++n) {
      const double g0 = (double)g[3 * n], g1 = (double)g[3 * n + 1], g2 = (double)g[3 * n + 2];
      for (int64_t i = n * D; i < (n + 1) * D; ++i)
        y[i] = from_double<T>(g0 * (double)a[i] + g1 * (double)b[i] + g2 * (double)c[i]);
    }
  });
}

// do_b = g_b dy, dgates_b = sum_D dy o_b.
void nsa_mix_backward(const Tensor& o0, const Tensor& o1, const Tensor& o2, const Tensor& gates, const Tensor& dy,
                      const Tensor& d0, const Tensor& d1, const Tensor& d2, const Tensor& dgates) {
  const int64_t D = o0.size(-1), N = gates.numel() / 3;
  NT_DISPATCH_FLOAT(o0.dtype(), "nsa_mix_branches", [&] {
    using T = scalar_t;
    const T *o[3] = {o0.data<T>(), o1.data<T>(), o2.data<T>()}, *g = gates.data<T>(), *y = dy.data<T>();
    T* dout[3] = {d0.data<T>(), d1.data<T>(), d2.data<T>()};
    T* dg = dgates.data<T>();
    for (int64_t n = 0; n < N; ++n)
      for (int b = 0; b < 3; ++b) {
        const double gb = (double)g[3 * n + b];
        double s = 0;
        for (int64_t i = n * D; i < (n + 1) * D; ++i) {
          s += (double)y[i] * (double)o[b][i];
          dout[b][i] = from_double<T>(gb * (double)y[i]);
        }
        dg[3 * n + b] = from_double<T>(s);
      }
  });
}

}  // namespace nt::cpu
