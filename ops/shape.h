// Joining and splitting along a dim.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace nt {
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
// Views of consecutive pieces of the given sizes (they must add up to x.size(dim)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
// n pieces of equal size (the last may be smaller), as torch.chunk.
std::vector<Tensor> chunk(const Tensor& x, int64_t n, int64_t dim = 0);
}  // namespace nt
