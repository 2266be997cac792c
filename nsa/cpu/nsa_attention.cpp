// CPU reference for nsa_attention, accumulating in double. For each sequence, query t and key/value head h: the
// compression branch of the group's G query heads (whose probabilities also score the selection blocks), the
// group's one choice of blocks, then the selected and window branches of each head; o mixes the three with the gates.
//
// Every branch is softmax attention of one query row over a list of key rows, so the forward and the backward share
// attend / attend_backward and differ from branch to branch only in which rows they list (the *_rows functions).
// Rows are global (packed) rows; token and block indices restart at each sequence's first token.
// Layouts, all contiguous: q, o [N, HQ, D]; k_cmp, v_cmp [NC, H, D]; k/v_slc, k/v_win [N, H, D]; gates [N, HQ, 3];
// block_indices i32 [N, H, n]; branch_o f64 [3, N, HQ, D]; lse f64 [3, N, HQ]; dout f64 [N, HQ, D]; lse_cmp
// (optional) f64 [N, HQ]: the compressed branch's log-sum-exps from elsewhere (its branch then adds 0 here and only
// scores the selection).
#include <algorithm>
#include <cmath>
#include <vector>

#include "nsa/nsa_attention.h"
#include "nsa/selection.h"
#include "tensor/convert.h"

