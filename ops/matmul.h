// Matrix products with broadcasting over batch dims, as torch.matmul: a [..., M, K] @ b [..., K, N];
// a 1-D a is a row vector and a 1-D b a column vector, their dim removed from the result.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace nt {
Tensor matmul(const Tensor& a, const Tensor& b);
// Rows of x [M, K] in groups (MoE: sorted by expert): rows [offsets[e], offsets[e + 1]) times w[e] (w [E, K, N]),
// -> [M, N]. offsets has E + 1 nondecreasing entries from 0 to M; empty groups are fine (their w[e] gets a zero
// gradient). On CUDA all groups run as one cuBLAS grouped GEMM.
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const std::vector<int64_t>& offsets);
}  // namespace nt
