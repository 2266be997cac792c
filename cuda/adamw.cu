// Fused AdamW: one pass over parameter, gradient and both moments (reads p, g, m, v; writes p, m, v, and the bf16
// compute copy of an f32 master when given). Moments in the accumulation type (f32; f64 for f64 parameters). The
// gradient may be bf16 for an f32 master (mixed precision: no f32 copy of the gradient is made) and is multiplied
// by grad_scale and, when given, by a scale in device memory (gradient clipping without a separate pass over the
// gradients and without reading the norm back to the host).
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
// Element i of one tensor's update (both kernels below).
template <class T, class G, class A>
__device__ __forceinline__ void adamw_element(T* p, const G* g, A* m, A* v, bf16* copy, int64_t i, A lr, A b1, A b2,
                                              A eps, A wd, A bc1, A bc2, A gscale) {
    A x = (A)p[i];
    const A gi = (A)g[i] * gscale;
    x -= lr * wd * x;
    const A mi = b1 * m[i] + (A(1) - b1) * gi, vi = b2 * v[i] + (A(1) - b2) * gi * gi;
    m[i] = mi, v[i] = vi;
    x -= lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
    p[i] = T(x);
    if (copy) copy[i] = bf16((float)x);
}

template <class T, class G, class A = acc_t<T>>
__global__ void adamw_kernel(T* __restrict__ p, const G* __restrict__ g, A* __restrict__ m, A* __restrict__ v,
                             bf16* __restrict__ copy, int64_t n, A lr, A b1, A b2, A eps, A wd, A bc1, A bc2, A gscale,
                             const double* __restrict__ gscale_dev) {
  if (gscale_dev) gscale *= (A)*gscale_dev;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    adamw_element(p, g, m, v, copy, i, lr, b1, b2, eps, wd, bc1, bc2, gscale);
  }
}

template <class T, class G>
void launch(void* param, const void* grad, void* m, void* v, void* copy, int64_t n, double lr, double beta1,
            double beta2, double eps, double weight_decay, double bc1, double bc2, double grad_scale,
            const double* grad_scale_dev, cudaStream_t stream) {
  using A = acc_t<T>;
  adamw_kernel<T, G><<<grid_stride_blocks(n, 256), 256, 0, stream>>>(
      static_cast<T*>(param), static_cast<const G*>(grad), static_cast<A*>(m), static_cast<A*>(v), static_cast<bf16*>(copy),
      n, (A)lr, (A)beta1, (A)beta2, (A)eps, (A)weight_decay, (A)bc1, (A)bc2, (A)grad_scale, grad_scale_dev);
}
}  // namespace

