// NativeSparseAttention::forward_cached: decoding one position at a time against cached keys and values, the same
// computation as forward() (the fused op) written with ordinary ops for one query row: the compressed branch over
// the blocks complete so far (its probabilities score the selection blocks, summed over the group), the blocks
// chosen as nsa_attention chooses them (block 0 and the two local blocks always, the rest by score, ties to the
// lower index: nsa/selection.h), attention over their keys <= t and over the window, mixed by the gates. The scores come to the
// host for the choice (one small copy per position and layer).
#include <algorithm>
#include <cmath>

#include "nsa/nsa_attention.h"
#include "nsa/nsa_layer.h"
#include "nsa/selection.h"

namespace nt::nsa {

namespace {
enum Slot { kWinK, kWinV, kRawK, kRawV, kCmpK, kCmpV, kSlots };

// Softmax attention of q [H, G, D] over keys / values [n, H, D] (n may be 0: zeros); probs gets P [H, G, n].
Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, double scale, Tensor* probs = nullptr) {
  if (k.size(0) == 0) {
    if (probs) *probs = Tensor();
    return zeros(q.shape(), q.dtype(), q.device());
  }
  const Tensor p = softmax(matmul(q, k.permute({1, 2, 0})) * scale, -1);
  if (probs) *probs = p;
  return matmul(p, v.permute({1, 0, 2}));
}

}  // namespace

nn::LayerCache NativeSparseAttention::new_cache(int64_t batch, int64_t max_seq, DType dtype, Device device) const {
  const int64_t H = cfg.n_kv_heads, D = cfg.head_dim;
  const int64_t max_cmp = std::max<int64_t>(1, nsa_num_cmp_blocks(max_seq, cfg.block, cfg.stride));
  nn::LayerCache c;
  c.k = zeros({batch, max_seq, H, D}, dtype, device), c.v = zeros({batch, max_seq, H, D}, dtype, device);
  for (int i = 0; i < kSlots; ++i)
    c.more.push_back(zeros({batch, i >= kCmpK ? max_cmp : max_seq, H, D}, dtype, device));
  return c;
}

