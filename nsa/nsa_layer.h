// NativeSparseAttention: the NSA attention layer (arXiv 2502.11089) around the nsa_attention op. From x: a query
// projection; independent key and value projections for each branch (compressed, selected, window), the compressed
// ones then compressed block by block by two CompressionMLPs (keys, values); per-head gates sigmoid(x W_g + b_g) for
// the three branches; an output projection.
//
// Rotary positions go on q and on the selected and window keys, restarting at each sequence (document), so a packed
// batch computes the same as each document alone. The compressed keys get none: each stands for l positions, and
// phi sees their order through the flattened block and pe. The query that meets them is the same rotated q.
#pragma once
#include "nn/rotary.h"
#include "nsa/compress.h"

namespace nt::nsa {

struct NsaConfig {
  int64_t dim = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  // nsa_attention's NsaOptions (the paper's defaults).
  int64_t block = 32, stride = 16, select_block = 64, n_select = 16, window = 512;
  int64_t cmp_hidden = 0;  // hidden width of phi; 0: 4 * head_dim
};

class NativeSparseAttention : public nn::Layer {
 public:
  NativeSparseAttention(const NsaConfig& cfg, std::shared_ptr<const nn::Rotary> rotary, const nn::Init& init = {});
  Tensor forward(const Tensor& x) override { return forward(x, nn::ForwardContext{}); }
  // x [B, T, dim] -> [B, T, dim]. ctx.cu_seqlens: documents over the B*T tokens (each row boundary included);
  // empty: each row is one sequence.
  Tensor forward(const Tensor& x, const nn::ForwardContext& ctx) override;
  // Decoding (nsa/nsa_decode.cpp): the cache keeps each branch's keys and values per position (k, v: the selected
  // branch's; more: the window's, the uncompressed compression inputs, and the compressed blocks so far); every
  // new position attends as forward() would (block selection included), one position at a time with ordinary ops.
  nn::LayerCache new_cache(int64_t batch, int64_t max_seq, DType dtype, Device device) const override;
  Tensor forward_cached(const Tensor& x, nn::LayerCache& cache) override;

  // Full-attention warm-up (the paper trains dense first in some ablations): while true, the layer computes plain
  // causal attention of q over the selected branch's keys and values (flash_attention), and the compression,
  // window and gate parameters get no gradient (AdamW skips them).
  bool dense = false;

  std::shared_ptr<nn::Linear> wq, wk_cmp, wv_cmp, wk_slc, wv_slc, wk_win, wv_win, wg, wo;
  std::shared_ptr<CompressionMLP> cmp_k, cmp_v;
  NsaConfig cfg;
  std::shared_ptr<const nn::Rotary> rotary;
};

}  // namespace nt::nsa
