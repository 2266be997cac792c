// SwiGLU activation (Shazeer, "GLU Variants Improve Transformer"): y = silu(gate) * up, fused into one pass
// forward and one backward (which writes both gradients).
#pragma once
#include "tensor/tensor.h"

namespace nt {
// gate and up have one shape and dtype (views such as the two halves of a fused projection are fine).
Tensor swiglu(const Tensor& gate, const Tensor& up);
}  // namespace nt
