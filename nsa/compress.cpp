// CompressionMLP: gathers every block's rows (nsa_block_rows below), adds pe, and runs the two-layer MLP over the
// flattened blocks of all heads at once.
#include "nsa/compress.h"

#include "autograd/graph.h"
#include "nsa/nsa_attention.h"
#include "ops/device_tables.h"
#include "ops/ops.h"

namespace nt::nsa {

NT_REGISTER_OP(kNsaBlockRows, "nsa_block_rows", true);

namespace {
// k [T, H, D] -> rows [R, H, D], rows[r] = k[idx[r]] (the l rows of every compressed block). Backward: a token's
// gradient is the sum of the rows that hold it (at most m = l / d), gathered through `inverse` ([m, T] i64: token
// t's j-th row, or R for none, which reads a zero row appended to the gradient). index_select's own backward is
// a scatter_add, which on the GPU adds atomically into an f32 copy of dk (172 us a call at 8k tokens on the H100,
// 7% of the NSA + MoE LM's GPU time); this is m gathers and m - 1 adds, deterministic.
Tensor nsa_block_rows(const Tensor& k, const Tensor& idx, const Tensor& inverse) {
  Tensor rows;
  {
    autograd::NoGradGuard no_grad;
    rows = index_select(k.detach(), 0, idx);
  }
  if (autograd::needs_grad({&k}))
    autograd::record(kNsaBlockRows, rows, {k}, [inverse](const Tensor& g_in, auto&) {
      const Tensor g = g_in.contiguous();
      const Tensor padded = cat({g, zeros({1, g.size(1), g.size(2)}, g.dtype(), g.device())}, 0);
      // Two terms round once either way (the add computes in f32); more bf16 terms add in f32.
      const bool wide = g.dtype() == DType::bf16 && inverse.size(0) > 2;
      Tensor dk;
      for (int64_t j = 0; j < inverse.size(0); ++j) {
        Tensor term = index_select(padded, 0, inverse.select(0, j));
        if (wide) term = term.to(DType::f32);
        dk = dk.defined() ? dk + term : term;
      }
      return std::vector<Tensor>{dk.to(g.dtype())};
    });
  return rows;
}
}  // namespace

CompressionMLP::CompressionMLP(int64_t l, int64_t d, int64_t D, int64_t hidden, const nn::Init& init)
    : block(l), stride(d), head_dim(D) {
  NT_CHECK(l >= 1 && d >= 1 && l % d == 0, "CompressionMLP: stride d ({}) must be positive and divide block l ({})", d, l);
  NT_CHECK(D >= 1 && hidden >= 1, "CompressionMLP: head_dim ({}) and hidden ({}) must be positive", D, hidden);
  w1 = register_module("w1", std::make_shared<nn::Linear>(l * D, hidden, true, init));
  w2 = register_module("w2", std::make_shared<nn::Linear>(hidden, D, true, init));
  // Zero: W1 already weighs each position of the flattened block separately, so pe starts as no change and is learned.
  register_parameter("pe", &pe, zeros({l, D}, init.dtype, init.device));
}

Tensor CompressionMLP::compress(const Tensor& k, const std::vector<int32_t>& cu_seqlens) const {
  NT_CHECK(k.dim() == 3 && k.size(2) == head_dim, "CompressionMLP: k must be [T, H, {}], got {}", head_dim,
           shape_str(k.shape()));
  const int64_t T = k.size(0), H = k.size(1);
  const std::vector<int32_t> cu = cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : cu_seqlens;
  NT_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T,
           "CompressionMLP: cu_seqlens must start at 0 and end at T = {} (k's rows), got {} entries from {} to {}", T,
           cu.size(), cu.front(), cu.back());
  int64_t NC = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    NT_CHECK(cu[b + 1] >= cu[b], "CompressionMLP: cu_seqlens must not decrease, got {} then {} at {}", cu[b], cu[b + 1], b + 1);
    NC += nsa_num_cmp_blocks(cu[b + 1] - cu[b], block, stride);
  }
  if (NC == 0) return zeros({0, H, head_dim}, k.dtype(), k.device());
  // The l rows of every block, block after block; the same for k and v and every layer of a step: built and
  // uploaded once (ops/device_tables.h).
  std::vector<int64_t> key(cu.begin(), cu.end());
  key.insert(key.end(), {block, stride});
  auto block_rows = [&] {
    std::vector<double> rows;
    rows.reserve(NC * block);
    for (size_t b = 0; b + 1 < cu.size(); ++b)
      for (int64_t c = 0; c < nsa_num_cmp_blocks(cu[b + 1] - cu[b], block, stride); ++c)
        for (int64_t i = 0; i < block; ++i) rows.push_back((double)(cu[b] + c * stride + i));
    return rows;
  };
  const Tensor idx = cached_table("nsa compression rows", key, DType::i64, k.device(), block_rows);
  const int64_t m = block / stride, R = NC * block;  // a token lies in at most l / d blocks
  // The inverse is the backward's only: not built (nor uploaded) for inference, where layouts change every step.
  if (!autograd::needs_grad({&k}))
    return compressed(index_select(k, 0, idx).reshape({NC, block, H, head_dim}));
  const Tensor inverse = cached_table("nsa compression rows inverse", key, DType::i64, k.device(), [&] {
    std::vector<double> inv(m * T, (double)R);
    std::vector<int64_t> seen(T, 0);
    const std::vector<double> rows = block_rows();
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = (int64_t)rows[r];
      inv[seen[t]++ * T + t] = (double)r;
    }
    return inv;
  }).reshape({m, T});
  return compressed(nsa_block_rows(k, idx, inverse).reshape({NC, block, H, head_dim}));
}

Tensor CompressionMLP::compressed(const Tensor& blocks) const {
  const int64_t NC = blocks.size(0), H = blocks.size(2);
  const Tensor x = blocks + pe.reshape({1, block, 1, head_dim});
  const Tensor flat = x.permute({0, 2, 1, 3}).reshape({NC, H, block * head_dim});  // position-major, as flatten([l, D])
  return w2->forward(gelu(w1->forward(flat)));
}

}  // namespace nt::nsa
