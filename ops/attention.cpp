// flash_attention: argument checks, layout, dispatch; backward right below. The forward saves the log-sum-exp of
// each query row (f32 [H, N]) so the backward recomputes probabilities instead of storing them.
#include "ops/attention.h"

#include <algorithm>
#include <cmath>

#include "autograd/graph.h"
#include "ops/device_tables.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"

namespace nt {
namespace cpu {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                       const std::vector<int32_t>& cu, int64_t window, double scale);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& dout,
                        const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const std::vector<int32_t>& cu, int64_t window, double scale);
}  // namespace cpu

NT_REGISTER_OP(kFlashAttention, "flash_attention", true);

namespace {
struct Problem {
  std::vector<int32_t> cu;
  int64_t N = 0, H = 0, Hkv = 0, D = 0, max_len = 0, window = 0;
  double scale = 0;
};

#if NT_CUDA
cuda::AttentionDims dims_of(const Problem& p, const Tensor& cu_dev) {
  cuda::AttentionDims d;
  d.N = p.N, d.H = (int)p.H, d.Hkv = (int)p.Hkv, d.D = (int)p.D, d.nseq = (int)p.cu.size() - 1;
  // A window of max_len or more keys restricts nothing: 0 (full causal) then, so the kernels' window arithmetic
  // (first key, last query of a key block) stays far from int overflow and an int64 window is never truncated.
  d.max_len = (int)p.max_len, d.window = p.window >= p.max_len ? 0 : (int)p.window, d.scale = (float)p.scale;
  d.cu_seqlens = static_cast<const int32_t*>(cu_dev.data_ptr());
  return d;
}
#endif

// Every layer of a step attends over the same layout: one upload of it (ops/device_tables.h).
Tensor cu_on_device(const Problem& p, Device dev) {
  return cached_table("cu_seqlens", std::vector<int64_t>(p.cu.begin(), p.cu.end()), DType::i32, dev,
                      [&] { return std::vector<double>(p.cu.begin(), p.cu.end()); });
}
}  // namespace

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt, Tensor* lse_out) {
  const char* op = "flash_attention";
  check_floating(op, q, "q");
  check_same_dtype(op, q, "q", k, "k");
  check_same_dtype(op, q, "q", v, "v");
  check_same_device(op, q, k);
  check_same_device(op, q, v);
  NT_CHECK(q.dim() == 3 || q.dim() == 4, "flash_attention: q must be [B, T, H, D] or [N, H, D], got {}", shape_str(q.shape()));
  NT_CHECK(k.shape() == v.shape(), "flash_attention: k {} and v {} must have one shape", shape_str(k.shape()), shape_str(v.shape()));
  NT_CHECK(k.dim() == q.dim(), "flash_attention: k {} must have as many dims as q {}", shape_str(k.shape()), shape_str(q.shape()));
  for (int64_t d = 0; d + 2 < q.dim(); ++d)
    NT_CHECK(k.size(d) == q.size(d), "flash_attention: k {} and q {} differ in dim {}", shape_str(k.shape()), shape_str(q.shape()), d);
  NT_CHECK(k.size(-1) == q.size(-1), "flash_attention: head dim of k ({}) differs from q's ({})", k.size(-1), q.size(-1));
  NT_CHECK(opt.window >= 0, "flash_attention: window must be >= 0 (0: none), got {}", opt.window);
  Problem p;
  p.H = q.size(-2), p.Hkv = k.size(-2), p.D = q.size(-1), p.window = opt.window;
  NT_CHECK(p.Hkv > 0 && p.H % p.Hkv == 0, "flash_attention: {} query heads are not a multiple of {} key/value heads", p.H, p.Hkv);
  p.scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt((double)p.D);
  const Shape out_shape = q.shape();
  p.N = q.dim() == 4 ? q.size(0) * q.size(1) : q.size(0);
  NT_CHECK(p.N < (int64_t(1) << 31), "flash_attention: {} tokens; row offsets are int32, so at most 2^31 - 1", p.N);
  NT_CHECK(opt.scale >= 0, "flash_attention: scale must be > 0 (0: 1/sqrt(head_dim)), got {}", opt.scale);
  if (!opt.cu_seqlens.empty()) {
    NT_CHECK(q.dim() == 3, "flash_attention: cu_seqlens needs packed [N, H, D] inputs, got q {}", shape_str(q.shape()));
    const auto& c = opt.cu_seqlens;
    NT_CHECK(c.size() >= 2 && c.front() == 0 && c.back() == p.N,
             "flash_attention: cu_seqlens must start at 0 and end at N = {}, got {} entries from {} to {}", p.N, c.size(),
             c.front(), c.back());
    for (size_t i = 1; i < c.size(); ++i)
      NT_CHECK(c[i] >= c[i - 1], "flash_attention: cu_seqlens must not decrease, got {} then {} at {}", c[i - 1], c[i], i);
    p.cu = c;
  } else if (q.dim() == 4) {
    for (int64_t b = 0; b <= q.size(0); ++b) p.cu.push_back((int32_t)(b * q.size(1)));
  } else {
    p.cu = {0, (int32_t)p.N};
  }
  for (size_t i = 1; i < p.cu.size(); ++i) p.max_len = std::max<int64_t>(p.max_len, p.cu[i] - p.cu[i - 1]);
  if (q.device().is_cuda()) NT_CHECK(p.D <= 256, "flash_attention: the CUDA kernels take head dims up to 256, got {}", p.D);

  const Tensor qc = q.detach().contiguous().reshape({p.N, p.H, p.D}), kc = k.detach().contiguous().reshape({p.N, p.Hkv, p.D}),
               vc = v.detach().contiguous().reshape({p.N, p.Hkv, p.D});
  Tensor out = empty({p.N, p.H, p.D}, q.dtype(), q.device()), lse = empty({p.H, p.N}, DType::f32, q.device());
  if (q.device().is_cpu()) {
    cpu::attention_forward(qc, kc, vc, out, lse, p.cu, p.window, p.scale);
  } else {
    const Tensor cu = cu_on_device(p, q.device());
    NT_ON_CUDA(op, cuda::attention_forward(q.dtype(), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                                           static_cast<float*>(lse.data_ptr()), dims_of(p, cu), stream_of(out)));
  }
  out = out.reshape(out_shape);
  if (lse_out) *lse_out = lse;
  if (autograd::needs_grad({&q, &k, &v})) {
    autograd::record(kFlashAttention, out, {q, k, v},
                     [p, sq = autograd::Saved(qc), sk = autograd::Saved(kc), sv = autograd::Saved(vc),
                      so = autograd::Saved(out.detach().reshape({p.N, p.H, p.D})), slse = autograd::Saved(lse),
                      qs = q.shape(), ks = k.shape()](const Tensor& dy, auto&) {
                       const Tensor &q = sq.get(), &k = sk.get(), &v = sv.get(), &o = so.get(), &lse = slse.get();
                       const Tensor d = dy.contiguous().reshape({p.N, p.H, p.D});
                       Tensor dq = empty(q.shape(), q.dtype(), q.device()), dk = empty(k.shape(), k.dtype(), k.device()),
                              dv = empty(k.shape(), k.dtype(), k.device());
                       if (q.device().is_cpu()) {
                         cpu::attention_backward(q, k, v, o, d, lse, dq, dk, dv, p.cu, p.window, p.scale);
                       } else {
                         const Tensor cu = cu_on_device(p, q.device());
                         Tensor delta = empty({p.H, p.N}, DType::f32, q.device()),
                                dq_acc = empty({p.N, p.H, p.D}, DType::f32, q.device());
                         NT_ON_CUDA("flash_attention", cuda::attention_backward(
                             q.dtype(), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), d.data_ptr(),
                             static_cast<const float*>(lse.data_ptr()), static_cast<float*>(delta.data_ptr()),
                             static_cast<float*>(dq_acc.data_ptr()), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                             dims_of(p, cu), stream_of(dq)));
                       }
                       return std::vector<Tensor>{dq.reshape(qs), dk.reshape(ks), dv.reshape(ks)};
                     });
  }
  return out;
}

