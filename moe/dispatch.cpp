#include "moe/dispatch.h"

#include <algorithm>

namespace nt::moe {

int64_t Dispatch::max_count() const { return counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end()); }

Dispatch make_dispatch(const std::vector<int64_t>& expert_of_slot, int64_t n_experts, int64_t top_k) {
  NT_CHECK(n_experts > 0 && top_k > 0, "make_dispatch: n_experts ({}) and top_k ({}) must be positive", n_experts,
           top_k);
  const int64_t M = (int64_t)expert_of_slot.size();
  NT_CHECK(M % top_k == 0, "make_dispatch: {} chosen experts is not a multiple of top_k = {}", M, top_k);
  Dispatch d;
  d.n_tokens = M / top_k, d.top_k = top_k, d.slot_expert = expert_of_slot;
  d.counts.assign(n_experts, 0);
  for (int64_t s = 0; s < M; ++s) {
    const int64_t e = expert_of_slot[s];
    NT_CHECK(e >= 0 && e < n_experts, "make_dispatch: slot {} chose expert {}, expected 0 to {}", s, e, n_experts - 1);
    ++d.counts[e];
  }
  d.offsets.assign(n_experts + 1, 0);
  for (int64_t e = 0; e < n_experts; ++e) d.offsets[e + 1] = d.offsets[e] + d.counts[e];
  // Counting sort, stable in slot order, so each expert sees its tokens in ascending order.
  d.row_token.resize(M), d.slot_row.resize(M);
  std::vector<int64_t> next(d.offsets.begin(), d.offsets.end() - 1);
  for (int64_t s = 0; s < M; ++s) {
    const int64_t row = next[expert_of_slot[s]]++;
    d.row_token[row] = s / top_k, d.slot_row[s] = row;
  }
  return d;
}

}  // namespace nt::moe
