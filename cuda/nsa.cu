// Native Sparse Attention on CUDA cores: the CPU reference's loops (nsa/cpu/nsa_attention.cpp) mapped one thread
// block per (token, key/value head) with one warp per query head of the group, D spread over the lanes (D <= 256).
// Correct first: this is the path every later tensor-core kernel is checked against on the GPU, and what lets the
// NSA layer train on a GPU meanwhile.
//
// Forward, per (token t, kv head h): each warp runs the compression branch of its query head (online softmax over
// the visible compressed blocks), then re-scores those blocks with the final log-sum-exp to add p * overlap / d into
// its own row of selection scores in shared memory; the rows are summed over the group in a fixed order (so the
// choice is deterministic), one thread picks the blocks (forced 0, t/l' - 1, t/l'; the rest by score, ties to the
// lower index), then each warp attends over the selected keys and over the window and mixes the branches with its
// gates. Backward, same grid: per branch, dgate = dout . o_branch and the softmax-attention backward with dout
// scaled by the gate; dq in registers, dk/dv with atomics into accumulation buffers (acc type), converted at the end.
// Layouts as in the CPU reference; branch outputs and log-sum-exps in the accumulation type (f32, f64 for f64).
#include "cuda/common.cuh"

namespace nt::cuda {
namespace {
constexpr int kPerLane = 8;  // D <= 256

struct Seq {
  int start, len, cmp_start;
};
__device__ Seq seq_of_row(const NsaDims& a, int64_t row) {
  int lo = 0, hi = a.nseq - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.cu_seqlens[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return {a.cu_seqlens[lo], a.cu_seqlens[lo + 1] - a.cu_seqlens[lo], a.cmp_starts[lo]};
}

template <class T, class A> __device__ A dot_warp(const T* x, const A (&y)[kPerLane], int D, int lane) {
  A s = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < D) s += (A)x[lane + 32 * i] * y[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// Online-softmax attention of one query (lanes hold q) over keys given by key_row(j), j in [0, count).
template <class T, class A, class KeyRow>
__device__ void attend(const A (&q)[kPerLane], const T* K, const T* V, int64_t heads, int h, int D, A scale, int count,
                       KeyRow key_row, A (&out)[kPerLane], A& lse, int lane) {
  A m = -INFINITY, l = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) out[i] = 0;
  for (int j = 0; j < count; ++j) {
    const int64_t off = (key_row(j) * heads + h) * D;
    const A s = dot_warp<T, A>(K + off, q, D, lane) * scale;
    const A mn = s > m ? s : m, corr = exp(m - mn), p = exp(s - mn);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < D) out[i] = out[i] * corr + p * (A)V[off + lane + 32 * i];
    m = mn;
  }
  if (l > 0) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) out[i] /= l;
    lse = m + log(l);
  } else {
    lse = -INFINITY;  // nothing visible: the branch adds 0
  }
}

// The selected keys of query t, in order: block b = blocks[i / lp] ... as a flat index j over the chosen blocks.
struct SelectedKeys {
  const int32_t* blocks;  // n entries, ascending, -1 last
  int n, lp, t;
  __device__ int count() const {
    int c = 0;
    for (int i = 0; i < n && blocks[i] >= 0; ++i) c += min(lp, t + 1 - blocks[i] * lp);
    return c;
  }
  __device__ int key(int j) const {  // j-th selected key (keys <= t only)
    for (int i = 0; i < n; ++i) {
      const int c = min(lp, t + 1 - blocks[i] * lp);
      if (j < c) return blocks[i] * lp + j;
      j -= c;
    }
    return -1;
  }
};

