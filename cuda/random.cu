// Philox draws and dropout on the device, with the element -> counter mapping of tensor/philox.h, so a seed gives
// the CPU's numbers bit for bit (uniforms) or to the last rounding of double math (normals).
// Traffic: one write per element (draws); one read + one write (dropout).
#include "cuda/common.cuh"
#include "tensor/philox.h"

namespace nt::cuda {
namespace {
template <class T>
__global__ void philox_fill_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset, bool normal) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = normal ? philox::normal_at(seed, offset, (uint64_t)i) : philox::uniform_at(seed, offset, (uint64_t)i);
    out[i] = from_double<T>((double)v);
  }
}
template <class T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n, float p, acc_t<T> scale,
                               uint64_t seed, uint64_t offset) {
  // One Philox block gives the uniforms of 4 consecutive elements.
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b * 4 < n; b += (int64_t)gridDim.x * blockDim.x) {
    const philox::U4 r = philox::block(seed, offset + (uint64_t)b);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = b * 4 + k;
      if (i < n) out[i] = philox::to_unit(r.x[k]) >= p ? T((acc_t<T>)x[i] * scale) : T(0.0f);
    }
  }
}
}  // namespace

void philox_fill(DType t, void* out, int64_t n, uint64_t seed, uint64_t offset, bool normal, cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "rand", [&] {
    philox_fill_kernel<scalar_t><<<grid_for(n, 256), 256, 0, stream>>>(static_cast<scalar_t*>(out), n, seed, offset, normal);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void dropout_forward(DType t, const void* x, void* out, int64_t n, double p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "dropout", [&] {
    using T = scalar_t;
    dropout_kernel<T><<<grid_for((n + 3) / 4, 256), 256, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(out), n,
                                                                      (float)p, (acc_t<T>)(1.0 / (1.0 - p)), seed, offset);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
