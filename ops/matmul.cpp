// matmul: forward, backward right below (da = g b^T, db = a^T g, each summed over broadcast batch dims).
#include "ops/matmul.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "ops/reduce.h"

namespace nt {
namespace cpu {
void matmul_forward(const Tensor& a, const Tensor& b, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kMatmul, "matmul", true);

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
      no_cuda_kernel("matmul");
  }
  if (autograd::needs_grad({&a, &b}))
    autograd::record(kMatmul, out, {a, b},
                     [sa = autograd::Saved(a), sb = autograd::Saved(b)](const Tensor& g, const std::vector<bool>& n) {
                       const Tensor &a = sa.get(), &b = sb.get();
                       return std::vector<Tensor>{n[0] ? sum_to(matmul_nd(g, b.mT()), a.shape()) : Tensor(),
                                                  n[1] ? sum_to(matmul_nd(a.mT(), g), b.shape()) : Tensor()};
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
  return matmul_nd(a, b);
}

}  // namespace nt
