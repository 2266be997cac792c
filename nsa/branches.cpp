// nsa/branches.h: the compressed and window branches on flash_attention, the query regrouping and the gate mix
// as ops of their own (forward, backward right below; CPU loops in nsa/cpu/branches.cpp, kernels in
// cuda/nsa_branches.cu).
#include "nsa/branches.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>

#include "autograd/graph.h"
#include "nsa/selected_parts.h"
#include "ops/attention.h"
#include "ops/device_tables.h"
#include "ops/dispatch.h"
#include "ops/ops.h"

namespace nt {
namespace cpu {
void nsa_regroup(const Tensor& x, const Tensor& idx, int64_t d, bool to_regrouped, const Tensor& out);
void nsa_mix_forward(const Tensor& o0, const Tensor& o1, const Tensor& o2, const Tensor& gates, const Tensor& out);
void nsa_mix_backward(const Tensor& o0, const Tensor& o1, const Tensor& o2, const Tensor& gates, const Tensor& dy,
                      const Tensor& d0, const Tensor& d1, const Tensor& d2, const Tensor& dgates);
}  // namespace cpu

NT_REGISTER_OP(kNsaRegroup, "nsa_regroup_queries", true);
NT_REGISTER_OP(kNsaUngroup, "nsa_ungroup_queries", true);
NT_REGISTER_OP(kNsaMix, "nsa_mix_branches", true);
NT_REGISTER_OP(kNsaMixRegrouped, "nsa_mix_branches_regrouped", true);
NT_REGISTER_OP(kNsaBranches, "nsa_attention_branches", true);

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

// The compressed branch's query layout for T queries: row (c, r) of the regrouped queries takes query
// t = l - 1 + d c + r of its sequence (take = T past a sequence's end: zeros); query t takes back row (c, r)
// (back = NC d when it sees no block: zeros). i32 on the device.
struct RegroupMaps {
  std::vector<int32_t> cu_cmp{0};
  int64_t T = 0, NC = 0, d = 1;
  Tensor take, back;
};
RegroupMaps regroup_maps(const char* what, int64_t T, const NsaOptions& opt, Device dev) {
  NT_CHECK(opt.block > 0 && opt.stride > 0, "{}: block ({}) and stride ({}) must be positive", what, opt.block,
           opt.stride);
  const std::vector<int32_t> cu = cu_of(opt, T);
  NT_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T, "{}: cu_seqlens must run from 0 to T = {}", what, T);
  RegroupMaps m;
  const int64_t l = opt.block, d = opt.stride;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    NT_CHECK(cu[b + 1] >= cu[b], "{}: cu_seqlens must not decrease, got {} after {}", what, cu[b + 1], cu[b]);
    m.cu_cmp.push_back(m.cu_cmp.back() + (int32_t)nsa_num_cmp_blocks(cu[b + 1] - cu[b], l, d));
  }
  m.T = T, m.NC = m.cu_cmp.back(), m.d = d;
  // Every layer of a step regroups over the same layout: each map is built and uploaded once (ops/device_tables.h).
  std::vector<int64_t> key(cu.begin(), cu.end());
  key.insert(key.end(), {T, l, d});
  m.take = cached_table("nsa regroup take", key, DType::i32, dev, [&] {
    std::vector<double> take(m.NC * d);
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      const int64_t start = cu[b], len = cu[b + 1] - cu[b];
      for (int64_t c = m.cu_cmp[b]; c < m.cu_cmp[b + 1]; ++c)
        for (int64_t r = 0; r < d; ++r) {
          const int64_t t = l - 1 + d * (c - m.cu_cmp[b]) + r;
          take[c * d + r] = t < len ? (double)(start + t) : (double)T;
        }
    }
    return take;
  });
  m.back = cached_table("nsa regroup back", key, DType::i32, dev, [&] {
    std::vector<double> back(T);
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      const int64_t start = cu[b], len = cu[b + 1] - cu[b];
      for (int64_t t = 0; t < len; ++t)
        back[start + t] = t < l - 1 ? (double)(m.NC * d) : (double)(m.cu_cmp[b] * d + (t - (l - 1)));
    }
    return back;
  });
  return m;
}

