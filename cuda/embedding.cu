// embedding forward: one thread per output element, a row gather (reads the named rows once, writes out).
// backward, deterministic: the token positions are sorted by index (cub radix sort, stable, so equal indices keep
// position order), then one block per run of equal indices sums its dout rows in that order and writes the
// weight row once. No atomics, so the result does not depend on scheduling.
#include <cub/device/device_radix_sort.cuh>

#include "cuda/allocator.h"
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
template <class T, class I>
__global__ void embedding_fwd_kernel(const T* __restrict__ w, const I* __restrict__ idx, T* __restrict__ out, int64_t N,
                                     int64_t V, int64_t C, int* bad) {
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < N * C; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = p / C, c = p % C, v = (int64_t)idx[n];
    if (v < 0 || v >= V) {
      atomicExch(bad, 1);
      continue;
    }
    out[p] = w[v * C + c];
  }
}
template <class I> __global__ void iota_keys_kernel(const I* __restrict__ idx, int64_t* keys, int64_t* pos, int64_t N) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N; i += (int64_t)gridDim.x * blockDim.x)
    keys[i] = (int64_t)idx[i], pos[i] = i;
}
template <class T, class A = acc_t<T>>
__global__ void embedding_bwd_kernel(const T* __restrict__ dout, const int64_t* __restrict__ keys,
                                     const int64_t* __restrict__ pos, A* __restrict__ dw, int64_t N, int64_t V,
                                     int64_t C) {
  const int64_t i = blockIdx.x;
  if (i > 0 && keys[i] == keys[i - 1]) return;  // not the start of a run
  const int64_t v = keys[i];
  // A bad index (the forward flagged it; the error comes at the next synchronization, cuda/runtime.h) writes nothing.
  if (v < 0 || v >= V) return;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A acc = 0;
    for (int64_t j = i; j < N && keys[j] == v; ++j) acc += (A)dout[pos[j] * C + c];
    dw[v * C + c] = acc;
  }
}
}  // namespace

void embedding_forward(DType t, const void* weight, DType idx_t, const void* idx, void* out, int64_t N, int64_t V,
                       int64_t C, int* bad_index, cudaStream_t stream) {
  if (N * C == 0) return;
  NT_DISPATCH_ALL(t, "embedding", [&] {
    using T = scalar_t;
    NT_DISPATCH_INDEX(idx_t, "embedding", [&] {
      embedding_fwd_kernel<T, scalar_t><<<grid_for(N * C, 256), 256, 0, stream>>>(
          static_cast<const T*>(weight), static_cast<const scalar_t*>(idx), static_cast<T*>(out), N, V, C, bad_index);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void embedding_backward(DType t, const void* dout, DType idx_t, const void* idx, void* dweight, int64_t N, int64_t V,
                        int64_t C, cudaStream_t stream) {
  NT_CUDA_CHECK(cudaMemsetAsync(dweight, 0, V * C * (t == DType::f64 ? 8 : 4), stream));
  if (N == 0) return;
  ScratchBuffer keys(N * 8), pos(N * 8), skeys(N * 8), spos(N * 8);
  NT_DISPATCH_INDEX(idx_t, "embedding_backward", [&] {
    iota_keys_kernel<scalar_t><<<grid_for(N, 256), 256, 0, stream>>>(static_cast<const scalar_t*>(idx),
                                                                    (int64_t*)keys.p, (int64_t*)pos.p, N);
  });
  NT_CUDA_CHECK_LAUNCH();
  int end_bit = 1;
  while (end_bit < 63 && (int64_t(1) << end_bit) < V) ++end_bit;
  size_t temp_bytes = 0;
  NT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, (int64_t*)keys.p, (int64_t*)skeys.p,
                                                (int64_t*)pos.p, (int64_t*)spos.p, (int)N, 0, end_bit, stream));
  ScratchBuffer temp(temp_bytes + 1);
  NT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.p, temp_bytes, (int64_t*)keys.p, (int64_t*)skeys.p,
                                                (int64_t*)pos.p, (int64_t*)spos.p, (int)N, 0, end_bit, stream));
  NT_DISPATCH_FLOAT(t, "embedding_backward", [&] {
    embedding_bwd_kernel<scalar_t><<<(unsigned)N, C >= 256 ? 256 : 64, 0, stream>>>(
        static_cast<const scalar_t*>(dout), (const int64_t*)skeys.p, (const int64_t*)spos.p,
        static_cast<acc_t<scalar_t>*>(dweight), N, V, C);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
