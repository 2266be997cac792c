// Dropout with a Philox mask: element i is kept iff uniform_at(seed, offset, i) >= p, and scaled by 1/(1-p).
// The mask is a function of (seed, offset, i), so the CUDA kernel draws the same mask, and backward regenerates it
// instead of storing it.
#pragma once
#include "tensor/tensor.h"

namespace nt {
// Identity when !training or p == 0. gen defaults to the default generator.
Tensor dropout(const Tensor& x, double p, bool training = true, Generator* gen = nullptr);
}  // namespace nt
