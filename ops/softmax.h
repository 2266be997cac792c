// Softmax family: softmax, log_softmax and the fused cross-entropy loss.
#pragma once
#include "tensor/tensor.h"

namespace nt {
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

enum class Reduction { mean, sum, none };
// logits [..., C] (the class dim last), target [...] of i32/i64 class ids. Rows whose target equals ignore_index
// contribute nothing; mean divides by the number of rows that are not ignored (NaN when all are, as PyTorch).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     Reduction reduction = Reduction::mean);
}  // namespace nt
