// Elementwise kernels. The math is ops/elementwise_math.h, shared with the CPU loops.
// unary_fwd/bwd: contiguous, 16-byte vectorized loads and stores with a scalar tail; traffic: 1 read + 1 write
// (forward), 3 reads + 1 write (backward). binary/where: strided with broadcasting (stride 0); contiguous
// same-shape operands take the vectorized path.
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class T, int N> struct alignas(16) Vec {
  T v[N];
};
template <class T> constexpr int vec_n() { return 16 / sizeof(T) > 0 ? (int)(16 / sizeof(T)) : 1; }

// Runs f(i) over vectors of N elements (when every pointer is aligned) and a scalar tail.
template <class T, UnaryOp OP>
__global__ void unary_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, acc_t<T> p0, acc_t<T> p1,
                                 bool vec) {
  using A = acc_t<T>;
  constexpr int N = vec_n<T>();
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  int64_t start = 0;
  if (vec) {
    const int64_t nv = n / N;
    for (int64_t i = tid; i < nv; i += stride) {
      Vec<T, N> a = reinterpret_cast<const Vec<T, N>*>(x)[i], r;
#pragma unroll
      for (int k = 0; k < N; ++k) r.v[k] = T(unary_fwd<OP, A>((A)a.v[k], p0, p1));
      reinterpret_cast<Vec<T, N>*>(y)[i] = r;
    }
    start = nv * N;
  }
  for (int64_t i = start + tid; i < n; i += stride) y[i] = T(unary_fwd<OP, A>((A)x[i], p0, p1));
}

template <class T, UnaryOp OP>
__global__ void unary_bwd_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                                 T* __restrict__ dx, int64_t n, acc_t<T> p0, acc_t<T> p1, bool vec) {
  using A = acc_t<T>;
  constexpr int N = vec_n<T>();
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  int64_t start = 0;
  if (vec) {
    const int64_t nv = n / N;
    for (int64_t i = tid; i < nv; i += stride) {
      Vec<T, N> a = reinterpret_cast<const Vec<T, N>*>(x)[i], b = reinterpret_cast<const Vec<T, N>*>(y)[i],
                g = reinterpret_cast<const Vec<T, N>*>(dy)[i], r;
#pragma unroll
      for (int k = 0; k < N; ++k) r.v[k] = T(unary_bwd<OP, A>((A)a.v[k], (A)b.v[k], (A)g.v[k], p0, p1));
      reinterpret_cast<Vec<T, N>*>(dx)[i] = r;
    }
    start = nv * N;
  }
  for (int64_t i = start + tid; i < n; i += stride) dx[i] = T(unary_bwd<OP, A>((A)x[i], (A)y[i], (A)dy[i], p0, p1));
}

template <class T, class O, BinaryOp OP>
__global__ void binary_kernel(const T* __restrict__ a, Strided al, const T* __restrict__ b, Strided bl,
                              O* __restrict__ out, int64_t n, bool contig) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const A va = (A)a[contig ? i : offset_of(al, i)], vb = (A)b[contig ? i : offset_of(bl, i)];
    if constexpr (std::is_same_v<O, bool>) out[i] = binary_fwd<OP, A>(va, vb) != A(0);
    else out[i] = O(binary_fwd<OP, A>(va, vb));
  }
}

// Contiguous same-shape operands: 16-byte vectors and a scalar tail. Traffic: 2 reads + 1 write.
template <class T, BinaryOp OP>
__global__ void binary_vec_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  using A = acc_t<T>;
  constexpr int N = vec_n<T>();
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t nv = n / N;
  for (int64_t i = tid; i < nv; i += stride) {
    const Vec<T, N> va = reinterpret_cast<const Vec<T, N>*>(a)[i], vb = reinterpret_cast<const Vec<T, N>*>(b)[i];
    Vec<T, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = T(binary_fwd<OP, A>((A)va.v[k], (A)vb.v[k]));
    reinterpret_cast<Vec<T, N>*>(out)[i] = r;
  }
  for (int64_t i = nv * N + tid; i < n; i += stride) out[i] = T(binary_fwd<OP, A>((A)a[i], (A)b[i]));
}

