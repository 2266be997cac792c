// matmul: forward, backward right below (da = g b^T, db = a^T g, each summed over broadcast batch dims).
#include "ops/matmul.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "ops/reduce.h"
#if NT_CUDA
#include "cuda/blas.h"
#endif

namespace nt {
namespace cpu {
void matmul_forward(const Tensor& a, const Tensor& b, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kMatmul, "matmul", true);

#if NT_CUDA
namespace {
// How cuBLASLt can read the last two dims of t: row-major (trans = false) or column-major (trans = true) with a
// leading dimension, and the batch dims as one uniform stride. false when it cannot (then t is made contiguous).
struct GemmView {
  bool ok = false, trans = false;
  int64_t ld = 0, batch_stride = 0;
};
GemmView gemm_view(const Tensor& t) {
  GemmView v;
  const int64_t R = t.size(-2), C = t.size(-1), sr = t.stride(-2), sc = t.stride(-1);
  if ((sc == 1 || C == 1) && (sr >= std::max<int64_t>(C, 1) || R == 1)) v.ok = true, v.trans = false, v.ld = R == 1 ? std::max<int64_t>(C, 1) : sr;
  else if ((sr == 1 || R == 1) && (sc >= std::max<int64_t>(R, 1) || C == 1)) v.ok = true, v.trans = true, v.ld = C == 1 ? std::max<int64_t>(R, 1) : sc;
  if (!v.ok) return v;
  // Batch dims (all but the last two) must collapse into one stride: uniform, or all zero (broadcast).
  const int64_t nb = t.dim() - 2;
  int64_t expect = -1;
  for (int64_t d = nb - 1; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (expect < 0) v.batch_stride = t.stride(d), expect = t.stride(d) * t.size(d);
    else if (t.stride(d) != expect && !(t.stride(d) == 0 && v.batch_stride == 0)) v.ok = false;
    else expect = t.stride(d) * t.size(d);
  }
  return v;
}
void cuda_matmul(Tensor a, Tensor b, const Tensor& out) {
  const int64_t M = out.size(-2), N = out.size(-1), K = a.size(-1), batch = out.numel() / std::max<int64_t>(M * N, 1);
  GemmView va = gemm_view(a), vb = gemm_view(b);
  if (!va.ok) a = a.contiguous(), va = gemm_view(a);
  if (!vb.ok) b = b.contiguous(), vb = gemm_view(b);
  cuda::gemm(a.dtype(), batch, M, N, K, a.data_ptr(), va.trans, va.ld, va.batch_stride, b.data_ptr(), vb.trans, vb.ld,
             vb.batch_stride, out.data_ptr(), N, M * N, out.device().index, stream_of(out));
}
}  // namespace
#endif

// a [..., M, K], b [..., K, N], both with at least 2 dims.
static Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  NT_CHECK(b.size(-2) == K, "matmul: a has shape {} and b has shape {}: a's last dim ({}) must equal b's second-to-last ({})",
           shape_str(a.shape()), shape_str(b.shape()), K, b.size(-2));
  const Shape ab(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes("matmul", ab, bb);
  Shape as = batch, bs = batch, os = batch;
  as.insert(as.end(), {M, K}), bs.insert(bs.end(), {K, N}), os.insert(os.end(), {M, N});
  Tensor out = empty(os, a.dtype(), a.device());
  {
    autograd::NoGradGuard no_grad;
    const Tensor ae = a.expand(as), be = b.expand(bs);
    if (a.device().is_cpu())
      cpu::matmul_forward(ae, be, out);
    else
      NT_ON_CUDA("matmul", cuda_matmul(ae.detach(), be.detach(), out));
  }
  if (autograd::needs_grad({&a, &b}))
    autograd::record(kMatmul, out, {a, b},
                     [sa = autograd::Saved(a), sb = autograd::Saved(b)](const Tensor& g, const std::vector<bool>& n) {
                       const Tensor &a = sa.get(), &b = sb.get();
                       // A 2-D b shared by a batch of a (a Linear): db = sum over the batch of a_i^T g_i is one
                       // GEMM with the batch folded into K, not a batched GEMM and a reduction over its results.
                       Tensor db;
                       if (n[1] && b.dim() == 2 && a.dim() > 2)
                         db = matmul_nd(a.reshape({-1, a.size(-1)}).mT(), g.reshape({-1, g.size(-1)}));
                       else if (n[1])
                         db = sum_to(matmul_nd(a.mT(), g), b.shape());
                       return std::vector<Tensor>{n[0] ? sum_to(matmul_nd(g, b.mT()), a.shape()) : Tensor(), db};
                     });
  return out;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_floating("matmul", a, "a");
  check_same_dtype("matmul", a, "a", b, "b");
  check_same_device("matmul", a, b);
  NT_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both operands need at least 1 dim, got shapes {} and {}",
           shape_str(a.shape()), shape_str(b.shape()));
  if (a.dim() == 1 && b.dim() == 1) return matmul_nd(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  if (a.dim() == 1) return matmul_nd(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul_nd(a, b.unsqueeze(1)).squeeze(-1);
  // [..., M, K] @ [K, N] with the leading dims of a laid out as one: a single [prod(...) * M, K] GEMM (larger tiles
  // than a batched GEMM of small M).
  if (b.dim() == 2 && a.dim() > 2 && a.size(-2) > 0) {
    bool merge = true;
    for (int64_t d = a.dim() - 3; d >= 0; --d)
      merge &= a.size(d) == 1 || a.stride(d) == a.stride(d + 1) * a.size(d + 1);
    if (merge) {
      Shape os(a.shape().begin(), a.shape().end() - 1);
      os.push_back(b.size(-1));
      return matmul_nd(a.reshape({-1, a.size(-1)}), b).reshape(os);
    }
  }
  return matmul_nd(a, b);
}

}  // namespace nt
