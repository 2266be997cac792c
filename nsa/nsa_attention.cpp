// nsa_attention: argument checks, dispatch, and the backward right below the forward. The forward saves the block
// indices, each branch's output and log-sum-exp (f64 [3, T, HQ, D] and [3, T, HQ]), so the backward neither redoes
// the selection nor recomputes the branch outputs that the gate gradients need.
#include "nsa/nsa_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "autograd/graph.h"
#include "nsa/branches.h"
#include "nsa/selected_parts.h"
#include "ops/device_tables.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"

namespace nt {
namespace cpu {
// in: q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, contiguous; opt has cu_seqlens and scale filled in.
// lse_cmp (optional, f64 [T, HQ]): the compressed branch ran elsewhere; only its probabilities score the selection.
// indices_given: block_indices holds the blocks already (no selection).
void nsa_forward(const std::vector<Tensor>& in, const NsaOptions& opt, const Tensor& o, const Tensor& block_indices,
                 const Tensor& branch_o, const Tensor& lse, const Tensor& lse_cmp, bool indices_given);
// dout f64 [T, HQ, D]; grads: one per input, shaped and typed like it, overwritten (the compressed branch's zero
// when external_cmp).
void nsa_backward(const std::vector<Tensor>& in, const NsaOptions& opt, const Tensor& block_indices,
                  const Tensor& branch_o, const Tensor& lse, const Tensor& dout, const std::vector<Tensor>& grads,
                  bool external_cmp);
}  // namespace cpu

NT_REGISTER_OP(kNsaAttention, "nsa_attention", true);

int64_t nsa_num_cmp_blocks(int64_t len, int64_t block, int64_t stride) {
  // Explicit, since C++ division truncates toward zero: (len - block) / stride + 1 would be 1 for a short sequence.
  return len < block ? 0 : (len - block) / stride + 1;
}

namespace {
constexpr const char* kOp = "nsa_attention";
const char* const kNames[8] = {"q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates"};

void check_options(const NsaOptions& o) {
  NT_CHECK(o.block >= 1 && o.stride >= 1 && o.select_block >= 1,
           "{}: block l ({}), stride d ({}) and select_block l' ({}) must be positive", kOp, o.block, o.stride,
           o.select_block);
  NT_CHECK(o.block % o.stride == 0 && o.select_block % o.stride == 0,
           "{}: stride d ({}) must divide block l ({}) and select_block l' ({})", kOp, o.stride, o.block, o.select_block);
  NT_CHECK(o.block <= o.select_block, "{}: block l ({}) must be <= select_block l' ({})", kOp, o.block, o.select_block);
  NT_CHECK(o.n_select >= 3, "{}: n_select must be >= 3 (block 0 and the two local blocks are always selected), got {}",
           kOp, o.n_select);
  NT_CHECK(o.window >= 0, "{}: window w must be >= 0, got {}", kOp, o.window);
  NT_CHECK(std::isfinite(o.scale) && o.scale >= 0, "{}: scale must be finite and >= 0 (0: 1/sqrt(D)), got {}", kOp, o.scale);
}

std::vector<int32_t> check_cu_seqlens(const std::vector<int32_t>& c, int64_t T) {
  if (c.empty()) return {0, (int32_t)T};
  NT_CHECK(c.size() >= 2 && c.front() == 0 && c.back() == T,
           "{}: cu_seqlens must start at 0 and end at T = {} (q's rows), got {} entries from {} to {}", kOp, T,
           c.size(), c.front(), c.back());
  for (size_t i = 1; i < c.size(); ++i)
    NT_CHECK(c[i] >= c[i - 1], "{}: cu_seqlens must not decrease, got {} then {} at {}", kOp, c[i - 1], c[i], i);
  return c;
}

// Checks every argument; returns opt with cu_seqlens and scale filled in.
NsaOptions resolve(const std::vector<Tensor>& in, const NsaOptions& opt) {
  for (int i = 0; i < 8; ++i) {
    NT_CHECK(in[i].defined(), "{}: {} is an undefined tensor", kOp, kNames[i]);
    check_floating(kOp, in[i], kNames[i]);
    check_same_dtype(kOp, in[0], "q", in[i], kNames[i]);
    check_same_device(kOp, in[0], in[i]);
    check_dim(kOp, in[i], kNames[i], 3);
  }
  check_options(opt);
  const Tensor &q = in[0], &gates = in[7];
  const int64_t T = q.size(0), HQ = q.size(1), D = q.size(2), H = in[3].size(1);
  NT_CHECK(D >= 1, "{}: head dim of q must be positive, got q {}", kOp, shape_str(q.shape()));
  for (int i = 3; i < 7; ++i)
    NT_CHECK(in[i].shape() == in[3].shape() && in[i].size(0) == T && in[i].size(2) == D,
             "{}: {} must be [T, H, D] = [{}, {}, {}] (T and D from q {}, H from k_slc), got {}", kOp, kNames[i], T, H, D,
             shape_str(q.shape()), shape_str(in[i].shape()));
  NT_CHECK(H >= 1 && HQ % H == 0, "{}: q's {} query heads must be a multiple of the {} key/value heads of k_slc", kOp,
           HQ, H);
  NT_CHECK(gates.shape() == Shape({T, HQ, 3}), "{}: gates must be [T, HQ, 3] = [{}, {}, 3], got {}", kOp, T, HQ,
           shape_str(gates.shape()));

  NsaOptions r = opt;
  r.cu_seqlens = check_cu_seqlens(opt.cu_seqlens, T);
  r.scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt((double)D);
  int64_t NC = 0;
  std::string per_seq;
  for (size_t b = 0; b + 1 < r.cu_seqlens.size(); ++b) {
    const int64_t n = nsa_num_cmp_blocks(r.cu_seqlens[b + 1] - r.cu_seqlens[b], opt.block, opt.stride);
    NC += n;
    if (per_seq.size() < 200) per_seq += fmt::format("{}{}", b ? " + " : "", n);
  }
  for (int i = 1; i < 3; ++i)
    NT_CHECK(in[i].size(0) == NC && in[i].size(1) == H && in[i].size(2) == D,
             "{}: {} must be [NC, H, D] = [{}, {}, {}] (NC = {} compressed blocks of length l = {}, stride d = {}), got {}",
             kOp, kNames[i], NC, H, D, per_seq, opt.block, opt.stride, shape_str(in[i].shape()));
  return r;
}
}  // namespace

#if NT_CUDA
namespace {
// The kernels' geometry, with cu_seqlens and each sequence's first compressed row uploaded (one small copy).
struct CudaGeometry {
  cuda::NsaDims dims;
  Tensor tables;  // i32 [3 nseq + 2]: cu_seqlens, cmp_starts, slc_starts
  int max_len = 0;  // the longest sequence
};
// NT_NSA_SELECT=simt: bf16 selection on CUDA cores even where the tensor-core kernels apply (for comparison).
bool select_on_simt() {
  static const bool simt = [] {
    const char* v = std::getenv("NT_NSA_SELECT");
    return v && std::string(v) == "simt";
  }();
  return simt;
}
// The selected branch's backward on tensor cores where supported (NT_NSA_SLC_BWD=simt keeps the CUDA-core one,
// for comparison).
bool selected_backward_on_tc(const cuda::NsaDims& a) {
  static const bool simt = [] {
    const char* v = std::getenv("NT_NSA_SLC_BWD");
    return v && std::string(v) == "simt";
  }();
  return !simt && cuda::nsa_selected_backward_tc_supported(a);
}

// Where run_nsa runs the selected branch on CUDA, from the dims alone (selected_parts_apply asks the same before
// anything runs): its choice and forward on tensor cores (bf16 with the compressed log-sum-exps given, the choice on
// tensor cores or given, NT_NSA_SELECT=simt keeps the CUDA-core scoring), and alone (selected_only, its backward on
// tensor cores too): only that branch's output and log-sum-exp, no CUDA-core pass.
struct SelectedPlan {
  bool select_tc = false, forward_tc = false, alone = false;
};
SelectedPlan plan_selected(DType dt, cuda::NsaDims dims, bool external_cmp, bool indices_given, bool selected_only) {
  SelectedPlan p;
  p.select_tc = external_cmp && dt == DType::bf16 &&
                (indices_given || (!select_on_simt() && cuda::nsa_select_tc_supported(dims)));
  dims.indices_given = true;
  p.forward_tc = p.select_tc && cuda::nsa_selected_tc_supported(dims);
  p.alone = p.forward_tc && selected_only && selected_backward_on_tc(dims);
  return p;
}

CudaGeometry cuda_geometry(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc, const NsaOptions& opt) {
  CudaGeometry g;
  cuda::NsaDims& a = g.dims;
  a.N = q.size(0), a.HQ = (int)q.size(1), a.H = (int)k_slc.size(1), a.G = a.HQ / a.H, a.D = (int)q.size(2);
  a.n = (int)opt.n_select, a.l = (int)opt.block, a.d = (int)opt.stride, a.lp = (int)opt.select_block,
  a.w = (int)std::min<int64_t>(opt.window, q.size(0));  // a window of more keys than rows restricts nothing: no int overflow
  a.nseq = (int)opt.cu_seqlens.size() - 1, a.NC = (int)k_cmp.size(0), a.scale = opt.scale;
  NT_CHECK(a.G <= 32, "{}: the CUDA kernels take at most 32 query heads per key/value head, got {}", kOp, a.G);
  NT_CHECK(a.D <= 256, "{}: the CUDA kernels take head dims up to 256, got {}", kOp, a.D);
  std::vector<double> tables(opt.cu_seqlens.begin(), opt.cu_seqlens.end());
  int64_t cmp = 0;
  std::vector<double> slc{0};
  for (int b = 0; b < a.nseq; ++b) {
    const int64_t len = opt.cu_seqlens[b + 1] - opt.cu_seqlens[b];
    tables.push_back((double)cmp);
    cmp += nsa_num_cmp_blocks(len, opt.block, opt.stride);
    g.max_len = std::max<int>(g.max_len, (int)len);
    const int64_t ncand = len > 0 ? (len - 1) / opt.select_block + 1 : 0;
    a.ncand_max = std::max<int>(a.ncand_max, (int)ncand);
    slc.push_back(slc.back() + (double)ncand);
  }
  a.NB = (int)slc.back();
  tables.insert(tables.end(), slc.begin(), slc.end());
  const size_t smem = cuda::nsa_forward_smem(a, q.dtype() == DType::f64);
  NT_CHECK(smem <= 200 * 1024, "{}: {} query heads per group x {} selection blocks of scores need {} bytes of shared "
           "memory (at most 200 KiB); shorten the sequences or raise select_block", kOp, a.G, a.ncand_max, smem);
  std::vector<int64_t> key(opt.cu_seqlens.begin(), opt.cu_seqlens.end());
  key.insert(key.end(), {opt.block, opt.stride, opt.select_block});
  g.tables = cached_table("nsa tables", key, DType::i32, q.device(), [&] { return tables; });
  a.cu_seqlens = static_cast<const int32_t*>(g.tables.data_ptr());
  a.cmp_starts = a.cu_seqlens + a.nseq + 1;
  a.slc_starts = a.cmp_starts + a.nseq;
  return g;
}
}  // namespace
#endif

namespace {
// The op. lse_cmp (undefined, or f32/f64 [T, HQ]): the compressed branch's log-sum-exps from elsewhere; then that
// branch only scores the selection (its output here is 0 and no gradient flows from it).
// indices_in (undefined, or i32 [T, H, n]): the blocks to attend, checked and used instead of a selection.
// selected_only: the gates are (0, 1, 0) and the window is off (nsa_selected_branch, nsa_selected_attention), so
// the backward may run the selected branch's own kernels.
// parts (selected_only): filled where the selected branch ran alone on tensor cores (the op records no node then).
NsaOutput run_nsa(const std::vector<Tensor>& inputs, const NsaOptions& options, const Tensor& lse_cmp_in,
                  const Tensor& indices_in = Tensor(), bool selected_only = false,
                  nsa_internal::SelectedParts* parts = nullptr) {
  const Tensor& q = inputs[0];
  const Tensor &k_cmp = inputs[1], &k_slc = inputs[3];
  const NsaOptions opt = resolve(inputs, options);
  const bool on_cpu = q.device().is_cpu();

  const int64_t T = q.size(0), HQ = q.size(1), D = q.size(2), H = k_slc.size(1);
  std::vector<Tensor> in;
  for (const Tensor& t : inputs) in.push_back(t.detach().contiguous());
  NsaOutput out{empty({T, HQ, D}, q.dtype(), q.device()), empty({T, H, opt.n_select}, DType::i32, q.device())};
  // Branch outputs and log-sum-exps ([3, T, HQ, D] and [3, T, HQ]; only the selected branch's when it runs on
  // tensor cores alone): f64 on the CPU (the reference), the accumulation type on the GPU; alone where the
  // forward writes bf16 itself, branch_o is the output [T, HQ, D].
  const DType acc = on_cpu || q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor branch_o, lse;
  auto alloc_branches = [&](int64_t nb) {
    branch_o = empty({nb, T, HQ, D}, acc, q.device()), lse = empty({nb, T, HQ}, acc, q.device());
  };
  bool alone = false;  // the selected branch alone on tensor cores, both ways (branch_o: its output only)
  Tensor lse_cmp;
  if (lse_cmp_in.defined()) {
    NT_CHECK(lse_cmp_in.shape() == Shape({T, HQ}) && lse_cmp_in.device() == q.device(),
             "{}: lse_cmp must be [T, HQ] = [{}, {}] on {}, got {} on {}", kOp, T, HQ, q.device().str(),
             shape_str(lse_cmp_in.shape()), lse_cmp_in.device().str());
    autograd::NoGradGuard ng;
    lse_cmp = lse_cmp_in.detach().to(acc).contiguous();
  }
  const bool external_cmp = lse_cmp.defined(), indices_given = indices_in.defined();
  if (indices_given) {
    NT_CHECK(indices_in.dtype() == DType::i32 && indices_in.shape() == out.block_indices.shape(),
             "{}: block_indices must be i32 [T, H, n] = {}, got {} {}", kOp, shape_str(out.block_indices.shape()),
             dtype_name(indices_in.dtype()), shape_str(indices_in.shape()));
    const std::vector<int32_t> v = indices_in.to_vector_as<int32_t>();
    for (size_t b = 0; b + 1 < opt.cu_seqlens.size(); ++b)
      for (int64_t row = opt.cu_seqlens[b]; row < opt.cu_seqlens[b + 1]; ++row)
        for (int64_t h = 0; h < H; ++h) {
          const int32_t* r = &v[(row * H + h) * opt.n_select];
          const int64_t last = (row - opt.cu_seqlens[b]) / opt.select_block;
          bool ended = false;
          for (int64_t i = 0; i < opt.n_select; ++i) {
            const bool ok = r[i] == -1 ? (ended = true) : !ended && r[i] >= 0 && r[i] <= last && (i == 0 || r[i] > r[i - 1]);
            NT_CHECK(ok, "{}: block_indices[{}, {}] must list distinct ascending blocks <= t / l' = {} and then -1, "
                     "got {} at slot {}", kOp, row, h, last, r[i], i);
          }
        }
    autograd::NoGradGuard ng;
    out.block_indices.copy_(indices_in);
  }
  if (on_cpu) {
    alloc_branches(3);
    cpu::nsa_forward(in, opt, out.o, out.block_indices, branch_o, lse, lse_cmp, indices_given);
  } else {
#if NT_CUDA
    CudaGeometry g = cuda_geometry(q, k_cmp, k_slc, opt);
    if (external_cmp) g.dims.lse_cmp = lse_cmp.data_ptr();
    // With the compressed log-sum-exps given (the branch-wise path), bf16 selection runs on tensor cores
    // (NT_NSA_SELECT=simt keeps the CUDA-core scoring, for comparison).
    const int max_len = g.max_len;
    if (indices_given) g.dims.indices_given = true;
    const SelectedPlan plan = plan_selected(q.dtype(), g.dims, external_cmp, indices_given, selected_only);
    if (plan.select_tc) {
      if (!indices_given)
        cuda::nsa_select_tc(in[0].data_ptr(), in[1].data_ptr(), static_cast<const float*>(lse_cmp.data_ptr()),
                            static_cast<int32_t*>(out.block_indices.data_ptr()), g.dims, max_len, stream_of(q));
      g.dims.indices_given = true;
      // The selected branch's forward on tensor cores too. Alone (nsa_selected_branch) with its backward on tensor
      // cores as well, only that branch's output and log-sum-exp are kept, and o is its output: no CUDA-core pass.
      // The warp-specialized forward then writes o in bf16 itself (saved for the backward's delta), else o is the
      // f32 output cast.
      if (plan.forward_tc) {
        alone = plan.alone;
        const bool o_in_bf16 = alone && cuda::nsa_selected_forward_writes_bf16(g.dims);
        if (o_in_bf16)
          branch_o = out.o.detach(), lse = empty({1, T, HQ}, acc, q.device());
        else
          alloc_branches(alone ? 1 : 3);
        const int64_t b1 = alone ? 0 : 1;
        cuda::nsa_selected_forward_tc(
            in[0].data_ptr(), in[3].data_ptr(), in[4].data_ptr(),
            static_cast<const int32_t*>(out.block_indices.data_ptr()),
            o_in_bf16 ? nullptr : static_cast<float*>(branch_o.data_ptr()) + b1 * T * HQ * D,
            static_cast<float*>(lse.data_ptr()) + b1 * T * HQ, g.dims, max_len, stream_of(q),
            o_in_bf16 ? out.o.data_ptr() : nullptr);
        g.dims.slc_given = true;
        if (alone && !o_in_bf16) {
          autograd::NoGradGuard ng;
          out.o.copy_(branch_o.reshape({T, HQ, D}));
        }
      }
    }
    if (!branch_o.defined()) alloc_branches(3);
    if (!alone) {
      const void* ptrs[8];
      for (int i = 0; i < 8; ++i) ptrs[i] = in[i].data_ptr();
      cuda::nsa_forward(q.dtype(), ptrs, out.o.data_ptr(), static_cast<int32_t*>(out.block_indices.data_ptr()),
                        branch_o.data_ptr(), lse.data_ptr(), g.dims, stream_of(q));
    }
#else
    no_cuda_kernel(kOp);
#endif
  }

  if (parts && (alone || on_cpu)) {
    parts->in = in;  // the CPU's backward takes all eight (the placeholders get zero gradients)
    parts->opt = opt, parts->out = out, parts->o_saved = branch_o, parts->lse = lse;
    return out;
  }
  if (autograd::needs_grad(inputs)) {
    std::vector<autograd::Saved> saved;
    for (const Tensor& t : in) saved.emplace_back(t);
    autograd::record(kNsaAttention, out.o, inputs,
                     [opt, saved, sidx = autograd::Saved(out.block_indices), sbo = autograd::Saved(branch_o),
                      slse = autograd::Saved(lse), external_cmp, alone](const Tensor& dy, auto&) {
                       std::vector<Tensor> in, grads;
                       for (const autograd::Saved& s : saved) {
                         in.push_back(s.get());
                         grads.push_back(empty(s.get().shape(), s.get().dtype(), s.get().device()));
                       }
                       const Tensor& bo = sbo.get();
                       if (bo.device().is_cpu()) {
                         const Tensor dout = dy.to(bo.dtype()).contiguous();
                         cpu::nsa_backward(in, opt, sidx.get(), bo, slse.get(), dout, grads, external_cmp);
                       } else {
#if NT_CUDA
                         CudaGeometry g = cuda_geometry(in[0], in[1], in[3], opt);
                         if (external_cmp) g.dims.lse_cmp = bo.data_ptr();  // only tested for null in the backward
                         const cuda::NsaDims& a = g.dims;
                         if (alone) {  // the selected branch alone, forward on tensor cores
                           for (int i : {1, 2, 5, 6, 7}) grads[i].fill_(0.0);
                           const Tensor dob = dy.to(DType::bf16).contiguous();
                           cuda::nsa_selected_backward_tc(
                               in[0].data_ptr(), in[3].data_ptr(), in[4].data_ptr(),
                               static_cast<const int32_t*>(sidx.get().data_ptr()),
                               bo.data_ptr(), bo.dtype() == DType::bf16, static_cast<const float*>(slse.get().data_ptr()),
                               dob.data_ptr(),
                               grads[0].data_ptr(), grads[3].data_ptr(), grads[4].data_ptr(), a, g.max_len,
                               stream_of(dob));
                           return grads;
                         }
                         const Tensor dout = dy.to(bo.dtype()).contiguous();
                         const Tensor scratch = empty({2 * (int64_t)a.NC * a.H * a.D + 4 * a.N * a.H * a.D}, bo.dtype(), bo.device());
                         const void* ptrs[8];
                         void* gp[8];
                         for (int i = 0; i < 8; ++i) ptrs[i] = in[i].data_ptr(), gp[i] = grads[i].data_ptr();
                         cuda::nsa_backward(in[0].dtype(), ptrs, static_cast<const int32_t*>(sidx.get().data_ptr()), bo.data_ptr(),
                                            slse.get().data_ptr(), dout.data_ptr(), gp, scratch.data_ptr(), a, stream_of(dout));
#endif
                       }
                       return grads;
                     });
  }
  return out;
}
}  // namespace

NsaOutput nsa_attention(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& k_slc,
                        const Tensor& v_slc, const Tensor& k_win, const Tensor& v_win, const Tensor& gates,
                        const NsaOptions& opt) {
  // The branch-wise path (nsa/branches.h) on CUDA: 24x (8k tokens) to 36x (64k) faster than the fused CUDA-core op
  // on the H100 (2026-12-05, examples/bench_nsa).
  static const bool fused_env = [] {
    const char* v = std::getenv("NT_NSA_BRANCHES");
    return v && std::string(v) == "0";
  }();
  if (!opt.fused && !fused_env && q.defined() && q.device().is_cuda())
    return nsa_attention_branches(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, opt);
  return run_nsa({q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates}, opt, Tensor());
}

namespace {
// Gates (0, 1, 0) for every query: the op's output is then its selected branch.
Tensor selected_only_gates(const Tensor& q) {
  Tensor gates = zeros({q.size(0), q.size(1), 3}, q.dtype(), q.device());
  autograd::NoGradGuard ng;
  gates.narrow(2, 1, 1).fill_(1.0);
  return gates;
}
}  // namespace

NsaOutput nsa_selected_branch(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc, const Tensor& v_slc,
                              const Tensor& lse_cmp, const NsaOptions& opt) {
  NT_CHECK(q.dim() == 3 && k_slc.defined() && k_cmp.defined(), "nsa_selected_branch: q must be [T, HQ, D], got {}",
           shape_str(q.shape()));
  // The op with gates (0, 1, 0) and no window: o is the selected branch. k_cmp only scores (no gradient through the
  // selection); the window's keys are unused placeholders.
  const Tensor gates = selected_only_gates(q);
  NsaOptions o = opt;
  o.window = 0;
  const Tensor kc = k_cmp.detach(), unused = k_slc.detach();
  return run_nsa({q, kc, kc, k_slc, v_slc, unused, unused, gates}, o, lse_cmp, Tensor(), true);
}

NsaOutput nsa_selected_attention(const Tensor& q, const Tensor& k_slc, const Tensor& v_slc, const Tensor& block_indices,
                                 const NsaOptions& opt) {
  NT_CHECK(q.dim() == 3 && k_slc.dim() == 3, "nsa_selected_attention: q and k_slc must be [T, HQ, D] and [T, H, D], "
           "got {} and {}", shape_str(q.shape()), shape_str(k_slc.shape()));
  // The op with the blocks given, gates (0, 1, 0), no window, and a zero compressed branch (placeholders).
  const int64_t T = q.size(0), HQ = q.size(1), H = k_slc.size(1), D = q.size(2);
  const std::vector<int32_t> cu = opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : opt.cu_seqlens;
  int64_t NC = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) NC += nsa_num_cmp_blocks(cu[b + 1] - cu[b], opt.block, opt.stride);
  const Tensor gates = selected_only_gates(q);
  NsaOptions o = opt;
  o.window = 0;
  const Tensor kc = zeros({NC, H, D}, q.dtype(), q.device()), unused = k_slc.detach();
  return run_nsa({q, kc, kc, k_slc, v_slc, unused, unused, gates}, o, zeros({T, HQ}, DType::f32, q.device()),
                 block_indices.to(q.device()), true);
}

