// Shared device helpers for the kernel files: strided offsets, dtype dispatch, block reductions, launch sizes.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/check.h"
#include "cuda/kernels.h"
#include "tensor/convert.h"

namespace nt::cuda {

// Element offset of linear index i (row-major over l's sizes) in layout l.
__device__ __forceinline__ int64_t offset_of(const Strided& l, int64_t i) {
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

inline int grid_for(int64_t n, int threads, int max_blocks = 65535 * 8) {
  const int64_t b = (n + threads - 1) / threads;
  return (int)(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

[[noreturn]] inline void bad_dtype(const char* op, DType t) {
  throw std::runtime_error(std::string(op) + ": CUDA kernel does not support this dtype (" + std::to_string((int)t) + ")");
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

#define NT_CU_CASE(D, ...)                     \
  case D: {                                    \
    using scalar_t = nt::dtype_traits<D>::type; \
    __VA_ARGS__();                             \
    break;                                     \
  }
#define NT_CU_DISPATCH_FLOAT(dtype, opname, ...)      \
  switch (dtype) {                                    \
    NT_CU_CASE(nt::DType::f64, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::f32, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::bf16, __VA_ARGS__)          \
    default: ::nt::cuda::bad_dtype(opname, dtype);    \
  }
#define NT_CU_DISPATCH_INDEX(dtype, opname, ...)      \
  switch (dtype) {                                    \
    NT_CU_CASE(nt::DType::i32, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::i64, __VA_ARGS__)           \
    default: ::nt::cuda::bad_dtype(opname, dtype);    \
  }
#define NT_CU_DISPATCH_ALL(dtype, opname, ...)        \
  switch (dtype) {                                    \
    NT_CU_CASE(nt::DType::f64, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::f32, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::bf16, __VA_ARGS__)          \
    NT_CU_CASE(nt::DType::f8e4m3, __VA_ARGS__)        \
    NT_CU_CASE(nt::DType::f8e5m2, __VA_ARGS__)        \
    NT_CU_CASE(nt::DType::i32, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::i64, __VA_ARGS__)           \
    NT_CU_CASE(nt::DType::boolean, __VA_ARGS__)       \
    default: ::nt::cuda::bad_dtype(opname, dtype);    \
  }

namespace nt::cuda {
// 16 bytes of T, for vectorized loads and stores.
template <class T> struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};
__host__ __device__ inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Row kernels keep their row in dynamic shared memory when it fits, so global memory is read once; above that
// they read it from global memory again (served mostly by L2).
constexpr size_t kMaxRowSmem = 200 * 1024;
template <class K> void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) NT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}
}  // namespace nt::cuda
