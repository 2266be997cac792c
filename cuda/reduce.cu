// Row reductions: x [rows, R] contiguous -> out [rows]. One block per row, threads stride over the row
// (coalesced), accumulation in float (double for f64), block_reduce at the end. Traffic: one read of x (two for
// logsumexp and var, which need the max or mean first; the second pass hits L2 for rows that fit).
// Few long rows (a full reduction, a loss, a gradient norm) would leave most SMs idle with one block per row: sum,
// mean and amax then split each row into chunks, one block per chunk writing a partial (accumulation type) to a
// workspace, and a second kernel combines a row's partials in a fixed order (deterministic).
// max_dim: x [outer, n, inner], one thread per (outer, inner) pair walking n (coalesced across inner).
#include <cfloat>

#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
enum class ReduceOp { sum, mean, amax, logsumexp, var };  // same order as ops/reduce.cpp

template <class T>
__global__ void reduce_rows_kernel(int op_, const T* __restrict__ x, T* __restrict__ out, int64_t R, int64_t correction) {
  using A = acc_t<T>;
  const ReduceOp op = (ReduceOp)op_;
  const T* row = x + blockIdx.x * R;
  A acc;
  if (op == ReduceOp::amax || op == ReduceOp::logsumexp) {
    A m = -INFINITY;
    bool nan = false;
    for (int64_t i = threadIdx.x; i < R; i += blockDim.x) {
      const A v = (A)row[i];
      nan |= v != v;
      m = v > m ? v : m;
    }
    m = block_reduce(m, MaxOp{}, (A)-INFINITY);
    nan = block_reduce((int)nan, SumOp{}, 0) > 0;
    if (op == ReduceOp::amax || nan || isinf(m)) {
      acc = nan ? (A)NAN : m;
    } else {
      A s = 0;
      for (int64_t i = threadIdx.x; i < R; i += blockDim.x) s += exp((A)row[i] - m);
      s = block_reduce(s, SumOp{}, (A)0);
      acc = m + log(s);
    }
  } else {
    A s = 0;
    for (int64_t i = threadIdx.x; i < R; i += blockDim.x) s += (A)row[i];
    s = block_reduce(s, SumOp{}, (A)0);
    if (op == ReduceOp::sum) acc = s;
    else if (op == ReduceOp::mean) acc = s / (A)R;
    else {
      const A mean = s / (A)R;
      A q = 0;
      for (int64_t i = threadIdx.x; i < R; i += blockDim.x) {
        const A d = (A)row[i] - mean;
        q += d * d;
      }
      q = block_reduce(q, SumOp{}, (A)0);
      acc = q / (A)(R - correction > 0 ? R - correction : 0);
    }
  }
  if (threadIdx.x == 0) out[blockIdx.x] = T(acc);
}

template <class T>
__global__ void reduce_chunks_kernel(int op_, const T* __restrict__ x, acc_t<T>* __restrict__ partial, int64_t R,
                                     int64_t L) {
  using A = acc_t<T>;
  const bool amax = (ReduceOp)op_ == ReduceOp::amax;
  const T* row = x + blockIdx.y * R;
  const int64_t lo = blockIdx.x * L, hi = lo + L < R ? lo + L : R;
  A acc = amax ? (A)-INFINITY : (A)0;
  bool nan = false;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const A v = (A)row[i];
    if (amax) nan |= v != v, acc = v > acc ? v : acc;
    else acc += v;
  }
  if (amax) {
    acc = block_reduce(acc, MaxOp{}, (A)-INFINITY);
    if (block_reduce((int)nan, SumOp{}, 0) > 0) acc = (A)NAN;
  } else {
    acc = block_reduce(acc, SumOp{}, (A)0);
  }
  if (threadIdx.x == 0) partial[(int64_t)blockIdx.y * gridDim.x + blockIdx.x] = acc;
}

template <class T>
__global__ void reduce_partials_kernel(int op_, const acc_t<T>* __restrict__ partial, T* __restrict__ out, int chunks,
                                       int64_t R) {
  using A = acc_t<T>;
  const ReduceOp op = (ReduceOp)op_;
  const A* p = partial + (int64_t)blockIdx.x * chunks;
  A acc = op == ReduceOp::amax ? (A)-INFINITY : (A)0;
  bool nan = false;
  for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
    if (op == ReduceOp::amax) nan |= p[i] != p[i], acc = p[i] > acc ? p[i] : acc;
    else acc += p[i];
  }
  if (op == ReduceOp::amax) {
    acc = block_reduce(acc, MaxOp{}, (A)-INFINITY);
    if (block_reduce((int)nan, SumOp{}, 0) > 0) acc = (A)NAN;
  } else {
    acc = block_reduce(acc, SumOp{}, (A)0);
    if (op == ReduceOp::mean) acc /= (A)R;
  }
  if (threadIdx.x == 0) out[blockIdx.x] = T(acc);
}

