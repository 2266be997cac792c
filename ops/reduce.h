// Reductions over dims. An empty dims list means every dim. keepdim keeps reduced dims with size 1.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace nt {
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor amax(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);  // grad split among ties
Tensor logsumexp(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
// Variance with Bessel's correction by default (correction = 1), as torch.var.
Tensor var(const Tensor& x, std::vector<int64_t> dims = {}, int64_t correction = 1, bool keepdim = false);

struct ValuesIndices {
  Tensor values, indices;  // indices: i64
};
// Maximum along one dim and where it is (the first occurrence among ties); grad flows to that index.
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

// Sums g over the dims that broadcasting expanded, so the result has `shape` (used by backward formulas).
Tensor sum_to(const Tensor& g, const Shape& shape);
}  // namespace nt
