// CPU reference loops for the indexing family. Index values are bounds-checked: a bad one is an error naming
// the op, the value and the valid range.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {
namespace {
template <class I> int64_t checked(I v, int64_t n, const char* op) {
  NT_CHECK(v >= 0 && v < n, "{}: index {} is out of range for a dim of size {} (expected 0 to {})", op, (int64_t)v, n,
           n - 1);
  return (int64_t)v;
}
}  // namespace

void index_select_forward(const Tensor& x, int64_t dim, const Tensor& idx, const Tensor& out) {
  const Tensor ic = contiguous_raw(idx);
  const Tensor xc = contiguous_raw(x);
  const DimSplit s = split_at(x.shape(), dim);
  const int64_t m = idx.numel();
  NT_DISPATCH_INDEX(idx.dtype(), "index_select", [&] {
    const scalar_t* ip = static_cast<const scalar_t*>(ic.data_ptr());
    const size_t es = x.element_size();
    const char* xp = static_cast<const char*>(xc.data_ptr());
    char* op = static_cast<char*>(out.data_ptr());
    for (int64_t j = 0; j < m; ++j) {
      const int64_t src = checked(ip[j], s.n, "index_select");
      for (int64_t o = 0; o < s.outer; ++o)
        std::memcpy(op + ((o * m + j) * s.inner) * es, xp + ((o * s.n + src) * s.inner) * es, s.inner * es);
    }
  });
}

// Shared walk of gather/scatter: for each position of idx (shape S), call f(offset in idx-shaped contiguous
// tensors, offset in the indexed tensor).
template <class F> static void walk_indexed(const char* op, const Tensor& target, int64_t dim, const Tensor& idx, F f) {
  const Tensor ic = contiguous_raw(idx);
  Shape tstr = target.strides();
  const int64_t dstride = tstr[dim], dsize = target.size(dim);
  tstr[dim] = 0;
  NT_DISPATCH_INDEX(idx.dtype(), op, [&] {
    const scalar_t* ip = static_cast<const scalar_t*>(ic.data_ptr());
    for_each_offset<2>(idx.shape(), {ic.strides(), tstr}, [&](const auto& o) {
      f(o[0], o[1] + checked(ip[o[0]], dsize, op) * dstride);
    });
  });
}

void gather_forward(const Tensor& x, int64_t dim, const Tensor& idx, const Tensor& out) {
  NT_DISPATCH_ALL(x.dtype(), "gather", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(x.data_ptr());
    scalar_t* op = static_cast<scalar_t*>(out.data_ptr());
    walk_indexed("gather", x, dim, idx, [&](int64_t i, int64_t xo) { op[i] = xp[xo]; });
  });
}

// out already holds self (contiguous); adds src at the indexed places, accumulating in double.
void scatter_add_forward(const Tensor& out, int64_t dim, const Tensor& idx, const Tensor& src) {
  const Tensor sc = contiguous_raw(src);
  NT_DISPATCH_FLOAT(out.dtype(), "scatter_add", [&] {
    scalar_t* op = static_cast<scalar_t*>(out.data_ptr());
    const scalar_t* sp = static_cast<const scalar_t*>(sc.data_ptr());
    walk_indexed("scatter_add", out, dim, idx, [&](int64_t i, int64_t oo) {
      op[oo] = from_double<scalar_t>(to_double(op[oo]) + to_double(sp[i]));
    });
  });
}

void topk_forward(const Tensor& x, int64_t k, int64_t dim, bool largest, const Tensor& values, const Tensor& indices) {
  const Tensor xc = contiguous_raw(x);
  const DimSplit s = split_at(x.shape(), dim);
  int64_t* ip = indices.data<int64_t>();
  NT_DISPATCH_FLOAT(x.dtype(), "topk", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(xc.data_ptr());
    T* vp = static_cast<T*>(values.data_ptr());
    std::vector<int64_t> order(s.n);
    std::vector<double> row(s.n);
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        for (int64_t j = 0; j < s.n; ++j) row[j] = (double)xp[(o * s.n + j) * s.inner + i];
        std::iota(order.begin(), order.end(), 0);
        // NaN ranks above every number (as in PyTorch); ties keep the lower index first.
        auto before = [&](int64_t a, int64_t b) {
          const bool na = std::isnan(row[a]), nb = std::isnan(row[b]);
          if (na != nb) return largest ? na : nb;
          if (!na && row[a] != row[b]) return largest ? row[a] > row[b] : row[a] < row[b];
          return a < b;
        };
        std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
        for (int64_t j = 0; j < k; ++j) {
          vp[(o * k + j) * s.inner + i] = from_double<T>(row[order[j]]);
          ip[(o * k + j) * s.inner + i] = order[j];
        }
      }
  });
}

void cumsum_forward(const Tensor& x, int64_t dim, bool reverse, const Tensor& out) {
  const Tensor xc = contiguous_raw(x);
  const DimSplit s = split_at(x.shape(), dim);
  NT_DISPATCH_FLOAT(x.dtype(), "cumsum", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(xc.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        double acc = 0;
        for (int64_t jj = 0; jj < s.n; ++jj) {
          const int64_t j = reverse ? s.n - 1 - jj : jj;
          const int64_t at = (o * s.n + j) * s.inner + i;
          acc += (double)xp[at];
          op[at] = from_double<T>(acc);
        }
      }
  });
}

}  // namespace nt::cpu
