// Next-token sampling from logits: temperature, top-k and top-p (nucleus) filtering, as in Holtzman et al. 2019.
#pragma once
#include "tensor/tensor.h"

namespace nt::nn {

struct SamplingConfig {
  double temperature = 1.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // keep the smallest set of most likely tokens whose probability reaches top_p
};

// The probabilities sampling draws from (after temperature, top-k and top-p, renormalized), as f64 [V].
std::vector<double> sampling_distribution(const Tensor& logits, const SamplingConfig& cfg);
// One token id from logits [V] (any device, any float dtype); the draw comes from gen (Philox), so a seed repeats.
int64_t sample_token(const Tensor& logits, const SamplingConfig& cfg, Generator& gen);

}  // namespace nt::nn