// to_regrouped: x [T, HQ, D] -> [NC, HQ d, D]; else x [NC, HQ d, D] -> [T, HQ, D]. No history.
Tensor regroup_raw(const Tensor& x, const RegroupMaps& m, bool to_regrouped) {
  const Tensor xc = x.detach().contiguous();
  const int64_t D = x.size(2), HQ = to_regrouped ? x.size(1) : x.size(1) / m.d;
  Tensor out = to_regrouped ? empty({m.NC, HQ * m.d, D}, x.dtype(), x.device()) : empty({m.T, HQ, D}, x.dtype(), x.device());
  const Tensor& idx = to_regrouped ? m.take : m.back;
  if (x.device().is_cpu()) {
    cpu::nsa_regroup(xc, idx, m.d, to_regrouped, out);
  } else {
    NT_ON_CUDA("nsa_regroup_queries",
               cuda::nsa_regroup(x.element_size(), xc.data_ptr(), out.data_ptr(), idx.data<int32_t>(), idx.numel(), HQ,
                                 m.d, D, to_regrouped ? m.T : m.NC * m.d, to_regrouped, stream_of(out)));
  }
  return out;
}

// The op: each direction's backward is the other direction (take and back are inverse on the rows that exist).
Tensor regroup(const Tensor& x, const RegroupMaps& m, bool to_regrouped) {
  Tensor out = regroup_raw(x, m, to_regrouped);
  if (autograd::needs_grad({&x}))
    autograd::record(to_regrouped ? kNsaRegroup : kNsaUngroup, out, {x}, [m, to_regrouped](const Tensor& g, auto&) {
      return std::vector<Tensor>{regroup_raw(g, m, !to_regrouped)};
    });
  return out;
}
}  // namespace

Tensor nsa_regroup_queries(const Tensor& q, const NsaOptions& opt) {
  const char* what = "nsa_regroup_queries";
  NT_CHECK(q.dim() == 3, "{}: q must be [T, HQ, D], got {}", what, shape_str(q.shape()));
  check_floating(what, q, "q");
  return regroup(q, regroup_maps(what, q.size(0), opt, q.device()), true);
}

Tensor nsa_ungroup_queries(const Tensor& qr, int64_t T, const NsaOptions& opt) {
  const char* what = "nsa_ungroup_queries";
  check_floating(what, qr, "qr");
  const RegroupMaps m = regroup_maps(what, T, opt, qr.device());
  NT_CHECK(qr.dim() == 3 && qr.size(0) == m.NC && qr.size(1) % m.d == 0,
           "{}: qr must be [NC, HQ * d, D] with NC = {} compressed rows and d = {}, got {}", what, m.NC, m.d,
           shape_str(qr.shape()));
  return regroup(qr, m, false);
}

