// Internal to nsa/: the selected branch's forward and backward without an autograd node of their own, for the
// branch-wise path's single node (nsa/branches.cpp), which adds this branch's dq into a sum it shares with the
// other branches. On CUDA in bf16 where the branch runs alone on tensor cores; on the CPU the op's own loops.
#pragma once
#include <optional>
#include <vector>

#include "nsa/nsa_attention.h"

namespace nt::nsa_internal {

struct SelectedParts {
  std::vector<Tensor> in;  // the op's eight inputs (gates (0, 1, 0), placeholders): contiguous, detached
  NsaOptions opt;          // cu_seqlens and scale filled in
  NsaOutput out;           // o [T, HQ, D] bf16, block_indices
  Tensor o_saved, lse;     // what the backward reads: o (bf16) or the f32 branch output, f32 log-sum-exps
};
// Whether selected_forward_parts runs (q, k_cmp, k_slc as nsa_selected_branch takes them).
bool selected_parts_apply(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc, const Tensor& v_slc,
                          const NsaOptions& opt);
// nullopt where the selected branch would not run alone on tensor cores with a backward that computes dq in its
// walk (then nothing ran). Arguments as nsa_selected_branch's.
std::optional<SelectedParts> selected_forward_parts(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc,
                                                    const Tensor& v_slc, const Tensor& lse_cmp, const NsaOptions& opt);
// dout [T, HQ, D]; adds dq into dq_acc ([T, HQ, D]; f32 on CUDA); writes dk, dv (like k_slc). delta (optional,
// CUDA, f32 [T, HQ]): rowsum(dout o), computed elsewhere.
void selected_backward_parts(const SelectedParts& p, const Tensor& dout, const Tensor& dq_acc, const Tensor& dk,
                             const Tensor& dv, const Tensor& delta = Tensor());

}  // namespace nt::nsa_internal
