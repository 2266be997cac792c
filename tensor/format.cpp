// Printing in PyTorch's style: nested brackets, long dims summarized with "...", then dtype and device.
#include <fmt/format.h>

#include "tensor/tensor.h"

namespace nt {
namespace {
constexpr int64_t kEdge = 3;  // elements shown at each end of a summarized dim
void print_dim(std::string& out, const std::vector<double>& v, const Shape& shape, const Shape& strides, int64_t dim,
               int64_t base, bool summarize, bool integral, int indent) {
  if (dim == (int64_t)shape.size()) {
    out += integral ? fmt::format("{}", (int64_t)v[base]) : fmt::format("{:.4g}", v[base]);
    return;
  }
  out += "[";
  const int64_t n = shape[dim];
  for (int64_t i = 0; i < n; ++i) {
    if (summarize && n > 2 * kEdge && i == kEdge) {
      out += dim + 1 == (int64_t)shape.size() ? "..., " : "...,\n" + std::string(indent + 1, ' ');
      i = n - kEdge;
    }
    print_dim(out, v, shape, strides, dim + 1, base + i * strides[dim], summarize, integral, indent + 1);
    if (i + 1 < n) out += dim + 1 == (int64_t)shape.size() ? ", " : ",\n" + std::string(indent + 1, ' ');
  }
  out += "]";
}
}  // namespace

std::string to_string(const Tensor& t) {
  if (!t.defined()) return "tensor(undefined)";
  const std::vector<double> v = t.to_vector();
  std::string out = "tensor(";
  print_dim(out, v, t.shape(), contiguous_strides(t.shape()), 0, 0, t.numel() > 1000, !is_floating(t.dtype()), 7);
  out += fmt::format(", dtype={}", dtype_name(t.dtype()));
  if (!t.device().is_cpu()) out += ", device=" + t.device().str();
  if (t.requires_grad()) out += ", requires_grad";
  return out + ")";
}
}  // namespace nt
