// rms_norm / layer_norm over rows of x [R, C], accumulating in float (double for f64).
// Forward: one block per row; the row is read once (16-byte loads) into shared memory, the statistics come from
// there, and the output is written with 16-byte stores: 1 read + 1 write; stats (mean, rstd) are saved.
// Backward: a grid of as many blocks as fit at once walks the rows. Each block caches its row of x and dy in shared
// memory, writes dx, and adds the row's contribution to dw/db into per-block partial sums (each column owned by
// one thread, so no atomics). A second kernel adds the partials over blocks in a fixed order: deterministic.
// Traffic: x and dy read once, dx written once, plus the partials (blocks x C, small next to R x C).
#include "cuda/allocator.h"
#include "cuda/common.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
// Loads rows a and b (b may be null) of C elements into smem, then syncs. Up to four 16-byte loads per thread
// and row are issued before the stores, to keep enough bytes in flight.
template <class T>
__device__ void load_rows(const T* __restrict__ a, T* sa, const T* __restrict__ b, T* sb, int64_t C, bool vec) {
  if (vec) {
    using V = Vec16<T>;
    constexpr int U = 4;
    const int64_t nv = C / V::N;
    int64_t i = threadIdx.x;
    for (; i + (U - 1) * (int64_t)blockDim.x < nv; i += U * (int64_t)blockDim.x) {
      V va[U], vb[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        va[u] = reinterpret_cast<const V*>(a)[i + u * blockDim.x];
        if (b) vb[u] = reinterpret_cast<const V*>(b)[i + u * blockDim.x];
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        reinterpret_cast<V*>(sa)[i + u * blockDim.x] = va[u];
        if (b) reinterpret_cast<V*>(sb)[i + u * blockDim.x] = vb[u];
      }
    }
    for (; i < nv; i += blockDim.x) {
      const V va = reinterpret_cast<const V*>(a)[i];
      V vb;
      if (b) vb = reinterpret_cast<const V*>(b)[i];
      reinterpret_cast<V*>(sa)[i] = va;
      if (b) reinterpret_cast<V*>(sb)[i] = vb;
    }
  } else {
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      sa[i] = a[i];
      if (b) sb[i] = b[i];
    }
  }
  __syncthreads();
}

template <class T, class A = acc_t<T>>
__global__ void norm_fwd_kernel(bool rms, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                A eps, T* __restrict__ y, A* __restrict__ stats, int64_t C, bool use_smem, bool vec) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const T* row = x + blockIdx.x * C;
  if (use_smem) {
    load_rows<T>(row, reinterpret_cast<T*>(smem_raw), nullptr, nullptr, C, vec);
    row = reinterpret_cast<const T*>(smem_raw);
  }
  A mu = 0;
  if (!rms) {
    A s = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (A)row[c];
    mu = block_reduce(s, SumOp{}, A(0)) / (A)C;
  }
  A q = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A d = (A)row[c] - mu;
    q += d * d;
  }
  const A rstd = A(1) / sqrt(block_reduce(q, SumOp{}, A(0)) / (A)C + eps);
  if (threadIdx.x == 0) stats[2 * blockIdx.x] = mu, stats[2 * blockIdx.x + 1] = rstd;
  T* out = y + blockIdx.x * C;
  auto value = [&](int64_t c) {
    A v = ((A)row[c] - mu) * rstd;
    if (w) v *= (A)w[c];
    if (b) v += (A)b[c];
    return T(v);
  };
  if (vec) {
    using V = Vec16<T>;
    for (int64_t i = threadIdx.x; i < C / V::N; i += blockDim.x) {
      V r;
#pragma unroll
      for (int k = 0; k < V::N; ++k) r.v[k] = value(i * V::N + k);
      reinterpret_cast<V*>(out)[i] = r;
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[c] = value(c);
  }
}

// Forward with the row in registers (16-byte vectors, at most 32 elements per thread; f32 and bf16): no shared
// memory round trip, and w and b read as vectors too.
template <class T, class A = acc_t<T>>
__global__ void norm_fwd_reg_kernel(bool rms, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                    A eps, T* __restrict__ y, A* __restrict__ stats, int64_t C) {
  using V = Vec16<T>;
  constexpr int N = V::N, KV = 32 / N;
  const int nv = (int)(C / N);
  const V* row = reinterpret_cast<const V*>(x + blockIdx.x * C);
  V xv[KV];
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < nv) xv[k] = row[i];
  }
  A mu = 0;
  if (!rms) {
    A s = 0;
#pragma unroll
    for (int k = 0; k < KV; ++k)
      if (threadIdx.x + k * blockDim.x < nv)
#pragma unroll
        for (int j = 0; j < N; ++j) s += (A)xv[k].v[j];
    mu = block_reduce(s, SumOp{}, A(0)) / (A)C;
  }
  A q = 0;
