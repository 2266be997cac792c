// swiglu forward: y = silu(gate) * up; backward: dgate = dy * up * silu'(gate), dup = dy * silu(gate).
// Contiguous operands, 16-byte vectors with a scalar tail. Traffic: forward 2 reads + 1 write; backward
// 3 reads + 2 writes (one pass, both gradients).
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class A> __device__ __forceinline__ A sigm(A x) { return A(1) / (A(1) + exp(-x)); }

template <class T>
__global__ void swiglu_fwd_kernel(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, int64_t n, bool vec) {
  using A = acc_t<T>;
  using V = Vec16<T>;
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  int64_t start = 0;
  if (vec) {
    for (int64_t i = tid; i < n / V::N; i += stride) {
      const V a = reinterpret_cast<const V*>(g)[i], b = reinterpret_cast<const V*>(u)[i];
      V r;
#pragma unroll
      for (int k = 0; k < V::N; ++k) r.v[k] = T((A)a.v[k] * sigm((A)a.v[k]) * (A)b.v[k]);
      reinterpret_cast<V*>(y)[i] = r;
    }
    start = n / V::N * V::N;
  }
  for (int64_t i = start + tid; i < n; i += stride) y[i] = T((A)g[i] * sigm((A)g[i]) * (A)u[i]);
}

template <class T>
__global__ void swiglu_bwd_kernel(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ dy,
                                  T* __restrict__ dg, T* __restrict__ du, int64_t n, bool vec) {
  using A = acc_t<T>;
  using V = Vec16<T>;
  auto one = [](A a, A b, A d, T& oa, T& ob) {
    const A s = sigm(a);
    oa = T(d * b * s * (A(1) + a * (A(1) - s)));
    ob = T(d * a * s);
  };
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  int64_t start = 0;
  if (vec) {
    for (int64_t i = tid; i < n / V::N; i += stride) {
      const V a = reinterpret_cast<const V*>(g)[i], b = reinterpret_cast<const V*>(u)[i], d = reinterpret_cast<const V*>(dy)[i];
      V ra, rb;
#pragma unroll
      for (int k = 0; k < V::N; ++k) one((A)a.v[k], (A)b.v[k], (A)d.v[k], ra.v[k], rb.v[k]);
      reinterpret_cast<V*>(dg)[i] = ra;
      reinterpret_cast<V*>(du)[i] = rb;
    }
    start = n / V::N * V::N;
  }
  for (int64_t i = start + tid; i < n; i += stride) one((A)g[i], (A)u[i], (A)dy[i], dg[i], du[i]);
}
}  // namespace

void swiglu_forward(DType t, const void* gate, const void* up, void* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "swiglu", [&] {
    using T = scalar_t;
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(out);
    swiglu_fwd_kernel<T><<<grid_stride_blocks(n / Vec16<T>::N + 1, 256), 256, 0, stream>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out), n, vec);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(DType t, const void* gate, const void* up, const void* dy, void* dgate, void* dup, int64_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "swiglu_backward", [&] {
    using T = scalar_t;
    const bool vec = aligned16(gate) && aligned16(up) && aligned16(dy) && aligned16(dgate) && aligned16(dup);
    swiglu_bwd_kernel<T><<<grid_stride_blocks(n / Vec16<T>::N + 1, 256), 256, 0, stream>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<const T*>(dy), static_cast<T*>(dgate),
        static_cast<T*>(dup), n, vec);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