namespace nsa_internal {
bool selected_parts_apply(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc, const Tensor& v_slc,
                          const NsaOptions& opt) {
  if (q.device().is_cpu()) return true;
#if NT_CUDA
  if (q.dtype() != DType::bf16 || q.dim() != 3 || k_slc.dim() != 3 || k_cmp.dim() != 3) return false;
  NsaOptions o = opt;
  o.window = 0;
  // (gates: a broadcast view of the right shape, for the checks only)
  const Tensor unused = k_slc.detach(), gates = empty({1, 1, 3}, q.dtype(), q.device()).expand({q.size(0), q.size(1), 3});
  // run_nsa's plan (the selected branch alone), and its backward's walk computes dq.
  const NsaOptions r = resolve({q, k_cmp, k_cmp, k_slc, v_slc, unused, unused, gates}, o);
  CudaGeometry g = cuda_geometry(q, k_cmp, k_slc, r);
  if (!plan_selected(q.dtype(), g.dims, true, false, true).alone) return false;
  g.dims.indices_given = true;
  return cuda::nsa_selected_backward_fuses_dq(g.dims, g.max_len);
#else
  (void)q, (void)k_cmp, (void)k_slc, (void)v_slc, (void)opt;
  return false;
#endif
}

std::optional<SelectedParts> selected_forward_parts(const Tensor& q, const Tensor& k_cmp, const Tensor& k_slc,
                                                    const Tensor& v_slc, const Tensor& lse_cmp, const NsaOptions& opt) {
  if (!lse_cmp.defined() || !selected_parts_apply(q, k_cmp, k_slc, v_slc, opt)) return std::nullopt;
  const Tensor gates = selected_only_gates(q);
  NsaOptions o = opt;
  o.window = 0;
  const Tensor kc = k_cmp.detach(), unused = k_slc.detach();
  const std::vector<Tensor> inputs{q, kc, kc, k_slc, v_slc, unused, unused, gates};
  SelectedParts p;
  autograd::NoGradGuard ng;
  run_nsa(inputs, o, lse_cmp, Tensor(), true, &p);
  NT_CHECK(p.out.o.defined(), "{}: the selected branch did not run alone on tensor cores as checked", kOp);
  return p;
}

void selected_backward_parts(const SelectedParts& p, const Tensor& dout, const Tensor& dq_acc, const Tensor& dk,
                             const Tensor& dv, const Tensor& delta) {
  const Tensor& q = p.in[0];
  if (q.device().is_cpu()) {  // the op's own CPU backward (all branches, gates (0, 1, 0)), then q's part added
    std::vector<Tensor> grads;
    for (const Tensor& t : p.in) grads.push_back(empty(t.shape(), t.dtype(), t.device()));
    cpu::nsa_backward(p.in, p.opt, p.out.block_indices, p.o_saved, p.lse, dout.to(p.o_saved.dtype()).contiguous(),
                      grads, true);
    autograd::NoGradGuard ng;
    Tensor acc = dq_acc, k = dk, v = dv;  // handles on the callers' storage
    acc.copy_(add(dq_acc, grads[0].to(dq_acc.dtype())));
    k.copy_(grads[3]), v.copy_(grads[4]);
    return;
  }
#if NT_CUDA
  NT_CHECK(dq_acc.dtype() == DType::f32 && dq_acc.shape() == q.shape(),
           "{}: the selected branch's dq sum must be f32 {}, got {} {}", kOp, shape_str(q.shape()),
           dtype_name(dq_acc.dtype()), shape_str(dq_acc.shape()));
  NT_CHECK(!delta.defined() || (delta.dtype() == DType::f32 && delta.numel() == q.size(0) * q.size(1) &&
                                 delta.is_contiguous()),
           "{}: the selected branch's delta must be a contiguous f32 [T, HQ] = [{}, {}], got {} {}", kOp, q.size(0),
           q.size(1), delta.defined() ? dtype_name(delta.dtype()) : "", delta.defined() ? shape_str(delta.shape()) : "");
  CudaGeometry g = cuda_geometry(p.in[0], p.in[1], p.in[3], p.opt);
  g.dims.lse_cmp = p.o_saved.data_ptr();  // (only tested for null in the backward, as in the op's own)
  const Tensor dob = dout.to(DType::bf16).contiguous();
  cuda::nsa_selected_backward_tc(p.in[0].data_ptr(), p.in[3].data_ptr(), p.in[4].data_ptr(),
                                 static_cast<const int32_t*>(p.out.block_indices.data_ptr()), p.o_saved.data_ptr(),
                                 p.o_saved.dtype() == DType::bf16, static_cast<const float*>(p.lse.data_ptr()),
                                 dob.data_ptr(), nullptr, dk.data_ptr(), dv.data_ptr(), g.dims, g.max_len,
                                 stream_of(dob), static_cast<float*>(dq_acc.data_ptr()),
                                 delta.defined() ? static_cast<const float*>(delta.data_ptr()) : nullptr);
#else
  no_cuda_kernel(kOp);
#endif
}
}  // namespace nsa_internal

}  // namespace nt