#pragma unroll
  for (int k = 0; k < KV; ++k)
    if (threadIdx.x + k * blockDim.x < nv)
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A d = (A)xv[k].v[j] - mu;
        q += d * d;
      }
  const A rstd = A(1) / sqrt(block_reduce(q, SumOp{}, A(0)) / (A)C + eps);
  if (threadIdx.x == 0) stats[2 * blockIdx.x] = mu, stats[2 * blockIdx.x + 1] = rstd;
  V* out = reinterpret_cast<V*>(y + blockIdx.x * C);
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i >= nv) continue;
    V wv, bv, o;
    if (w) wv = reinterpret_cast<const V*>(w)[i];
    if (b) bv = reinterpret_cast<const V*>(b)[i];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      A v = ((A)xv[k].v[j] - mu) * rstd;
      if (w) v *= (A)wv.v[j];
      if (b) v += (A)bv.v[j];
      o.v[j] = T(v);
    }
    out[i] = o;
  }
}

// Shared memory: [x row | dy row] in T when use_smem. Each thread owns columns c = tid + k * blockDim and keeps
// their dw/db partial sums in registers (up to kRegCols = 32 columns; wider rows keep them in this block's row of the
// global partial buffer instead); they are stored to that row once at the end.
constexpr int kRegCols = 32;
// kBias: db is wanted (layer_norm with a bias); rms_norm compiles its accumulators out, halving the registers.
template <class T, bool kBias, class A = acc_t<T>>
__global__ void __launch_bounds__(256) norm_bwd_kernel(bool rms, const T* __restrict__ x, const T* __restrict__ w, const A* __restrict__ stats,
                                const T* __restrict__ dy, T* __restrict__ dx, A* __restrict__ partial_w,
                                A* __restrict__ partial_b, int64_t R, int64_t C, bool use_smem, bool vec) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sx = reinterpret_cast<T*>(smem_raw);
  T* sg = sx + C;
  A* pw = partial_w ? partial_w + blockIdx.x * C : nullptr;
  A* pb = kBias && partial_b ? partial_b + blockIdx.x * C : nullptr;
  const int64_t kc = (C + blockDim.x - 1) / blockDim.x;
  const bool in_regs = kc <= kRegCols;
  A rw[kRegCols], rb[kRegCols];
#pragma unroll
  for (int k = 0; k < kRegCols; ++k) rw[k] = A(0), rb[k] = A(0);
  if (!in_regs)
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      if (pw) pw[c] = A(0);
      if (pb) pb[c] = A(0);
    }
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const T *xr = x + r * C, *gr = dy + r * C;
    if (use_smem) {
      __syncthreads();  // the previous row's readers are done
      load_rows(xr, sx, gr, sg, C, vec);
      xr = sx, gr = sg;
    }
    const A mu = stats[2 * r], rstd = stats[2 * r + 1];
    A s_gw = 0, s_gwx = 0;
    if (in_regs) {
#pragma unroll
      for (int k = 0; k < kRegCols; ++k) {
        const int64_t c = threadIdx.x + (int64_t)k * blockDim.x;
        if (k < kc && c < C) {
          const A g = (A)gr[c], xhat = ((A)xr[c] - mu) * rstd, gw = g * (w ? (A)w[c] : A(1));
          s_gw += gw, s_gwx += gw * xhat;
          rw[k] += g * xhat;
          if constexpr (kBias) rb[k] += g;
        }
      }
    } else {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const A g = (A)gr[c], xhat = ((A)xr[c] - mu) * rstd, gw = g * (w ? (A)w[c] : A(1));
        s_gw += gw, s_gwx += gw * xhat;
        if (pw) pw[c] += g * xhat;
        if (pb) pb[c] += g;
      }
    }
    const A mean_gw = rms ? A(0) : block_reduce(s_gw, SumOp{}, A(0)) / (A)C;
    const A mean_gwx = block_reduce(s_gwx, SumOp{}, A(0)) / (A)C;
    T* out = dx + r * C;
    auto value = [&](int64_t c) {
      const A gw = (A)gr[c] * (w ? (A)w[c] : A(1)), xhat = ((A)xr[c] - mu) * rstd;
      return T(rstd * (gw - mean_gw - xhat * mean_gwx));
    };
    if (vec) {
      using V = Vec16<T>;
      for (int64_t i = threadIdx.x; i < C / V::N; i += blockDim.x) {
        V o;
#pragma unroll
        for (int k = 0; k < V::N; ++k) o.v[k] = value(i * V::N + k);
        reinterpret_cast<V*>(out)[i] = o;
      }
    } else {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[c] = value(c);
    }
  }
  if (in_regs) {
#pragma unroll
    for (int k = 0; k < kRegCols; ++k) {
      const int64_t c = threadIdx.x + (int64_t)k * blockDim.x;
      if (k < kc && c < C) {
        if (pw) pw[c] = rw[k];
        if constexpr (kBias) pb[c] = rb[k];
      }
    }
  }
}

