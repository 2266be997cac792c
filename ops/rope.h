// Rotary position embedding (Su et al., RoFormer).
//
// x [..., T, H, D] (D even) is rotated pairwise by angle pos_t * theta^(-2i/D) for pair i in [0, D/2):
// - half layout (default, as Llama/NeoX): pair i is (x[i], x[i + D/2]);
// - interleaved layout (as the original RoFormer/GPT-J): pair i is (x[2i], x[2i+1]).
// (a, b) -> (a cos - b sin, a sin + b cos). cos and sin are [T, D/2] tables (rope_tables), any float dtype.
#pragma once
#include <utility>

#include "tensor/tensor.h"

namespace nt {
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved = false);
// cos/sin tables [T, D/2] (f32) for positions start .. start+T-1 and frequencies theta^(-2i/D).
std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t D, double theta = 10000.0, int64_t start = 0);
}  // namespace nt
