// Indexing kernels. index_select: one thread per output element. gather/scatter_add: one thread per index
// element (scatter_add adds atomically, in f32 or f64; bf16 targets are accumulated in an f32 buffer by the op).
// topk: one block per row; each candidate counts the elements ranked before it (value, then lower index first),
// and writes itself at that rank if it is below k: O(n^2 / threads) per row, exact and deterministic, meant for
// the moderate n of routing and block selection. cumsum: one thread per (outer, inner) line, sequential in n.
// A bad index sets *bad to 1 (the op checks it and throws).
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class T, class I>
__global__ void index_select_kernel(const T* __restrict__ x, const I* __restrict__ idx, T* __restrict__ out, int64_t outer,
                                    int64_t n, int64_t m, int64_t inner, int* bad) {
  const int64_t total = outer * m * inner;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < total; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = p % inner, j = (p / inner) % m, o = p / (inner * m);
    const int64_t src = (int64_t)idx[j];
    if (src < 0 || src >= n) {
      atomicExch(bad, 1);
      continue;
    }
    out[p] = x[(o * n + src) * inner + i];
  }
}

template <class T, class I>
__global__ void gather_kernel(const T* __restrict__ x, Strided xl, int dim, int64_t dim_size, const I* __restrict__ idx,
                              Strided il, T* __restrict__ out, int64_t n, int* bad) {
  const int64_t dstride = xl.stride[dim];
  xl.stride[dim] = 0;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t v = (int64_t)idx[offset_of(il, p)];
    if (v < 0 || v >= dim_size) {
      atomicExch(bad, 1);
      continue;
    }
    // xl shares il's sizes (the index's shape), so one linear index walks both.
    out[p] = x[offset_of(xl, p) + v * dstride];
  }
}

template <class T, class I>
__global__ void scatter_add_kernel(T* __restrict__ x, Strided xl, int dim, int64_t dim_size, const I* __restrict__ idx,
                                   Strided il, const T* __restrict__ src, int64_t n, int* bad) {
  const int64_t dstride = xl.stride[dim];
  xl.stride[dim] = 0;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < n; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t v = (int64_t)idx[offset_of(il, p)];
    if (v < 0 || v >= dim_size) {
      atomicExch(bad, 1);
      continue;
    }
    atomicAdd(&x[offset_of(xl, p) + v * dstride], src[p]);
  }
}

template <class T>
__global__ void topk_kernel(const T* __restrict__ x, T* __restrict__ values, int64_t* __restrict__ indices, int64_t n,
                            int64_t inner, int64_t k, bool largest) {
  using A = acc_t<T>;
  const int64_t o = blockIdx.x / inner, i = blockIdx.x % inner;
  const T* base = x + o * n * inner + i;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const A v = (A)base[j * inner];
    const bool vn = v != v;
    int64_t rank = 0;
    for (int64_t q = 0; q < n && rank < k; ++q) {
      if (q == j) continue;
      const A u = (A)base[q * inner];
      const bool un = u != u;
      bool before;
      if (un != vn) before = largest ? un : vn;  // NaN ranks above every number
      else if (!un && u != v) before = largest ? u > v : u < v;
      else before = q < j;
      rank += before;
    }
    if (rank < k) {
      values[(o * k + rank) * inner + i] = T(v);
      indices[(o * k + rank) * inner + i] = j;
    }
  }
}

template <class T>
__global__ void cumsum_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t outer, int64_t n, int64_t inner,
                              bool reverse) {
  using A = acc_t<T>;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < outer * inner; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = p / inner, i = p % inner;
    A acc = 0;
    for (int64_t jj = 0; jj < n; ++jj) {
      const int64_t at = (o * n + (reverse ? n - 1 - jj : jj)) * inner + i;
      acc += (A)x[at];
      out[at] = T(acc);
    }
  }
}
}  // namespace

void index_select(DType t, const void* x, DType idx_t, const void* idx, void* out, int64_t outer, int64_t n, int64_t m,
                  int64_t inner, int* bad_index, cudaStream_t stream) {
  const int64_t total = outer * m * inner;
  if (total == 0) return;
  NT_DISPATCH_ALL(t, "index_select", [&] {
    using T = scalar_t;
    NT_DISPATCH_INDEX(idx_t, "index_select", [&] {
      index_select_kernel<T, scalar_t><<<grid_for(total, 256), 256, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const scalar_t*>(idx), static_cast<T*>(out), outer, n, m, inner, bad_index);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void gather(DType t, const void* x, const Strided& x_l, int dim, int64_t dim_size, DType idx_t, const void* idx,
            const Strided& i_l, void* out, int64_t n, int* bad_index, cudaStream_t stream) {
  if (n == 0) return;
  const Strided xl = with_fast_offsets(x_l), il = with_fast_offsets(i_l);
  NT_DISPATCH_ALL(t, "gather", [&] {
    using T = scalar_t;
    NT_DISPATCH_INDEX(idx_t, "gather", [&] {
      gather_kernel<T, scalar_t><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<const T*>(x), xl, dim, dim_size,
                                                                        static_cast<const scalar_t*>(idx), il,
                                                                        static_cast<T*>(out), n, bad_index);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void scatter_add(DType t, void* x, const Strided& x_l, int dim, int64_t dim_size, DType idx_t, const void* idx,
                 const Strided& i_l, const void* src, int64_t n, int* bad_index, cudaStream_t stream) {
  if (n == 0) return;
  const Strided xl = with_fast_offsets(x_l), il = with_fast_offsets(i_l);
  auto launch = [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    NT_DISPATCH_INDEX(idx_t, "scatter_add", [&] {
      scatter_add_kernel<T, scalar_t><<<grid_for(n, 256), 256, 0, stream>>>(
          static_cast<T*>(x), xl, dim, dim_size, static_cast<const scalar_t*>(idx), il, static_cast<const T*>(src), n,
          bad_index);
    });
  };
  if (t == DType::f32) launch((float*)nullptr);
  else if (t == DType::f64) launch((double*)nullptr);
  else throw_bad_dtype("scatter_add", t, "f32 or f64 (bf16 targets accumulate in f32)");
  NT_CUDA_CHECK_LAUNCH();
}

void topk(DType t, const void* x, void* values, int64_t* indices, int64_t outer, int64_t n, int64_t inner, int64_t k,
          bool largest, cudaStream_t stream) {
  if (outer * inner == 0 || k == 0) return;
  NT_DISPATCH_FLOAT(t, "topk", [&] {
    topk_kernel<scalar_t><<<(unsigned)(outer * inner), 128, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(values), indices, n, inner, k, largest);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void cumsum(DType t, const void* x, void* out, int64_t outer, int64_t n, int64_t inner, bool reverse, cudaStream_t stream) {
  if (outer * n * inner == 0) return;
  NT_DISPATCH_FLOAT(t, "cumsum", [&] {
    cumsum_kernel<scalar_t><<<grid_for(outer * inner, 256), 256, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), outer, n, inner, reverse);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
