// grouped_matmul (MoE experts): rows of x grouped by expert, each group times its own weight matrix. Forward and
// backward right below: dx = the same grouped product with each w[e] transposed; dw[e] = x_e^T dy_e.
// CPU: a loop of matmul kernels on views (the reference, f64 too). CUDA: bf16 on Hopper runs each product as one
// launch of our grouped kernel (cuda/grouped_gemm.cu; it reads the group offsets on the device: moe_dispatch's, or
// uploaded); other dtypes and GPUs take per-group cuBLASLt GEMMs (cuda::grouped_gemm, offsets on the host).
#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "ops/matmul.h"
#if NT_CUDA
#include "cuda/blas.h"
#include "cuda/runtime.h"
#endif

namespace nt {
namespace cpu {
void matmul_forward(const Tensor& a, const Tensor& b, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kGroupedMatmul, "grouped_matmul", true);

namespace {
#if NT_CUDA
// The Hopper kernel applies: bf16, sm_90, sizes it supports, and the backend (cuda/blas.h) choosing it: forced, or
// automatic with groups averaging under 1024 rows (rows: the grouped dim, the reduction of the weight gradient).
bool use_sm90(const Tensor& t, int64_t G, int64_t rows, int64_t N, int64_t K) {
  const cuda::GroupedBackend b = cuda::grouped_gemm_backend();
  const bool wanted = b == cuda::GroupedBackend::kernel || (b == cuda::GroupedBackend::automatic && rows < 1024 * G);
  // No rows: the cuBLAS path writes the zeros without touching the (empty) inputs.
  return t.dtype() == DType::bf16 && wanted && rows > 0 && cuda::grouped_gemm_sm90_fits(G, rows, N, K) &&
         cuda::sm90a_available(t.device().index);
}
#endif

// out [M, N] = per group e: x rows [o_e, o_e+1) @ w[e] (w [E, K, N]), or @ w[e]^T when trans_w (w [E, N, K]).
void grouped_forward(const Tensor& x, const Tensor& w, const GroupOffsets& groups, bool trans_w,
                     const Tensor& out) {
  const int64_t E = w.size(0), N = out.size(1);
  if (x.device().is_cpu()) {
    const std::vector<int64_t>& offsets = groups.host();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n == 0) continue;
      const Tensor we = trans_w ? w.select(0, e).mT() : w.select(0, e);
      cpu::matmul_forward(x.narrow(0, offsets[e], n), we, out.narrow(0, offsets[e], n));
    }
    return;
  }
#if NT_CUDA
  const int64_t K = x.size(1), es = dtype_size(x.dtype());
  if (use_sm90(x, E, x.size(0), N, K)) {
    const Tensor& off = groups.device(x.device());
    cuda::grouped_gemm_rows_bf16(x.data_ptr(), w.data_ptr(), trans_w, out.data_ptr(),
                                 static_cast<const int32_t*>(off.data_ptr()), E, x.size(0), N, K, x.device().index,
                                 stream_of(out));
    return;
  }
  const std::vector<int64_t>& offsets = groups.host();
  std::vector<cuda::GemmGroup> gemms;
  for (int64_t e = 0; e < E; ++e)
    gemms.push_back({offsets[e + 1] - offsets[e], N, K, static_cast<const char*>(x.data_ptr()) + offsets[e] * K * es, K,
                      static_cast<const char*>(w.data_ptr()) + e * K * N * es, trans_w ? K : N,
                      static_cast<char*>(out.data_ptr()) + offsets[e] * N * es, N});
  cuda::grouped_gemm(x.dtype(), false, trans_w, gemms, x.device().index, stream_of(out));
#else
  no_cuda_kernel("grouped_matmul");
#endif
}

// dw [E, K, N]: dw[e] = a_e^T b_e over the rows of group e (a [M, K], b [M, N]); 0 for empty groups.
Tensor grouped_weight_grad(const Tensor& a, const Tensor& b, const GroupOffsets& groups) {
  const int64_t E = groups.size() - 1, K = a.size(1), N = b.size(1);
  Tensor dw = empty({E, K, N}, a.dtype(), a.device());
  if (a.device().is_cpu()) {
    const std::vector<int64_t>& offsets = groups.host();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = offsets[e + 1] - offsets[e];
      if (n == 0) dw.select(0, e).fill_(0.0);
      else cpu::matmul_forward(a.narrow(0, offsets[e], n).mT(), b.narrow(0, offsets[e], n), dw.select(0, e));
    }
    return dw;
  }
#if NT_CUDA
  const int64_t es = dtype_size(a.dtype());
  if (use_sm90(a, E, a.size(0), N, K)) {
    const Tensor& off = groups.device(a.device());
    cuda::grouped_gemm_wgrad_bf16(a.data_ptr(), b.data_ptr(), dw.data_ptr(), static_cast<const int32_t*>(off.data_ptr()),
                                  E, a.size(0), K, N, a.device().index, stream_of(dw));
    return dw;
  }
  const std::vector<int64_t>& offsets = groups.host();
  std::vector<cuda::GemmGroup> gemms;
  for (int64_t e = 0; e < E; ++e)  // K_g = rows of the group: 0 rows give a zero block
    gemms.push_back({K, N, offsets[e + 1] - offsets[e], static_cast<const char*>(a.data_ptr()) + offsets[e] * K * es, K,
                      static_cast<const char*>(b.data_ptr()) + offsets[e] * N * es, N,
                      static_cast<char*>(dw.data_ptr()) + e * K * N * es, N});
  cuda::grouped_gemm(a.dtype(), true, false, gemms, a.device().index, stream_of(dw));
#else
  no_cuda_kernel("grouped_matmul");
#endif
  return dw;
}

