// softmax/log_softmax and cross-entropy.
// Rows (inner == 1): one block per row. The row is read once with 16-byte loads into shared memory (when it fits),
// keeping a running (max, sum of exp) per thread (online softmax) that the block merges; the output is written
// with 16-byte stores. Traffic: 1 read + 1 write.
// Columns (inner > 1): one thread per (outer, inner) pair walking n, coalesced across inner.
// Cross-entropy: the forward computes each row's lse and loss and, when the gradient will be needed and the
// reduction is mean or sum, writes dlogits = scale * (softmax - onehot) in the same pass (scale = 1/count for
// mean, read from device memory). Backward then only multiplies by the upstream gradient, and returns dlogits
// as it is when that gradient is 1 (loss.backward()). Traffic for forward+backward: 1 read + 1 write of logits.
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class A> struct MaxSum {
  A m, s;
};
// exp on the special-function unit for float (about 2 ulp, far below bf16/f32 softmax tolerance); f64 keeps exp.
// With the precise expf, two exponentials per element made these kernels compute-bound.
template <class A> __device__ __forceinline__ A fexp(A x) {
  if constexpr (std::is_same_v<A, float>) return __expf(x);
  else return exp(x);
}
template <class A> __device__ __forceinline__ void online(MaxSum<A>& ms, A v) {
  if (v > ms.m) {
    ms.s = ms.s * fexp(ms.m - v) + A(1);
    ms.m = v;
  } else {
    ms.s += fexp(v - ms.m);
  }
}
// Merges per-thread (max, sum) into the block's; returns log(sum exp) of the row.
template <class A> __device__ A block_lse(MaxSum<A> ms) {
  const A m = block_reduce(ms.m, MaxOp{}, (A)-INFINITY);
  // A thread that saw only -inf and NaN has m = -inf and s = NaN: the NaN must still reach the row.
  const A s = block_reduce(ms.m == -INFINITY ? (ms.s != ms.s ? ms.s : A(0)) : ms.s * fexp(ms.m - m), SumOp{}, A(0));
  return m + log(s);
}

// Reads row[0, n) (into smem when given), feeding every element to the online (max, sum). Four 16-byte loads per
// thread are issued before any is used, so enough bytes are in flight to cover memory latency.
template <class T, class A>
__device__ MaxSum<A> scan_row(const T* __restrict__ row, T* smem, int64_t n, bool vec) {
  MaxSum<A> ms{(A)-INFINITY, A(0)};
  if (vec) {
    using V = Vec16<T>;
    constexpr int U = 4;
    const int64_t nv = n / V::N;
    const V* src = reinterpret_cast<const V*>(row);
    int64_t i = threadIdx.x;
    for (; i + (U - 1) * (int64_t)blockDim.x < nv; i += U * (int64_t)blockDim.x) {
      V v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = src[i + u * blockDim.x];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (smem) reinterpret_cast<V*>(smem)[i + u * blockDim.x] = v[u];
#pragma unroll
        for (int k = 0; k < V::N; ++k) online(ms, (A)v[u].v[k]);
      }
    }
    for (; i < nv; i += blockDim.x) {
      const V v = src[i];
      if (smem) reinterpret_cast<V*>(smem)[i] = v;
#pragma unroll
      for (int k = 0; k < V::N; ++k) online(ms, (A)v.v[k]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const T v = row[i];
      if (smem) smem[i] = v;
      online(ms, (A)v);
    }
  }
  return ms;
}
// out[i] = f(i, src[i]) over the row, vectorized when allowed.
template <class T, class F> __device__ void write_row(const T* src, T* __restrict__ out, int64_t n, bool vec, F f) {
  if (vec) {
    using V = Vec16<T>;
    for (int64_t i = threadIdx.x; i < n / V::N; i += blockDim.x) {
      const V v = reinterpret_cast<const V*>(src)[i];
      V r;
#pragma unroll
      for (int k = 0; k < V::N; ++k) r.v[k] = f(i * V::N + k, v.v[k]);
      reinterpret_cast<V*>(out)[i] = r;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = f(i, src[i]);
  }
}

template <class T>
__global__ void softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool lg, bool use_smem, bool vec) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = use_smem ? reinterpret_cast<T*>(smem_raw) : nullptr;
  const T* row = x + blockIdx.x * n;
  const A lse = block_lse(scan_row<T, A>(row, smem, n, vec));  // block_lse syncs: smem is complete after it
  write_row(smem ? smem : row, y + blockIdx.x * n, n, vec, [&](int64_t, T v) {
    const A d = (A)v - lse;
    return T(lg ? d : fexp(d));
  });
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
                                  A* __restrict__ loss, A* __restrict__ lse_out, T* __restrict__ dlogits,
                                  const A* __restrict__ count, int64_t C, int* bad, bool use_smem, bool vec) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = use_smem ? reinterpret_cast<T*>(smem_raw) : nullptr;
  const T* row = logits + blockIdx.x * C;
  const A lse = block_lse(scan_row<T, A>(row, smem, C, vec));
  const int64_t t = (int64_t)target[blockIdx.x];
  const bool ignored = t == ignore, invalid = !ignored && (t < 0 || t >= C);
  if (threadIdx.x == 0) {
    lse_out[blockIdx.x] = lse;
    if (ignored) loss[blockIdx.x] = A(0);
    else if (invalid) { loss[blockIdx.x] = (A)NAN; atomicExch(bad, 1); }
    else loss[blockIdx.x] = lse - (A)row[t];
  }
  if (!dlogits) return;
  const A scale = ignored || invalid ? A(0) : (count ? A(1) / *count : A(1));
  write_row(smem ? smem : row, dlogits + blockIdx.x * C, C, vec,
            [&](int64_t j, T v) { return T(scale * (fexp((A)v - lse) - (j == t ? A(1) : A(0)))); });
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
    drow[j] = T(g * (fexp((A)row[j] - l) - (j == t ? A(1) : A(0))));
}

