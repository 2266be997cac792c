// A direct, independent implementation of the NSA equations (conventions in docs/nsa.md) for one sequence, the
// oracle nsa_attention is tested against: every score, mask and probability is materialized over all T keys, the
// block overlaps are counted key by key, and the selection sorts the candidates.
#pragma once
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "nsa/nsa_attention.h"
#include "test_util.h"

namespace nt::test {

// A test shape and its NSA options (blocks(l, d, l', n, w, cu_seqlens)).
struct Case {
  int64_t T, HQ, H, D;
  NsaOptions opt;
};
inline NsaOptions blocks(int64_t l, int64_t d, int64_t lp, int64_t n, int64_t w, std::vector<int32_t> cu = {}) {
  NsaOptions o;
  o.block = l, o.stride = d, o.select_block = lp, o.n_select = n, o.window = w, o.cu_seqlens = std::move(cu);
  return o;
}

struct NsaInputs {
  Tensor q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates;
  std::vector<Tensor> all() const { return {q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates}; }
};

// Random inputs (normal, gates uniform in (0.1, 0.9)) for T tokens and NC compressed blocks.
inline NsaInputs nsa_inputs(int64_t T, int64_t HQ, int64_t H, int64_t D, int64_t NC, uint64_t seed,
                            DType dtype = DType::f64) {
  return {rnd({T, HQ, D}, seed, dtype),      rnd({NC, H, D}, seed + 1, dtype), rnd({NC, H, D}, seed + 2, dtype),
          rnd({T, H, D}, seed + 3, dtype),   rnd({T, H, D}, seed + 4, dtype),  rnd({T, H, D}, seed + 5, dtype),
          rnd({T, H, D}, seed + 6, dtype),   uniform({T, HQ, 3}, seed + 7, 0.1, 0.9, dtype)};
}

inline NsaInputs nsa_cast(const NsaInputs& in, DType dtype) {
  return {in.q.to(dtype),     in.k_cmp.to(dtype), in.v_cmp.to(dtype), in.k_slc.to(dtype),
          in.v_slc.to(dtype), in.k_win.to(dtype), in.v_win.to(dtype), in.gates.to(dtype)};
}

struct NaiveNsa {
  std::vector<double> o;                  // [T, HQ, D]
  std::vector<int32_t> block_indices;     // [T, H, n]
  // The smallest gap, over queries whose choice depends on scores, between the last block chosen by score and the
  // best one left out: a gradient check with perturbations far below it cannot change the selection.
  double margin = INFINITY;
};

inline NaiveNsa naive_nsa(const NsaInputs& in, const NsaOptions& opt) {
  const std::vector<double> q = in.q.to_vector(), kc = in.k_cmp.to_vector(), vc = in.v_cmp.to_vector(),
                            ks = in.k_slc.to_vector(), vs = in.v_slc.to_vector(), kw = in.k_win.to_vector(),
                            vw = in.v_win.to_vector(), gates = in.gates.to_vector();
  const int64_t T = in.q.size(0), HQ = in.q.size(1), D = in.q.size(2), H = in.k_slc.size(1), G = HQ / H;
  const int64_t l = opt.block, d = opt.stride, lp = opt.select_block, n = opt.n_select, w = opt.window;
  const double scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt((double)D);
  int64_t NC = 0;
  while (NC * d + l <= T) ++NC;  // block NC fits entirely
  const int64_t NB = (T + lp - 1) / lp;

  // Softmax attention of (t, hq) over the rows r < R of K/V (head h) with visible(r); no visible row gives 0.
  auto attn = [&](int64_t t, int64_t hq, const std::vector<double>& K, const std::vector<double>& V, int64_t R,
                  auto visible, std::vector<double>* probs) {
    const int64_t h = hq / G;
    std::vector<double> s(R, -INFINITY), out(D, 0.0);
    for (int64_t r = 0; r < R; ++r)
      if (visible(r)) {
        s[r] = 0;
        for (int64_t e = 0; e < D; ++e) s[r] += q[(t * HQ + hq) * D + e] * K[(r * H + h) * D + e];
        s[r] *= scale;
      }
    const double mx = R > 0 ? *std::max_element(s.begin(), s.end()) : -INFINITY;
    std::vector<double> p(R, 0.0);
    if (mx != -INFINITY) {
      double z = 0;
      for (int64_t r = 0; r < R; ++r) z += std::exp(s[r] - mx);
      for (int64_t r = 0; r < R; ++r) p[r] = std::exp(s[r] - mx) / z;
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t e = 0; e < D; ++e) out[e] += p[r] * V[(r * H + h) * D + e];
    if (probs) *probs = p;
    return out;
  };

  // overlap[c][j]: keys shared by compressed block c and selection block j, counted one by one.
  std::vector<std::vector<double>> overlap(NC, std::vector<double>(NB, 0.0));
  for (int64_t c = 0; c < NC; ++c)
    for (int64_t j = 0; j < NB; ++j)
      for (int64_t s = 0; s < T; ++s) overlap[c][j] += (c * d <= s && s < c * d + l && j * lp <= s && s < (j + 1) * lp);

  NaiveNsa res;
  res.o.assign(T * HQ * D, 0.0);
  res.block_indices.assign(T * H * n, -1);
  std::vector<std::vector<double>> o_cmp(T * HQ), p_cmp(T * HQ);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hq = 0; hq < HQ; ++hq)
      o_cmp[t * HQ + hq] = attn(t, hq, kc, vc, NC, [&](int64_t c) { return c * d + l - 1 <= t; }, &p_cmp[t * HQ + hq]);

  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> score(NB, 0.0);
      for (int64_t hq = h * G; hq < (h + 1) * G; ++hq)
        for (int64_t c = 0; c < NC; ++c)
          for (int64_t j = 0; j < NB; ++j) score[j] += p_cmp[t * HQ + hq][c] * overlap[c][j] / d;
      const int64_t cur = t / lp;
      std::vector<int32_t> chosen;
      if (cur + 1 <= n) {
        for (int64_t j = 0; j <= cur; ++j) chosen.push_back((int32_t)j);
      } else {
        std::vector<int32_t> rest;
        for (int64_t j = 0; j <= cur; ++j)
          if (j == 0 || j == cur || j == cur - 1) chosen.push_back((int32_t)j);
          else rest.push_back((int32_t)j);
        std::stable_sort(rest.begin(), rest.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
        const size_t take = n - chosen.size();
        chosen.insert(chosen.end(), rest.begin(), rest.begin() + take);
        if (take > 0 && take < rest.size()) res.margin = std::min(res.margin, score[rest[take - 1]] - score[rest[take]]);
        std::sort(chosen.begin(), chosen.end());
      }
      std::vector<bool> in_sel(NB, false);
      for (size_t i = 0; i < chosen.size(); ++i) {
        res.block_indices[(t * H + h) * n + i] = chosen[i];
        in_sel[chosen[i]] = true;
      }
      for (int64_t hq = h * G; hq < (h + 1) * G; ++hq) {
        const auto o_slc = attn(t, hq, ks, vs, T, [&](int64_t s) { return s <= t && in_sel[s / lp]; }, nullptr);
        const auto o_win = attn(t, hq, kw, vw, T, [&](int64_t s) { return t - w < s && s <= t; }, nullptr);
        const double* g = &gates[(t * HQ + hq) * 3];
        for (int64_t e = 0; e < D; ++e)
          res.o[(t * HQ + hq) * D + e] = g[0] * o_cmp[t * HQ + hq][e] + g[1] * o_slc[e] + g[2] * o_win[e];
      }
    }
  return res;
}

}  // namespace nt::test