template <class T, class A>
__global__ void __launch_bounds__(1024) nsa_fwd_simt(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                             const T* __restrict__ ks, const T* __restrict__ vs, const T* __restrict__ kw,
                             const T* __restrict__ vw, const T* __restrict__ gates, T* __restrict__ o,
                             int32_t* __restrict__ block_indices, A* __restrict__ branch_o, A* __restrict__ lse,
                             NsaDims a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* score = reinterpret_cast<A*>(smem_raw);  // [G][ncand_max]
  int32_t* chosen = reinterpret_cast<int32_t*>(score + (size_t)a.G * a.ncand_max);
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y, w = threadIdx.x / 32, lane = threadIdx.x % 32, hq = h * a.G + w;
  const Seq s = seq_of_row(a, row);
  const int t = (int)(row - s.start), ncand = t / a.lp + 1;
  const A scale = (A)a.scale;
  A qv[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) qv[i] = lane + 32 * i < a.D ? (A)q[(row * a.HQ + hq) * a.D + lane + 32 * i] : A(0);
  auto bo = [&](int br) { return branch_o + (((int64_t)br * a.N + row) * a.HQ + hq) * a.D; };
  auto ls = [&](int br) { return lse + ((int64_t)br * a.N + row) * a.HQ + hq; };
  A out[kPerLane], L;
  // Compression branch (or, with lse_cmp given, only its log-sum-exp for the scores below).
  const int ncmp = t + 1 < a.l ? 0 : (t + 1 - a.l) / a.d + 1;
  if (a.lse_cmp) {
    L = static_cast<const A*>(a.lse_cmp)[row * a.HQ + hq];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) out[i] = 0;
  } else {
    attend<T, A>(qv, kc, vc, a.H, h, a.D, scale, ncmp, [&](int j) { return (int64_t)s.cmp_start + j; }, out, L, lane);
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < a.D) bo(0)[lane + 32 * i] = out[i];
  if (lane == 0) *ls(0) = a.lse_cmp ? A(-INFINITY) : L;
  if (a.indices_given) {  // chosen by nsa_select_tc already
    for (int i = threadIdx.x; i < a.n; i += blockDim.x) chosen[i] = block_indices[(row * a.H + h) * a.n + i];
    __syncthreads();
  } else {
    // Its probabilities score the selection blocks: this head's row, then the group's sum.
    A* my = score + (size_t)w * a.ncand_max;
    for (int j = lane; j < ncand; j += 32) my[j] = 0;
    __syncwarp();
    for (int c = 0; c < ncmp; ++c) {
      const A p = exp(dot_warp<T, A>(kc + (((int64_t)s.cmp_start + c) * a.H + h) * a.D, qv, a.D, lane) * scale - L);
      if (lane == 0) {
        const int lo = c * a.d, hi = lo + a.l;
        for (int j = lo / a.lp; j * a.lp < hi; ++j)
          my[j] += p * (A)(min(hi, (j + 1) * a.lp) - max(lo, j * a.lp)) / (A)a.d;
      }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < ncand; j += blockDim.x) {
      A total = 0;
      for (int g = 0; g < a.G; ++g) total += score[(size_t)g * a.ncand_max + j];
      score[j] = total;  // row 0 now holds the group's sums (row 0's own entry was read first, by this thread)
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int cur = t / a.lp;
      int count = 0;
      if (ncand <= a.n) {
        for (int j = 0; j < ncand; ++j) chosen[count++] = j;
      } else {
        chosen[count++] = 0, chosen[count++] = cur - 1, chosen[count++] = cur;
        for (int k = 3; k < a.n; ++k) {  // the best remaining block; a strictly greater score wins, so ties go low
          int best = -1;
          A best_s = 0;
          for (int j = 1; j < cur - 1; ++j) {
            bool taken = false;
            for (int i = 3; i < count; ++i) taken |= chosen[i] == j;
            if (taken) continue;
            const A sj = isnan(score[j]) ? A(-INFINITY) : score[j];
            if (best < 0 || sj > best_s) best = j, best_s = sj;
          }
          chosen[count++] = best;
        }
        for (int i = 1; i < count; ++i)  // ascending
          for (int k = i; k > 0 && chosen[k - 1] > chosen[k]; --k) {
            const int x = chosen[k];
            chosen[k] = chosen[k - 1], chosen[k - 1] = x;
          }
      }
      for (int i = count; i < a.n; ++i) chosen[i] = -1;
      for (int i = 0; i < a.n; ++i) block_indices[(row * a.H + h) * a.n + i] = chosen[i];
    }
    __syncthreads();
  }
  // Selected and window branches, then the gated mix.
  if (!a.slc_given) {  // else nsa_selected_forward_tc wrote bo(1) and ls(1)
    const SelectedKeys sel{chosen, a.n, a.lp, t};
    attend<T, A>(qv, ks, vs, a.H, h, a.D, scale, sel.count(), [&](int j) { return (int64_t)s.start + sel.key(j); }, out, L,
                 lane);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < a.D) bo(1)[lane + 32 * i] = out[i];
    if (lane == 0) *ls(1) = L;
  }
  const int w0 = max(0, t - a.w + 1), nwin = a.w > 0 ? t - w0 + 1 : 0;
  attend<T, A>(qv, kw, vw, a.H, h, a.D, scale, nwin, [&](int j) { return (int64_t)s.start + w0 + j; }, out, L, lane);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < a.D) bo(2)[lane + 32 * i] = out[i];
  if (lane == 0) *ls(2) = L;
  __syncwarp();
  const T* g = gates + (row * a.HQ + hq) * 3;
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < a.D) o[(row * a.HQ + hq) * a.D + d] = T((A)g[0] * bo(0)[d] + (A)g[1] * bo(1)[d] + (A)g[2] * bo(2)[d]);
  }
}

