// copy_kernel: dst[i] = convert(src[i]) for every element of dst's shape, any strides (src broadcast by stride 0),
// any pair of dtypes. fill_kernel: dst[i] = value. Memory traffic: one read and one write per element; the
// contiguous same-dtype case is a cudaMemcpyAsync instead. Two faster paths: contiguous f32 <-> bf16 casts
// (cast_vec8_kernel, 16-byte accesses), and same-dtype copies whose layouts keep the innermost dim contiguous
// (permutations of the outer dims, broadcasts, slices): copy_kernel moves 4-, 8- or 16-byte chunks of that dim as
// single elements (widen_layout), so the offset arithmetic runs once per chunk instead of once per element.
#include "cuda/common.cuh"
#include "cuda/runtime.h"

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
// Contiguous fills starting 16-byte aligned: one 16-byte store per thread and iteration over a grid of a few blocks
// per SM, then the last n % (16 / sizeof(T)) elements. Why: fill_kernel runs a thread per element, so a large zero
// fill launched ~260k blocks of one store per thread (a [8192, 64, 128] f32 sum: 67M floats), and block launches,
// not the stores, set its pace (four such fills took 0.46 ms at NSA's 8k backward, ~1.2 TB/s, H100).
template <class T> __global__ void fill_vec16_kernel(T* __restrict__ dst, int64_t n, T v) {
  constexpr int W = 16 / sizeof(T);
  Vec16<T> x;
#pragma unroll
  for (int k = 0; k < W; ++k) x.v[k] = v;
  const int64_t nv = n / W, stride = (int64_t)gridDim.x * blockDim.x, first = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t i = first; i < nv; i += stride) reinterpret_cast<Vec16<T>*>(dst)[i] = x;
  for (int64_t i = nv * W + first; i < n; i += stride) dst[i] = v;
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
// Contiguous f32 <-> bf16: 8 elements per thread and iteration (one 16-byte access on the bf16 side, two on the
// f32 side), then a scalar tail.
template <class T> struct alignas(16) Vec8 {
  T v[8];
};
template <class D, class S>
__global__ void cast_vec8_kernel(D* __restrict__ dst, const S* __restrict__ src, int64_t n) {
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t n8 = n / 8;
  for (int64_t i = tid; i < n8; i += stride) {
    const Vec8<S> a = reinterpret_cast<const Vec8<S>*>(src)[i];
    Vec8<D> r;
#pragma unroll
    for (int k = 0; k < 8; ++k) r.v[k] = convert<D, S>(a.v[k]);
    reinterpret_cast<Vec8<D>*>(dst)[i] = r;
  }
  for (int64_t i = n8 * 8 + tid; i < n; i += stride) dst[i] = convert<D, S>(src[i]);
}

// l with chunks of r elements of its innermost dim as single elements, if that dim is contiguous (stride 1) and
// r divides its extent and every other stride (dims of extent 1 take stride 0).
bool widen_layout(Strided& l, int64_t r) {
  if (l.nd < 1 || l.stride[l.nd - 1] != 1 || l.size[l.nd - 1] % r != 0) return false;
  for (int d = 0; d + 1 < l.nd; ++d) {
    if (l.size[d] == 1) l.stride[d] = 0;
    if (l.stride[d] % r != 0) return false;
  }
  for (int d = 0; d + 1 < l.nd; ++d) l.stride[d] /= r;
  l.size[l.nd - 1] /= r;
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
  if (dst_t == src_t && dc && sc) {  // both contiguous: element i at offset i in each
    NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dtype_size(dst_t), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const bool f32_bf16 = (dst_t == DType::f32 && src_t == DType::bf16) || (dst_t == DType::bf16 && src_t == DType::f32);
  if (f32_bf16 && dc && sc && aligned16(dst) && aligned16(src)) {
    if (dst_t == DType::bf16) return cast_f32_to_bf16(static_cast<const float*>(src), dst, n, stream);
    cast_vec8_kernel<float, bf16><<<grid_stride_blocks(n / 8 + 1, 256), 256, 0, stream>>>(
        static_cast<float*>(dst), static_cast<const bf16*>(src), n);
    NT_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t es = dtype_size(dst_t);
  for (int64_t w : {16, 8, 4}) {  // bytes per chunk
    Strided wd = dst_l, ws = src_l;
    if (dst_t != src_t || !same_shape || w <= es || (uintptr_t)dst % w != 0 || (uintptr_t)src % w != 0 ||
        !widen_layout(wd, w / es) || !widen_layout(ws, w / es))
      continue;
    wd = with_fast_offsets(wd), ws = with_fast_offsets(ws);
    const int64_t nw = n / (w / es);
    auto run = [&](auto* typed) {
      using T = std::remove_pointer_t<decltype(typed)>;
      copy_kernel<T, T><<<grid_for(nw, 256), 256, 0, stream>>>(static_cast<T*>(dst), wd, static_cast<const T*>(src), ws,
                                                               nw, is_contiguous(wd), is_contiguous(ws));
    };
    if (w == 16) run((uint4*)nullptr);
    else if (w == 8) run((uint2*)nullptr);
    else run((uint32_t*)nullptr);
    NT_CUDA_CHECK_LAUNCH();
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

void cast_f32_to_bf16(const float* x, void* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (aligned16(x) && aligned16(y))
    cast_vec8_kernel<bf16, float><<<grid_stride_blocks(n / 8 + 1, 256), 256, 0, stream>>>(static_cast<bf16*>(y), x, n);
  else
    copy_kernel<bf16, float><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<bf16*>(y), Strided{}, x, Strided{}, n,
                                                                   true, true);
  NT_CUDA_CHECK_LAUNCH();
}

void fill(DType t, void* dst, const Strided& dst_l, int64_t n, double value, cudaStream_t stream) {
  if (n == 0) return;
  const Strided l = with_fast_offsets(dst_l);
  const bool contig = is_contiguous(l);
  NT_DISPATCH_ALL(t, "fill", [&] {
    const scalar_t v = from_double<scalar_t>(value);
    if (contig && aligned16(dst)) {
      int device = 0;
      NT_CUDA_CHECK(cudaGetDevice(&device));
      const int64_t nv = n / (16 / (int64_t)sizeof(scalar_t));
      fill_vec16_kernel<scalar_t><<<grid_for(nv + 1, 256, 8 * multiprocessor_count(device)), 256, 0, stream>>>(
          static_cast<scalar_t*>(dst), n, v);
    } else {
      fill_kernel<scalar_t><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<scalar_t*>(dst), l, n, v, contig);
    }
  });
  NT_CUDA_CHECK_LAUNCH();
}

}  // namespace nt::cuda
