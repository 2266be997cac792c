// CPU copy (strided, broadcasting, converting between any two dtypes) and fill.
#include "ops/cpu/loops.h"
#include "ops/cpu/copy.h"
#include "tensor/convert.h"

namespace nt::cpu {

Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape s(shape.size(), 0);
  const int64_t off = (int64_t)shape.size() - t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) s[off + d] = t.size(d) == 1 ? 0 : t.stride(d);
  return s;
}

DimSplit split_at(const Shape& shape, int64_t dim) {
  DimSplit r;
  for (int64_t d = 0; d < (int64_t)shape.size(); ++d) {
    if (d < dim) r.outer *= shape[d];
    else if (d == dim) r.n = shape[d];
    else r.inner *= shape[d];
  }
  return r;
}

void copy(const Tensor& dst, const Tensor& src) {
  const Shape ss = broadcast_strides(src, dst.shape());
  NT_DISPATCH_ALL(dst.dtype(), "copy_", [&] {
    using D = scalar_t;
    D* d = static_cast<D*>(dst.data_ptr());
    NT_DISPATCH_ALL(src.dtype(), "copy_", [&] {
      using S = scalar_t;
      const S* s = static_cast<const S*>(src.data_ptr());
      if constexpr (std::is_same_v<D, S>) {
        for_each_offset<2>(dst.shape(), {dst.strides(), ss}, [&](const auto& o) { d[o[0]] = s[o[1]]; });
      } else {
        for_each_offset<2>(dst.shape(), {dst.strides(), ss},
                           [&](const auto& o) { d[o[0]] = from_double<D>(to_double(s[o[1]])); });
      }
    });
  });
}

void fill(const Tensor& dst, double value) {
  NT_DISPATCH_ALL(dst.dtype(), "fill_", [&] {
    scalar_t* d = static_cast<scalar_t*>(dst.data_ptr());
    const scalar_t v = from_double<scalar_t>(value);
    for_each_offset<1>(dst.shape(), {dst.strides()}, [&](const auto& o) { d[o[0]] = v; });
  });
}

}  // namespace nt::cpu

namespace nt::cpu {
Tensor contiguous_raw(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = empty(t.shape(), t.dtype(), t.device());
  copy(out, t);
  return out;
}
Tensor permute_raw(const Tensor& t, const std::vector<int64_t>& dims) {
  Shape shape(dims.size()), strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) shape[i] = t.size(dims[i]), strides[i] = t.stride(dims[i]);
  return make_view(t, shape, strides, t.offset());
}
}  // namespace nt::cpu
