// MoE token movement (ops/moe.h).
// Dispatch: M = N * K slots (token t's j-th choice is slot t * K + j), E experts, chunks of kChunk slots.
//   1. chunk_histogram: one block per chunk counts its slots per expert (shared-memory atomics: the counts do not
//      depend on their order) into scratch[chunk][e].
//   2. chunk_bases: one block turns them into each chunk's first row per expert (expert offset + the counts of
//      earlier chunks) and writes the E totals.
//   3. scatter_rows: one warp per chunk walks it 32 slots at a time in slot order; __match_any_sync ranks a slot
//      among the lanes that chose the same expert, so the sort is stable. Traffic: the indices read twice, slot_row
//      written once; scratch is E ints per chunk.
// permute: one block per token reads x[t] once and writes its K copies (16-byte vectors when D allows).
// unpermute: one block per token gathers its K rows and adds them with the gate weights in f32 (in choice order).
// Backwards are the same per-token walks: permute's sums the K row gradients (a gather, no atomics); unpermute's
// writes each row's gradient once (slot_row is a permutation) and reduces <dy, row> over the block for the gate.
#include <algorithm>
#include <initializer_list>

#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
constexpr int kChunk = 256;

template <class I>
__global__ void chunk_histogram_kernel(const I* __restrict__ idx, int64_t M, int E, int32_t* __restrict__ chunk_counts,
                                       int* bad) {
  extern __shared__ int32_t counts[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int64_t s = (int64_t)blockIdx.x * kChunk + threadIdx.x;
  if (s < M) {
    const int64_t e = (int64_t)idx[s];
    if (e < 0 || e >= E) atomicExch(bad, 1);
    else atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) chunk_counts[(int64_t)blockIdx.x * E + e] = counts[e];
}

__device__ int32_t warp_inclusive_scan(int32_t v) {
  const int lane = threadIdx.x & 31;
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

// chunk_counts [chunks][E] -> each chunk's first row per expert; totals [E]. A warp scans one expert's column over
// the chunks (32 chunks per step), warp 0 then scans the totals over the experts.
__global__ void chunk_bases_kernel(int32_t* __restrict__ chunk_counts, int chunks, int E, int32_t* __restrict__ totals,
                                   int32_t* __restrict__ offsets) {
  extern __shared__ int32_t offset[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int e = warp; e < E; e += warps) {
    int32_t carry = 0;
    for (int c0 = 0; c0 < chunks; c0 += 32) {
      const int c = c0 + lane;
      const int32_t n = c < chunks ? chunk_counts[(int64_t)c * E + e] : 0, inc = warp_inclusive_scan(n);
      if (c < chunks) chunk_counts[(int64_t)c * E + e] = carry + inc - n;
      carry += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) offset[e] = carry;
  }
  __syncthreads();
  if (warp == 0) {
    int32_t carry = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane;
      const int32_t n = e < E ? offset[e] : 0, inc = warp_inclusive_scan(n);
      if (e < E) totals[e] = n, offset[e] = carry + inc - n, offsets[e] = carry + inc - n;
      carry += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) offsets[E] = carry;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < (int64_t)chunks * E; i += blockDim.x) chunk_counts[i] += offset[i % E];
}

template <class I>
__global__ void scatter_rows_kernel(const I* __restrict__ idx, int64_t M, int E, const int32_t* __restrict__ bases,
                                    int32_t* __restrict__ slot_row) {
  extern __shared__ int32_t next[];
  const int lane = threadIdx.x;
  for (int e = lane; e < E; e += 32) next[e] = bases[(int64_t)blockIdx.x * E + e];
  __syncwarp();
  const unsigned lower = (1u << lane) - 1;
  for (int step = 0; step < kChunk / 32; ++step) {
    const int64_t s = (int64_t)blockIdx.x * kChunk + step * 32 + lane;
    const int64_t v = s < M ? (int64_t)idx[s] : -1;
    const int e = v >= 0 && v < E ? (int)v : -1;  // out of range: flagged by the histogram, skipped here
    const unsigned same = __match_any_sync(0xffffffffu, e);
    const int row = e >= 0 ? next[e] + __popc(same & lower) : 0;
    __syncwarp();
    if (e >= 0) {
      slot_row[s] = row;
      if ((same & lower) == 0) next[e] += __popc(same);  // the group's first lane advances the counter
    } else if (s < M) {
      slot_row[s] = 0;  // a bad expert (reported later, cuda/runtime.h): row 0 keeps the permutes in bounds
    }
    __syncwarp();
  }
}

// Rows of D elements moved as W-element packs (W = 16 bytes / sizeof(T) when D and the pointers allow, else 1).
template <class T, int W> struct alignas(sizeof(T) * W) Pack {
  T v[W];
};
// rows[slot_row[t, j]] = x[t]; blockIdx.x = t, packs P = D / W.
template <class T, int W>
__global__ void permute_fwd_kernel(const T* __restrict__ x, const int32_t* __restrict__ slot_row, T* __restrict__ rows,
                                   int K, int64_t P) {
  using V = Pack<T, W>;
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
    const V v = reinterpret_cast<const V*>(x)[t * P + i];
    for (int j = 0; j < K; ++j) reinterpret_cast<V*>(rows)[(int64_t)slot_row[t * K + j] * P + i] = v;
  }
}

