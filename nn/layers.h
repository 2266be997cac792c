// Basic layers. Weights use PyTorch's layouts and names, so checkpoints map one to one (Linear.weight is
// [out, in]; Embedding.weight is [vocab, dim]).
#pragma once
#include "nn/module.h"

namespace nt::nn {

struct Init {
  DType dtype = DType::f32;
  Device device = kCPU;
  Generator* gen = nullptr;  // default generator when null
};

// y = x W^T (+ b). Weights ~ U(-1/sqrt(in), 1/sqrt(in)) as torch.nn.Linear; bias zero.
class Linear : public Layer {
 public:
  Linear(int64_t in, int64_t out, bool bias = false, const Init& init = {});
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
  int64_t in_features, out_features;
};

// Rows of weight [vocab, dim] ~ N(0, 1).
class Embedding : public Module {
 public:
  Embedding(int64_t vocab, int64_t dim, const Init& init = {});
  Tensor forward(const Tensor& idx);
  Tensor weight;
};

class RMSNorm : public Layer {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-6, const Init& init = {});
  Tensor forward(const Tensor& x) override;
  Tensor weight;
  double eps;
};

// SwiGLU feed-forward: w2(silu(w1 x) * w3 x), hidden width `hidden` (Llama's names).
class SwiGLUMLP : public Layer {
 public:
  SwiGLUMLP(int64_t dim, int64_t hidden, const Init& init = {});
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<Linear> w1, w2, w3;
};

}  // namespace nt::nn