void adamw(DType t, void* param, DType grad_t, const void* grad, void* m, void* v, void* bf16_copy, int64_t n, double lr,
           double beta1, double beta2, double eps, double weight_decay, double bc1, double bc2, double grad_scale,
           const double* grad_scale_dev, cudaStream_t stream) {
  if (n == 0) return;
  if (t == DType::f32 && grad_t == DType::bf16) {
    launch<float, bf16>(param, grad, m, v, bf16_copy, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale, grad_scale_dev, stream);
  } else {
    NT_DISPATCH_FLOAT(t, "adamw", [&] {
      launch<scalar_t, scalar_t>(param, grad, m, v, bf16_copy, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2,
                                 grad_scale, grad_scale_dev, stream);
    });
  }
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda

// ---- AdamW over many tensors in one launch (AdamW::step on one GPU) ----
// Block b updates chunk b (at most kAdamWChunk elements of one tensor) with the same arithmetic as adamw_kernel;
// the chunk's kind picks the dtypes (block-uniform). Traffic as adamw_kernel's, summed over the tensors; what it
// saves is a launch (and the host's per-tensor work) per parameter.
namespace nt::cuda {
namespace {
template <class T, class G, class A = acc_t<T>>
__device__ void adamw_chunk(const AdamWChunk& c, A lr, A b1, A b2, A eps, A bc1, A bc2, A gscale) {
  T* p = static_cast<T*>(c.p);
  const G* g = static_cast<const G*>(c.g);
  A *m = static_cast<A*>(c.m), *v = static_cast<A*>(c.v);
  bf16* copy = static_cast<bf16*>(c.copy);
  const A wd = (A)c.wd;
  for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) {
    adamw_element(p, g, m, v, copy, i, lr, b1, b2, eps, wd, bc1, bc2, gscale);
  }
}
__global__ void adamw_chunks_kernel(const AdamWChunk* __restrict__ chunks, double lr, double b1, double b2,
                                    double eps, double bc1, double bc2, double gscale,
                                    const double* __restrict__ gscale_dev) {
  const AdamWChunk c = chunks[blockIdx.x];
  if (gscale_dev) gscale *= *gscale_dev;
  if (c.kind == kAdamWF64) {
    adamw_chunk<double, double>(c, lr, b1, b2, eps, bc1, bc2, gscale);
  } else if (c.kind == kAdamWF32) {
    adamw_chunk<float, float>(c, (float)lr, (float)b1, (float)b2, (float)eps, (float)bc1, (float)bc2, (float)gscale);
  } else {
    adamw_chunk<float, bf16>(c, (float)lr, (float)b1, (float)b2, (float)eps, (float)bc1, (float)bc2, (float)gscale);
  }
}
}  // namespace

void adamw_chunks(const AdamWChunk* chunks, int count, double lr, double beta1, double beta2, double eps, double bc1,
                  double bc2, double grad_scale, const double* grad_scale_dev, cudaStream_t stream) {
  if (count == 0) return;
  adamw_chunks_kernel<<<(unsigned)count, 256, 0, stream>>>(chunks, lr, beta1, beta2, eps, bc1, bc2, grad_scale,
                                                          grad_scale_dev);
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda

// ---- sum of squares over many tensors (the global gradient norm): one launch for all of them ----
// Block b reduces chunk b (at most kSquaresChunk elements of one tensor, its dtype read from the table) into
// partial[b] (f64); one block then adds the partials in order. Deterministic; reads each gradient once.
namespace nt::cuda {
namespace {
template <class T> __device__ float squares(const T* p, int64_t n) {
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = (float)p[i];
    acc += v * v;
  }
  return acc;
}
__global__ void squares_chunks_kernel(const SquaresChunk* __restrict__ chunks, double* __restrict__ partial) {
  const SquaresChunk c = chunks[blockIdx.x];
  double acc = 0;
  if (c.dtype == (int)DType::f64) {
    const double* p = static_cast<const double*>(c.ptr);
    for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) acc += p[i] * p[i];
  } else if (c.dtype == (int)DType::f32) {
    acc = squares(static_cast<const float*>(c.ptr), c.n);
  } else {
    acc = squares(static_cast<const bf16*>(c.ptr), c.n);
  }
  acc = block_reduce(acc, SumOp{}, 0.0);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
__global__ void sum_partials_f64_kernel(const double* __restrict__ partial, int n, double* __restrict__ out) {
  double acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  acc = block_reduce(acc, SumOp{}, 0.0);
  if (threadIdx.x == 0) out[0] = acc;
}
}  // namespace

void sum_squares_chunks(const SquaresChunk* chunks, int count, double* partial, double* out, cudaStream_t stream) {
  if (count == 0) {
    NT_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), stream));
    return;
  }
  squares_chunks_kernel<<<(unsigned)count, 512, 0, stream>>>(chunks, partial);
  NT_CUDA_CHECK_LAUNCH();
  sum_partials_f64_kernel<<<1, 1024, 0, stream>>>(partial, count, out);
  NT_CUDA_CHECK_LAUNCH();
}

namespace {
__global__ void clip_scale_kernel(const double* __restrict__ sq, double max_norm, double* __restrict__ norm,
                                  double* __restrict__ scale) {
  const double x = sqrt(sq[0]);
  norm[0] = x;
  scale[0] = x > max_norm && x > 0 ? max_norm / (x + 1e-6) : 1.0;  // NaN: 1, as on the host
}
}  // namespace

void clip_scale(const double* sum_sq, double max_norm, double* norm, double* scale, cudaStream_t stream) {
  clip_scale_kernel<<<1, 1, 0, stream>>>(sum_sq, max_norm, norm, scale);
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