template <class T>
__global__ void where_kernel(const bool* __restrict__ c, Strided cl, const T* __restrict__ a, Strided al,
                             const T* __restrict__ b, Strided bl, T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = c[offset_of(cl, i)] ? a[offset_of(al, i)] : b[offset_of(bl, i)];
}

bool contiguous_full(const Strided& l) {
  int64_t expect = 1;
  for (int d = l.nd - 1; d >= 0; --d) {
    if (l.stride[d] != expect && l.size[d] != 1) return false;
    if (l.size[d] != 1 && l.stride[d] == 0) return false;
    expect *= l.size[d];
  }
  return true;
}
}  // namespace


void unary_forward(UnaryOp op, DType t, const void* x, void* y, int64_t n, double p0, double p1, cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "unary", [&] {
    using T = scalar_t;
    const bool vec = aligned16(x) && aligned16(y);
    dispatch_unary(op, [&](auto kind) {
      unary_fwd_kernel<T, kind.value><<<grid_stride_blocks(n / vec_n<T>() + 1, 256), 256, 0, stream>>>(
          static_cast<const T*>(x), static_cast<T*>(y), n, (acc_t<T>)p0, (acc_t<T>)p1, vec);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void unary_backward(UnaryOp op, DType t, const void* x, const void* y, const void* dy, void* dx, int64_t n, double p0,
                    double p1, cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "unary_backward", [&] {
    using T = scalar_t;
    const bool vec = aligned16(x) && aligned16(y) && aligned16(dy) && aligned16(dx);
    dispatch_unary(op, [&](auto kind) {
      unary_bwd_kernel<T, kind.value><<<grid_stride_blocks(n / vec_n<T>() + 1, 256), 256, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(dy), static_cast<T*>(dx), n,
          (acc_t<T>)p0, (acc_t<T>)p1, vec);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void binary_forward(BinaryOp op, DType t, const void* a, const Strided& a_l, const void* b, const Strided& b_l,
                    void* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const Strided al = with_fast_offsets(a_l), bl = with_fast_offsets(b_l);
  const bool contig = contiguous_full(al) && contiguous_full(bl);
  NT_DISPATCH_ARITH(t, "binary", [&] {
    using T = scalar_t;
    dispatch_binary(op, [&](auto kind) {
      if (!is_comparison(op) && contig && aligned16(a) && aligned16(b) && aligned16(out))
        binary_vec_kernel<T, kind.value><<<grid_stride_blocks(n / vec_n<T>() + 1, 256), 256, 0, stream>>>(
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n);
      else if (is_comparison(op))
        binary_kernel<T, bool, kind.value><<<grid_for(n, 256), 256, 0, stream>>>(
            static_cast<const T*>(a), al, static_cast<const T*>(b), bl, static_cast<bool*>(out), n, contig);
      else
        binary_kernel<T, T, kind.value><<<grid_for(n, 256), 256, 0, stream>>>(
            static_cast<const T*>(a), al, static_cast<const T*>(b), bl, static_cast<T*>(out), n, contig);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void where_forward(DType t, const bool* cond, const Strided& c_l, const void* a, const Strided& a_l, const void* b,
                   const Strided& b_l, void* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const Strided cl = with_fast_offsets(c_l), al = with_fast_offsets(a_l), bl = with_fast_offsets(b_l);
  NT_DISPATCH_ARITH(t, "where", [&] {
    using T = scalar_t;
    where_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(cond, cl, static_cast<const T*>(a), al,
                                                          static_cast<const T*>(b), bl, static_cast<T*>(out), n);
  });
  NT_CUDA_CHECK_LAUNCH();
}

}  // namespace nt::cuda