namespace {
#if NT_CUDA
cuda::NsaMixRegrouped mix_layout(const RegroupMaps& m, int64_t HQ) {
  cuda::NsaMixRegrouped rg;
  rg.back = m.back.data<int32_t>(), rg.take = m.take.data<int32_t>();
  rg.T = m.T, rg.NC = m.NC, rg.d = m.d, rg.HQ = HQ;
  return rg;
}
#endif

// The gate mix's two directions without history, on contiguous inputs: out = g0 o_cmp + g1 o_slc + g2 o_win; the
// backward returns d o_cmp, d o_slc, d o_win, d gates. With m, o_cmp (and its gradient) are regrouped ([NC, HQ d,
// D]): on CUDA the kernels read and write that layout themselves, so neither direction ungroups or regroups a
// [T, HQ, D] tensor; on the CPU it is ungrouped for the same loops.
Tensor mix_forward_raw(const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& g,
                       const std::optional<RegroupMaps>& m) {
  const int64_t HQ = b.size(1), D = b.size(2), rows = b.size(0) * HQ;
  Tensor out = empty(b.shape(), b.dtype(), b.device());
  if (out.device().is_cpu()) {
    cpu::nsa_mix_forward(m ? regroup_raw(a, *m, false) : a, b, c, g, out);
  } else {
    NT_ON_CUDA("nsa_mix_branches", {
      const cuda::NsaMixRegrouped rg = m ? mix_layout(*m, HQ) : cuda::NsaMixRegrouped{};
      cuda::nsa_mix_forward(out.dtype(), a.data_ptr(), b.data_ptr(), c.data_ptr(), g.data_ptr(), out.data_ptr(), rows,
                            D, stream_of(out), m ? &rg : nullptr);
    });
  }
  return out;
}
// deltas (CUDA, bf16, regrouped; optional): f32 buffers for each branch's rowsum(d_b o_b) in the layout its backward
// reads (cuda::NsaMixDeltas), the compressed branch's zeroed by the caller.
std::vector<Tensor> mix_backward_raw(const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& g,
                                     const Tensor& dy_in, const std::optional<RegroupMaps>& m,
                                     const Tensor* deltas = nullptr) {
  const int64_t HQ = b.size(1), D = b.size(2), rows = b.size(0) * HQ;
  const Tensor dy = dy_in.to(b.dtype()).contiguous();
  std::vector<Tensor> d{empty_like(a), empty_like(b), empty_like(c), empty_like(g)};
  if (a.device().is_cpu()) {
    const Tensor d0 = m ? empty_like(b) : d[0];
    cpu::nsa_mix_backward(m ? regroup_raw(a, *m, false) : a, b, c, g, dy, d0, d[1], d[2], d[3]);
    if (m) d[0] = regroup_raw(d0, *m, true);
  } else {
    NT_ON_CUDA("nsa_mix_branches", {
      const cuda::NsaMixRegrouped rg = m ? mix_layout(*m, HQ) : cuda::NsaMixRegrouped{};
      cuda::NsaMixDeltas dl;
      if (deltas)
        for (int i = 0; i < 3; ++i) dl.d[i] = static_cast<float*>(deltas[i].data_ptr());
      cuda::nsa_mix_backward(a.dtype(), a.data_ptr(), b.data_ptr(), c.data_ptr(), g.data_ptr(), dy.data_ptr(),
                             d[0].data_ptr(), d[1].data_ptr(), d[2].data_ptr(), d[3].data_ptr(), rows, D,
                             stream_of(dy), m ? &rg : nullptr, deltas ? &dl : nullptr);
    });
  }
  return d;
}

// The gate mix as an op (nsa_mix_branches, or nsa_mix_branches_regrouped with m), inputs already checked.
Tensor mix(const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_win, const Tensor& gates,
           std::optional<RegroupMaps> m) {
  const Tensor a = o_cmp.detach().contiguous(), b = o_slc.detach().contiguous(), c = o_win.detach().contiguous(),
               g = gates.detach().contiguous();
  Tensor out = mix_forward_raw(a, b, c, g, m);
  if (autograd::needs_grad({&o_cmp, &o_slc, &o_win, &gates}))
    autograd::record(m ? kNsaMixRegrouped : kNsaMix, out, {o_cmp, o_slc, o_win, gates},
                     [sa = autograd::Saved(a), sb = autograd::Saved(b), sc = autograd::Saved(c),
                      sg = autograd::Saved(g), m](const Tensor& dy, auto&) {
                       return mix_backward_raw(sa.get(), sb.get(), sc.get(), sg.get(), dy, m);
                     });
  return out;
}

// mix with o_cmp still regrouped (orr [NC, HQ d, D]); the branch-wise op's own inputs, so only the layouts are checked.
Tensor mix_regrouped(const Tensor& orr, const Tensor& o_slc, const Tensor& o_win, const Tensor& gates,
                     const RegroupMaps& m) {
  NT_CHECK(o_slc.dim() == 3 && o_slc.size(0) == m.T && o_win.shape() == o_slc.shape() &&
               orr.shape() == Shape({m.NC, o_slc.size(1) * m.d, o_slc.size(2)}) &&
               gates.shape() == Shape({m.T, o_slc.size(1), 3}),
           "nsa_mix_branches_regrouped: expected o_slc, o_win [{}, HQ, D], o_cmp regrouped [{}, HQ {}, D] and gates "
           "[{}, HQ, 3], got {}, {}, {} and {}",
           m.T, m.NC, m.d, m.T, shape_str(o_slc.shape()), shape_str(o_win.shape()), shape_str(orr.shape()),
           shape_str(gates.shape()));
  return mix(orr, o_slc, o_win, gates, m);
}
}  // namespace