int row_threads(int64_t n) { return n >= 8192 ? 1024 : (n >= 1024 ? 256 : 128); }
}  // namespace

void softmax_forward(DType t, const void* x, void* y, int64_t outer, int64_t n, int64_t inner, bool log,
                     cudaStream_t stream) {
  if (outer * n * inner == 0) return;
  NT_DISPATCH_FLOAT(t, "softmax", [&] {
    using T = scalar_t;
    if (inner == 1) {
      const size_t bytes = n * sizeof(T);
      const bool use_smem = bytes <= kMaxRowSmem, vec = aligned16(x) && aligned16(y) && bytes % 16 == 0;
      allow_smem(softmax_rows_kernel<T>, use_smem ? bytes : 0);
      softmax_rows_kernel<T><<<(unsigned)outer, row_threads(n), use_smem ? bytes : 0, stream>>>(
          static_cast<const T*>(x), static_cast<T*>(y), n, log, use_smem, vec);
    } else {
      softmax_cols_kernel<T><<<grid_for(outer * inner, 256), 256, 0, stream>>>(static_cast<const T*>(x),
                                                                               static_cast<T*>(y), outer, n, inner, log);
    }
  });
  NT_CUDA_CHECK_LAUNCH();
}

void cross_entropy_forward(DType t, const void* logits, DType target_t, const void* target, int64_t ignore_index,
                           void* loss, void* lse, void* dlogits, const void* count, int64_t N, int64_t C,
                           int* bad_target, cudaStream_t stream) {
  if (N == 0) return;
  NT_DISPATCH_FLOAT(t, "cross_entropy", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const size_t bytes = C * sizeof(T);
    const bool use_smem = bytes <= kMaxRowSmem && dlogits,
               vec = aligned16(logits) && (!dlogits || aligned16(dlogits)) && bytes % 16 == 0;
    NT_DISPATCH_INDEX(target_t, "cross_entropy", [&] {
      auto kernel = ce_forward_kernel<T, scalar_t>;
      allow_smem(kernel, use_smem ? bytes : 0);
      kernel<<<(unsigned)N, row_threads(C), use_smem ? bytes : 0, stream>>>(
          static_cast<const T*>(logits), static_cast<const scalar_t*>(target), ignore_index, static_cast<A*>(loss),
          static_cast<A*>(lse), static_cast<T*>(dlogits), static_cast<const A*>(count), C, bad_target, use_smem, vec);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(DType t, const void* logits, DType target_t, const void* target, int64_t ignore_index,
                            const void* lse, const void* grow, void* dlogits, int64_t N, int64_t C, cudaStream_t stream) {
  if (N == 0) return;
  NT_DISPATCH_FLOAT(t, "cross_entropy_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    NT_DISPATCH_INDEX(target_t, "cross_entropy_backward", [&] {
      ce_backward_kernel<T, scalar_t><<<(unsigned)N, row_threads(C), 0, stream>>>(
          static_cast<const T*>(logits), static_cast<const scalar_t*>(target), ignore_index, static_cast<const A*>(lse),
          static_cast<const A*>(grow), static_cast<T*>(dlogits), C);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

}  // namespace nt::cuda
