// Shared device helpers for the kernel files: strided offsets, block reductions, vectors, launch sizes. (Dtype
// dispatch is tensor/dtype.h's NT_DISPATCH_* macros, as in the CPU code.)
#pragma once
#include <cuda_runtime.h>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "tensor/convert.h"

namespace nt::cuda {

// Element offset of linear index i (row-major over l's sizes) in layout l.
__device__ __forceinline__ int64_t offset_of(const Strided& l, int64_t i) {
  if (l.fast) {  // 32-bit (prepare_fast_offsets): a multiply-high and a shift per dim instead of 64-bit divisions
    uint32_t u = (uint32_t)i, off = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d >= l.nd) continue;
      const uint32_t q = fast_div(u, l.div[d]);
      off += (u - q * (uint32_t)l.size[d]) * (uint32_t)l.stride[d];
      u = q;
    }
    return off;
  }
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d >= l.nd) continue;
    const int64_t s = l.size[d];
    off += (i % s) * l.stride[d];
    i /= s;
  }
  return off;
}

// l with 32-bit offsets prepared where they fit (unless set_fast_offsets(false)): every launcher passes its
// layouts through this right before launching, so the dividers always match the extents.
inline Strided with_fast_offsets(Strided l) {
  if (fast_offsets()) prepare_fast_offsets(l);
  else l.fast = false;
  return l;
}

// Temporary device memory from the caching allocator for one launcher call (the current device's; none for 0
// bytes), returned when it goes out of scope: the library's one stream orders the release after the kernels.
struct ScratchBuffer {
  void* p = nullptr;
  int dev = 0;
  explicit ScratchBuffer(size_t bytes) {
    NT_CUDA_CHECK(cudaGetDevice(&dev));
    if (bytes) p = cached_malloc(bytes, dev);
  }
  ~ScratchBuffer() {
    if (p) cached_free(p, dev);
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
};

inline int grid_for(int64_t n, int threads, int max_blocks = 65535 * 8) {
  const int64_t b = (n + threads - 1) / threads;
  return (int)(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

// Blocks for a grid-stride loop over n items: one per `threads` items, at most 16 per SM of the current device (two
// waves of 256-thread blocks; more only adds block starts).
inline int grid_stride_blocks(int64_t n, int threads) {
  int device = 0;
  NT_CUDA_CHECK(cudaGetDevice(&device));
  return grid_for(n, threads, 16 * multiprocessor_count(device));
}

// Block-wide reduction of one value per thread (blockDim.x a multiple of 32, at most 1024).
template <class T, class Op> __device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T shared[32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? shared[lane] : identity;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}
struct SumOp {
  template <class T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <class T> __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

}  // namespace nt::cuda

namespace nt::cuda {
// 16 bytes of T, for vectorized loads and stores.
template <class T> struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};
__host__ __device__ inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Asynchronous 16-byte copies global -> shared (sm_80+): issue, commit a group, wait until at most N groups are
// still in flight (then __syncthreads before reading what other threads copied).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Row kernels keep their row in dynamic shared memory when it fits, so global memory is read once; above that
// they read it from global memory again (served mostly by L2).
constexpr size_t kMaxRowSmem = 200 * 1024;
template <class K> void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) NT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}
}  // namespace nt::cuda
