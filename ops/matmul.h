// Matrix products with broadcasting over batch dims, as torch.matmul: a [..., M, K] @ b [..., K, N];
// a 1-D a is a row vector and a 1-D b a column vector, their dim removed from the result.
#pragma once
#include "tensor/tensor.h"

namespace nt {
Tensor matmul(const Tensor& a, const Tensor& b);
}  // namespace nt
