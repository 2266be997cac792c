// CPU reference reductions. The reduced dims are moved last and made contiguous, then each row is reduced in
// double (the reference precision whatever the dtype).
#include <algorithm>
#include <limits>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

enum class ReduceOp { sum, mean, amax, logsumexp, var };

// dims: sorted, unique, non-empty. out: contiguous, numel = product of the kept dims.
void reduce_forward(int op_, const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out, int64_t correction) {
  const ReduceOp op = (ReduceOp)op_;
  std::vector<int64_t> order;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) order.push_back(d);
  int64_t R = 1;
  for (int64_t d : dims) order.push_back(d), R *= x.size(d);
  const Tensor xc = contiguous_raw(permute_raw(x, order));
  const int64_t rows = R == 0 ? out.numel() : xc.numel() / R;
  NT_DISPATCH_FLOAT(x.dtype(), "reduce", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(xc.data_ptr());
    T* op_out = static_cast<T*>(out.data_ptr());
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = xp + r * R;
      double acc = 0;
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::mean:
          for (int64_t i = 0; i < R; ++i) acc += (double)row[i];
          if (op == ReduceOp::mean) acc /= (double)R;
          break;
        case ReduceOp::amax:
          acc = -std::numeric_limits<double>::infinity();
          for (int64_t i = 0; i < R; ++i) acc = std::isnan(acc) ? acc : std::max(acc, (double)row[i]);
          for (int64_t i = 0; i < R; ++i) if (std::isnan((double)row[i])) acc = (double)row[i];
          break;
        case ReduceOp::logsumexp: {
          double m = -std::numeric_limits<double>::infinity();
          for (int64_t i = 0; i < R; ++i) m = std::max(m, (double)row[i]);
          if (std::isinf(m)) { acc = m; break; }
          for (int64_t i = 0; i < R; ++i) acc += std::exp((double)row[i] - m);
          acc = m + std::log(acc);
          break;
        }
        case ReduceOp::var: {
          double mean = 0;
          for (int64_t i = 0; i < R; ++i) mean += (double)row[i];
          mean /= (double)R;
          for (int64_t i = 0; i < R; ++i) acc += ((double)row[i] - mean) * ((double)row[i] - mean);
          acc /= (double)std::max<int64_t>(R - correction, 0);
          break;
        }
      }
      op_out[r] = from_double<T>(acc);
    }
  });
}

// Max along one dim: first index of the maximum (NaN counts as the maximum).
void max_dim_forward(const Tensor& x, int64_t dim, const Tensor& values, const Tensor& indices) {
  const Tensor xc = contiguous_raw(x);
  const DimSplit s = split_at(x.shape(), dim);
  int64_t* ip = indices.data<int64_t>();
  NT_DISPATCH_FLOAT(x.dtype(), "max", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(xc.data_ptr());
    T* vp = static_cast<T*>(values.data_ptr());
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        int64_t best = 0;
        double bv = (double)xp[o * s.n * s.inner + i];
        for (int64_t j = 1; j < s.n && !std::isnan(bv); ++j) {
          const double v = (double)xp[(o * s.n + j) * s.inner + i];
          if (v > bv || std::isnan(v)) bv = v, best = j;
        }
        vp[o * s.inner + i] = from_double<T>(bv);
        ip[o * s.inner + i] = best;
      }
  });
}

}  // namespace nt::cpu