// Softmax-attention backward of one query over one branch's keys; dob = gate * dout (lanes), ob the branch output.
template <class T, class A, class KeyRow>
__device__ void attend_backward(const A (&q)[kPerLane], const T* K, const T* V, int64_t heads, int h, int D, A scale,
                                int count, KeyRow key_row, A L, const A (&dob)[kPerLane], const A* ob, A (&dq)[kPerLane],
                                A* dk, A* dv, int lane) {
  A delta = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < D) delta += dob[i] * ob[lane + 32 * i];
  for (int o = 16; o > 0; o >>= 1) delta += __shfl_xor_sync(0xffffffffu, delta, o);
  for (int j = 0; j < count; ++j) {
    const int64_t off = (key_row(j) * heads + h) * D;
    const A p = exp(dot_warp<T, A>(K + off, q, D, lane) * scale - L);
    const A ds = scale * p * (dot_warp<T, A>(V + off, dob, D, lane) - delta);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d >= D) continue;
      dq[i] += ds * (A)K[off + d];
      atomicAdd(dk + off + d, ds * q[i]);
      atomicAdd(dv + off + d, p * dob[i]);
    }
  }
}

template <class T, class A>
__global__ void __launch_bounds__(1024) nsa_bwd_simt(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                             const T* __restrict__ ks, const T* __restrict__ vs, const T* __restrict__ kw,
                             const T* __restrict__ vw, const T* __restrict__ gates, const int32_t* __restrict__ block_indices,
                             const A* __restrict__ branch_o, const A* __restrict__ lse, const A* __restrict__ dout,
                             T* __restrict__ dq, T* __restrict__ dgates, A* __restrict__ acc, NsaDims a) {
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y, w = threadIdx.x / 32, lane = threadIdx.x % 32, hq = h * a.G + w;
  const Seq s = seq_of_row(a, row);
  const int t = (int)(row - s.start);
  const A scale = (A)a.scale;
  // acc: dk_cmp, dv_cmp [NC, H, D], then dk_slc, dv_slc, dk_win, dv_win [N, H, D].
  const int64_t nc_elems = (int64_t)a.NC * a.H * a.D, n_elems = a.N * a.H * a.D;
  A *dkc = acc, *dvc = acc + nc_elems, *dks = dvc + nc_elems, *dvs = dks + n_elems, *dkw = dvs + n_elems, *dvw = dkw + n_elems;
  A qv[kPerLane], dqv[kPerLane], dov[kPerLane], dob[kPerLane];
  const int64_t qoff = (row * a.HQ + hq) * a.D;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const bool in = lane + 32 * i < a.D;
    qv[i] = in ? (A)q[qoff + lane + 32 * i] : A(0);
    dov[i] = in ? dout[qoff + lane + 32 * i] : A(0);
    dqv[i] = 0;
  }
  const SelectedKeys sel{block_indices + (row * a.H + h) * a.n, a.n, a.lp, t};
  const int ncmp = t + 1 < a.l ? 0 : (t + 1 - a.l) / a.d + 1, w0 = max(0, t - a.w + 1), nwin = a.w > 0 ? t - w0 + 1 : 0;
  for (int br = 0; br < 3; ++br) {
    const A* ob = branch_o + (((int64_t)br * a.N + row) * a.HQ + hq) * a.D;
    const A g = (A)gates[(row * a.HQ + hq) * 3 + br];
    A dg = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < a.D) dg += dov[i] * ob[lane + 32 * i], dob[i] = g * dov[i];
      else dob[i] = 0;
    for (int o = 16; o > 0; o >>= 1) dg += __shfl_xor_sync(0xffffffffu, dg, o);
    if (lane == 0) dgates[(row * a.HQ + hq) * 3 + br] = T(dg);
    const A L = lse[((int64_t)br * a.N + row) * a.HQ + hq];
    if (br == 0 && a.lse_cmp) continue;  // computed elsewhere: nothing to differentiate here
    if (br == 0)
      attend_backward<T, A>(qv, kc, vc, a.H, h, a.D, scale, ncmp, [&](int j) { return (int64_t)s.cmp_start + j; }, L, dob,
                            ob, dqv, dkc, dvc, lane);
    else if (br == 1)
      attend_backward<T, A>(qv, ks, vs, a.H, h, a.D, scale, sel.count(), [&](int j) { return (int64_t)s.start + sel.key(j); },
                            L, dob, ob, dqv, dks, dvs, lane);
    else
      attend_backward<T, A>(qv, kw, vw, a.H, h, a.D, scale, nwin, [&](int j) { return (int64_t)s.start + w0 + j; }, L, dob,
                            ob, dqv, dkw, dvw, lane);
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < a.D) dq[qoff + lane + 32 * i] = T(dqv[i]);
}

