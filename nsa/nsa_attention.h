// Native Sparse Attention (DeepSeek, arXiv 2502.11089) as one fused op: the compressed, selected and sliding-window
// branches of one layer, gated per query head. Index conventions (block visibility, selection scores, forced blocks,
// tie breaking) are exactly the team's NSA conventions, summarized in docs/nsa.md.
//
// The CPU path is the reference (double accumulation). On CUDA the op runs branch-wise by default (nsa/branches.h:
// the compressed and window branches on flash_attention, selection and the selected branch on tensor cores in
// bf16); NsaOptions::fused runs cuda/nsa.cu instead, the same loops as the CPU on CUDA cores. Both are checked
// against the CPU on the GPU.
// Gradients flow to q, the six key/value tensors and the gates; the choice of blocks is held fixed (no gradient
// through it), while the compressed probabilities that drive it still get their gradient through the compression
// branch's output.
#pragma once
#include <vector>

#include "tensor/tensor.h"

namespace nt {

struct NsaOptions {
  int64_t block = 32;         // l: compressed block length
  int64_t stride = 16;        // d: compressed block stride; divides block and select_block
  int64_t select_block = 64;  // l': selection block length, >= block
  int64_t n_select = 16;      // n: selected blocks per query and key/value head (>= 3: block 0 and two local ones)
  int64_t window = 512;       // w: keys t - w < s <= t (0: the window branch sees nothing and contributes 0)
  double scale = 0;           // 0: 1 / sqrt(D)
  // Packed sequences: rows [cu_seqlens[b], cu_seqlens[b+1]) of q and the [T, H, D] tensors are sequence b (starts
  // at 0, non-decreasing, ends at T); k_cmp/v_cmp hold each sequence's compressed blocks, concatenated in order.
  // Empty: one sequence.
  std::vector<int32_t> cu_seqlens;
  // On CUDA, nsa_attention runs the branch-wise path (nsa/branches.h: compressed and window branches on
  // flash_attention, selection and the selected branch on tensor cores in bf16); fused = true runs the one fused
  // op on CUDA cores instead (as does NT_NSA_BRANCHES=0 in the environment). The CPU always runs the fused reference.
  bool fused = false;
};

struct NsaOutput {
  Tensor o;              // [T, HQ, D], q's dtype
  Tensor block_indices;  // i32 [T, H, n]: selected blocks of each query and key/value head, ascending, -1 last
};

// Compressed blocks of a sequence of `len` tokens: max(0, (len - block) / stride + 1), 0 when len < block.
int64_t nsa_num_cmp_blocks(int64_t len, int64_t block, int64_t stride);

// q [T, HQ, D]; k_cmp, v_cmp [NC, H, D] (NC: the sum of nsa_num_cmp_blocks over the sequences); k_slc, v_slc, k_win,
// v_win [T, H, D]; gates [T, HQ, 3] (after the sigmoid: compressed, selected, window). HQ a multiple of H; one
// floating dtype and one device for all.
NsaOutput nsa_attention(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                        const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                        const NsaOptions& opt = {});

// The selected branch alone (nsa/branches.h runs the other two through flash_attention): the blocks chosen from the
// compressed branch's probabilities exp(scale q.k_cmp - lse_cmp) (lse_cmp f32 or f64 [T, HQ], from
// nsa_compressed_branch), then attention over their keys. o is differentiable w.r.t. q, k_slc and v_slc (k_cmp gets
// no gradient: the choice of blocks is discrete); block_indices as in nsa_attention.
NsaOutput nsa_selected_branch(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc, const Tensor& v_slc,
                              const Tensor& lse_cmp, const NsaOptions& opt = {});

// Attention over given blocks: the selected branch with block_indices (i32 [T, H, n], ascending block numbers
// <= t / l' and then -1; checked) instead of a selection, e.g. another implementation's choice. o is differentiable
// w.r.t. q, k_slc and v_slc; the returned block_indices are the given ones.
NsaOutput nsa_selected_attention(const Tensor& q, const Tensor& k_slc, const Tensor& v_slc, const Tensor& block_indices,
                                 const NsaOptions& opt = {});

}  // namespace nt
