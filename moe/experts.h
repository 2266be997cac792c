// The routed experts of a DeepSeekMoE layer, weights stacked over experts: w1, w3 [E, dim, hidden] and
// w2 [E, hidden, dim] (per expert [in, out], used as x @ w, unlike nn::Linear's [out, in]). Expert e maps a row x to
// swiglu(x w1[e], x w3[e]) w2[e].
//
// forward is permute + expert GEMMs + unpermute, composed from existing ops in one of two ways (same result):
// - loop: per expert with rows, gather its tokens and run three GEMMs on select() views of the stacked weights.
//   Exact work, but select()'s backward writes a zero-filled [E, ...] gradient per active expert, so the weight
//   gradients cost O(active experts * E * dim * hidden) memory traffic: it dominates once E is in the tens.
// - padded: every expert gets max_count rows (padding rows repeat token 0 and are never read back, so they carry
//   no gradient), three batched GEMMs over [E, max_count, ...]: no per-expert ops, at max/mean load times the
//   GEMM work. Still dropless: the padding grows to fit the busiest expert.
// automatic takes padded while max load <= 2 x mean load (a routed, balanced layer) and loop otherwise (few busy
// experts, where padding would multiply the work). A permute kernel and a grouped GEMM over the dispatch offsets
// replace both without changing forward's contract.
#pragma once
#include "moe/dispatch.h"
#include "nn/layers.h"

namespace nt::moe {

class RoutedExperts : public nn::Module {
 public:
  enum class Path { automatic, loop, padded };

  RoutedExperts(int64_t n_experts, int64_t dim, int64_t hidden, const nn::Init& init = {});
  // x [N, dim] -> [N * top_k, dim]: row t * top_k + j is token t's output from its j-th expert (ungated). Experts
  // without rows get zero gradient slices.
  Tensor forward(const Tensor& x, const Dispatch& d) const;
  // Which path forward takes for this dispatch.
  Path choose(const Dispatch& d) const;

  Tensor w1, w2, w3;
  int64_t n_experts, dim, hidden;
  Path path = Path::automatic;

 private:
  Tensor forward_loop(const Tensor& x, const Dispatch& d) const;
  Tensor forward_padded(const Tensor& x, const Dispatch& d) const;
};

}  // namespace nt::moe
