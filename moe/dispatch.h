// Dropless token dispatch: which tokens each routed expert processes, and where each (token, slot) finds its
// expert's output again. Built on the host from the router's chosen experts by a histogram, an exclusive prefix
// sum and a counting sort: the same arrays a device permute kernel will produce. No capacity, nothing dropped.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace nt::moe {

// Rows are the (token, expert) pairs sorted by expert: expert e owns rows [offsets[e], offsets[e + 1]), and within
// an expert its tokens ascend. Slot t * top_k + j is token t's j-th choice.
struct Dispatch {
  int64_t n_tokens = 0, top_k = 0;
  std::vector<int64_t> counts;       // [E] rows per expert (its load)
  std::vector<int64_t> offsets;      // [E + 1] exclusive prefix sum of counts
  std::vector<int64_t> row_token;    // [n_tokens * top_k] the token of each row
  std::vector<int64_t> slot_row;     // [n_tokens * top_k] the row of each slot (the inverse permutation)
  std::vector<int64_t> slot_expert;  // [n_tokens * top_k] the expert of each slot (the router's indices, flat)
  int64_t max_count() const;
};

// expert_of_slot: the router's indices [n_tokens, top_k], flattened.
Dispatch make_dispatch(const std::vector<int64_t>& expert_of_slot, int64_t n_experts, int64_t top_k);

}  // namespace nt::moe
