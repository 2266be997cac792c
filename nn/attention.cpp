#include "nn/attention.h"

#include <cmath>

#include "ops/attention.h"

namespace nt::nn {

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window, double scale) {
  NT_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "causal_attention: q, k, v must be [B, T, H, D], got {}, {}, {}",
           shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3), Hkv = k.size(2), T = k.size(1);
  NT_CHECK(k.shape() == v.shape() && k.size(0) == B && T >= Tq && k.size(3) == D,
           "causal_attention: k {} and v {} must be [{}, Tk >= {}, Hkv, {}] for q {}", shape_str(k.shape()),
           shape_str(v.shape()), B, Tq, D, shape_str(q.shape()));
  NT_CHECK(Hkv > 0 && H % Hkv == 0, "causal_attention: {} query heads are not a multiple of {} key/value heads", H, Hkv);
  if (scale == 0) scale = 1.0 / std::sqrt((double)D);
  auto expand_heads = [&](const Tensor& t) {  // [B, T, Hkv, D] -> [B, H, T, D], each kv head repeated G times
    const Tensor r = H == Hkv ? t : t.unsqueeze(3).expand({B, T, Hkv, H / Hkv, D}).reshape({B, T, H, D});
    return r.transpose(1, 2);
  };
  const Tensor qh = q.transpose(1, 2), kh = expand_heads(k), vh = expand_heads(v);
  Tensor scores = matmul(qh, kh.mT()) * scale;  // [B, H, Tq, Tk]
  const Tensor pos = arange(T, DType::i64, q.device()), qpos = arange(T - Tq, T, 1, DType::i64, q.device());
  Tensor masked = gt(pos.unsqueeze(0), qpos.unsqueeze(1));  // key after query
  if (window > 0) {
    const Tensor too_old = le(pos.unsqueeze(0), qpos.unsqueeze(1) - scalar_tensor((double)window, DType::i64, q.device()));
    masked = where(too_old, too_old, masked);
  }
  scores = masked_fill(scores, masked, -INFINITY);
  return matmul(softmax(scores, -1), vh).transpose(1, 2);  // [B, T, H, D]
}

CausalSelfAttention::CausalSelfAttention(const AttentionConfig& c, std::shared_ptr<const Rotary> r, const Init& init)
    : cfg(c), rotary(std::move(r)) {
  NT_CHECK(cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0,
           "attention: n_heads ({}) must be a positive multiple of n_kv_heads ({})", cfg.n_heads, cfg.n_kv_heads);
  NT_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0, "attention: head_dim must be positive and even, got {}", cfg.head_dim);
  wq = register_module("wq", std::make_shared<Linear>(cfg.dim, cfg.n_heads * cfg.head_dim, false, init));
  wk = register_module("wk", std::make_shared<Linear>(cfg.dim, cfg.n_kv_heads * cfg.head_dim, false, init));
  wv = register_module("wv", std::make_shared<Linear>(cfg.dim, cfg.n_kv_heads * cfg.head_dim, false, init));
  wo = register_module("wo", std::make_shared<Linear>(cfg.n_heads * cfg.head_dim, cfg.dim, false, init));
}

