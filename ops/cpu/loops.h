// Strided iteration for the CPU reference kernels.
#pragma once
#include <array>

#include "tensor/tensor.h"

namespace nt::cpu {

// Calls f(offsets) for every index of `shape` in row-major order, where offsets[k] is the element offset of that
// index in operand k (its strides given in strides[k]; a broadcast dim has stride 0).
template <size_t N, class F>
void for_each_offset(const Shape& shape, const std::array<Shape, N>& strides, F&& f) {
  const int64_t nd = (int64_t)shape.size();
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::array<int64_t, N> off{};
  if (nd == 0) {
    f(off);
    return;
  }
  const int64_t inner = shape[nd - 1];
  std::array<int64_t, N> step;
  for (size_t k = 0; k < N; ++k) step[k] = strides[k][nd - 1];
  std::vector<int64_t> idx(nd, 0);
  for (int64_t outer = 0; outer < n / inner; ++outer) {
    std::array<int64_t, N> o = off;
    for (int64_t i = 0; i < inner; ++i) {
      f(o);
      for (size_t k = 0; k < N; ++k) o[k] += step[k];
    }
    for (int64_t d = nd - 2; d >= 0; --d) {
      ++idx[d];
      for (size_t k = 0; k < N; ++k) off[k] += strides[k][d];
      if (idx[d] < shape[d]) break;
      for (size_t k = 0; k < N; ++k) off[k] -= strides[k][d] * shape[d];
      idx[d] = 0;
    }
  }
}

// Strides of `t` broadcast to `shape` (t's dims aligned to the right; size-1 dims get stride 0).
Shape broadcast_strides(const Tensor& t, const Shape& shape);

// Splits a contiguous shape around `dim` into (outer, n, inner): element (o, j, i) is at (o * n + j) * inner + i.
struct DimSplit {
  int64_t outer = 1, n = 1, inner = 1;
};
DimSplit split_at(const Shape& shape, int64_t dim);

}  // namespace nt::cpu

namespace nt::cpu {
// A contiguous copy made without autograd (kernels call this on their inputs).
Tensor contiguous_raw(const Tensor& t);
// t with its dims reordered (a view, without autograd).
Tensor permute_raw(const Tensor& t, const std::vector<int64_t>& dims);
}  // namespace nt::cpu