Tensor nsa_mix_branches(const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_win, const Tensor& gates) {
  const char* what = "nsa_mix_branches";
  NT_CHECK(o_cmp.dim() == 3, "{}: o_cmp must be [T, HQ, D], got {}", what, shape_str(o_cmp.shape()));
  for (auto [t, name] : {std::pair{&o_slc, "o_slc"}, std::pair{&o_win, "o_win"}})
    NT_CHECK(t->shape() == o_cmp.shape(), "{}: {} must have o_cmp's shape {}, got {}", what, name,
             shape_str(o_cmp.shape()), shape_str(t->shape()));
  const Shape gshape{o_cmp.size(0), o_cmp.size(1), 3};
  NT_CHECK(gates.shape() == gshape, "{}: gates must be {}, got {}", what, shape_str(gshape), shape_str(gates.shape()));
  for (auto [t, name] : {std::pair{&o_cmp, "o_cmp"}, std::pair{&o_slc, "o_slc"}, std::pair{&o_win, "o_win"},
                         std::pair{&gates, "gates"}}) {
    check_floating(what, *t, name);
    check_same_device(what, o_cmp, *t);
    NT_CHECK(t->dtype() == o_cmp.dtype(), "{}: {} must have o_cmp's dtype {}, got {}", what, name,
             dtype_name(o_cmp.dtype()), dtype_name(t->dtype()));
  }
  return mix(o_cmp, o_slc, o_win, gates, std::nullopt);
}

namespace {
// The compressed branch before its output is ungrouped: orr [NC, HQ d, D] (differentiable), the log-sum-exps in q's
// layout [T, HQ], the maps. NC > 0.
struct CmpRegrouped {
  Tensor orr, lse;
  RegroupMaps m;
};
CmpRegrouped compressed_regrouped(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const NsaOptions& opt,
                                  RegroupMaps m) {
  const int64_t NC = m.NC, d = m.d, HQ = q.size(1);
  AttentionOptions ao;
  ao.scale = opt.scale, ao.cu_seqlens = m.cu_cmp;
  Tensor lse_r;
  CmpRegrouped c;
  c.orr = flash_attention(regroup(q, m, true), k_cmp, v_cmp, ao, &lse_r);  // [NC, HQ d, D]; lse [HQ d, NC]
  {
    autograd::NoGradGuard ng;
    const Tensor lse_flat = lse_r.reshape({HQ, d, NC}).permute({2, 1, 0}).reshape({NC * d, HQ});
    c.lse = index_select(cat({lse_flat, full({1, HQ}, -std::numeric_limits<double>::infinity(), DType::f32, q.device())},
                             0),
                         0, m.back.to(DType::i64));
  }
  c.m = std::move(m);
  return c;
}

}  // namespace

