// rms_norm / layer_norm over rows of x [R, C], accumulating in float (double for f64). Forward: one block per row, mean (layer_norm) then centered sum of
// squares then the write: 3 reads of the row (the 2nd and 3rd from L1/L2) + 1 write; stats (mean, rstd) saved.
// Backward dx: one block per row, 2 reads of x and dy + 1 write. dw/db: a separate column kernel that walks the
// rows in a fixed order (deterministic, no atomics): 32 columns x 8 row lanes per block, combined in shared memory.
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class T, class A = acc_t<T>>
__global__ void norm_fwd_kernel(bool rms, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                A eps, T* __restrict__ y, A* __restrict__ stats, int64_t C) {
  const T* row = x + blockIdx.x * C;
  A mu = 0;
  if (!rms) {
    A s = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (A)row[c];
    mu = block_reduce(s, SumOp{}, A(0)) / (A)C;
  }
  A q = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A d = (A)row[c] - mu;
    q += d * d;
  }
  const A rstd = A(1) / sqrt(block_reduce(q, SumOp{}, A(0)) / (A)C + eps);
  if (threadIdx.x == 0) stats[2 * blockIdx.x] = mu, stats[2 * blockIdx.x + 1] = rstd;
  T* out = y + blockIdx.x * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A v = ((A)row[c] - mu) * rstd;
    if (w) v *= (A)w[c];
    if (b) v += (A)b[c];
    out[c] = T(v);
  }
}

template <class T, class A = acc_t<T>>
__global__ void norm_bwd_dx_kernel(bool rms, const T* __restrict__ x, const T* __restrict__ w,
                                   const A* __restrict__ stats, const T* __restrict__ dy, T* __restrict__ dx, int64_t C) {
  const int64_t r = blockIdx.x;
  const T *xr = x + r * C, *gr = dy + r * C;
  const A mu = stats[2 * r], rstd = stats[2 * r + 1];
  A s_gw = 0, s_gwx = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A gw = (A)gr[c] * (w ? (A)w[c] : A(1));
    s_gw += gw, s_gwx += gw * ((A)xr[c] - mu) * rstd;
  }
  const A mean_gw = rms ? A(0) : block_reduce(s_gw, SumOp{}, A(0)) / (A)C;
  const A mean_gwx = block_reduce(s_gwx, SumOp{}, A(0)) / (A)C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A gw = (A)gr[c] * (w ? (A)w[c] : A(1));
    const A xhat = ((A)xr[c] - mu) * rstd;
    dx[r * C + c] = T(rstd * (gw - mean_gw - xhat * mean_gwx));
  }
}

template <class T, class A = acc_t<T>>
__global__ void norm_bwd_dw_kernel(const T* __restrict__ x, const A* __restrict__ stats, const T* __restrict__ dy,
                                   A* __restrict__ dw, A* __restrict__ db, int64_t R, int64_t C) {
  __shared__ A sw[8][33], sb[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  A aw = 0, ab = 0;
  if (c < C)
    for (int64_t r = threadIdx.y; r < R; r += 8) {
      const A g = (A)dy[r * C + c];
      aw += g * ((A)x[r * C + c] - stats[2 * r]) * stats[2 * r + 1];
      ab += g;
    }
  sw[threadIdx.y][threadIdx.x] = aw, sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int k = 1; k < 8; ++k) aw += sw[k][threadIdx.x], ab += sb[k][threadIdx.x];
    if (dw) dw[c] = aw;
    if (db) db[c] = ab;
  }
}
inline int threads_for(int64_t C) { return C >= 2048 ? 512 : (C >= 256 ? 256 : 64); }
}  // namespace

void norm_forward(bool rms, DType t, const void* x, const void* w, const void* b, double eps, void* y, void* stats,
                  int64_t R, int64_t C, cudaStream_t stream) {
  if (R == 0) return;
  NT_CU_DISPATCH_FLOAT(t, "norm", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    norm_fwd_kernel<T><<<(unsigned)R, threads_for(C), 0, stream>>>(rms, static_cast<const T*>(x), static_cast<const T*>(w),
                                                                  static_cast<const T*>(b), (A)eps, static_cast<T*>(y),
                                                                  static_cast<A*>(stats), C);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void norm_backward(bool rms, DType t, const void* x, const void* w, const void* stats, const void* dy, void* dx,
                   void* dw, void* db, int64_t R, int64_t C, cudaStream_t stream) {
  if (R == 0) return;
  NT_CU_DISPATCH_FLOAT(t, "norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    norm_bwd_dx_kernel<T><<<(unsigned)R, threads_for(C), 0, stream>>>(rms, static_cast<const T*>(x), static_cast<const T*>(w),
                                                                     static_cast<const A*>(stats), static_cast<const T*>(dy),
                                                                     static_cast<T*>(dx), C);
    NT_CUDA_CHECK_LAUNCH();
    if (dw || db)
      norm_bwd_dw_kernel<T><<<(unsigned)((C + 31) / 32), dim3(32, 8), 0, stream>>>(
          static_cast<const T*>(x), static_cast<const A*>(stats), static_cast<const T*>(dy), static_cast<A*>(dw),
          static_cast<A*>(db), R, C);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
