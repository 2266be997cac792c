// CPU reference for softmax, log_softmax and cross-entropy, in double.
#include <cmath>
#include <limits>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

void softmax_forward(const Tensor& x, int64_t dim, bool log, const Tensor& out) {
  const Tensor xc = contiguous_raw(x);
  const DimSplit s = split_at(x.shape(), dim);
  NT_DISPATCH_FLOAT(x.dtype(), "softmax", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(xc.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        auto at = [&](int64_t j) { return (o * s.n + j) * s.inner + i; };
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < s.n; ++j) m = std::max(m, (double)xp[at(j)]);
        double z = 0;
        for (int64_t j = 0; j < s.n; ++j) z += std::exp((double)xp[at(j)] - m);
        const double lz = std::log(z);
        for (int64_t j = 0; j < s.n; ++j) {
          const double v = (double)xp[at(j)] - m;
          op[at(j)] = from_double<T>(log ? v - lz : std::exp(v) / z);
        }
      }
  });
}

// logits [N, C] contiguous; loss[N] and lse[N] (f64).
void cross_entropy_forward(const Tensor& logits, const Tensor& target, int64_t ignore_index, const Tensor& loss,
                           const Tensor& lse) {
  const int64_t N = logits.size(0), C = logits.size(1);
  double* lp = loss.data<double>();
  double* zp = lse.data<double>();
  const Tensor t64 = contiguous_raw(target);
  NT_DISPATCH_INDEX(target.dtype(), "cross_entropy", [&] {
    const scalar_t* tp = static_cast<const scalar_t*>(t64.data_ptr());
    NT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy", [&] {
      using T = scalar_t;
      const T* xp = static_cast<const T*>(logits.data_ptr());
      for (int64_t r = 0; r < N; ++r) {
        const T* row = xp + r * C;
        double m = -std::numeric_limits<double>::infinity(), z = 0;
        for (int64_t c = 0; c < C; ++c) m = std::max(m, (double)row[c]);
        for (int64_t c = 0; c < C; ++c) z += std::exp((double)row[c] - m);
        zp[r] = m + std::log(z);
        const int64_t t = (int64_t)tp[r];
        if (t == ignore_index) {
          lp[r] = 0;
          continue;
        }
        NT_CHECK(t >= 0 && t < C, "cross_entropy: target {} at row {} is out of range for {} classes (expected 0 to {} "
                 "or ignore_index {})", t, r, C, C - 1, ignore_index);
        lp[r] = zp[r] - (double)row[t];
      }
    });
  });
}

// dlogits[r, c] = grow[r] * (softmax(logits[r])[c] - [c == target[r]]), 0 for ignored rows.
void cross_entropy_backward(const Tensor& logits, const Tensor& target, int64_t ignore_index, const Tensor& lse,
                            const Tensor& grow, const Tensor& dlogits) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const double* zp = lse.data<double>();
  const double* gp = grow.data<double>();
  const Tensor tc = contiguous_raw(target);
  NT_DISPATCH_INDEX(target.dtype(), "cross_entropy", [&] {
    const scalar_t* tp = static_cast<const scalar_t*>(tc.data_ptr());
    NT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy", [&] {
      using T = scalar_t;
      const T* xp = static_cast<const T*>(logits.data_ptr());
      T* dp = static_cast<T*>(dlogits.data_ptr());
      for (int64_t r = 0; r < N; ++r) {
        const int64_t t = (int64_t)tp[r];
        for (int64_t c = 0; c < C; ++c) {
          const double p = std::exp((double)xp[r * C + c] - zp[r]);
          dp[r * C + c] = from_double<T>(t == ignore_index ? 0.0 : gp[r] * (p - (c == t ? 1.0 : 0.0)));
        }
      }
    });
  });
}

}  // namespace nt::cpu