// dx[t] = sum_j drows[slot_row[t, j]], in f32 (f64 for f64).
template <class T, int W>
__global__ void permute_bwd_kernel(const T* __restrict__ drows, const int32_t* __restrict__ slot_row, T* __restrict__ dx,
                                   int K, int64_t P) {
  using A = acc_t<T>;
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
    A acc[W] = {};
    for (int j = 0; j < K; ++j) {
      const Pack<T, W> v = reinterpret_cast<const Pack<T, W>*>(drows)[(int64_t)slot_row[t * K + j] * P + i];
#pragma unroll
      for (int k = 0; k < W; ++k) acc[k] += (A)v.v[k];
    }
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = T(acc[k]);
    reinterpret_cast<Pack<T, W>*>(dx)[t * P + i] = r;
  }
}

// y[t] = sum_j gates[t, j] * rows[slot_row[t, j]].
template <class T, int W>
__global__ void unpermute_fwd_kernel(const T* __restrict__ rows, const int32_t* __restrict__ slot_row,
                                     const T* __restrict__ gates, T* __restrict__ y, int K, int64_t P) {
  using A = acc_t<T>;
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
    A acc[W] = {};
    for (int j = 0; j < K; ++j) {
      const A g = (A)gates[t * K + j];
      const Pack<T, W> v = reinterpret_cast<const Pack<T, W>*>(rows)[(int64_t)slot_row[t * K + j] * P + i];
#pragma unroll
      for (int k = 0; k < W; ++k) acc[k] += g * (A)v.v[k];
    }
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = T(acc[k]);
    reinterpret_cast<Pack<T, W>*>(y)[t * P + i] = r;
  }
}

// drows[slot_row[t, j]] = gates[t, j] * dy[t]; dgates[t, j] = <dy[t], rows[slot_row[t, j]]> (block reduction).
template <class T, int W>
__global__ void unpermute_bwd_kernel(const T* __restrict__ rows, const int32_t* __restrict__ slot_row,
                                     const T* __restrict__ gates, const T* __restrict__ dy, T* __restrict__ drows,
                                     T* __restrict__ dgates, int K, int64_t P) {
  using A = acc_t<T>;
  using V = Pack<T, W>;
  const int64_t t = blockIdx.x;
  for (int j = 0; j < K; ++j) {
    const int64_t row = slot_row[t * K + j];
    const A g = (A)gates[t * K + j];
    A dot = 0;
    for (int64_t i = threadIdx.x; i < P; i += blockDim.x) {
      const V d = reinterpret_cast<const V*>(dy)[t * P + i], r = reinterpret_cast<const V*>(rows)[row * P + i];
      V out;
#pragma unroll
      for (int k = 0; k < W; ++k) {
        dot += (A)d.v[k] * (A)r.v[k];
        out.v[k] = T(g * (A)d.v[k]);
      }
      reinterpret_cast<V*>(drows)[row * P + i] = out;
    }
    dot = block_reduce(dot, SumOp{}, A(0));
    if (threadIdx.x == 0) dgates[t * K + j] = T(dot);
  }
}

// Threads per token block: one per pack up to 256, a multiple of 32.
int token_threads(int64_t packs) { return (int)std::min<int64_t>(256, std::max<int64_t>(32, (packs + 31) / 32 * 32)); }

// Calls f.template operator()<T, W>() with W = 16 / sizeof(T) when every row pointer is 16-byte aligned and a row
// is a whole number of 16-byte packs, else W = 1.
template <class T, class F> void with_pack_width(int64_t D, std::initializer_list<const void*> ptrs, F f) {
  bool vec = (D * sizeof(T)) % 16 == 0;
  for (const void* p : ptrs) vec = vec && aligned16(p);
  if (vec) f.template operator()<16 / sizeof(T)>();
  else f.template operator()<1>();
}
}  // namespace

