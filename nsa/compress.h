// The compression function phi of NSA (arXiv 2502.11089, Sec. 3.3.1; conventions in docs/nsa.md): compressed
// block c of a sequence covers keys [c*d, c*d + l) and becomes one key
//   phi(x) = W2 gelu(W1 flatten(x + pe) + b1) + b2,   x = the block [l, D], pe a learned [l, D] position embedding.
// One phi per use (keys, values), shared by all heads. Written with differentiable ops (matmul, gelu, and the
// block gather nsa_block_rows, whose backward gathers instead of scattering), so autograd provides its backward.
#pragma once
#include <vector>

#include "nn/layers.h"

namespace nt::nsa {

class CompressionMLP : public nn::Module {
 public:
  // block l, stride d (d divides l), head dim D, hidden width of W1.
  CompressionMLP(int64_t block, int64_t stride, int64_t head_dim, int64_t hidden, const nn::Init& init = {});
  // k [T, H, D], packed sequences as nsa_attention's cu_seqlens (empty: one sequence) -> [NC, H, D], each sequence's
  // blocks in order (NC = the sum of nsa_num_cmp_blocks over the sequences): nsa_attention's k_cmp / v_cmp.
  Tensor compress(const Tensor& k, const std::vector<int32_t>& cu_seqlens) const;
  // phi over gathered blocks [NC, l, H, D] -> [NC, H, D].
  Tensor compressed(const Tensor& blocks) const;

  std::shared_ptr<nn::Linear> w1, w2;  // [l*D -> hidden] and [hidden -> D], with biases
  Tensor pe;                           // [l, D], zero at first
  int64_t block, stride, head_dim;
};

}  // namespace nt::nsa
