#include "nsa/branches.h"

#include <cmath>
#include <limits>

#include "ops/ops.h"

namespace nt {

namespace {
std::vector<int32_t> cu_of(const NsaOptions& opt, int64_t T) {
  return opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : opt.cu_seqlens;
}
void check_qkv(const char* what, const Tensor& q, const Tensor& k, const Tensor& v, int64_t rows, const char* rows_is) {
  NT_CHECK(q.dim() == 3, "{}: q must be [T, HQ, D], got {}", what, shape_str(q.shape()));
  const int64_t HQ = q.size(1), D = q.size(2);
  NT_CHECK(k.dim() == 3 && k.shape() == v.shape() && k.size(2) == D && k.size(1) > 0 && HQ % k.size(1) == 0,
           "{}: keys and values must be [{}, H, {}] with H dividing {} query heads, got {} and {}", what, rows_is, D, HQ,
           shape_str(k.shape()), shape_str(v.shape()));
  NT_CHECK(k.size(0) == rows, "{}: keys must have {} rows ({}), got {}", what, rows, rows_is, k.size(0));
}
}  // namespace

NsaBranch nsa_compressed_branch(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const NsaOptions& opt) {
  const char* what = "nsa_compressed_branch";
  NT_CHECK(opt.block > 0 && opt.stride > 0, "{}: block ({}) and stride ({}) must be positive", what, opt.block,
           opt.stride);
  const int64_t T = q.dim() == 3 ? q.size(0) : 0;
  const std::vector<int32_t> cu = cu_of(opt, T);
  NT_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T, "{}: cu_seqlens must run from 0 to T = {}", what, T);
  // Compressed rows per sequence, and the gather tables: row (c, r) of the regrouped queries takes query
  // t = l - 1 + d c + r of its sequence (or the zero row T past a sequence's end); query t takes back row (c, r)
  // (or the zero row past the regrouped rows when it sees no block).
  const int64_t l = opt.block, d = opt.stride;
  std::vector<int32_t> cu_cmp{0};
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    cu_cmp.push_back(cu_cmp.back() + (int32_t)nsa_num_cmp_blocks(cu[b + 1] - cu[b], l, d));
  const int64_t NC = cu_cmp.back();
  check_qkv(what, q, k_cmp, v_cmp, NC, "the compressed blocks of all sequences");
  const int64_t HQ = q.size(1), D = q.size(2);
  std::vector<double> take(NC * d), back(T);
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t start = cu[b], len = cu[b + 1] - cu[b];
    for (int64_t c = cu_cmp[b]; c < cu_cmp[b + 1]; ++c)
      for (int64_t r = 0; r < d; ++r) {
        const int64_t t = l - 1 + d * (c - cu_cmp[b]) + r;
        take[c * d + r] = t < len ? (double)(start + t) : (double)T;
      }
    for (int64_t t = 0; t < len; ++t)
      back[start + t] = t < l - 1 ? (double)(NC * d) : (double)(cu_cmp[b] * d + (t - (l - 1)));
  }
  const Device dev = q.device();
  if (NC == 0) {  // every sequence shorter than a block: nothing is visible anywhere
    NsaBranch r;
    r.o = zeros(q.shape(), q.dtype(), dev);
    r.lse = full({T, HQ}, -std::numeric_limits<double>::infinity(), DType::f32, dev);
    return r;
  }
  const Tensor take_idx = from_vector(take, {NC * d}, DType::i64).to(dev), back_idx = from_vector(back, {T}, DType::i64).to(dev);
  const Tensor q_pad = cat({q, zeros({1, HQ, D}, q.dtype(), dev)}, 0);
  // [NC * d, HQ, D] -> [NC, d, HQ, D] -> [NC, HQ, d, D] -> [NC, HQ * d, D]: head hq * d + r.
  const Tensor qr = index_select(q_pad, 0, take_idx).reshape({NC, d, HQ, D}).permute({0, 2, 1, 3}).reshape({NC, HQ * d, D});
  AttentionOptions ao;
  ao.scale = opt.scale, ao.cu_seqlens = cu_cmp;
  Tensor lse_r;
  const Tensor orr = flash_attention(qr, k_cmp, v_cmp, ao, &lse_r);  // [NC, HQ * d, D]; lse [HQ * d, NC]
  const Tensor o_flat = orr.reshape({NC, HQ, d, D}).permute({0, 2, 1, 3}).reshape({NC * d, HQ, D});
  NsaBranch r;
  r.o = index_select(cat({o_flat, zeros({1, HQ, D}, q.dtype(), dev)}, 0), 0, back_idx);
  {
    autograd::NoGradGuard ng;
    const Tensor lse_flat = lse_r.reshape({HQ, d, NC}).permute({2, 1, 0}).reshape({NC * d, HQ});
    r.lse = index_select(cat({lse_flat, full({1, HQ}, -std::numeric_limits<double>::infinity(), DType::f32, dev)}, 0), 0,
                         back_idx);
  }
  return r;
}

NsaBranch nsa_window_branch(const Tensor& q, const Tensor& k_win, const Tensor& v_win, const NsaOptions& opt) {
  const char* what = "nsa_window_branch";
  NT_CHECK(opt.window >= 0, "{}: window must be >= 0, got {}", what, opt.window);
  const int64_t T = q.dim() == 3 ? q.size(0) : 0;
  check_qkv(what, q, k_win, v_win, T, "T");
  NsaBranch r;
  if (opt.window == 0) {  // unlike flash_attention's window 0 (no limit): the branch sees nothing
    r.o = zeros(q.shape(), q.dtype(), q.device());
    r.lse = full({T, q.size(1)}, -std::numeric_limits<double>::infinity(), DType::f32, q.device());
    return r;
  }
  AttentionOptions ao;
  ao.scale = opt.scale, ao.window = opt.window, ao.cu_seqlens = cu_of(opt, T);
  Tensor lse;
  r.o = flash_attention(q, k_win, v_win, ao, &lse);
  r.lse = lse.transpose(0, 1).contiguous();
  return r;
}

NsaOutput nsa_attention_branches(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                                 const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                                 const NsaOptions& opt) {
  NT_CHECK(q.dim() == 3 && gates.shape() == Shape({q.size(0), q.size(1), 3}),
           "nsa_attention_branches: q must be [T, HQ, D] and gates [T, HQ, 3], got {} and {}", shape_str(q.shape()),
           shape_str(gates.shape()));
  const NsaBranch cmp = nsa_compressed_branch(q, k_cmp, v_cmp, opt);
  const NsaOutput slc = nsa_selected_branch(q, k_cmp, k_slc, v_slc, cmp.lse, opt);
  const NsaBranch win = nsa_window_branch(q, k_win, v_win, opt);
  const bool low = q.dtype() == DType::bf16;
  auto f = [&](const Tensor& t) { return low ? t.to(DType::f32) : t; };
  const Tensor g = f(gates);
  const Tensor o = g.narrow(2, 0, 1) * f(cmp.o) + g.narrow(2, 1, 1) * f(slc.o) + g.narrow(2, 2, 1) * f(win.o);
  return {low ? o.to(DType::bf16) : o, slc.block_indices};
}

}  // namespace nt
