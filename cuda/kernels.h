// Launchers of every CUDA kernel, with raw pointers and plain sizes: this header (and the .cu files) stay free
// of fmt and of Tensor, so nvcc compiles only kernels. The op files (ops/*.cpp) turn tensors into these arguments.
// Every launcher takes the stream to run on and checks its launch.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>

#include "cuda/fast_div.h"
#include "ops/elementwise_math.h"
#include "tensor/dtype.h"

namespace nt::cuda {

constexpr int kMaxDims = 8;
// A view's geometry in elements (sizes and strides of up to kMaxDims dims); stride 0 broadcasts.
struct Strided {
  int nd = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
  // Set by the launchers (with_fast_offsets, cuda/common.cuh) right before a launch: offset_of in 32-bit
  // arithmetic, dividing by the extents through div. Callers fill only nd, size and stride.
  bool fast = false;
  FastDiv div[kMaxDims] = {};
};
// Sets l.fast where the element count and the largest offset are below 2^31 and no stride is negative (so the
// 32-bit offsets are exact), with each extent's divider; otherwise clears it (64-bit offsets).
inline void prepare_fast_offsets(Strided& l) {
  constexpr int64_t kLimit = (int64_t)1 << 31;
  l.fast = false;
  int64_t count = 1, last = 0;
  for (int d = 0; d < l.nd; ++d) {
    if (l.size[d] <= 0 || l.stride[d] < 0 || l.stride[d] >= kLimit || count > (kLimit - 1) / l.size[d]) return;
    count *= l.size[d];
    last += (l.size[d] - 1) * l.stride[d];
    if (last >= kLimit) return;
  }
  for (int d = 0; d < l.nd; ++d) l.div[d] = fast_div_for((uint32_t)l.size[d]);
  l.fast = true;
}

// Whether the launchers use 32-bit offsets where they fit (default on); off keeps every strided kernel on 64-bit
// offsets (the CUDA tests run both, bench_kernels times both). In copy.cu.
void set_fast_offsets(bool on);
bool fast_offsets();

// copy.cu: dst[i] = convert(src[i]) over n elements of dst's shape (src broadcast to it, or another shape of n
// elements); fill with a value.
void copy(DType dst_t, void* dst, const Strided& dst_l, DType src_t, const void* src, const Strided& src_l, int64_t n,
          cudaStream_t stream);
void fill(DType t, void* dst, const Strided& l, int64_t n, double value, cudaStream_t stream);
// y = bf16(x) over n contiguous elements (16-byte accesses where both are aligned): the f32 accumulators of the
// attention backward kernels into their bf16 gradients.
void cast_f32_to_bf16(const float* x, void* y, int64_t n, cudaStream_t stream);

// elementwise.cu: contiguous unary forward/backward; binary and where over broadcast strided inputs into a
// contiguous output of n elements (the output's shape is the layouts' shape).
void unary_forward(UnaryOp op, DType t, const void* x, void* y, int64_t n, double p0, double p1, cudaStream_t stream);
void unary_backward(UnaryOp op, DType t, const void* x, const void* y, const void* dy, void* dx, int64_t n, double p0,
                    double p1, cudaStream_t stream);
void binary_forward(BinaryOp op, DType t, const void* a, const Strided& al, const void* b, const Strided& bl, void* out,
                    int64_t n, cudaStream_t stream);
void where_forward(DType t, const bool* cond, const Strided& cl, const void* a, const Strided& al, const void* b,
                   const Strided& bl, void* out, int64_t n, cudaStream_t stream);

// attention.cu: fused causal attention (ops/attention.h). q, out, dout, dq [N, H, D]; k, v, dk, dv [N, Hkv, D];
// lse, delta [H, N] f32; dq_acc [N, H, D] f32 scratch. Sequence b is rows [cu_seqlens[b], cu_seqlens[b+1]).
struct AttentionDims {
  int64_t N = 0;
  int H = 0, Hkv = 0, D = 0, nseq = 0, max_len = 0, window = 0;  // window 0: full causal
  float scale = 0;
  const int32_t* cu_seqlens = nullptr;  // device memory, nseq + 1 entries
  bool x_slowest = false;  // the grid's x launched slowest: set by the launchers (attention_longest_first)
  bool bwd_rows_first = false;  // attn_bwd_ws's walk order: set by its launcher (attention_bwd_rows_first)
  bool fwd_alternate = false;   // attn_fwd_ws's rounds taken back to front every other one (attention_fwd_alternate)
};
// Kernel version: 7 (default: Hopper, warp-specialized forward and backward: TMA loads and two consumer
// warpgroups, cuda/attention_ws.cu, for head dims 72..128, else the fastest below for the width), 6 (7's forward,
// attn_bwd_wgmma's backward), 4 (Hopper wgmma, one warpgroup, cp.async, both ways), 5 (4 with two warpgroups per
// block sharing the K/V tiles, experimental); with 4-7 the backward runs on wgmma where the forward does, 3
// (mma.sync, cp.async + ldmatrix, 32 rows per warp over 32-key tiles), 2 (the same with 16 rows per warp over 64-key
// tiles) or 1 (the first kernel; head dims over 128 always use it); also NT_ATTENTION_KERNEL=N in the environment.
// All compute the same function.
void set_attention_kernel(int version);
int attention_kernel();
// Keys per block of the mma.sync backward: 128 (default; 8 warps) or 64 (4 warps; also NT_ATTENTION_BWD_KEYS=64).
// Both compute the same function; 256-wide heads always use 64. Where versions 4-7 run the wgmma backward this
// setting does not apply.
void set_attention_bwd_keys(int keys);
int attention_bwd_keys();
// Version 7's backward adds dQ by TMA reductions from shared memory (a writer warp; the default) or by the
// consumers' own 16-byte reductions (off; also NT_ATTENTION_BWD_DQ=red). Same function either way.
void set_attention_bwd_tma_dq(bool on);
bool attention_bwd_tma_dq();
// The order in which a block of version 7's backward walks its (query head, query tile) pairs: heads_first (every
// query tile of one head, ascending, then the next head's) or rows_first (the last query tile of every head of the
// block, then the one before, down to the diagonal, so that the blocks of one head group meet the same query rows
// at about the same time and share them, and dQ's sums, in L2); automatic (the default): rows first for full
// causal attention, heads first with a window. Measured (H100, 2026-12-07): rows first took the forward + backward
// of NSA's compressed branch at 64k from 47.07 to 45.16 ms and of dense B2 T4096 H16 D128 from 1.344 to 1.299 ms,
// but of a window of 512 from 1.022 to 1.175 ms (the heads-first walks of neighbouring key blocks share rows there).
// Also NT_ATTENTION_BWD_WALK=rows / heads / automatic. Same function (dK, dV summed in another order).
enum class AttentionBwdWalk { heads_first, rows_first, automatic };
void set_attention_bwd_walk(AttentionBwdWalk walk);
AttentionBwdWalk attention_bwd_walk();
// Whether a backward over attention with this window (0: full causal) walks rows first under the current setting.
bool attention_bwd_rows_first(int window);
// Versions 6 and 7's forward with FlashAttention-3's ping-pong: its two consumer warpgroups take turns issuing
// their products (on, the default) or issue whenever ready (off; also NT_ATTENTION_FWD_PINGPONG=0). Same function.
void set_attention_fwd_pingpong(bool on);
bool attention_fwd_pingpong();
// How many thread blocks versions 6 and 7's forward runs on, each taking one tile of 128 queries per round of blocks
// tiles (set_attention_fwd_alternate; persistent: a block loads its next tile's Q and first keys while it finishes
// the last): -1 (the default) one per SM, -2 automatic (-1 with a window or at least 24 tiles per SM, else 0), 0 one
// block per tile, n > 0 at most n (the tests take a few, so that every block walks many tiles). Also
// NT_ATTENTION_FWD_BLOCKS=-1 / -2 / 0 / n. Same function every way.
void set_attention_fwd_blocks(int blocks);
int attention_fwd_blocks();
// Whether the blocks of a persistent forward (fewer blocks than tiles) take every other round of gridDim tiles back
// to front (on, the default; NT_ATTENTION_FWD_ALTERNATE=0 turns it off): in a longest-first grid block 0 would
// otherwise take the longest tile of every round. Same function either way.
void set_attention_fwd_alternate(bool on);
bool attention_fwd_alternate();
// The order in which the warp-specialized kernels (version 6's forward, version 7 both ways) launch their thread
// blocks: per_group, each (sequence, head) group's blocks one after the other, its longest causal walk first; or
// longest_first, every group's longest walk before any group's second (exact for sequences of equal length): with
// one block per SM, a group's longest walk launched last leaves the other SMs idle while it runs. automatic (the
// default): the forward longest first, the backward longest first where its grid is at most 8 waves (with more,
// the per-group order's L2 reuse counted for more than the tail, attention.cu). NT_ATTENTION_BLOCK_ORDER=longest
// or per_group picks one for every launch. Same function every way.
enum class AttentionBlockOrder { per_group, longest_first, automatic };
void set_attention_block_order(AttentionBlockOrder order);
AttentionBlockOrder attention_block_order();
// Whether a launch of `blocks` thread blocks (forward or backward) goes longest walk first under the current order.
bool attention_longest_first(bool backward, int64_t blocks);
void attention_forward(DType t, const void* q, const void* k, const void* v, void* out, float* lse,
                       const AttentionDims& d, cudaStream_t stream);
// dq == nullptr: dq is added onto dq_acc (f32 [N, H, D], zeroed by the caller, who also converts it), which only
// the tensor-core path does: attention_backward_on_tensor_cores(t, d, {q, k, v, dout, dk, dv}). delta_given: delta
// holds rowsum(dout o) already (else it is computed into it).
void attention_backward(DType t, const void* q, const void* k, const void* v, const void* out, const void* dout,
                        const float* lse, float* delta, float* dq_acc, void* dq, void* dk, void* dv,
                        const AttentionDims& d, cudaStream_t stream, bool delta_given = false);
bool attention_backward_on_tensor_cores(DType t, const AttentionDims& d, std::initializer_list<const void*> ptrs);

// nsa.cu: Native Sparse Attention on CUDA cores (nsa/nsa_attention.h; layouts as nsa/cpu/nsa_attention.cpp, with
// branch_o [3, N, HQ, D] and lse [3, N, HQ] in the accumulation type, f32 or f64). in: q, k_cmp, v_cmp, k_slc, v_slc,
// k_win, v_win, gates. Grid: one block of 32 G threads per (token, kv head).
struct NsaDims {
  int64_t N = 0;  // tokens (packed)
  int HQ = 0, H = 0, G = 0, D = 0, n = 0, l = 0, d = 0, lp = 0, w = 0, nseq = 0, NC = 0;
  int ncand_max = 0;  // max over sequences of (len - 1) / l' + 1: the selection-score rows in shared memory
  double scale = 0;
  const int32_t* cu_seqlens = nullptr;  // device, nseq + 1
  const int32_t* cmp_starts = nullptr;  // device, nseq: each sequence's first row in k_cmp / v_cmp
  // device, nseq + 1: each sequence's first selection block when the blocks of all sequences are numbered in
  // order (ceil(len / l') per sequence); NB: their total.
  const int32_t* slc_starts = nullptr;
  int NB = 0;
  // Optional, accumulation type [N, HQ]: the compressed branch's log-sum-exps computed elsewhere (nsa/branches.h).
  // Then the kernels skip that branch's attention (its output is 0, its backward is not run) and only score the
  // selection blocks with p = exp(scale q.k_cmp - lse_cmp).
  const void* lse_cmp = nullptr;
  // The forward reads the blocks from block_indices (filled by nsa_select_tc) instead of choosing them.
  bool indices_given = false;
  // The selected branch's output and log-sum-exp are in branch_o[1] / lse[1] already (nsa_selected_forward_tc).
  bool slc_given = false;
};
size_t nsa_forward_smem(const NsaDims& d, bool f64);
// nsa_select.cu: block_indices [N, H, n] from the compressed branch's probabilities on tensor cores (bf16 q, k_cmp;
// lse_cmp f32 [N, HQ]); max_len: the longest sequence. Supported for D % 8 == 0, D <= 256, G a power of two <= 16,
// when the scores of 64 / G positions fit in shared memory (or, on sm_90a with D <= 128, whatever T up to ~2M
// tokens at G = 16: the wgmma kernel keeps them in global slots).
bool nsa_select_tc_supported(const NsaDims& d);
void nsa_select_tc(const void* q, const void* k_cmp, const float* lse_cmp, int32_t* block_indices, const NsaDims& d,
                   int max_len, cudaStream_t stream);
// Which kernel nsa_select_tc runs: 0 (default) the wgmma one where it applies, 1 the mma.sync one where it fits
// (NT_NSA_SELECT=mma); tests and benchmarks compare them.
void set_nsa_select_kernel(int version);
int nsa_select_kernel();
bool nsa_select_last_wgmma();  // whether the last nsa_select_tc call ran the wgmma kernel
// nsa_select_sm90.cu: nsa_select_tc's wgmma kernel; false without launching where it does not apply (no sm_90a,
// D > 128, G not a power of two <= 16, or a block's scores, 128 / G positions x ncand_max floats, above 1 MB).
bool nsa_select_wgmma_applies(const NsaDims& d);
// The wgmma kernel's selection scores live in global slots, per_sm per SM, taken and given back by its thread
// blocks; 0 (default): as many as thread blocks fit on an SM. Tests set 1 to make blocks wait for each other's slot.
void set_nsa_select_slots(int per_sm);
// The wgmma kernel's periodic fold (each selection block's score from the compressed keys meeting it, where every
// 64-key tile starts a selection block): kLoop reads each block's table of keys in a loop; kTable reads all its
// entries up front, unrolled, where the table has at most 8 entries per block ((l + l') / d + 2 <= 8; 8% faster
// than the loop at 64k); kFixed (the default) takes the keys and weights as constants where l = 2 d and l' = 4 d
// (the paper's 32, 16, 64: keys 4 j - 1 to 4 j + 3 of block j, weights 1, 2, 2, 2, 1; 1-2% faster than kTable),
// else as kTable. The same sums in the same order in all three. NT_NSA_SELECT_FOLD=loop or table chooses the others.
enum class SelectFold { kLoop, kTable, kFixed };
void set_nsa_select_fold(SelectFold fold);
SelectFold nsa_select_fold();
bool nsa_select_wgmma(const void* q, const void* k_cmp, const float* lse_cmp, int32_t* block_indices, const NsaDims& d,
                      int max_len, cudaStream_t stream);
// nsa_selected.cu: the selected branch's forward on tensor cores (bf16) into o_slc [N, HQ, D] and lse_slc [N, HQ]
// (f32; the fused op's branch_o[1] and lse[1], or tensors of their own), from block_indices. Supported for
// D % 8 == 0, D <= 256, G <= 16. o_bf16 (given only where nsa_selected_forward_writes_bf16: version 6's forward
// runs, under versions 0 and 6 where the wgmma kernels apply; o_slc may then be null): o goes there in bf16
// instead of to o_slc (the branch alone: its output without an f32 copy to cast).
bool nsa_selected_tc_supported(const NsaDims& d);
bool nsa_selected_forward_writes_bf16(const NsaDims& d);
void nsa_selected_forward_tc(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                             float* o_slc, float* lse_slc, const NsaDims& d, int max_len, cudaStream_t stream,
                             void* o_bf16 = nullptr);
// The selected branch's backward on tensor cores (bf16), for the branch alone (gate 1, nsa_selected_branch): dq,
// dk_slc, dv_slc (bf16, overwritten) from dout (bf16 [N, HQ, D]), the branch's output and log-sum-exp ([N, HQ, D],
// f32 or, with o_is_bf16, bf16, and [N, HQ] f32, as nsa_selected_forward_tc wrote them) and block_indices. dk/dv sum over thread blocks
// with f32 atomics (not bitwise reproducible). Supported for D % 8 == 0, D <= 128,
// G <= 16, l' a multiple of 16 up to 128.
// Version 3 of that forward (cuda/nsa_selected_sm90.cu, wgmma): false without launching where it does not apply
// (not sm_90a, l' != 64, D > 128 or not a multiple of 8, G outside 2..16, or n so large (over ~200) that the
// union's tables would not fit in shared memory).
bool nsa_selected_forward_wgmma(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                                float* o_slc, float* lse_slc, const NsaDims& d, int max_len, cudaStream_t stream);
// Version 6's forward (the same kernel file and conditions; o in bf16 to o_bf16 instead of o_slc when given).
bool nsa_selected_forward_ws(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                             float* o_slc, void* o_bf16, float* lse_slc, const NsaDims& d, int max_len,
                             cudaStream_t stream);
// Version 3 of the backward's dq step (the same kernel file): dq and delta = rowsum(dout o) [N, HQ] f32.
bool nsa_selected_dq_wgmma(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                           const float* o_slc, const float* lse_slc, const void* dout, void* dq, float* delta,
                           const NsaDims& d, int max_len, cudaStream_t stream);
// Its key-centric dk/dv step is internal to the two kernel files
// (cuda/nsa_selected.cuh: nsa_selected_walk_wgmma).
// Whether the wgmma kernels (versions 3, 4) run for these sizes on the current device.
bool nsa_selected_wgmma_applies(const NsaDims& d);
// The selected forward's kernel: 0 automatic (6 where the wgmma kernels apply, else 2), 1 one warp per position, 2
// eight positions per block sharing their blocks' loads (mma.sync), 3 wgmma (falls back to 2 where it does not
// apply), 4 the forward of 3 with the backward's dq computed inside its dk/dv step, 6 4 with a warp-specialized
// forward (TMA producer, softmax overlapped with P V); also NT_NSA_SLC_KERNEL=N. The
// backward follows: its dq step (1, 2, 3 alike; none under 4) and its dk/dv step (3, 4 on wgmma, else the
// mma.sync kernel).
// All compute the same function.
void set_nsa_selected_kernel(int version);
int nsa_selected_kernel();
// The backward's key-centric walk (the dk/dv step, and dq under 4 and 6) takes the rows in chunks of about this
// many positions (packed rows, split into equal chunks of at most R; 0: all in one; longer where a huge batch would
// need more than 2^22 (kv head, chunk, block) segments), kv head by kv head and chunk by chunk: the thread blocks
// running at once then read and add to one chunk's q, dout and dq rows, which can stay in L2, instead of rows from
// the whole sequence (each row is read n times, once per chosen block). Default 2048: the fused walk at 64k
// 44.7 -> 33.0 ms on an H100, DRAM traffic ~98 -> ~50 GB (docs/nsa-history.md); also NT_NSA_SLC_CHUNK=R. The same
// function (f32 sums in another order).
void set_nsa_selected_chunk(int rows);
int nsa_selected_chunk();
// Thread blocks of the wgmma walk (versions 3, 4, 6): 0 (the default) launches one per piece under a bound (pieces
// are only counted on the device), which leaves many empty (causality empties about half of the (chunk, block)
// segments); -1 as many as run at once and N > 0 at most N, each walking pieces gridDim.x apart. -1 measured
// slower (49.6 against 33.0 ms at 64k, H100): fixed strides let the thread blocks drift apart over pieces of
// unequal length, so the pieces in flight no longer share a chunk; the hardware's in-order launch keeps them
// together. Also NT_NSA_SLC_WALK_BLOCKS=N. The same function (f32 sums in another order).
void set_nsa_selected_walk_blocks(int blocks);
int nsa_selected_walk_blocks();
bool nsa_selected_backward_tc_supported(const NsaDims& d);
// dq_acc given (f32 [N, HQ, D], zeroed by the caller, who converts it): dq is added onto it (dq unused), which
// only the walk that computes dq with dk and dv does (nsa_selected_backward_fuses_dq); so is delta (f32 [N, HQ]:
// rowsum(dout o), computed here when not given).
void nsa_selected_backward_tc(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                              const void* o_slc, bool o_is_bf16, const float* lse_slc, const void* dout, void* dq,
                              void* dk_slc, void* dv_slc, const NsaDims& d, int max_len, cudaStream_t stream,
                              float* dq_acc = nullptr, const float* delta = nullptr);
bool nsa_selected_backward_fuses_dq(const NsaDims& d, int max_len);
void nsa_forward(DType t, const void* const in[8], void* out, int32_t* block_indices, void* branch_o, void* lse,
                 const NsaDims& d, cudaStream_t stream);
// dout [N, HQ, D] in the accumulation type; grads like the inputs; acc scratch of 2 NC H D + 4 N H D accumulation
// elements (dk/dv of each branch before conversion).
void nsa_backward(DType t, const void* const in[8], const int32_t* block_indices, const void* branch_o, const void* lse,
                  const void* dout, void* const grads[8], void* acc, const NsaDims& d, cudaStream_t stream);

// nsa_branches.cu: the branch-wise path's glue (nsa/branches.h). nsa_regroup copies D-element vectors between
// [T, HQ, D] and the compressed branch's [NC, HQ d, D]: to_regrouped, out row j = c d + r of head hq from x row
// idx[j] (idx [rows_out = NC d]); else out row t of head hq from x's regrouped row idx[t] (idx [rows_out = T]);
// idx == limit writes zeros. nsa_mix: out = sum_b gates[:, b] o_b over rows [rows, D], gates [rows, 3]; the
// backward writes do_b = gates[:, b] dy and dgates[:, b] = sum_D dy o_b. All contiguous, one dtype.
void nsa_regroup(size_t elem_bytes, const void* x, void* out, const int32_t* idx, int64_t rows_out, int64_t HQ,
                 int64_t d, int64_t D, int64_t limit, bool to_regrouped, cudaStream_t stream);
// With rg given, o0 (and d0) are in the regrouped layout [NC, HQ d, D]: row t, head hq of o_cmp is regrouped row
// back[t] (zeros where back[t] == NC d), and the backward zeros d0's rows j with take[j] == T.
struct NsaMixRegrouped {
  const int32_t* back = nullptr;  // [T]
  const int32_t* take = nullptr;  // [NC d]
  int64_t T = 0, NC = 0, d = 1, HQ = 1;
};
void nsa_mix_forward(DType t, const void* o0, const void* o1, const void* o2, const void* gates, void* out,
                     int64_t rows, int64_t D, cudaStream_t stream, const NsaMixRegrouped* rg = nullptr);
// The branch-wise backward's dq in one pass (nsa/branches.cpp, one autograd node): dq [T, HQ, D] bf16 = acc
// [T, HQ, D] f32 (the selected and window branches') + the compressed branch's acc_r [NC, HQ d, D] f32 at row back[t]
// (nothing where back[t] == limit = NC d). D a multiple of 4, 16-byte aligned.
void nsa_finish_dq(const float* acc, const float* acc_r, const int32_t* back, void* dq, int64_t T, int64_t HQ,
                   int64_t d, int64_t D, int64_t limit, cudaStream_t stream);
// deltas (optional, f32, bf16 only): rowsum(d_b o_b) of each branch in the layout its backward reads: [0] the
// compressed branch's as flash_attention's [HQ d, NC] over the regrouped rows (rg given; rows no query takes are
// left alone: zero them first), [1] the selected branch's [rows], [2] the window's [HQ, T]; nullptr: not wanted.
struct NsaMixDeltas {
  float* d[3] = {nullptr, nullptr, nullptr};
};
void nsa_mix_backward(DType t, const void* o0, const void* o1, const void* o2, const void* gates, const void* dy,
                      void* d0, void* d1, void* d2, void* dgates, int64_t rows, int64_t D, cudaStream_t stream,
                      const NsaMixRegrouped* rg = nullptr, const NsaMixDeltas* deltas = nullptr);

// swiglu.cu: y = silu(gate) * up over n contiguous elements, and both gradients in one pass.
void swiglu_forward(DType t, const void* gate, const void* up, void* out, int64_t n, cudaStream_t stream);
void swiglu_backward(DType t, const void* gate, const void* up, const void* dy, void* dgate, void* dup, int64_t n,
                     cudaStream_t stream);

// random.cu: the Philox streams of tensor/philox.h.
void philox_fill(DType t, void* out, int64_t n, uint64_t seed, uint64_t offset, bool normal, cudaStream_t stream);
void dropout_forward(DType t, const void* x, void* out, int64_t n, double p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream);

// reduce.cu: x [rows, R] contiguous -> out [rows]; op as ReduceOp (sum, mean, amax, logsumexp, var). workspace:
// reduce_rows_workspace() bytes (0 for most shapes; few long rows are reduced in two passes through it).
size_t reduce_rows_workspace(int op, DType t, int64_t rows, int64_t R);
void reduce_rows(int op, DType t, const void* x, void* out, int64_t rows, int64_t R, int64_t correction,
                 void* workspace, cudaStream_t stream);
// Sum (mean) over the middle dim: x [outer, R, inner] contiguous -> out [outer, inner]; for short R and long inner.
void reduce_middle(DType t, const void* x, void* out, int64_t outer, int64_t R, int64_t inner, bool mean,
                   cudaStream_t stream);
// x [outer, n, inner] contiguous -> values, indices [outer, inner] (first maximum; NaN wins).
void max_dim(DType t, const void* x, void* values, int64_t* indices, int64_t outer, int64_t n, int64_t inner,
             cudaStream_t stream);

// softmax.cu: along the middle dim of x [outer, n, inner] contiguous.
void softmax_forward(DType t, const void* x, void* y, int64_t outer, int64_t n, int64_t inner, bool log,
                     cudaStream_t stream);
// logits [N, C] contiguous, target [N] (i32 or i64): loss[N] and lse[N]. With dlogits non-null it also writes
// dlogits = (softmax - onehot) / *count (count null: 1), 0 for ignored rows, in the same pass.
void cross_entropy_forward(DType t, const void* logits, DType target_t, const void* target, int64_t ignore_index,
                           void* loss, void* lse, void* dlogits, const void* count, int64_t N, int64_t C,
                           int* bad_target, cudaStream_t stream);

// dlogits[r, c] = grow[r] * (softmax - onehot), 0 for ignored rows; grow[N].
void cross_entropy_backward(DType t, const void* logits, DType target_t, const void* target, int64_t ignore_index,
                            const void* lse, const void* grow, void* dlogits, int64_t N, int64_t C, cudaStream_t stream);

// Statistics, loss and gradient accumulators below are in the accumulation type: f64 for f64 data, else f32.
// norm.cu: x [R, C] contiguous; w, b [C] or null; stats [R, 2] (mean, rstd).
void norm_forward(bool rms, DType t, const void* x, const void* w, const void* b, double eps, void* y, void* stats,
                  int64_t R, int64_t C, cudaStream_t stream);
// dx [R, C]; dw, db [C] (or null) in t, reduced deterministically across rows (in the accumulation type).
void norm_backward(bool rms, DType t, const void* x, const void* w, const void* stats, const void* dy, void* dx,
                   void* dw, void* db, int64_t R, int64_t C, cudaStream_t stream);

// moe.cu (ops/moe.h): idx [M = N * K] i32/i64 -> counts [E], offsets [E + 1] (their exclusive prefix sum, then M)
// and slot_row [M] i32 (stable counting sort by expert); scratch holds moe_dispatch_scratch(M, E) ints; bad gets 1
// for an expert outside [0, E).
int64_t moe_dispatch_scratch(int64_t M, int64_t E);
void moe_dispatch(DType idx_t, const void* idx, int64_t M, int E, int32_t* counts, int32_t* offsets, int32_t* slot_row,
                  int32_t* scratch, int* bad, cudaStream_t stream);
// x, dx [N, D]; rows, drows [N * K, D]; slot_row, gates, dgates [N, K].
void moe_permute_forward(DType t, const void* x, const int32_t* slot_row, void* rows, int64_t N, int64_t K, int64_t D,
                         cudaStream_t stream);
void moe_permute_backward(DType t, const void* drows, const int32_t* slot_row, void* dx, int64_t N, int64_t K,
                          int64_t D, cudaStream_t stream);
void moe_unpermute_forward(DType t, const void* rows, const int32_t* slot_row, const void* gates, void* y, int64_t N,
                           int64_t K, int64_t D, cudaStream_t stream);
void moe_unpermute_backward(DType t, const void* rows, const int32_t* slot_row, const void* gates, const void* dy,
                            void* drows, void* dgates, int64_t N, int64_t K, int64_t D, cudaStream_t stream);

// embedding.cu: weight [V, C], idx [N] -> out [N, C]; backward sums dout rows into dweight [V, C] in index
// order per row (deterministic: no atomics). bad_index gets 1 if an index is out of range.
void embedding_forward(DType t, const void* weight, DType idx_t, const void* idx, void* out, int64_t N, int64_t V,
                       int64_t C, int* bad_index, cudaStream_t stream);
void embedding_backward(DType t, const void* dout, DType idx_t, const void* idx, void* dweight, int64_t N, int64_t V,
                        int64_t C, cudaStream_t stream);

// rope.cu: x, out [N, T, H, D] contiguous; cos, sin [T, D/2] f32; sign -1 rotates backwards.
void rope_forward(DType t, const void* x, const float* cos, const float* sin, void* out, int64_t N, int64_t T, int64_t H,
                  int64_t D, bool interleaved, float sign, cudaStream_t stream);

// index.cu
// x [outer, n, inner] -> out [outer, m, inner] picking idx[m] along the middle dim.
void index_select(DType t, const void* x, DType idx_t, const void* idx, void* out, int64_t outer, int64_t n, int64_t m,
                  int64_t inner, int* bad_index, cudaStream_t stream);
// For every element i of idx (layout il, contiguous iteration over its shape): the element of x (layout xl with the
// indexed dim's stride moved to dim_stride) at idx[i] along `dim`. gather: out[i] = x[...]; scatter_add:
// x[...] += src[i] (atomic adds in f32/f64; bf16 via f32 accumulation buffer by the caller).
void gather(DType t, const void* x, const Strided& xl, int dim, int64_t dim_size, DType idx_t, const void* idx,
            const Strided& il, void* out, int64_t n, int* bad_index, cudaStream_t stream);
void scatter_add(DType t, void* x, const Strided& xl, int dim, int64_t dim_size, DType idx_t, const void* idx,
                 const Strided& il, const void* src, int64_t n, int* bad_index, cudaStream_t stream);
// x [outer, n, inner] -> top k along the middle dim, sorted, ties to the lower index.
void topk(DType t, const void* x, void* values, int64_t* indices, int64_t outer, int64_t n, int64_t inner, int64_t k,
          bool largest, cudaStream_t stream);
void cumsum(DType t, const void* x, void* out, int64_t outer, int64_t n, int64_t inner, bool reverse,
            cudaStream_t stream);

// adamw.cu: one fused AdamW step over n contiguous elements; m, v in the accumulation type; bc1 = 1 - beta1^t,
// bc2 = 1 - beta2^t; the gradient (dtype t, or bf16 for an f32 parameter) times grad_scale and times
// *grad_scale_dev (nullable, device memory); bf16_copy (nullable): the updated parameter rounded to bf16 (the compute
// weight of an f32 master).
void adamw(DType t, void* param, DType grad_t, const void* grad, void* m, void* v, void* bf16_copy, int64_t n, double lr,
           double beta1, double beta2, double eps, double weight_decay, double bc1, double bc2, double grad_scale,
           const double* grad_scale_dev, cudaStream_t stream);
// adamw.cu: adamw over many tensors in one launch: chunks [count] (device memory) of at most kAdamWChunk elements
// of one tensor each, with its own pointers (already offset to the chunk), weight decay and kind: the parameter (or
// f32 master) and gradient dtypes f64/f64, f32/f32 or f32/bf16; m, v in the parameter's dtype; copy (nullable) as
// in adamw.
enum AdamWKind : int32_t { kAdamWF64 = 0, kAdamWF32 = 1, kAdamWF32Bf16Grad = 2 };
struct AdamWChunk {
  void* p;
  const void* g;
  void* m;
  void* v;
  void* copy;
  int64_t n;
  double wd;
  int32_t kind;
  int32_t pad;
};
static_assert(sizeof(AdamWChunk) == 64, "AdamWChunk: no implicit padding (AdamW compares tables bytewise)");
constexpr int64_t kAdamWChunk = 65536;
void adamw_chunks(const AdamWChunk* chunks, int count, double lr, double beta1, double beta2, double eps, double bc1,
                  double bc2, double grad_scale, const double* grad_scale_dev, cudaStream_t stream);
// adamw.cu: the sum of squares of many tensors (f64, f32 or bf16 each) in one launch, for the global gradient
// norm: chunks [count] (device memory) of at most kSquaresChunk elements each; partial: count doubles of
// workspace; out: one double. Deterministic.
struct SquaresChunk {
  const void* ptr;
  int64_t n;
  int32_t dtype;  // (int)DType
  int32_t pad;
};
constexpr int64_t kSquaresChunk = 65536;
void sum_squares_chunks(const SquaresChunk* chunks, int count, double* partial, double* out, cudaStream_t stream);
// adamw.cu: gradient clipping on the device: norm = sqrt(*sum_sq), scale = max_norm / (norm + 1e-6) where norm >
// max_norm, else 1 (one thread; what AdamW::step multiplies the gradients by).
void clip_scale(const double* sum_sq, double max_norm, double* norm, double* scale, cudaStream_t stream);

}  // namespace nt::cuda