int64_t moe_dispatch_scratch(int64_t M, int64_t E) { return std::max<int64_t>(1, (M + kChunk - 1) / kChunk * E); }

void moe_dispatch(DType idx_t, const void* idx, int64_t M, int E, int32_t* counts, int32_t* offsets, int32_t* slot_row,
                  int32_t* scratch, int* bad, cudaStream_t stream) {
  if (M == 0) {
    NT_CUDA_CHECK(cudaMemsetAsync(counts, 0, E * sizeof(int32_t), stream));
    NT_CUDA_CHECK(cudaMemsetAsync(offsets, 0, (E + 1) * sizeof(int32_t), stream));
    return;
  }
  const int chunks = (int)((M + kChunk - 1) / kChunk);
  const size_t smem = E * sizeof(int32_t);
  NT_DISPATCH_INDEX(idx_t, "moe_dispatch", [&] {
    using I = scalar_t;
    allow_smem(chunk_histogram_kernel<I>, smem);
    chunk_histogram_kernel<I><<<chunks, kChunk, smem, stream>>>(static_cast<const I*>(idx), M, E, scratch, bad);
    NT_CUDA_CHECK_LAUNCH();
    allow_smem(chunk_bases_kernel, smem);
    chunk_bases_kernel<<<1, 1024, smem, stream>>>(scratch, chunks, E, counts, offsets);
    NT_CUDA_CHECK_LAUNCH();
    allow_smem(scatter_rows_kernel<I>, smem);
    scatter_rows_kernel<I><<<chunks, 32, smem, stream>>>(static_cast<const I*>(idx), M, E, scratch, slot_row);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void moe_permute_forward(DType t, const void* x, const int32_t* slot_row, void* rows, int64_t N, int64_t K, int64_t D,
                         cudaStream_t stream) {
  if (N * K * D == 0) return;
  NT_DISPATCH_FLOAT(t, "moe_permute", [&] {
    using T = scalar_t;
    with_pack_width<T>(D, {x, rows}, [&]<int W>() {
      permute_fwd_kernel<T, W><<<(unsigned)N, token_threads(D / W), 0, stream>>>(
          static_cast<const T*>(x), slot_row, static_cast<T*>(rows), (int)K, D / W);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void moe_permute_backward(DType t, const void* drows, const int32_t* slot_row, void* dx, int64_t N, int64_t K,
                          int64_t D, cudaStream_t stream) {
  if (N * D == 0) return;
  NT_DISPATCH_FLOAT(t, "moe_permute_backward", [&] {
    using T = scalar_t;
    with_pack_width<T>(D, {drows, dx}, [&]<int W>() {
      permute_bwd_kernel<T, W><<<(unsigned)N, token_threads(D / W), 0, stream>>>(
          static_cast<const T*>(drows), slot_row, static_cast<T*>(dx), (int)K, D / W);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void moe_unpermute_forward(DType t, const void* rows, const int32_t* slot_row, const void* gates, void* y, int64_t N,
                           int64_t K, int64_t D, cudaStream_t stream) {
  if (N * D == 0) return;
  NT_DISPATCH_FLOAT(t, "moe_unpermute", [&] {
    using T = scalar_t;
    with_pack_width<T>(D, {rows, y}, [&]<int W>() {
      unpermute_fwd_kernel<T, W><<<(unsigned)N, token_threads(D / W), 0, stream>>>(
          static_cast<const T*>(rows), slot_row, static_cast<const T*>(gates), static_cast<T*>(y), (int)K, D / W);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

void moe_unpermute_backward(DType t, const void* rows, const int32_t* slot_row, const void* gates, const void* dy,
                            void* drows, void* dgates, int64_t N, int64_t K, int64_t D, cudaStream_t stream) {
  if (N * K == 0) return;
  NT_DISPATCH_FLOAT(t, "moe_unpermute_backward", [&] {
    using T = scalar_t;
    with_pack_width<T>(D, {rows, dy, drows}, [&]<int W>() {
      unpermute_bwd_kernel<T, W><<<(unsigned)N, token_threads(D / W), 0, stream>>>(
          static_cast<const T*>(rows), slot_row, static_cast<const T*>(gates), static_cast<const T*>(dy),
          static_cast<T*>(drows), static_cast<T*>(dgates), (int)K, D / W);
    });
  });
  NT_CUDA_CHECK_LAUNCH();
}

}  // namespace nt::cuda
