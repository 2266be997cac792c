// Two of NSA's three branches as dense attention problems for flash_attention, so that on the GPU they run on its
// tensor-core kernels (forward and backward) and only the selection and the selected branch need NSA's own kernels.
// Same semantics as the corresponding branch of nsa_attention (docs/nsa.md): with gates (1, 0, 0), nsa_attention's
// o is nsa_compressed_branch's o, with (0, 0, 1) nsa_window_branch's (tested in f64).
//
// Compressed branch: query t sees the compressed blocks c with c d + l - 1 <= t, so the d queries
// t = l - 1 + d c + r (0 <= r < d) see exactly blocks 0..c, and queries t < l - 1 see none. Regrouped as NC query
// rows (row c of a sequence holds its d queries as d * HQ heads, head hq * d + r, which GQA still maps to key/value
// head hq / G), it is causal attention of NC rows over the NC compressed keys: one flash_attention call over all
// sequences (cu_seqlens of the compressed rows). Costs a gathered copy of q and of the output.
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

// nsa_attention through the branches: the compressed branch (its log-sum-exps drive nsa_selected_branch's choice),
// the selected branch, the window branch; o = g0 o_cmp + g1 o_slc + g2 o_win, mixed in f32 for bf16 (one rounding
// per branch more than the fused op). Equal to nsa_attention (tested in f64, block indices included); gradients
// flow to all eight inputs, k_cmp's only through the compressed branch's output, as in nsa_attention.
// nsa_attention takes this path on CUDA (unless NsaOptions::fused or NT_NSA_BRANCHES=0).
NsaOutput nsa_attention_branches(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                                 const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                                 const NsaOptions& opt = {});

}  // namespace nt
