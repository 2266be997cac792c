// Rotary position tables with optional YaRN context extension (Peng et al., "YaRN: Efficient Context Window
// Extension of Large Language Models", 2023).
//
// Plain RoPE: frequency i of D/2 is theta^(-2i/D). With YaRN (scale s > 1, original context L): each frequency's
// wavelength 2*pi/f is compared with L; r = L / wavelength; frequencies with r < alpha are interpolated (f / s),
// those with r > beta kept, and those between blended linearly; cos and sin are multiplied by
// mscale = 0.1 ln(s) + 1, which scales attention logits by mscale^2 (the paper's temperature).
#pragma once
#include <mutex>
#include <tuple>
#include <vector>

#include "nn/module.h"

namespace nt::nn {

struct RopeConfig {
  double theta = 10000.0;
  bool interleaved = false;  // pair layout, see ops/rope.h
  double yarn_scale = 1.0;   // s; 1 disables YaRN
  int64_t yarn_original_context = 4096;
  double yarn_alpha = 1.0, yarn_beta = 32.0;
};

// The per-frequency values (D/2 of them) the tables are built from.
std::vector<double> rope_frequencies(int64_t head_dim, const RopeConfig& cfg);

class Rotary {
 public:
  Rotary(int64_t head_dim, int64_t max_seq, const RopeConfig& cfg = {}, Device device = kCPU);
  // x [..., T, H, D] for positions start .. start+T-1.
  Tensor apply(const Tensor& x, int64_t start = 0) const;
  // x [N, H, D] holding packed sequences (cu_seqlens: 0 = cu[0] <= ... <= cu.back() = N): positions restart at each
  // sequence. One rope over all rows (the rows' table entries gathered by a cached position table), equal to
  // apply() on each sequence.
  Tensor apply_packed(const Tensor& x, const std::vector<int32_t>& cu_seqlens) const;
  Tensor cos, sin;  // [max_seq, D/2] f32, on the constructor's device
  RopeConfig cfg;

 private:
  // cos and sin on device d: the tables themselves, or a copy made on first use there and kept. A model built on the
  // host and moved with Module::to leaves these tables behind (they are not parameters), and copying the rows on
  // every call cost two uploads per call on the GPU (~38 us of host time each; the NSA layer rotates 3 tensors per
  // sequence).
  std::pair<Tensor, Tensor> tables(Device d) const;
  mutable std::mutex mu_;
  mutable std::vector<std::tuple<Device, Tensor, Tensor>> copies_;
};

}  // namespace nt::nn
