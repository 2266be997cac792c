// CPU copy and fill kernels (used by Tensor::copy_ / fill_ and every op that materializes a view).
#pragma once
#include "tensor/tensor.h"

namespace nt::cpu {
// dst[i] = convert(src[broadcast i]) for every index of dst.
void copy(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);
}  // namespace nt::cpu
