// softmax/log_softmax and cross-entropy.
// Rows (inner == 1): one block per row, three passes. Pass 1 reads the row from global memory with 16-byte loads
// (four in flight per thread) into shared memory (when it fits) and keeps only a max, compared packed for bf16.
// Pass 2 sums exp(v - max) from shared memory; pass 3 writes with 16-byte stores. Traffic: 1 read + 1 write.
// Two exponentials per element (one in the sum, one in the write) and no data-dependent branch: the earlier
// online (max, sum) update made these kernels instruction-bound (Nsight: SM 74%, DRAM 47-55%).
// Rows longer than shared memory allows are read from global memory in each pass (the later ones mostly hit L2).
// Columns (inner > 1): one thread per (outer, inner) pair walking n, coalesced across inner.
// Cross-entropy: the forward computes each row's lse and loss and, when the gradient will be needed and the
// reduction is mean or sum, writes dlogits = scale * (softmax - onehot) in the same pass (scale = 1/count for
// mean, read from device memory). Backward then only multiplies by the upstream gradient, and returns dlogits
// as it is when that gradient is 1 (loss.backward()). Traffic for forward+backward: 1 read + 1 write of logits.
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
constexpr float kLog2e = 1.4426950408889634f;

// exp(v - shift) for a fixed shift. Float: exp2(v*log2(e) - shift*log2(e)), one FFMA and one ex2.approx (about
// 2 ulp, far below bf16/f32 softmax tolerance); f64 keeps exp.
template <class A> struct ExpShift {
  A c;
  __device__ explicit ExpShift(A shift) : c(std::is_same_v<A, float> ? shift * kLog2e : shift) {}
  __device__ __forceinline__ A operator()(A v) const {
    if constexpr (std::is_same_v<A, float>) {
      float r;
      asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(fmaf(v, kLog2e, -c)));
      return r;
    } else {
      return exp(v - c);
    }
  }
};

// A thread's running max. NaNs are skipped here; they still reach the row through the sum (exp(NaN - m) is NaN),
// as does a row of -inf (exp(-inf + inf)), matching PyTorch.
template <class T> struct RowMax {
  acc_t<T> m = -INFINITY;
  __device__ void add(T v) { m = (acc_t<T>)v > m ? (acc_t<T>)v : m; }
  __device__ void add(const Vec16<T>& v) {
#pragma unroll
    for (int k = 0; k < Vec16<T>::N; ++k) add(v.v[k]);
  }
  __device__ acc_t<T> value() const { return m; }
};
// bf16 pairs compared packed: 4 instructions per 16 bytes instead of 16 (convert + compare per value).
template <> struct RowMax<bf16> {
  uint32_t m = 0xff80ff80u;  // (-inf, -inf)
  __device__ void add2(uint32_t w) {
#if __CUDA_ARCH__ >= 800
    asm("max.bf16x2 %0, %0, %1;" : "+r"(m) : "r"(w));
#else
    const float a = fmaxf(bf16::from_bits(m & 0xffff), bf16::from_bits(w & 0xffff));
    const float b = fmaxf(bf16::from_bits(m >> 16), bf16::from_bits(w >> 16));
    m = bf16(a).bits | ((uint32_t)bf16(b).bits << 16);
#endif
  }
  __device__ void add(bf16 v) { add2(v.bits | ((uint32_t)v.bits << 16)); }
  __device__ void add(const Vec16<bf16>& v) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
#pragma unroll
    for (int k = 0; k < 4; ++k) add2(w[k]);
  }
  __device__ float value() const { return fmaxf(bf16::from_bits(m & 0xffff), bf16::from_bits(m >> 16)); }
};

