// copy_kernel: dst[i] = convert(src[i]) for every element of dst's shape, any strides (src broadcast by stride 0),
// any pair of dtypes. fill_kernel: dst[i] = value. Memory traffic: one read and one write per element; the
// contiguous same-dtype case is a cudaMemcpyAsync instead.
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
// Float-to-float conversions go through float (exact for every 16- and 8-bit type); f64 and integers through
// double.
template <class D, class S> __device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else if constexpr (!std::is_same_v<D, double> && !std::is_same_v<S, double> && !std::is_integral_v<D> &&
                     !std::is_integral_v<S>)
    return D((float)v);
  else return from_double<D>(to_double(v));
}

template <class D, class S>
__global__ void copy_kernel(D* __restrict__ dst, Strided dl, const S* __restrict__ src, Strided sl, int64_t n,
                            bool dst_contig, bool src_contig) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[dst_contig ? i : offset_of(dl, i)] = convert<D, S>(src[src_contig ? i : offset_of(sl, i)]);
}

template <class T> __global__ void fill_kernel(T* __restrict__ dst, Strided l, int64_t n, T v, bool contig) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[contig ? i : offset_of(l, i)] = v;
}

bool is_contiguous(const Strided& l) {
  int64_t expect = 1;
  for (int d = l.nd - 1; d >= 0; --d) {
    if (l.size[d] == 1) continue;
    if (l.stride[d] != expect) return false;
    expect *= l.size[d];
  }
  return true;
}
bool g_fast_offsets = true;
}  // namespace

void set_fast_offsets(bool on) { g_fast_offsets = on; }
bool fast_offsets() { return g_fast_offsets; }

void copy(DType dst_t, void* dst, const Strided& dst_l, DType src_t, const void* src, const Strided& src_l, int64_t n,
          cudaStream_t stream) {
  if (n == 0) return;
  const Strided dl = with_fast_offsets(dst_l), sl = with_fast_offsets(src_l);
  const bool dc = is_contiguous(dl), sc = is_contiguous(sl);  // contiguous: element i at offset i
  bool same_shape = sl.nd == dl.nd;
  for (int d = 0; same_shape && d < dl.nd; ++d) same_shape = sl.size[d] == dl.size[d];
  if (dst_t == src_t && dc && same_shape && sc) {
    NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dtype_size(dst_t), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  NT_DISPATCH_ALL(dst_t, "copy", [&] {
    using D = scalar_t;
    NT_DISPATCH_ALL(src_t, "copy", [&] {
      copy_kernel<D, scalar_t><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<D*>(dst), dl,
                                                                     static_cast<const scalar_t*>(src), sl, n, dc, sc);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void fill(DType t, void* dst, const Strided& dst_l, int64_t n, double value, cudaStream_t stream) {
  if (n == 0) return;
  const Strided l = with_fast_offsets(dst_l);
  NT_DISPATCH_ALL(t, "fill", [&] {
    fill_kernel<scalar_t><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<scalar_t*>(dst), l, n,
                                                                from_double<scalar_t>(value), is_contiguous(l));
  });
  NT_CUDA_CHECK_LAUNCH();
}

}  // namespace nt::cuda
