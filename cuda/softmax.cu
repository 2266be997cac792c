// softmax/log_softmax and cross-entropy.
// Rows (inner == 1): one block per row; pass 1 keeps a running (max, sum of exp) per thread (online softmax),
// merged across the block; pass 2 writes. Traffic: 2 reads (the second mostly from L2) + 1 write.
// Columns (inner > 1): one thread per (outer, inner) pair walking n, coalesced across inner.
// Cross-entropy forward: pass 1 as above gives lse; loss = lse - x[target]. Backward: one read of the logits and
// one write of dlogits = g * (exp(x - lse) - onehot); no probability tensor is materialized.
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class A> struct MaxSum {
  A m, s;
};
template <class A> __device__ __forceinline__ void online(MaxSum<A>& ms, A v) {
  if (v > ms.m) {
    ms.s = ms.s * exp(ms.m - v) + A(1);
    ms.m = v;
  } else {
    ms.s += exp(v - ms.m);
  }
}
// Merges per-thread (max, sum) into the block's; returns log(sum exp) of the row.
template <class A> __device__ A block_lse(MaxSum<A> ms) {
  const A m = block_reduce(ms.m, MaxOp{}, (A)-INFINITY);
  const A s = block_reduce(ms.m == -INFINITY ? A(0) : ms.s * exp(ms.m - m), SumOp{}, A(0));
  return m + log(s);
}

template <class T> __global__ void softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool lg) {
  using A = acc_t<T>;
  const T* row = x + blockIdx.x * n;
  T* out = y + blockIdx.x * n;
  MaxSum<A> ms{(A)-INFINITY, A(0)};
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) online(ms, (A)row[j]);
  const A lse = block_lse(ms);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const A v = (A)row[j] - lse;
    out[j] = T(lg ? v : exp(v));
  }
}

template <class T>
__global__ void softmax_cols_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner,
                                    bool lg) {
  using A = acc_t<T>;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < outer * inner; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = p / inner, i = p % inner;
    const T* base = x + o * n * inner + i;
    T* out = y + o * n * inner + i;
    MaxSum<A> ms{(A)-INFINITY, A(0)};
    for (int64_t j = 0; j < n; ++j) online(ms, (A)base[j * inner]);
    const A lse = ms.m + log(ms.s);
    for (int64_t j = 0; j < n; ++j) {
      const A v = (A)base[j * inner] - lse;
      out[j * inner] = T(lg ? v : exp(v));
    }
  }
}

template <class T, class I, class A = acc_t<T>>
__global__ void ce_forward_kernel(const T* __restrict__ logits, const I* __restrict__ target, int64_t ignore,
                                  A* __restrict__ loss, A* __restrict__ lse_out, int64_t C, int* bad) {
  const T* row = logits + blockIdx.x * C;
  MaxSum<A> ms{(A)-INFINITY, A(0)};
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) online(ms, (A)row[j]);
  const A lse = block_lse(ms);
  if (threadIdx.x == 0) {
    const int64_t t = (int64_t)target[blockIdx.x];
    lse_out[blockIdx.x] = lse;
    if (t == ignore) loss[blockIdx.x] = A(0);
    else if (t < 0 || t >= C) { loss[blockIdx.x] = (A)NAN; atomicExch(bad, 1); }
    else loss[blockIdx.x] = lse - (A)row[t];
  }
}

template <class T, class I, class A = acc_t<T>>
__global__ void ce_backward_kernel(const T* __restrict__ logits, const I* __restrict__ target, int64_t ignore,
                                   const A* __restrict__ lse, const A* __restrict__ grow, T* __restrict__ dlogits,
                                   int64_t C) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * C;
  T* drow = dlogits + r * C;
  const int64_t t = (int64_t)target[r];
  const A g = t == ignore ? A(0) : grow[r], l = lse[r];
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    drow[j] = T(g * (exp((A)row[j] - l) - (j == t ? A(1) : A(0))));
}
}  // namespace

void softmax_forward(DType t, const void* x, void* y, int64_t outer, int64_t n, int64_t inner, bool log,
                     cudaStream_t stream) {
  if (outer * n * inner == 0) return;
  NT_CU_DISPATCH_FLOAT(t, "softmax", [&] {
    using T = scalar_t;
    if (inner == 1)
      softmax_rows_kernel<T><<<(unsigned)outer, n >= 4096 ? 1024 : 128, 0, stream>>>(static_cast<const T*>(x),
                                                                                     static_cast<T*>(y), n, log);
    else
      softmax_cols_kernel<T><<<grid_for(outer * inner, 256), 256, 0, stream>>>(static_cast<const T*>(x),
                                                                               static_cast<T*>(y), outer, n, inner, log);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void cross_entropy_forward(DType t, const void* logits, DType target_t, const void* target, int64_t ignore_index,
                           void* loss, void* lse, int64_t N, int64_t C, int* bad_target, cudaStream_t stream) {
  if (N == 0) return;
  NT_CU_DISPATCH_FLOAT(t, "cross_entropy", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    NT_CU_DISPATCH_INDEX(target_t, "cross_entropy", [&] {
      ce_forward_kernel<T, scalar_t><<<(unsigned)N, C >= 4096 ? 1024 : 128, 0, stream>>>(
          static_cast<const T*>(logits), static_cast<const scalar_t*>(target), ignore_index, static_cast<A*>(loss),
          static_cast<A*>(lse), C, bad_target);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(DType t, const void* logits, DType target_t, const void* target, int64_t ignore_index,
                            const void* lse, const void* grow, void* dlogits, int64_t N, int64_t C, cudaStream_t stream) {
  if (N == 0) return;
  NT_CU_DISPATCH_FLOAT(t, "cross_entropy_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    NT_CU_DISPATCH_INDEX(target_t, "cross_entropy_backward", [&] {
      ce_backward_kernel<T, scalar_t><<<(unsigned)N, C >= 4096 ? 1024 : 128, 0, stream>>>(
          static_cast<const T*>(logits), static_cast<const scalar_t*>(target), ignore_index, static_cast<const A*>(lse),
          static_cast<const A*>(grow), static_cast<T*>(dlogits), C);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