void flash_attention_backward_add_dq(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                     const Tensor& dout, const Tensor& lse, const AttentionOptions& opt,
                                     const Tensor& dq_acc, const Tensor& dk, const Tensor& dv, const Tensor& delta) {
  const char* what = "flash_attention_backward_add_dq";
  NT_CHECK(q.dim() == 3 && k.dim() == 3 && v.shape() == k.shape() && out.shape() == q.shape() &&
               dout.shape() == q.shape() && dk.shape() == k.shape() && dv.shape() == k.shape(),
           "{}: expected q, out, dout [N, H, D] and k, v, dk, dv [N, Hkv, D], got q {}, out {}, dout {}, k {}, v {}, "
           "dk {}, dv {}", what, shape_str(q.shape()), shape_str(out.shape()), shape_str(dout.shape()),
           shape_str(k.shape()), shape_str(v.shape()), shape_str(dk.shape()), shape_str(dv.shape()));
  for (auto [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}, std::pair{&out, "out"},
                         std::pair{&dk, "dk"}, std::pair{&dv, "dv"}})
    NT_CHECK(t->is_contiguous() && t->dtype() == q.dtype() && t->device() == q.device(),
             "{}: {} must be contiguous, {} on {} like q, got {}{} on {}", what, name, dtype_name(q.dtype()),
             q.device().str(), t->is_contiguous() ? "" : "non-contiguous ", dtype_name(t->dtype()), t->device().str());
  NT_CHECK((dq_acc.dtype() == DType::f32 || dq_acc.dtype() == DType::f64) && dq_acc.shape() == q.shape() &&
               dq_acc.is_contiguous(),
           "{}: dq_acc must be a contiguous f32 or f64 {}, got {} {}", what, shape_str(q.shape()),
           dtype_name(dq_acc.dtype()), shape_str(dq_acc.shape()));
  NT_CHECK(lse.dtype() == DType::f32 && lse.shape() == Shape({q.size(1), q.size(0)}),
           "{}: lse must be f32 [H, N] = [{}, {}] as flash_attention returned it, got {} {}", what, q.size(1),
           q.size(0), dtype_name(lse.dtype()), shape_str(lse.shape()));
  Problem p;
  p.N = q.size(0), p.H = q.size(1), p.Hkv = k.size(1), p.D = q.size(2), p.window = opt.window;
  p.scale = opt.scale != 0 ? opt.scale : 1.0 / std::sqrt((double)p.D);
  p.cu = opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)p.N} : opt.cu_seqlens;
  for (size_t i = 1; i < p.cu.size(); ++i) p.max_len = std::max<int64_t>(p.max_len, p.cu[i] - p.cu[i - 1]);
  const Tensor d = dout.contiguous();