Tensor CausalSelfAttention::forward(const Tensor& x, const ForwardContext& ctx) {
  NT_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "attention: input must be [B, T, {}], got {}", cfg.dim, shape_str(x.shape()));
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q = wq->forward(x).reshape({B, T, cfg.n_heads, cfg.head_dim});
  Tensor k = wk->forward(x).reshape({B, T, cfg.n_kv_heads, cfg.head_dim});
  const Tensor v = wv->forward(x).reshape({B, T, cfg.n_kv_heads, cfg.head_dim});
  if (rotary) q = rotary->apply(q), k = rotary->apply(k);
  Tensor o;
  // On the CPU the composite is used, one document at a time when they are packed: its matmuls run on BLAS, while
  // the fused op's CPU path is the plain reference loop (the same function; tests/nn/test_nn.cpp checks it).
  if (cfg.fused && x.device().is_cpu() && !ctx.cu_seqlens.empty()) {
    const Tensor qf = q.reshape({B * T, cfg.n_heads, cfg.head_dim}), kf = k.reshape({B * T, cfg.n_kv_heads, cfg.head_dim}),
                 vf = v.reshape({B * T, cfg.n_kv_heads, cfg.head_dim});
    std::vector<Tensor> parts;
    for (size_t i = 0; i + 1 < ctx.cu_seqlens.size(); ++i) {
      const int64_t s = ctx.cu_seqlens[i], n = ctx.cu_seqlens[i + 1] - s;
      if (n > 0)
        parts.push_back(causal_attention(qf.narrow(0, s, n).unsqueeze(0), kf.narrow(0, s, n).unsqueeze(0),
                                         vf.narrow(0, s, n).unsqueeze(0), cfg.window).squeeze(0));
    }
    o = cat(parts, 0).reshape({B, T, cfg.n_heads, cfg.head_dim});
  } else if (cfg.fused && x.device().is_cuda()) {
    // Rotary positions run on across the documents of a packed row; attention only sees relative positions
    // inside one document, so that equals restarting them at each document.
    AttentionOptions opt{cfg.window, 0, ctx.cu_seqlens};
    o = ctx.cu_seqlens.empty() ? flash_attention(q, k, v, opt)
                               : flash_attention(q.reshape({B * T, cfg.n_heads, cfg.head_dim}),
                                                 k.reshape({B * T, cfg.n_kv_heads, cfg.head_dim}),
                                                 v.reshape({B * T, cfg.n_kv_heads, cfg.head_dim}), opt);
  } else {
    NT_CHECK(ctx.cu_seqlens.empty(), "attention: the reference path (fused = false) does not take packed documents");
    o = causal_attention(q, k, v, cfg.window);
  }
  return wo->forward(o.reshape({B, T, cfg.n_heads * cfg.head_dim}));
}

LayerCache CausalSelfAttention::new_cache(int64_t batch, int64_t max_seq, DType dtype, Device device) const {
  return {zeros({batch, max_seq, cfg.n_kv_heads, cfg.head_dim}, dtype, device),
          zeros({batch, max_seq, cfg.n_kv_heads, cfg.head_dim}, dtype, device), 0};
}

Tensor CausalSelfAttention::forward_cached(const Tensor& x, LayerCache& c) {
  NT_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "attention: input must be [B, T, {}], got {}", cfg.dim, shape_str(x.shape()));
  const int64_t B = x.size(0), Tn = x.size(1), end = c.length + Tn;
  NT_CHECK(c.k.defined() && c.k.size(0) == B, "attention: the KV cache holds {} sequences, the input {}",
           c.k.defined() ? c.k.size(0) : 0, B);
  NT_CHECK(end <= c.k.size(1), "attention: the KV cache holds {} positions; {} + {} new ones do not fit", c.k.size(1),
           c.length, Tn);
  Tensor q = wq->forward(x).reshape({B, Tn, cfg.n_heads, cfg.head_dim});
  Tensor k = wk->forward(x).reshape({B, Tn, cfg.n_kv_heads, cfg.head_dim});
  const Tensor v = wv->forward(x).reshape({B, Tn, cfg.n_kv_heads, cfg.head_dim});
  if (rotary) q = rotary->apply(q, c.length), k = rotary->apply(k, c.length);
  {
    autograd::NoGradGuard no_grad;
    Tensor(c.k).narrow(1, c.length, Tn).copy_(k);
    Tensor(c.v).narrow(1, c.length, Tn).copy_(v);
  }
  c.length = end;
  const Tensor o = causal_attention(q, c.k.narrow(1, 0, end), c.v.narrow(1, 0, end), cfg.window);
  return wo->forward(o.reshape({B, Tn, cfg.n_heads * cfg.head_dim}));
}

}  // namespace nt::nn
