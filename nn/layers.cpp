#include "nn/layers.h"

#include <cmath>

namespace nt::nn {

Linear::Linear(int64_t in, int64_t out, bool has_bias, const Init& init) : in_features(in), out_features(out) {
  NT_CHECK(in > 0 && out > 0, "Linear: in ({}) and out ({}) must be positive", in, out);
  const double bound = 1.0 / std::sqrt((double)in);
  register_parameter("weight", &weight, (rand({out, in}, DType::f64, kCPU, init.gen) * (2 * bound) - bound).to(init.dtype).to(init.device));
  if (has_bias) register_parameter("bias", &bias, zeros({out}, init.dtype, init.device));
}
Tensor Linear::forward(const Tensor& x) {
  NT_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear: input of shape {} must end in {} features",
           shape_str(x.shape()), in_features);
  Tensor y = matmul(x, weight.mT());
  return bias.defined() ? y + bias : y;
}

Embedding::Embedding(int64_t vocab, int64_t dim, const Init& init) {
  NT_CHECK(vocab > 0 && dim > 0, "Embedding: vocab ({}) and dim ({}) must be positive", vocab, dim);
  register_parameter("weight", &weight, randn({vocab, dim}, DType::f64, kCPU, init.gen).to(init.dtype).to(init.device));
}
Tensor Embedding::forward(const Tensor& idx) { return embedding(weight, idx); }

RMSNorm::RMSNorm(int64_t dim, double e, const Init& init) : eps(e) {
  register_parameter("weight", &weight, ones({dim}, init.dtype, init.device));
}
Tensor RMSNorm::forward(const Tensor& x) { return rms_norm(x, weight, eps); }

SwiGLUMLP::SwiGLUMLP(int64_t dim, int64_t hidden, const Init& init) {
  w1 = register_module("w1", std::make_shared<Linear>(dim, hidden, false, init));
  w2 = register_module("w2", std::make_shared<Linear>(hidden, dim, false, init));
  w3 = register_module("w3", std::make_shared<Linear>(dim, hidden, false, init));
}
Tensor SwiGLUMLP::forward(const Tensor& x) { return w2->forward(swiglu(w1->forward(x), w3->forward(x))); }

}  // namespace nt::nn