namespace nt::cpu {
namespace {
template <class T> struct Rows {
  const T* p;
  int64_t heads, D;
  explicit Rows(const Tensor& t) : p(static_cast<const T*>(t.data_ptr())), heads(t.size(1)), D(t.size(2)) {}
  const T* at(int64_t row, int64_t h) const { return p + (row * heads + h) * D; }
};

struct Sequence {
  int64_t start, len, cmp_start;  // first row, length, first row in k_cmp / v_cmp
};
std::vector<Sequence> sequences_of(const NsaOptions& opt) {
  std::vector<Sequence> s;
  int64_t cmp = 0;
  for (size_t b = 0; b + 1 < opt.cu_seqlens.size(); ++b) {
    const int64_t len = opt.cu_seqlens[b + 1] - opt.cu_seqlens[b];
    s.push_back({opt.cu_seqlens[b], len, cmp});
    cmp += nsa_num_cmp_blocks(len, opt.block, opt.stride);
  }
  return s;
}

// Compressed block c (keys [c*d, c*d + l)) is visible once its last key is: c*d + l - 1 <= t.
void cmp_rows(const Sequence& s, int64_t t, const NsaOptions& opt, std::vector<int64_t>& rows) {
  rows.clear();
  if (t + 1 < opt.block) return;
  for (int64_t c = 0; c <= (t + 1 - opt.block) / opt.stride; ++c) rows.push_back(s.cmp_start + c);
}
// The keys <= t of the selected blocks (the current block is causally masked).
void slc_rows(const Sequence& s, int64_t t, const int32_t* blocks, const NsaOptions& opt, std::vector<int64_t>& rows) {
  rows.clear();
  for (int64_t i = 0; i < opt.n_select && blocks[i] >= 0; ++i)
    for (int64_t k = blocks[i] * opt.select_block; k < std::min((blocks[i] + 1) * opt.select_block, t + 1); ++k)
      rows.push_back(s.start + k);
}
// Keys t - w < k <= t.
void win_rows(const Sequence& s, int64_t t, const NsaOptions& opt, std::vector<int64_t>& rows) {
  rows.clear();
  for (int64_t k = std::max<int64_t>(0, t - opt.window + 1); k <= t; ++k) rows.push_back(s.start + k);
}

// Softmax attention of query q over key rows `rows` of head h: out = sum_j p_j v_j (D doubles), p the
// probabilities. Returns the log-sum-exp of the scaled scores; no rows: -inf and out = 0 (the branch adds nothing).
template <class T>
double attend(const T* q, const Rows<T>& K, const Rows<T>& V, int64_t h, const std::vector<int64_t>& rows, double scale,
              std::vector<double>& p, double* out) {
  const int64_t D = K.D;
  std::fill(out, out + D, 0.0);
  p.assign(rows.size(), 0.0);
  if (rows.empty()) return -INFINITY;
  double mx = -INFINITY;
  for (size_t j = 0; j < rows.size(); ++j) {
    const T* k = K.at(rows[j], h);
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += to_double(q[d]) * to_double(k[d]);
    p[j] = dot * scale, mx = std::max(mx, p[j]);
  }
  double sum = 0;
  for (double& x : p) sum += (x = std::exp(x - mx));
  for (size_t j = 0; j < rows.size(); ++j) {
    p[j] /= sum;
    const T* v = V.at(rows[j], h);
    for (int64_t d = 0; d < D; ++d) out[d] += p[j] * to_double(v[d]);
  }
  return mx + std::log(sum);
}

// The gradients of one attend call, given dout (already times the branch's gate) and that call's out and lse. With
// delta = dout . out: ds_j = scale p_j (dout . v_j - delta); dq += ds_j k_j; dk_j += ds_j q; dv_j += p_j dout.
// dk and dv are laid out like K and V.
template <class T>
void attend_backward(const T* q, const Rows<T>& K, const Rows<T>& V, int64_t h, const std::vector<int64_t>& rows,
                     double scale, double lse, const double* dout, const double* out, double* dq, double* dk, double* dv) {
  const int64_t D = K.D;
  double delta = 0;
  for (int64_t d = 0; d < D; ++d) delta += dout[d] * out[d];
  for (int64_t row : rows) {
    const T *k = K.at(row, h), *v = V.at(row, h);
    double dot = 0, dp = 0;
    for (int64_t d = 0; d < D; ++d) dot += to_double(q[d]) * to_double(k[d]), dp += dout[d] * to_double(v[d]);
    const double p = std::exp(dot * scale - lse), ds = scale * p * (dp - delta);
    double *gk = dk + (row * K.heads + h) * D, *gv = dv + (row * K.heads + h) * D;
    for (int64_t d = 0; d < D; ++d) {
      dq[d] += ds * to_double(k[d]);
      gk[d] += ds * to_double(q[d]);
      gv[d] += p * dout[d];
    }
  }
}

struct Dims {
  int64_t N, HQ, H, G, D, n;
  explicit Dims(const std::vector<Tensor>& in, const NsaOptions& opt)
      : N(in[0].size(0)), HQ(in[0].size(1)), H(in[3].size(1)), G(HQ / H), D(in[0].size(2)), n(opt.n_select) {}
};
}  // namespace

// The probabilities exp(scale q.k - lse) of the listed key rows under a log-sum-exp computed elsewhere.
template <class T>
void probabilities(const T* q, const Rows<T>& K, int64_t h, const std::vector<int64_t>& rows, double scale, double lse,
                   std::vector<double>& p) {
  p.assign(rows.size(), 0.0);
  for (size_t j = 0; j < rows.size(); ++j) {
    const T* k = K.at(rows[j], h);
    double dot = 0;
    for (int64_t d = 0; d < K.D; ++d) dot += to_double(q[d]) * to_double(k[d]);
    p[j] = std::exp(dot * scale - lse);
  }
}

void nsa_forward(const std::vector<Tensor>& in, const NsaOptions& opt, const Tensor& o, const Tensor& block_indices,
                 const Tensor& branch_o, const Tensor& lse, const Tensor& lse_cmp, bool indices_given) {
  const Dims z(in, opt);
  NT_DISPATCH_FLOAT(in[0].dtype(), "nsa_attention", [&] {
    using T = scalar_t;
    const Rows<T> Q(in[0]), K[3] = {Rows<T>(in[1]), Rows<T>(in[3]), Rows<T>(in[5])},
                           V[3] = {Rows<T>(in[2]), Rows<T>(in[4]), Rows<T>(in[6])};
    const T* gate = static_cast<const T*>(in[7].data_ptr());
    T* O = static_cast<T*>(o.data_ptr());
    int32_t* I = static_cast<int32_t*>(block_indices.data_ptr());
    double *BO = static_cast<double*>(branch_o.data_ptr()), *L = static_cast<double*>(lse.data_ptr());
    const double* ext = lse_cmp.defined() ? static_cast<const double*>(lse_cmp.data_ptr()) : nullptr;
    auto at = [&](int br, int64_t row, int64_t hq) { return (br * z.N + row) * z.HQ + hq; };
    std::vector<int64_t> rows[3];
    std::vector<double> p, score;
    for (const Sequence& s : sequences_of(opt))
      for (int64_t t = 0; t < s.len; ++t) {
        const int64_t row = s.start + t;
        cmp_rows(s, t, opt, rows[0]);
        win_rows(s, t, opt, rows[2]);
        for (int64_t h = 0; h < z.H; ++h) {
          score.assign(t / opt.select_block + 1, 0.0);  // summed over the group's heads (Eq. 10)
          for (int64_t hq = h * z.G; hq < (h + 1) * z.G; ++hq) {
            if (ext) {  // only the probabilities, under the given log-sum-exp; the branch itself adds 0 here
              probabilities(Q.at(row, hq), K[0], h, rows[0], opt.scale, ext[row * z.HQ + hq], p);
              std::fill(BO + at(0, row, hq) * z.D, BO + at(0, row, hq) * z.D + z.D, 0.0);
              L[at(0, row, hq)] = -INFINITY;
            } else {
              L[at(0, row, hq)] = attend(Q.at(row, hq), K[0], V[0], h, rows[0], opt.scale, p, BO + at(0, row, hq) * z.D);
            }
            nsa_add_block_scores(p, opt, score);
          }
          int32_t* blocks = I + (row * z.H + h) * z.n;
          if (!indices_given) nsa_select_blocks(score, t, opt, blocks);
          slc_rows(s, t, blocks, opt, rows[1]);
          for (int64_t hq = h * z.G; hq < (h + 1) * z.G; ++hq) {
            for (int br = 1; br < 3; ++br)
              L[at(br, row, hq)] = attend(Q.at(row, hq), K[br], V[br], h, rows[br], opt.scale, p, BO + at(br, row, hq) * z.D);
            const T* g = gate + (row * z.HQ + hq) * 3;
            for (int64_t d = 0; d < z.D; ++d) {
              double acc = 0;
              for (int br = 0; br < 3; ++br) acc += to_double(g[br]) * BO[at(br, row, hq) * z.D + d];
              O[(row * z.HQ + hq) * z.D + d] = from_double<T>(acc);
            }
          }
        }
      }
  });
}

// o = sum_br g_br o_br: dg_br = dout . o_br, and branch br's attention gets dout scaled by g_br. The saved block
// indices fix the selected rows, so no gradient reaches the selection scores.
void nsa_backward(const std::vector<Tensor>& in, const NsaOptions& opt, const Tensor& block_indices,
                  const Tensor& branch_o, const Tensor& lse, const Tensor& dout, const std::vector<Tensor>& grads,
                  bool external_cmp) {
  const Dims z(in, opt);
  NT_DISPATCH_FLOAT(in[0].dtype(), "nsa_attention_backward", [&] {
    using T = scalar_t;
    const Rows<T> Q(in[0]), K[3] = {Rows<T>(in[1]), Rows<T>(in[3]), Rows<T>(in[5])},
                           V[3] = {Rows<T>(in[2]), Rows<T>(in[4]), Rows<T>(in[6])};
    const T* gate = static_cast<const T*>(in[7].data_ptr());
    const int32_t* I = static_cast<const int32_t*>(block_indices.data_ptr());
    const double *BO = static_cast<const double*>(branch_o.data_ptr()), *L = static_cast<const double*>(lse.data_ptr()),
                 *dO = static_cast<const double*>(dout.data_ptr());
    auto at = [&](int br, int64_t row, int64_t hq) { return (br * z.N + row) * z.HQ + hq; };
    std::vector<double> gq(in[0].numel(), 0.0), gg(in[7].numel(), 0.0), gk[3], gv[3], dob(z.D);
    for (int br = 0; br < 3; ++br) gk[br].assign(in[2 * br + 1].numel(), 0.0), gv[br].assign(in[2 * br + 2].numel(), 0.0);
    std::vector<int64_t> rows[3];
    for (const Sequence& s : sequences_of(opt))
      for (int64_t t = 0; t < s.len; ++t) {
        const int64_t row = s.start + t;
        cmp_rows(s, t, opt, rows[0]);
        win_rows(s, t, opt, rows[2]);
        for (int64_t h = 0; h < z.H; ++h) {
          slc_rows(s, t, I + (row * z.H + h) * z.n, opt, rows[1]);
          for (int64_t hq = h * z.G; hq < (h + 1) * z.G; ++hq) {
            const int64_t qrow = (row * z.HQ + hq) * z.D;
            for (int br = 0; br < 3; ++br) {
              const double* ob = BO + at(br, row, hq) * z.D;
              const double g = to_double(gate[(row * z.HQ + hq) * 3 + br]);
              double dg = 0;
              for (int64_t d = 0; d < z.D; ++d) dg += dO[qrow + d] * ob[d], dob[d] = g * dO[qrow + d];
              gg[(row * z.HQ + hq) * 3 + br] = dg;
              if (br == 0 && external_cmp) continue;  // that branch ran elsewhere
              attend_backward(Q.at(row, hq), K[br], V[br], h, rows[br], opt.scale, L[at(br, row, hq)], dob.data(), ob,
                              gq.data() + qrow, gk[br].data(), gv[br].data());
            }
          }
        }
      }
    auto store = [](const std::vector<double>& src, const Tensor& dst) {
      T* p = static_cast<T*>(dst.data_ptr());
      for (size_t i = 0; i < src.size(); ++i) p[i] = from_double<T>(src[i]);
    };
    store(gq, grads[0]), store(gk[0], grads[1]), store(gv[0], grads[2]), store(gk[1], grads[3]);
    store(gv[1], grads[4]), store(gk[2], grads[5]), store(gv[2], grads[6]), store(gg, grads[7]);
  });
}

}  // namespace nt::cpu