Tensor NativeSparseAttention::forward_cached(const Tensor& x, nn::LayerCache& c) {
  NT_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "NativeSparseAttention: input must be [B, T, {}], got {}", cfg.dim,
           shape_str(x.shape()));
  NT_CHECK(!dense, "NativeSparseAttention: decoding runs the sparse branches; turn the dense warm-up off first");
  const int64_t B = x.size(0), Tn = x.size(1), t0 = c.length, HQ = cfg.n_heads, H = cfg.n_kv_heads, G = HQ / H,
                D = cfg.head_dim, l = cfg.block, d = cfg.stride, lp = cfg.select_block;
  NT_CHECK(c.k.defined() && (int)c.more.size() == kSlots && c.k.size(0) == B,
           "NativeSparseAttention: the cache is not this layer's (new_cache) or holds another batch size");
  NT_CHECK(t0 + Tn <= c.k.size(1), "NativeSparseAttention: the cache holds {} positions; {} + {} new ones do not fit",
           c.k.size(1), t0, Tn);
  auto project = [&](nn::Linear& w, int64_t heads) { return w.forward(x).reshape({B, Tn, heads, D}); };
  auto rotate = [&](const Tensor& t) { return rotary ? rotary->apply(t, t0) : t; };
  const Tensor q = rotate(project(*wq, HQ));
  const Tensor gates = sigmoid(wg->forward(x)).reshape({B, Tn, HQ, 3});
  {
    autograd::NoGradGuard ng;
    auto put = [&](const Tensor& dst, const Tensor& src) { Tensor(dst).narrow(1, t0, Tn).copy_(src); };
    put(c.k, rotate(project(*wk_slc, H))), put(c.v, project(*wv_slc, H));
    put(c.more[kWinK], rotate(project(*wk_win, H))), put(c.more[kWinV], project(*wv_win, H));
    put(c.more[kRawK], project(*wk_cmp, H)), put(c.more[kRawV], project(*wv_cmp, H));
    // Blocks that complete among the new positions: block j ends at j d + l - 1.
    for (int64_t t = t0; t < t0 + Tn; ++t) {
      if (t + 1 < l || (t + 1 - l) % d != 0) continue;
      const int64_t j = (t + 1 - l) / d;
      for (int64_t b = 0; b < B; ++b) {
        const Tensor kb = c.more[kRawK].select(0, b).narrow(0, j * d, l), vb = c.more[kRawV].select(0, b).narrow(0, j * d, l);
        Tensor(c.more[kCmpK]).select(0, b).narrow(0, j, 1).copy_(cmp_k->compress(kb, {}));
        Tensor(c.more[kCmpV]).select(0, b).narrow(0, j, 1).copy_(cmp_v->compress(vb, {}));
      }
    }
  }
  c.length = t0 + Tn;
  const double scale = 1.0 / std::sqrt((double)D);
  NsaOptions opt;  // the selection rule's parameters
  opt.block = l, opt.stride = d, opt.select_block = lp, opt.n_select = cfg.n_select, opt.window = cfg.window;
  std::vector<Tensor> rows;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tn; ++i) {
      const int64_t t = t0 + i;
      const Tensor qt = q.select(0, b).select(0, i).reshape({H, G, D});
      // Compressed branch, and its probabilities summed over the group into selection-block scores.
      const int64_t ncmp = t + 1 < l ? 0 : (t + 1 - l) / d + 1;
      Tensor p;
      const Tensor o_cmp = attend(qt, c.more[kCmpK].select(0, b).narrow(0, 0, ncmp),
                                  c.more[kCmpV].select(0, b).narrow(0, 0, ncmp), scale, &p);
      const int64_t ncand = t / lp + 1;
      std::vector<double> overlap(ncmp * ncand, 0.0);  // [c, j]: the weight of block c in j's score
      for (int64_t cb = 0; cb < ncmp; ++cb)
        for (int64_t j = cb * d / lp; j * lp < cb * d + l && j < ncand; ++j)
          overlap[cb * ncand + j] = (double)nsa_block_overlap(cb, j, opt) / (double)d;
      std::vector<double> score(H * ncand, 0.0);
      if (ncmp > 0) {
        const Tensor w = from_vector(overlap, {ncmp, ncand}, DType::f64).to(p.device());
        score = matmul(sum(p.to(DType::f64), {1}), w).to_vector();  // [H, ncand]
      }
      // Selected branch: per key/value head, the keys <= t of its chosen blocks.
      std::vector<Tensor> o_slc;
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> keys;
        const std::vector<double> sh(score.begin() + h * ncand, score.begin() + (h + 1) * ncand);
        std::vector<int32_t> chosen(cfg.n_select);
        nsa_select_blocks(sh, t, opt, chosen.data());
        for (int32_t blk : chosen)
          for (int64_t k = (int64_t)blk * lp; blk >= 0 && k < std::min<int64_t>((blk + 1) * lp, t + 1); ++k)
            keys.push_back((double)k);
        const Tensor idx = from_vector(keys, {(int64_t)keys.size()}, DType::i64).to(x.device());
        const Tensor kh = index_select(c.k.select(0, b).select(1, h), 0, idx), vh = index_select(c.v.select(0, b).select(1, h), 0, idx);
        o_slc.push_back(attend(qt.narrow(0, h, 1), kh.unsqueeze(1), vh.unsqueeze(1), scale));
      }
      // Window branch: keys t - w < s <= t.
      const int64_t w0 = std::max<int64_t>(0, t - cfg.window + 1), nw = cfg.window > 0 ? t + 1 - w0 : 0;
      const Tensor o_win = attend(qt, c.more[kWinK].select(0, b).narrow(0, w0, nw), c.more[kWinV].select(0, b).narrow(0, w0, nw), scale);
      const Tensor g = gates.select(0, b).select(0, i).reshape({H, G, 3});
      rows.push_back(g.narrow(2, 0, 1) * o_cmp + g.narrow(2, 1, 1) * cat(o_slc, 0) + g.narrow(2, 2, 1) * o_win);
    }
  const Tensor o = stack(rows, 0).reshape({B, Tn, HQ * D});
  return wo->forward(o);
}

}  // namespace nt::nsa