#if NT_CUDA
  if (q.device().is_cuda()) {
    const Tensor cu = cu_on_device(p, q.device());
    const cuda::AttentionDims dims = dims_of(p, cu);
    if (dq_acc.dtype() == DType::f32 &&
        cuda::attention_backward_on_tensor_cores(q.dtype(), dims, {q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                                                   d.data_ptr(), dk.data_ptr(), dv.data_ptr()})) {
      const bool given = delta.defined();
      NT_CHECK(!given || (delta.dtype() == DType::f32 && delta.shape() == Shape({p.H, p.N}) && delta.is_contiguous()),
               "flash_attention_backward_add_dq: delta must be f32 [H, N] = [{}, {}], got {} {}", p.H, p.N,
               given ? dtype_name(delta.dtype()) : "", given ? shape_str(delta.shape()) : "");
      const Tensor dl = given ? delta : empty({p.H, p.N}, DType::f32, q.device());
      NT_ON_CUDA("flash_attention", cuda::attention_backward(
          q.dtype(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), d.data_ptr(),
          static_cast<const float*>(lse.data_ptr()), static_cast<float*>(dl.data_ptr()),
          static_cast<float*>(dq_acc.data_ptr()), nullptr, dk.data_ptr(), dv.data_ptr(), dims, stream_of(d), given));
      return;
    }
  }
#endif
  // Elsewhere: the backward as flash_attention's own, then dq added.
  Tensor dq = empty(q.shape(), q.dtype(), q.device());
  if (q.device().is_cpu()) {
    cpu::attention_backward(q, k, v, out, d, lse, dq, dk, dv, p.cu, p.window, p.scale);
  } else {
#if NT_CUDA
    const Tensor cu = cu_on_device(p, q.device());
    Tensor delta = empty({p.H, p.N}, DType::f32, q.device()), acc = empty({p.N, p.H, p.D}, DType::f32, q.device());
    NT_ON_CUDA("flash_attention", cuda::attention_backward(
        q.dtype(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), d.data_ptr(),
        static_cast<const float*>(lse.data_ptr()), static_cast<float*>(delta.data_ptr()),
        static_cast<float*>(acc.data_ptr()), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dims_of(p, cu),
        stream_of(dq)));
#endif
  }
  autograd::NoGradGuard ng;
  Tensor acc = dq_acc;  // a handle on the same storage
  acc.copy_(add(dq_acc, dq.to(dq_acc.dtype())));
}

}  // namespace nt