constexpr int64_t kChunk = 16384;  // elements per block in the split pass
int64_t split_chunks(int op, int64_t rows, int64_t R) {
  const ReduceOp o = (ReduceOp)op;
  if (!(o == ReduceOp::sum || o == ReduceOp::mean || o == ReduceOp::amax) || rows >= 264 || R < 2 * kChunk) return 1;
  const int64_t want = (264 + rows - 1) / rows * 2, most = (R + kChunk - 1) / kChunk;  // ~4 blocks per SM in all
  return want < most ? want : most;
}

template <class T>
__global__ void max_dim_kernel(const T* __restrict__ x, T* __restrict__ values, int64_t* __restrict__ indices,
                               int64_t outer, int64_t n, int64_t inner) {
  using A = acc_t<T>;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < outer * inner; p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = p / inner, i = p % inner;
    const T* base = x + o * n * inner + i;
    A best = (A)base[0];
    int64_t bi = 0;
    for (int64_t j = 1; j < n && best == best; ++j) {
      const A v = (A)base[j * inner];
      if (v > best || v != v) best = v, bi = j;
    }
    values[p] = T(best);
    indices[p] = bi;
  }
}
}  // namespace

size_t reduce_rows_workspace(int op, DType t, int64_t rows, int64_t R) {
  const int64_t chunks = split_chunks(op, rows, R);
  return chunks > 1 ? (size_t)(rows * chunks) * (t == DType::f64 ? 8 : 4) : 0;
}

void reduce_rows(int op, DType t, const void* x, void* out, int64_t rows, int64_t R, int64_t correction,
                 void* workspace, cudaStream_t stream) {
  if (rows == 0) return;
  const int64_t chunks = split_chunks(op, rows, R);
  if (chunks > 1) {
    NT_DISPATCH_FLOAT(t, "reduce", [&] {
      using A = acc_t<scalar_t>;
      const int64_t L = (R + chunks - 1) / chunks;
      reduce_chunks_kernel<scalar_t><<<dim3((unsigned)chunks, (unsigned)rows), 512, 0, stream>>>(
          op, static_cast<const scalar_t*>(x), static_cast<A*>(workspace), R, L);
      NT_CUDA_CHECK_LAUNCH();
      reduce_partials_kernel<scalar_t><<<(unsigned)rows, 256, 0, stream>>>(op, static_cast<const A*>(workspace),
                                                                           static_cast<scalar_t*>(out), (int)chunks, R);
    });
    NT_CUDA_CHECK_LAUNCH();
    return;
  }
  NT_DISPATCH_FLOAT(t, "reduce", [&] {
    const int threads = R >= 2048 ? 1024 : (R >= 256 ? 256 : 64);
    reduce_rows_kernel<scalar_t><<<(unsigned)rows, threads, 0, stream>>>(op, static_cast<const scalar_t*>(x),
                                                                        static_cast<scalar_t*>(out), R, correction);
  });
  NT_CUDA_CHECK_LAUNCH();
}

namespace {
// Sum or mean over the middle dim of a contiguous [outer, R, inner] tensor (a broadcast's backward, e.g. [N, k, D]
// summed over k): one thread per output, its R values inner apart, so each warp reads consecutive elements. Each
// input read once, each output written once: no transposed copy, no block per tiny row.
template <class T>
__global__ void reduce_middle_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t outer, int64_t R,
                                     int64_t inner, bool mean) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= outer * inner) return;
  const int64_t o = idx / inner, i = idx - o * inner;
  const T* p = x + o * R * inner + i;
  acc_t<T> s = 0;
  for (int64_t r = 0; r < R; ++r) s += (acc_t<T>)p[r * inner];
  out[idx] = T(mean ? s / (acc_t<T>)R : s);
}
}  // namespace

void reduce_middle(DType t, const void* x, void* out, int64_t outer, int64_t R, int64_t inner, bool mean,
                   cudaStream_t stream) {
  if (outer * inner == 0) return;
  NT_DISPATCH_FLOAT(t, "reduce", [&] {
    reduce_middle_kernel<scalar_t><<<grid_for(outer * inner, 256), 256, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), outer, R, inner, mean);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void max_dim(DType t, const void* x, void* values, int64_t* indices, int64_t outer, int64_t n, int64_t inner,
             cudaStream_t stream) {
  if (outer * inner == 0) return;
  NT_DISPATCH_FLOAT(t, "max", [&] {
    max_dim_kernel<scalar_t><<<grid_for(outer * inner, 256), 256, 0, stream>>>(
        static_cast<const scalar_t*>(x), static_cast<scalar_t*>(values), indices, outer, n, inner);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
