// Normalization over the last dim.
#pragma once
#include "tensor/tensor.h"

namespace nt {
// y = x / sqrt(mean(x^2) + eps) * weight; weight [C] optional (undefined Tensor = none).
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);
// y = (x - mean) / sqrt(var + eps) * weight + bias (biased variance); weight and bias [C] optional.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
}  // namespace nt
