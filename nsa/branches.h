// Two of NSA's three branches as dense attention problems for flash_attention, so that on the GPU they run on its
// tensor-core kernels (forward and backward) and only the selection and the selected branch need NSA's own kernels.
// Same semantics as the corresponding branch of nsa_attention (docs/nsa.md): with gates (1, 0, 0), nsa_attention's
// o is nsa_compressed_branch's o, with (0, 0, 1) nsa_window_branch's (tested in f64).
//
// Compressed branch: query t sees the compressed blocks c with c d + l - 1 <= t, so the d queries
// t = l - 1 + d c + r (0 <= r < d) see exactly blocks 0..c, and queries t < l - 1 see none. Regrouped as NC query
// rows (row c of a sequence holds its d queries as d * HQ heads, head hq * d + r, which GQA still maps to key/value
// head hq / G), it is causal attention of NC rows over the NC compressed keys: one flash_attention call over all
// sequences (cu_seqlens of the compressed rows). Costs a copy of q into that layout and of the output out of it
// (nsa_regroup_queries / nsa_ungroup_queries, one kernel each way).
// Window branch: flash_attention with window w (keys t - w < s <= t); w = 0 sees nothing.
#pragma once
#include "nsa/nsa_attention.h"

namespace nt {

struct NsaBranch {
  Tensor o;    // [T, HQ, D], q's dtype, differentiable w.r.t. q and the branch's keys and values; 0 where nothing is visible
  Tensor lse;  // f32 [T, HQ]: log-sum-exp of the scaled scores, -inf where nothing is visible; no history
};

NsaBranch nsa_compressed_branch(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const NsaOptions& opt = {});
NsaBranch nsa_window_branch(const Tensor& q, const Tensor& k_win, const Tensor& v_win, const NsaOptions& opt = {});

// The compressed branch's query layout: [T, HQ, D] -> [NC, HQ d, D] (row c holds the d queries
// t = l - 1 + d c + r of its sequence as heads hq d + r; zeros past a sequence's end), and back (zeros for the
// queries t < l - 1 of each sequence, which see no block). Each is the other's backward; cu_seqlens, block and
// stride from opt.
Tensor nsa_regroup_queries(const Tensor& q, const NsaOptions& opt = {});
Tensor nsa_ungroup_queries(const Tensor& qr, int64_t T, const NsaOptions& opt = {});

// o = g0 o_cmp + g1 o_slc + g2 o_win with gates [T, HQ, 3] (one dtype for all four), in f32 for bf16 (f64 for f64)
// with one rounding: one pass forward, one backward (do_b = g_b dy, dg_b = sum over D of dy o_b).
Tensor nsa_mix_branches(const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_win, const Tensor& gates);

// nsa_attention through the branches: the compressed branch (its log-sum-exps drive nsa_selected_branch's choice),
// the selected branch, the window branch; o = g0 o_cmp + g1 o_slc + g2 o_win, mixed in f32 for bf16 (one rounding
// per branch more than the fused op; nsa_mix_branches). Equal to nsa_attention (tested in f64, block indices
// included); gradients flow to all eight inputs, k_cmp's only through the compressed branch's output, as in
// nsa_attention.
// nsa_attention takes this path on CUDA (unless NsaOptions::fused or NT_NSA_BRANCHES=0).
NsaOutput nsa_attention_branches(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                                 const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                                 const NsaOptions& opt = {});
// The branch-wise path as one autograd node, whose backward sums the branches' dq in f32 (f64 for f64) and
// converts once (on the CPU, and on CUDA in bf16 where the selected branch runs on tensor cores), or as a node per
// branch and the mix, whose dq autograd adds. deltas_from_mix (CUDA): the node's mix backward also writes each
// branch's rowsum(dO o) for the branch backwards, which otherwise compute it in passes of their own (the same sums
// in another order). Same function every way. Defaults: the node on both devices, deltas from the mix (H100,
// 2026-12-07, 64k forward + backward: 125.5 ms as per-branch nodes, 121.7 as the node, 118.8 with the deltas).
// NT_NSA_ONE_NODE=0 (per-branch nodes), 1 (the node, deltas in the branches' own passes) or 2 (the node, deltas
// from the mix) sets both devices.
struct NsaOneNode {
  bool cpu = true, cuda = true, deltas_from_mix = true;
};
void set_nsa_branches_one_node(const NsaOneNode& s);
NsaOneNode nsa_branches_one_node();

}  // namespace nt
