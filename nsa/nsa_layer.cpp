#include "nsa/nsa_layer.h"

#include "nsa/nsa_attention.h"

namespace nt::nsa {

NativeSparseAttention::NativeSparseAttention(const NsaConfig& c, std::shared_ptr<const nn::Rotary> r, const nn::Init& init)
    : cfg(c), rotary(std::move(r)) {
  NT_CHECK(cfg.dim > 0 && cfg.head_dim > 0, "NativeSparseAttention: dim ({}) and head_dim ({}) must be positive", cfg.dim,
           cfg.head_dim);
  NT_CHECK(cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0,
           "NativeSparseAttention: n_heads ({}) must be a positive multiple of n_kv_heads ({})", cfg.n_heads, cfg.n_kv_heads);
  NT_CHECK(!rotary || cfg.head_dim % 2 == 0, "NativeSparseAttention: rotary needs an even head_dim, got {}", cfg.head_dim);
  if (cfg.cmp_hidden == 0) cfg.cmp_hidden = 4 * cfg.head_dim;
  const int64_t q_out = cfg.n_heads * cfg.head_dim, kv_out = cfg.n_kv_heads * cfg.head_dim;
  auto linear = [&](const char* name, int64_t in, int64_t out, bool bias) {
    return register_module(name, std::make_shared<nn::Linear>(in, out, bias, init));
  };
  wq = linear("wq", cfg.dim, q_out, false);
  wk_cmp = linear("wk_cmp", cfg.dim, kv_out, false), wv_cmp = linear("wv_cmp", cfg.dim, kv_out, false);
  wk_slc = linear("wk_slc", cfg.dim, kv_out, false), wv_slc = linear("wv_slc", cfg.dim, kv_out, false);
  wk_win = linear("wk_win", cfg.dim, kv_out, false), wv_win = linear("wv_win", cfg.dim, kv_out, false);
  wg = linear("wg", cfg.dim, cfg.n_heads * 3, true);
  wo = linear("wo", q_out, cfg.dim, false);
  cmp_k = register_module("cmp_k", std::make_shared<CompressionMLP>(cfg.block, cfg.stride, cfg.head_dim, cfg.cmp_hidden, init));
  cmp_v = register_module("cmp_v", std::make_shared<CompressionMLP>(cfg.block, cfg.stride, cfg.head_dim, cfg.cmp_hidden, init));
}

Tensor NativeSparseAttention::forward(const Tensor& x, const nn::ForwardContext& ctx) {
  NT_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "NativeSparseAttention: input must be [B, T, {}], got {}", cfg.dim,
           shape_str(x.shape()));
  const int64_t B = x.size(0), T = x.size(1), N = B * T, HQ = cfg.n_heads, H = cfg.n_kv_heads, D = cfg.head_dim;
  std::vector<int32_t> cu = ctx.cu_seqlens;
  if (cu.empty())
    for (int64_t b = 0; b <= B; ++b) cu.push_back((int32_t)(b * T));
  NT_CHECK(cu.front() == 0 && cu.back() == N, "NativeSparseAttention: cu_seqlens must run from 0 to B*T = {}, got {} to {}",
           N, cu.front(), cu.back());
  auto project = [&](nn::Linear& w, int64_t heads) { return w.forward(x).reshape({N, heads, D}); };
  auto rotate = [&](const Tensor& t) { return rotary ? rotary->apply_packed(t, cu) : t; };  // restarts per sequence
  const Tensor q = rotate(project(*wq, HQ));
  if (dense) {
    const Tensor o = flash_attention(q, rotate(project(*wk_slc, H)), project(*wv_slc, H), AttentionOptions{0, 0, cu});
    return wo->forward(o.reshape({B, T, HQ * D}));
  }
  const Tensor k_cmp = cmp_k->compress(project(*wk_cmp, H), cu), v_cmp = cmp_v->compress(project(*wv_cmp, H), cu);
  const Tensor gates = sigmoid(wg->forward(x)).reshape({N, HQ, 3});
  NsaOptions opt;
  opt.block = cfg.block, opt.stride = cfg.stride, opt.select_block = cfg.select_block, opt.n_select = cfg.n_select;
  opt.window = cfg.window, opt.cu_seqlens = cu;
  const Tensor o = nsa_attention(q, k_cmp, v_cmp, rotate(project(*wk_slc, H)), project(*wv_slc, H),
                                 rotate(project(*wk_win, H)), project(*wv_win, H), gates, opt).o;
  return wo->forward(o.reshape({B, T, HQ * D}));
}

}  // namespace nt::nsa
