// The routed experts of a DeepSeekMoE layer, weights stacked over experts: w1, w3 [E, dim, hidden] and
// w2 [E, hidden, dim] (per expert [in, out], used as x @ w, unlike nn::Linear's [out, in]). Expert e maps a row x to
// swiglu(x w1[e], x w3[e]) w2[e].
//
// forward: moe_permute (each token's row copied to its K places in expert order), then three grouped GEMMs over
// the dispatch offsets (grouped_matmul: one cuBLAS grouped GEMM each on the GPU). Exact work, no padding, no
// per-expert ops; gradients flow through the same ops (empty experts get zero slices).
#pragma once
#include <memory>

#include "nn/layers.h"
#include "ops/moe.h"

namespace nt::moe {

class HostStagedWeights;

class RoutedExperts : public nn::Module {
 public:
  RoutedExperts(int64_t n_experts, int64_t dim, int64_t hidden, const nn::Init& init = {});
  // x [N, dim] -> [N * top_k, dim] in expert order: row d.slot_row[t, j] is token t's output from its j-th expert
  // (ungated; moe_unpermute combines them). Experts without rows get zero gradient slices.
  Tensor forward(const Tensor& x, const ExpertDispatch& d) const;

  // Offloading (moe/offload.h): w1, w2, w3 move to pinned host memory (they become CPU tensors: their gradients and
  // an optimizer's state for them live on the host) and are uploaded to `device` for each use: before the forward,
  // again before the backward (the copies autograd saved are freed in between), and freed after each. Uploads run
  // on a copy stream; prefetch() starts one early. The forward starts next_offloaded's prefetch and the backward
  // prev_offloaded's (offload_experts links a model's layers).
  void offload(Device device);
  bool offloaded() const { return staged_ != nullptr; }
  void prefetch() const;
  RoutedExperts* next_offloaded = nullptr;
  RoutedExperts* prev_offloaded = nullptr;

  Tensor w1, w2, w3;
  int64_t n_experts, dim, hidden;

 private:
  Tensor run(const Tensor& xs, const Tensor& w1, const Tensor& w2, const Tensor& w3, const ExpertDispatch& d) const;
  std::shared_ptr<HostStagedWeights> staged_;
};

}  // namespace nt::moe
