// Token embedding lookup.
#pragma once
#include "tensor/tensor.h"

namespace nt {
// weight [V, C], idx [...] of i32/i64 in [0, V) -> [..., C]. The gradient is summed into the rows idx names.
Tensor embedding(const Tensor& weight, const Tensor& idx);
}  // namespace nt