Tensor grouped_mm(const Tensor& x_in, const Tensor& w_in, const GroupOffsets& offsets, bool trans_w) {
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t N = trans_w ? w.size(1) : w.size(2);
  Tensor out = empty({x.size(0), N}, x.dtype(), x.device());
  {
    autograd::NoGradGuard no_grad;
    grouped_forward(x, w, offsets, trans_w, out);
  }
  if (autograd::needs_grad({&x_in, &w_in}))
    autograd::record(kGroupedMatmul, out, {x_in, w_in},
                     [sx = autograd::Saved(x), sw = autograd::Saved(w), offsets, trans_w](const Tensor& g_in,
                                                                                         const std::vector<bool>& n) {
                       const Tensor g = g_in.contiguous(), &x = sx.get(), &w = sw.get();
                       Tensor dx, dw;
                       if (n[0]) dx = grouped_mm(g, w, offsets, !trans_w);
                       if (n[1]) dw = trans_w ? grouped_weight_grad(g, x, offsets) : grouped_weight_grad(x, g, offsets);
                       return std::vector<Tensor>{dx, dw};
                     });
  return out;
}
}  // namespace

const std::vector<int64_t>& GroupOffsets::host() const {
  if (!on_host()) host_ = device_.to(kCPU).to_vector_as<int64_t>();  // waits for the GPU
  return host_;
}

std::vector<int64_t> GroupOffsets::sizes() const {
  const std::vector<int64_t>& o = host();
  std::vector<int64_t> s(o.empty() ? 0 : o.size() - 1);
  for (size_t e = 0; e < s.size(); ++e) s[e] = o[e + 1] - o[e];
  return s;
}

const Tensor& GroupOffsets::device(Device dev) const {
  if (!device_.defined() || device_.device() != dev)
    device_ = from_vector(std::vector<double>(host().begin(), host().end()), {(int64_t)host().size()}, DType::i32, dev);
  return device_;
}

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const GroupOffsets& groups) {
  check_floating("grouped_matmul", x, "x");
  check_same_dtype("grouped_matmul", x, "x", w, "w");
  check_same_device("grouped_matmul", x, w);
  NT_CHECK(x.dim() == 2 && w.dim() == 3, "grouped_matmul: x must be [M, K] and w [E, K, N], got {} and {}",
           shape_str(x.shape()), shape_str(w.shape()));
  NT_CHECK(x.size(1) == w.size(1), "grouped_matmul: x has {} columns but w is {}: w's second dim must equal it",
           x.size(1), shape_str(w.shape()));
  NT_CHECK(groups.size() == w.size(0) + 1, "grouped_matmul: offsets has {} entries, expected E + 1 = {}", groups.size(),
           w.size(0) + 1);
  if (!groups.on_host()) {
    const Tensor& d = groups.stored_device();
    NT_CHECK(d.dtype() == DType::i32 && d.dim() == 1, "grouped_matmul: device offsets must be a 1-D i32 tensor, got {} {}",
             dtype_name(d.dtype()), shape_str(d.shape()));
    check_same_device("grouped_matmul", x, d);
    return grouped_mm(x, w, groups, false);
  }
  const std::vector<int64_t>& offsets = groups.host();
  NT_CHECK(offsets.front() == 0 && offsets.back() == x.size(0),
           "grouped_matmul: offsets must run from 0 to x's {} rows, got {} .. {}", x.size(0), offsets.front(),
           offsets.back());
  for (size_t e = 0; e + 1 < offsets.size(); ++e)
    NT_CHECK(offsets[e] <= offsets[e + 1], "grouped_matmul: offsets must not decrease, got {} then {} at group {}",
             offsets[e], offsets[e + 1], e);
  return grouped_mm(x, w, groups, false);
}

}  // namespace nt
