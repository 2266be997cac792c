// rope: x [N, T, H, D]; each rotated pair is read with its (cos, sin) and written once (one pass over x).
// sign = -1 rotates by the opposite angle (the backward).
#include <algorithm>

#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
// Threads of a block row (threadIdx.x) walk the pairs of one head vector (coalesced), threadIdx.y picks the row:
// one index division per thread instead of three 64-bit ones per pair.
template <class T>
__global__ void rope_kernel(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                            T* __restrict__ out, int64_t rows, int T_, int H, int D, bool inter, float sign) {
  const int64_t row = (int64_t)blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int P = D / 2, t = (int)((row / H) % T_);
  const int64_t base = row * D;
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    const int ia = inter ? 2 * i : i, ib = inter ? 2 * i + 1 : i + P;
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
  const int64_t rows = N * T * H;
  const int tx = (int)std::min<int64_t>(128, (D / 2 + 31) / 32 * 32), ty = std::max(1, 256 / tx);
  NT_DISPATCH_FLOAT(t, "rope", [&] {
    rope_kernel<scalar_t><<<(unsigned)((rows + ty - 1) / ty), dim3(tx, ty), 0, stream>>>(
        static_cast<const scalar_t*>(x), cos, sin, static_cast<scalar_t*>(out), rows, (int)T, (int)H, (int)D, interleaved, sign);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
