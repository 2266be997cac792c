// Fused AdamW: one pass over parameter, gradient and both moments (reads p, g, m, v; writes p, m, v), 16-byte
// vectors where the parameter allows. Moments in the accumulation type (f32; f64 for f64 parameters).
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class T, class A = acc_t<T>>
__global__ void adamw_kernel(T* __restrict__ p, const T* __restrict__ g, A* __restrict__ m, A* __restrict__ v, int64_t n,
                             A lr, A b1, A b2, A eps, A wd, A bc1, A bc2) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    A x = (A)p[i];
    const A gi = (A)g[i];
    x -= lr * wd * x;
    const A mi = b1 * m[i] + (A(1) - b1) * gi, vi = b2 * v[i] + (A(1) - b2) * gi * gi;
    m[i] = mi, v[i] = vi;
    x -= lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
    p[i] = T(x);
  }
}
}  // namespace

void adamw(DType t, void* param, const void* grad, void* m, void* v, int64_t n, double lr, double beta1, double beta2,
           double eps, double weight_decay, double bc1, double bc2, cudaStream_t stream) {
  if (n == 0) return;
  NT_DISPATCH_FLOAT(t, "adamw", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    adamw_kernel<T><<<grid_for(n, 256, 132 * 16), 256, 0, stream>>>(
        static_cast<T*>(param), static_cast<const T*>(grad), static_cast<A*>(m), static_cast<A*>(v), n, (A)lr, (A)beta1,
        (A)beta2, (A)eps, (A)weight_decay, (A)bc1, (A)bc2);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
