// rope: one thread per rotated pair of x [N, T, H, D]; reads the pair and its (cos, sin), writes the pair.
// sign = -1 rotates by the opposite angle (the backward).
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class T>
__global__ void rope_kernel(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                            T* __restrict__ out, int64_t N, int64_t T_, int64_t H, int64_t D, bool inter, float sign) {
  const int64_t P = D / 2, total = N * T_ * H * P;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < total; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = p % P, row = p / P, t = (row / H) % T_;
    const int64_t base = row * D, ia = inter ? 2 * i : i, ib = inter ? 2 * i + 1 : i + P;
    const float a = (float)x[base + ia], b = (float)x[base + ib];
    const float c = cs[t * P + i], s = sign * sn[t * P + i];
    out[base + ia] = T(a * c - b * s);
    out[base + ib] = T(a * s + b * c);
  }
}
}  // namespace

void rope_forward(DType t, const void* x, const float* cos, const float* sin, void* out, int64_t N, int64_t T, int64_t H,
                  int64_t D, bool interleaved, float sign, cudaStream_t stream) {
  const int64_t total = N * T * H * (D / 2);
  if (total == 0) return;
  NT_DISPATCH_FLOAT(t, "rope", [&] {
    rope_kernel<scalar_t><<<grid_for(total, 256), 256, 0, stream>>>(static_cast<const scalar_t*>(x), cos, sin,
                                                                    static_cast<scalar_t*>(out), N, T, H, D, interleaved, sign);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
