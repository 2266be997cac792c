// Indexing ops: integer index tensors (i32 or i64) pick, gather or scatter along one dim; topk and cumsum.
#pragma once
#include "ops/reduce.h"
#include "tensor/tensor.h"

namespace nt {
// out = x with dim `dim` replaced by the rows idx (1-D) names.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& idx);
// out[..i..] = x[..idx[..i..]..] along dim (out has idx's shape; idx.size(d) <= x.size(d) for d != dim).
Tensor gather(const Tensor& x, int64_t dim, const Tensor& idx);
// out = self, then out[..idx[..i..]..] += src[..i..] along dim (idx and src have one shape).
Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& idx, const Tensor& src);
// The k largest (or smallest) along dim, sorted; ties go to the lower index. Grad flows to the chosen elements.
ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim = -1, bool largest = true);
// Inclusive prefix sum along dim.
Tensor cumsum(const Tensor& x, int64_t dim);
}  // namespace nt
