// Dropless MoE token movement (DeepSeekMoE): sort each token's expert choices by expert, move rows into that order
// for the grouped expert GEMMs, and back out with the gate weights. No capacity factor, nothing dropped.
// CPU loops are the reference; CUDA runs dedicated kernels (cuda/moe.cu).
#pragma once
#include <vector>

#include "ops/matmul.h"
#include "tensor/tensor.h"

namespace nt {

// Where each (token, choice) pair goes when rows are grouped by expert: expert e owns rows [offsets[e],
// offsets[e + 1]), and inside an expert the pairs keep slot order (slot t * top_k + j), so its tokens ascend.
struct ExpertDispatch {
  int64_t n_tokens = 0, top_k = 0;
  Tensor slot_row;      // [n_tokens, top_k] i32 on the indices' device: the row of token t's j-th choice
  GroupOffsets groups;  // [E + 1] exclusive prefix sum of the counts: on the host (CPU) or the GPU (i32)
  Tensor load;          // [E] rows per expert (i64 on the CPU, i32 on the GPU), on the indices' device
  int64_t n_experts() const { return groups.size() - 1; }
  // On the host; on the GPU the first call of either copies the offsets to the host (waits for the GPU).
  const std::vector<int64_t>& offsets() const { return groups.host(); }
  std::vector<int64_t> counts() const;
  int64_t max_count() const;
};

// indices [N, K] (i32 or i64): the expert of each token's K choices. A histogram, a prefix sum and a stable
// counting sort; on CUDA three small kernels, and nothing waits for them (the expert GEMMs read the offsets on the
// device). Not differentiable. An expert outside [0, n_experts) is an error (on CUDA reported at the next
// synchronization, cuda/runtime.h).
ExpertDispatch moe_dispatch(const Tensor& indices, int64_t n_experts);

// x [N, D] -> rows [N * K, D], rows[slot_row[t, j]] = x[t]. Backward: dx[t] = sum_j drows[slot_row[t, j]], a
// gather per token (no atomics: deterministic on the GPU).
Tensor moe_permute(const Tensor& x, const ExpertDispatch& d);

// rows [N * K, D], gates [N, K] -> y [N, D], y[t] = sum_j gates[t, j] * rows[slot_row[t, j]] (added in choice
// order). Backward: drows[slot_row[t, j]] = gates[t, j] * dy[t] and dgates[t, j] = <dy[t], rows[slot_row[t, j]]>.
Tensor moe_unpermute(const Tensor& rows, const Tensor& gates, const ExpertDispatch& d);

}  // namespace nt