template <class T, class A> __global__ void acc_to_t(const A* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) y[i] = T(x[i]);
}
}  // namespace

size_t nsa_forward_smem(const NsaDims& a, bool f64) {
  return (size_t)a.G * a.ncand_max * (f64 ? 8 : 4) + (size_t)a.n * 4 + 16;
}

void nsa_forward(DType t, const void* const in[8], void* o, int32_t* block_indices, void* branch_o, void* lse,
                 const NsaDims& a, cudaStream_t stream) {
  if (a.N == 0) return;
  NT_DISPATCH_FLOAT(t, "nsa_attention", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    auto c = [&](int i) { return static_cast<const T*>(in[i]); };
    const size_t smem = nsa_forward_smem(a, sizeof(A) == 8);
    allow_smem(nsa_fwd_simt<T, A>, smem);
    nsa_fwd_simt<T, A><<<dim3((unsigned)a.N, (unsigned)a.H), 32 * a.G, smem, stream>>>(
        c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7), static_cast<T*>(o), block_indices, static_cast<A*>(branch_o),
        static_cast<A*>(lse), a);
    NT_CUDA_CHECK(cudaGetLastError());
  });
}

void nsa_backward(DType t, const void* const in[8], const int32_t* block_indices, const void* branch_o, const void* lse,
                  const void* dout, void* const grads[8], void* acc, const NsaDims& a, cudaStream_t stream) {
  if (a.N == 0) return;
  NT_DISPATCH_FLOAT(t, "nsa_attention_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    auto c = [&](int i) { return static_cast<const T*>(in[i]); };
    const int64_t nc_elems = (int64_t)a.NC * a.H * a.D, n_elems = a.N * a.H * a.D;
    NT_CUDA_CHECK(cudaMemsetAsync(acc, 0, (size_t)(2 * nc_elems + 4 * n_elems) * sizeof(A), stream));
    nsa_bwd_simt<T, A><<<dim3((unsigned)a.N, (unsigned)a.H), 32 * a.G, 0, stream>>>(
        c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7), block_indices, static_cast<const A*>(branch_o),
        static_cast<const A*>(lse), static_cast<const A*>(dout), static_cast<T*>(grads[0]), static_cast<T*>(grads[7]),
        static_cast<A*>(acc), a);
    NT_CUDA_CHECK(cudaGetLastError());
    const A* src = static_cast<const A*>(acc);
    const int64_t sizes[6] = {nc_elems, nc_elems, n_elems, n_elems, n_elems, n_elems};
    for (int i = 0; i < 6; ++i) {
      if (sizes[i] > 0)
        acc_to_t<T, A><<<grid_for(sizes[i], 256), 256, 0, stream>>>(src, static_cast<T*>(grads[i + 1]), sizes[i]);
      NT_CUDA_CHECK(cudaGetLastError());
      src += sizes[i];
    }
  });
}

}  // namespace nt::cuda