// Passes 1 and 2 over row[0, n): copies the row into smem (when given) and returns log(sum exp) of the row.
template <class T, class A> __device__ A row_lse(const T* __restrict__ row, T* smem, int n, bool vec) {
  RowMax<T> mx;
  if (vec) {
    using V = Vec16<T>;
    constexpr int U = 4;
    const int nv = n / V::N;
    const V* src = reinterpret_cast<const V*>(row);
    int i = threadIdx.x;
    for (; i + (U - 1) * (int)blockDim.x < nv; i += U * blockDim.x) {
      V v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = src[i + u * blockDim.x];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (smem) reinterpret_cast<V*>(smem)[i + u * blockDim.x] = v[u];
        mx.add(v[u]);
      }
    }
    for (; i < nv; i += blockDim.x) {
      const V v = src[i];
      if (smem) reinterpret_cast<V*>(smem)[i] = v;
      mx.add(v);
    }
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const T v = row[i];
      if (smem) smem[i] = v;
      mx.add(v);
    }
  }
  const A m = block_reduce((A)mx.value(), MaxOp{}, (A)-INFINITY);
  // Each thread reads back the elements it stored itself, so no barrier is needed before this pass.
  const T* src = smem ? smem : row;
  const ExpShift<A> e(m);
  A s = 0;
  if (vec) {
    using V = Vec16<T>;
    for (int i = threadIdx.x; i < n / V::N; i += blockDim.x) {
      const V v = reinterpret_cast<const V*>(src)[i];
#pragma unroll
      for (int k = 0; k < V::N; ++k) s += e((A)v.v[k]);
    }
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += e((A)src[i]);
  }
  return m + log(block_reduce(s, SumOp{}, A(0)));
}
// Pass 3: out[i] = f(src[i]) over the row, vectorized when allowed.
template <class T, class F> __device__ void write_row(const T* src, T* __restrict__ out, int n, bool vec, F f) {
  if (vec) {
    using V = Vec16<T>;
    for (int i = threadIdx.x; i < n / V::N; i += blockDim.x) {
      const V v = reinterpret_cast<const V*>(src)[i];
      V r;
#pragma unroll
      for (int k = 0; k < V::N; ++k) r.v[k] = T(f((acc_t<T>)v.v[k]));
      reinterpret_cast<V*>(out)[i] = r;
    }
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = T(f((acc_t<T>)src[i]));
  }
}
// The thread of the block that write_row gives element j to.
template <class T> __device__ bool writes_element(int j, bool vec) {
  return (vec ? j / Vec16<T>::N : j) % (int)blockDim.x == (int)threadIdx.x;
}

template <class T>
__global__ void softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int n, bool lg, bool use_smem, bool vec) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = use_smem ? reinterpret_cast<T*>(smem_raw) : nullptr;
  const T* row = x + (int64_t)blockIdx.x * n;
  const A lse = row_lse<T, A>(row, smem, n, vec);
  T* out = y + (int64_t)blockIdx.x * n;
  if (lg) {
    write_row(smem ? smem : row, out, n, vec, [&](A v) { return v - lse; });
  } else {
    const ExpShift<A> e(lse);
    write_row(smem ? smem : row, out, n, vec, e);
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
    RowMax<T> mx;
    for (int64_t j = 0; j < n; ++j) mx.add(base[j * inner]);
    const ExpShift<A> em(mx.value());
    A s = 0;
    for (int64_t j = 0; j < n; ++j) s += em((A)base[j * inner]);
    const A lse = (A)mx.value() + log(s);
    const ExpShift<A> e(lse);
    for (int64_t j = 0; j < n; ++j) {
      const A v = (A)base[j * inner];
      out[j * inner] = T(lg ? v - lse : e(v));
    }
  }
}

template <class T, class I, class A = acc_t<T>>
__global__ void ce_forward_kernel(const T* __restrict__ logits, const I* __restrict__ target, int64_t ignore,
                                  A* __restrict__ loss, A* __restrict__ lse_out, T* __restrict__ dlogits,
                                  const A* __restrict__ count, int C, int* bad, bool use_smem, bool vec) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = use_smem ? reinterpret_cast<T*>(smem_raw) : nullptr;
  const T* row = logits + (int64_t)blockIdx.x * C;
  const A lse = row_lse<T, A>(row, smem, C, vec);
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
  const T* src = smem ? smem : row;
  T* drow = dlogits + (int64_t)blockIdx.x * C;
  const ExpShift<A> e(lse);
  write_row(src, drow, C, vec, [&](A v) { return scale * e(v); });
  // The one-hot term: rewritten by the thread that wrote the element, so program order makes it the last write.
  if (scale != A(0) && writes_element<T>((int)t, vec)) drow[t] = T(scale * (e((A)src[t]) - A(1)));
}

template <class T, class I, class A = acc_t<T>>
__global__ void ce_backward_kernel(const T* __restrict__ logits, const I* __restrict__ target, int64_t ignore,
                                   const A* __restrict__ lse, const A* __restrict__ grow, T* __restrict__ dlogits,
                                   int64_t C) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * C;
  T* drow = dlogits + r * C;
  const int64_t t = (int64_t)target[r];
  const A g = t == ignore ? A(0) : grow[r];
  const ExpShift<A> e(lse[r]);
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    drow[j] = T(g * (e((A)row[j]) - (j == t ? A(1) : A(0))));
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
          static_cast<const T*>(x), static_cast<T*>(y), (int)n, log, use_smem, vec);
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
          static_cast<A*>(lse), static_cast<T*>(dlogits), static_cast<const A*>(count), (int)C, bad_target, use_smem, vec);
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