// Backward, pipelined (16-byte aligned rows, f32 and bf16, 2 rows of x and dy fit in shared memory): while a block
// works on row r, cp.async brings row r + gridDim.x into the other buffer. Each thread owns up to 32 columns as
// 16-byte vectors (c = 8 (tid + k blockDim) + j for bf16) and keeps their weights and dw/db sums in registers, so
// w is read once per block and dx is written with 16-byte stores.
template <class T, bool kBias, class A = acc_t<T>>
__global__ void __launch_bounds__(256) norm_bwd_pipe_kernel(bool rms, const T* __restrict__ x, const T* __restrict__ w,
                                                            const A* __restrict__ stats, const T* __restrict__ dy,
                                                            T* __restrict__ dx, A* __restrict__ partial_w,
                                                            A* __restrict__ partial_b, int64_t R, int64_t C) {
  using V = Vec16<T>;
  constexpr int N = V::N, KV = kRegCols / N;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  V* sm = reinterpret_cast<V*>(smem_raw);  // [2 buffers][x row | dy row]
  const int nv = (int)(C / N);
  A rw[KV][N], rb[KV][N], wr[KV][N];
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    V wv;
    if (w && i < nv) wv = reinterpret_cast<const V*>(w)[i];
#pragma unroll
    for (int j = 0; j < N; ++j) rw[k][j] = rb[k][j] = A(0), wr[k][j] = i < nv ? (w ? (A)wv.v[j] : A(1)) : A(0);
  }
  auto issue = [&](int64_t r, int buf) {
    V *sx = sm + (size_t)buf * 2 * nv, *sg = sx + nv;
    const V *gx = reinterpret_cast<const V*>(x + r * C), *gg = reinterpret_cast<const V*>(dy + r * C);
    for (int i = threadIdx.x; i < nv; i += blockDim.x) cp_async16(sx + i, gx + i), cp_async16(sg + i, gg + i);
  };
  if (blockIdx.x < R) issue(blockIdx.x, 0);
  cp_async_commit();
  int buf = 0;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x, buf ^= 1) {
    __syncthreads();  // every thread is done with the other buffer (the previous row)
    if (r + gridDim.x < R) issue(r + gridDim.x, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this row's copies (all but the newest group) have landed
    __syncthreads();
    const V *sx = sm + (size_t)buf * 2 * nv, *sg = sx + nv;
    const A mu = stats[2 * r], rstd = stats[2 * r + 1];
    A s_gw = 0, s_gwx = 0;
    V xv[KV], gv[KV];
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i >= nv) continue;
      xv[k] = sx[i], gv[k] = sg[i];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A g = (A)gv[k].v[j], xhat = ((A)xv[k].v[j] - mu) * rstd, gw = g * wr[k][j];
        s_gw += gw, s_gwx += gw * xhat;
        rw[k][j] += g * xhat;
        if constexpr (kBias) rb[k][j] += g;
      }
    }
    const A mean_gw = rms ? A(0) : block_reduce(s_gw, SumOp{}, A(0)) / (A)C;
    const A mean_gwx = block_reduce(s_gwx, SumOp{}, A(0)) / (A)C;
    V* out = reinterpret_cast<V*>(dx + r * C);
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i >= nv) continue;
      V o;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const A gw = (A)gv[k].v[j] * wr[k][j], xhat = ((A)xv[k].v[j] - mu) * rstd;
        o.v[j] = T(rstd * (gw - mean_gw - xhat * mean_gwx));
      }
      out[i] = o;
    }
  }
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i >= nv) continue;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t c = (int64_t)i * N + j;
      if (partial_w) partial_w[blockIdx.x * C + c] = rw[k][j];
      if constexpr (kBias) partial_b[blockIdx.x * C + c] = rb[k][j];
    }
  }
}

// out[c] = sum over blocks b of partial[b, c]: a block owns 32 columns, its 8 thread rows stride over b and are
// added in a fixed order at the end (deterministic), so the grid is C / 32 blocks rather than C / 256.
template <class A, class T> __global__ void sum_partials_kernel(const A* __restrict__ partial, T* __restrict__ out, int nb, int64_t C) {
  __shared__ A acc_s[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  A acc = 0;
  if (c < C)
    for (int b = threadIdx.y; b < nb; b += 8) acc += partial[(int64_t)b * C + c];
  acc_s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    A total = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += acc_s[i][threadIdx.x];
    out[c] = T(total);
  }
}
// Forward: about 4 vectors of 8 per thread, so many rows are in flight per SM. Backward: enough threads that each
// owns at most kRegCols columns.
inline int fwd_threads(int64_t C) { return (int)std::min<int64_t>(1024, std::max<int64_t>(32, (C / 32 + 31) / 32 * 32)); }
// Backward: small blocks (C / 32 threads, so each owns up to 32 columns in registers; 256 at most, the launch
// bound), and as many blocks as fit on the GPU at once, so many rows are in flight per SM.
inline int bwd_threads(int64_t C) {
  const int64_t need = (C + kRegCols - 1) / kRegCols;
  return (int)std::min<int64_t>(256, std::max<int64_t>(64, (need + 31) / 32 * 32));
}
}  // namespace