NsaBranch nsa_compressed_branch(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const NsaOptions& opt) {
  const char* what = "nsa_compressed_branch";
  NT_CHECK(q.dim() == 3, "{}: q must be [T, HQ, D], got {}", what, shape_str(q.shape()));
  const int64_t T = q.size(0);
  RegroupMaps m = regroup_maps(what, T, opt, q.device());
  check_qkv(what, q, k_cmp, v_cmp, m.NC, "the compressed blocks of all sequences");
  if (m.NC == 0) {  // every sequence shorter than a block: nothing is visible anywhere
    NsaBranch r;
    r.o = zeros(q.shape(), q.dtype(), q.device());
    r.lse = full({T, q.size(1)}, -std::numeric_limits<double>::infinity(), DType::f32, q.device());
    return r;
  }
  CmpRegrouped c = compressed_regrouped(q, k_cmp, v_cmp, opt, std::move(m));
  return {regroup(c.orr, c.m, false), c.lse};
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

namespace {
const char* one_node_env() {
  const char* e = std::getenv("NT_NSA_ONE_NODE");
  return e ? e : "";
}
NsaOneNode g_node = [] {
  const std::string e = one_node_env();
  return e.empty() ? NsaOneNode{} : NsaOneNode{e != "0", e != "0", e == "2"};
}();

// The branch-wise op as one autograd node (op nsa_attention_branches): the same forward, and a backward that sums
// the three branches' dq in f32 (the selected and window branches' into one sum that the compressed branch's,
// regrouped, joins in the conversion: cuda::nsa_finish_dq) instead of three f32 sums, three conversions, an ungroup
// and two bf16 additions of [T, HQ, D] tensors. On CUDA in bf16 where the selected branch runs alone on tensor cores
// with its walk computing dq (nsa_internal::selected_parts_apply), and on the CPU (the same loops as the per-branch
// ops: so the f64 tests check this node's plumbing); NC > 0 and w > 0. Else nullopt (nothing ran).
std::optional<NsaOutput> one_node(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                                  const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                                  const NsaOptions& opt, const RegroupMaps& m) {
  if (!(q.device().is_cuda() ? g_node.cuda : g_node.cpu) || m.NC == 0 || opt.window <= 0 ||
      (q.device().is_cuda() && q.dtype() != DType::bf16))
    return std::nullopt;
  for (const Tensor* t : {&k_cmp, &v_cmp, &k_slc, &v_slc, &k_win, &v_win, &gates})
    if (t->dtype() != q.dtype() || t->device() != q.device()) return std::nullopt;
  const Tensor qc = q.detach().contiguous(), kc = k_cmp.detach().contiguous(), vc = v_cmp.detach().contiguous(),
               ks = k_slc.detach().contiguous(), vs = v_slc.detach().contiguous(),
               kw = k_win.detach().contiguous(), vw = v_win.detach().contiguous(), g = gates.detach().contiguous();
  if (!nsa_internal::selected_parts_apply(qc, kc, ks, vs, opt)) return std::nullopt;
  const int64_t T = q.size(0), HQ = q.size(1), D = q.size(2);
  const std::vector<Tensor> inputs{q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates};
  const bool want_grad = autograd::needs_grad(inputs);
  std::optional<autograd::NoGradGuard> ng;
  ng.emplace();
  AttentionOptions ac, aw;
  ac.scale = opt.scale, ac.cu_seqlens = m.cu_cmp;
  aw.scale = opt.scale, aw.window = opt.window, aw.cu_seqlens = cu_of(opt, T);
  Tensor qr = regroup_raw(qc, m, true);
  Tensor lse_r, lse_w;
  const Tensor orr = flash_attention(qr, kc, vc, ac, &lse_r);  // [NC, HQ d, D]; lse [HQ d, NC]
  if (!want_grad) qr = Tensor();  // inference: gone before the other branches run (a [T, HQ, D] tensor)
  const Tensor lse_flat = lse_r.reshape({HQ, m.d, m.NC}).permute({2, 1, 0}).reshape({m.NC * m.d, HQ});
  const Tensor lse_cmp = index_select(
      cat({lse_flat, full({1, HQ}, -std::numeric_limits<double>::infinity(), DType::f32, q.device())}, 0), 0,
      m.back.to(DType::i64));
  std::optional<nsa_internal::SelectedParts> slc = nsa_internal::selected_forward_parts(qc, kc, ks, vs, lse_cmp, opt);
  NT_CHECK(slc.has_value(), "nsa_attention_branches: the selected branch did not run on tensor cores as checked");
  const Tensor ow = flash_attention(qc, kw, vw, aw, &lse_w);
  NsaOutput out{mix_forward_raw(orr, slc->out.o, ow, g, m), slc->out.block_indices};
  ng.reset();
  if (!want_grad) return out;
  std::vector<autograd::Saved> saved;
  // (the selected branch's own tensors are in slc; saved here too so that writing them in place is caught)
  for (const Tensor& t : {qc, kc, vc, kw, vw, g, qr, orr, lse_r, ow, lse_w, slc->in[3], slc->in[4], slc->o_saved})
    saved.emplace_back(t);
  autograd::record(kNsaBranches, out.o, inputs,
                   [saved, slc = std::move(*slc), m, ac, aw, T, HQ, D](const Tensor& dy, auto&) {
                     const Tensor &qc = saved[0].get(), &kc = saved[1].get(), &vc = saved[2].get(),
                                  &kw = saved[3].get(), &vw = saved[4].get(), &g = saved[5].get(),
                                  &qr = saved[6].get(), &orr = saved[7].get(), &lse_r = saved[8].get(),
                                  &ow = saved[9].get(), &lse_w = saved[10].get();
                     for (size_t i = 11; i < saved.size(); ++i) saved[i].get();  // checks only
                     // On CUDA with deltas_from_mix the mix backward also writes each branch's delta =
                     // rowsum(d_b o_b), which the three backwards would otherwise each compute in a pass of their own.
                     const bool from_mix = g_node.deltas_from_mix && qc.device().is_cuda() &&
                                           slc.o_saved.dtype() == DType::bf16;
                     Tensor deltas[3];
                     if (from_mix) {
                       deltas[0] = zeros({HQ * m.d, m.NC}, DType::f32, qc.device());  // rows no query takes: 0
                       deltas[1] = empty({T, HQ}, DType::f32, qc.device());
                       deltas[2] = empty({HQ, T}, DType::f32, qc.device());
                     }
                     std::vector<Tensor> d = mix_backward_raw(orr, slc.out.o, ow, g, dy, m,
                                                              from_mix ? deltas : nullptr);
                     // The selected and window branches' dq summed in q's layout, then the compressed branch's in
                     // its regrouped layout: each branch's dO goes once its backward is done, so the two f32 sums
                     // meet only with one dO left (at 64k, 64 heads: each [T, HQ, D] f32 sum 2 GiB, each dO 1).
                     const DType at = qc.dtype() == DType::f64 ? DType::f64 : DType::f32;
                     const Tensor acc = zeros({T, HQ, D}, at, qc.device());
                     std::vector<Tensor> grads{empty_like(qc), empty_like(kc), empty_like(vc), empty_like(slc.in[3]),
                                               empty_like(slc.in[4]), empty_like(kw), empty_like(vw), d[3]};
                     nsa_internal::selected_backward_parts(slc, d[1], acc, grads[3], grads[4], deltas[1]);
                     d[1] = Tensor();
                     flash_attention_backward_add_dq(qc, kw, vw, ow, d[2], lse_w, aw, acc, grads[5], grads[6],
                                                     deltas[2]);
                     d[2] = Tensor();
                     const Tensor acc_r = zeros(qr.shape(), at, qr.device());
                     flash_attention_backward_add_dq(qr, kc, vc, orr, d[0], lse_r, ac, acc_r, grads[1], grads[2],
                                                     deltas[0]);
                     d[0] = Tensor();
                     if (qc.device().is_cpu()) {
                       autograd::NoGradGuard ng;
                       grads[0] = add(acc, regroup_raw(acc_r, m, false)).to(qc.dtype());
                     } else {
                       NT_ON_CUDA("nsa_attention_branches",
                                  cuda::nsa_finish_dq(acc.data<float>(), acc_r.data<float>(), m.back.data<int32_t>(),
                                                      grads[0].data_ptr(), T, HQ, m.d, D, m.NC * m.d,
                                                      stream_of(grads[0])));
                     }
                     return grads;
                   });
  return out;
}
}  // namespace

void set_nsa_branches_one_node(const NsaOneNode& s) { g_node = s; }
NsaOneNode nsa_branches_one_node() { return g_node; }

NsaOutput nsa_attention_branches(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                                 const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                                 const NsaOptions& opt) {
  NT_CHECK(q.dim() == 3 && gates.shape() == Shape({q.size(0), q.size(1), 3}),
           "nsa_attention_branches: q must be [T, HQ, D] and gates [T, HQ, 3], got {} and {}", shape_str(q.shape()),
           shape_str(gates.shape()));
  const char* what = "nsa_attention_branches";
  RegroupMaps m = regroup_maps(what, q.size(0), opt, q.device());
  if (m.NC == 0) {
    const NsaBranch cmp = nsa_compressed_branch(q, k_cmp, v_cmp, opt);
    const NsaOutput slc = nsa_selected_branch(q, k_cmp, k_slc, v_slc, cmp.lse, opt);
    const NsaBranch win = nsa_window_branch(q, k_win, v_win, opt);
    return {nsa_mix_branches(cmp.o, slc.o, win.o, gates.to(q.dtype())), slc.block_indices};
  }
  check_qkv(what, q, k_cmp, v_cmp, m.NC, "the compressed blocks of all sequences");
  check_qkv(what, q, k_win, v_win, q.size(0), "T");
  if (std::optional<NsaOutput> r = one_node(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates.to(q.dtype()), opt, m))
    return *r;
  // The compressed output stays regrouped until the mix (mix_regrouped).
  const CmpRegrouped cmp = compressed_regrouped(q, k_cmp, v_cmp, opt, std::move(m));
  const NsaOutput slc = nsa_selected_branch(q, k_cmp, k_slc, v_slc, cmp.lse, opt);
  const NsaBranch win = nsa_window_branch(q, k_win, v_win, opt);
  return {mix_regrouped(cmp.orr, slc.o, win.o, gates.to(q.dtype()), cmp.m), slc.block_indices};
}

}  // namespace nt