void norm_forward(bool rms, DType t, const void* x, const void* w, const void* b, double eps, void* y, void* stats,
                  int64_t R, int64_t C, cudaStream_t stream) {
  if (R == 0) return;
  NT_DISPATCH_FLOAT(t, "norm", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const size_t bytes = C * sizeof(T);
    const bool use_smem = bytes <= kMaxRowSmem, vec = aligned16(x) && aligned16(y) && bytes % 16 == 0;
    if (sizeof(T) <= 4 && vec && (!w || aligned16(w)) && (!b || aligned16(b)) && C <= 32 * 1024) {
      norm_fwd_reg_kernel<T><<<(unsigned)R, fwd_threads(C), 0, stream>>>(
          rms, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), (A)eps, static_cast<T*>(y),
          static_cast<A*>(stats), C);
      return;
    }
    allow_smem(norm_fwd_kernel<T>, use_smem ? bytes : 0);
    norm_fwd_kernel<T><<<(unsigned)R, fwd_threads(C), use_smem ? bytes : 0, stream>>>(
        rms, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), (A)eps, static_cast<T*>(y),
        static_cast<A*>(stats), C, use_smem, vec);
  });
  NT_CUDA_CHECK_LAUNCH();
}

void norm_backward(bool rms, DType t, const void* x, const void* w, const void* stats, const void* dy, void* dx,
                   void* dw, void* db, int64_t R, int64_t C, cudaStream_t stream) {
  if (R == 0) return;
  int dev = 0;
  NT_CUDA_CHECK(cudaGetDevice(&dev));
  NT_DISPATCH_FLOAT(t, "norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const size_t bytes = 2 * C * sizeof(T);
    const bool use_smem = bytes <= kMaxRowSmem,
               vec = aligned16(x) && aligned16(dy) && aligned16(dx) && (C * sizeof(T)) % 16 == 0;
    const int threads = bwd_threads(C);
    const bool pipe = sizeof(T) <= 4 && vec && (!w || aligned16(w)) && 2 * bytes <= kMaxRowSmem &&
                      C <= (int64_t)kRegCols * threads;
    const size_t smem = pipe ? 2 * bytes : (use_smem ? bytes : 0);
    auto blocks_for = [&](auto kernel) {
      allow_smem(kernel, smem);
      int per_sm = 0;
      NT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
      return (int)std::min<int64_t>(R, std::max(1, per_sm) * multiprocessor_count(dev));
    };
    auto pipe_kernel = db ? norm_bwd_pipe_kernel<T, true> : norm_bwd_pipe_kernel<T, false>;
    auto plain_kernel = db ? norm_bwd_kernel<T, true> : norm_bwd_kernel<T, false>;
    const int nb = pipe ? blocks_for(pipe_kernel) : blocks_for(plain_kernel);
    ScratchBuffer pw(dw ? nb * C * sizeof(A) : 0), pb(db ? nb * C * sizeof(A) : 0);
    if (pipe)
      pipe_kernel<<<nb, threads, smem, stream>>>(rms, static_cast<const T*>(x), static_cast<const T*>(w),
                                                 static_cast<const A*>(stats), static_cast<const T*>(dy), static_cast<T*>(dx),
                                                 static_cast<A*>(pw.p), static_cast<A*>(pb.p), R, C);
    else
      plain_kernel<<<nb, threads, smem, stream>>>(
          rms, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const A*>(stats), static_cast<const T*>(dy),
          static_cast<T*>(dx), static_cast<A*>(pw.p), static_cast<A*>(pb.p), R, C, use_smem, vec);
    NT_CUDA_CHECK_LAUNCH();
    const dim3 pgrid((unsigned)((C + 31) / 32)), pblock(32, 8);
    if (dw) sum_partials_kernel<A, T><<<pgrid, pblock, 0, stream>>>(static_cast<const A*>(pw.p), static_cast<T*>(dw), nb, C);
    if (db) sum_partials_kernel<A, T><<<pgrid, pblock, 0, stream>>>(static_cast<const A*>(pb.p), static_cast<T*>(db), nb, C);
  });
  NT_CUDA_CHECK_LAUNCH();
}
}  // namespace nt::cuda
