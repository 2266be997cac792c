// The glue of the branch-wise NSA path (nsa/branches.h), one pass each instead of chains of generic ops.
//
// nsa_regroup: vectors of D elements between q's layout [T, HQ, D] and the compressed branch's regrouped layout
//   [NC, HQ d, D] (row c, head hq d + r holds query t = take[c d + r] of head hq).
//   to_regrouped: out[c, hq d + r] = x[take[c d + r], hq], zeros where take = T (past a sequence's end);
//   else:         out[t, hq] = x[j / d, hq d + j % d] with j = back[t], zeros where j = NC d (t < l - 1).
//   Each direction is the other's adjoint. Traffic: one read and one write of the tensor, 16-byte chunks.
// nsa_mix: o = g0 o_cmp + g1 o_slc + g2 o_win over rows [N, D] with gates [N, 3], in f32 (f64 for f64), one
//   rounding; backward do_b = g_b dy and dg_b = sum_D dy o_b, a group of lanes per row. Traffic: forward reads 3 and
//   writes 1 tensor of [N, D], backward reads 4 and writes 3 (before, the f32 mix cost 84 ms at 64k tokens on the
//   H100, mostly dtype copies). With o_cmp in the regrouped layout (Cmp::back given), the forward reads it and the
//   backward writes its gradient there directly: one ungroup forward and one regroup backward fewer (each a read
//   and a write of a [T, HQ, D] tensor: ~0.85 ms at 64k on the H100).
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"

namespace nt::cuda {
namespace {

template <class V>
__global__ void regroup_kernel(const V* __restrict__ x, V* __restrict__ out, const int32_t* __restrict__ idx,
                               int64_t rows_out, int HQ, int d, int chunks, int64_t limit, bool to_regrouped) {
  const int64_t total = rows_out * HQ * chunks;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int ch = (int)(i % chunks);
    const int64_t vec = i / chunks, j = vec / HQ;
    const int hq = (int)(vec % HQ);
    const int64_t s = idx[j];
    int64_t dst, src;
    if (to_regrouped) {
      dst = ((j / d) * HQ + hq) * d + j % d, src = s * HQ + hq;
    } else {
      dst = j * HQ + hq, src = ((s / d) * HQ + hq) * d + s % d;
    }
    out[dst * chunks + ch] = s == limit ? V{} : x[src * chunks + ch];
  }
}

template <class T, int V> struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Where row n = t HQ + hq of o_cmp lives: itself, or with back given, regrouped row (j / d, head hq d + j % d) for
// j = back[t]; -1 where j == limit (the query sees no compressed block: zeros).
struct Cmp {
  const int32_t* back = nullptr;
  int d = 1, HQ = 1;
  int64_t limit = 0;
  __device__ __forceinline__ int64_t row(int64_t n) const {
    if (!back) return n;
    const int64_t t = n / HQ, j = back[t];
    return j == limit ? -1 : ((j / d) * HQ + (n - t * HQ)) * d + j % d;
  }
};
template <class T> using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T, int V>
__global__ void mix_forward_kernel(const T* __restrict__ o0, const T* __restrict__ o1, const T* __restrict__ o2,
                                   const T* __restrict__ g, T* __restrict__ out, int64_t rows, int D, Cmp cmp) {
  using A = Acc<T>;
  using P = Pack<T, V>;
  const int packs = D / V;
  const int64_t total = rows * packs;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / packs, r0 = cmp.row(row);
    const A g0 = (A)g[3 * row], g1 = (A)g[3 * row + 1], g2 = (A)g[3 * row + 2];
    const P a = r0 < 0 ? P{} : reinterpret_cast<const P*>(o0)[r0 * packs + (i - row * packs)],
            b = reinterpret_cast<const P*>(o1)[i], c = reinterpret_cast<const P*>(o2)[i];
    P r;
#pragma unroll
    for (int k = 0; k < V; ++k) r.v[k] = T(g0 * (A)a.v[k] + g1 * (A)b.v[k] + g2 * (A)c.v[k]);
    reinterpret_cast<P*>(out)[i] = r;
  }
}

// Where each branch's delta goes (NsaMixDeltas): nullptr, not wanted.
struct DeltaOut {
  float *cmp = nullptr, *slc = nullptr, *win = nullptr;
  int64_t NC = 0, T = 0;
};
// R lanes per row (a power of two <= 32), 256 / R rows per block. With dl given, each branch's delta too (the
// rounded d_b times o_b: what flash_attention's attn_delta would read).
template <class T, int V>
__global__ void mix_backward_kernel(const T* __restrict__ o0, const T* __restrict__ o1, const T* __restrict__ o2,
                                    const T* __restrict__ g, const T* __restrict__ dy, T* __restrict__ d0,
                                    T* __restrict__ d1, T* __restrict__ d2, T* __restrict__ dg, int64_t rows, int D,
                                    int R, Cmp cmp, DeltaOut dl) {
  using A = Acc<T>;
  using P = Pack<T, V>;
  const int packs = D / V, lane = threadIdx.x % R;
  const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / R;
  const bool live = row < rows;  // every lane stays for the shuffles
  A s0 = 0, s1 = 0, s2 = 0, e0 = 0, e1 = 0, e2 = 0;  // dg_b, and delta_b = sum of the rounded d_b times o_b
  const int64_t r0 = live ? cmp.row(row) : -1;  // -1: o_cmp is 0 there and its gradient has no place (regrouped)
  if (live) {
    const A g0 = (A)g[3 * row], g1 = (A)g[3 * row + 1], g2 = (A)g[3 * row + 2];
    for (int p = lane; p < packs; p += R) {
      const int64_t i = row * packs + p, i0 = r0 * packs + p;
      const P y = reinterpret_cast<const P*>(dy)[i], a = r0 < 0 ? P{} : reinterpret_cast<const P*>(o0)[i0],
              b = reinterpret_cast<const P*>(o1)[i], c = reinterpret_cast<const P*>(o2)[i];
      P ra, rb, rc;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A yk = (A)y.v[k];
        s0 += yk * (A)a.v[k], s1 += yk * (A)b.v[k], s2 += yk * (A)c.v[k];
        ra.v[k] = T(g0 * yk), rb.v[k] = T(g1 * yk), rc.v[k] = T(g2 * yk);
        e0 += (A)ra.v[k] * (A)a.v[k], e1 += (A)rb.v[k] * (A)b.v[k], e2 += (A)rc.v[k] * (A)c.v[k];
      }
      if (r0 >= 0) reinterpret_cast<P*>(d0)[i0] = ra;
      reinterpret_cast<P*>(d1)[i] = rb, reinterpret_cast<P*>(d2)[i] = rc;
    }
  }
  for (int o = R / 2; o > 0; o >>= 1) {
    s0 += __shfl_xor_sync(0xffffffffu, s0, o, R);
    s1 += __shfl_xor_sync(0xffffffffu, s1, o, R);
    s2 += __shfl_xor_sync(0xffffffffu, s2, o, R);
  }
  if (live && lane == 0) dg[3 * row] = T(s0), dg[3 * row + 1] = T(s1), dg[3 * row + 2] = T(s2);
  if (dl.slc) {  // (uniform over the grid)
    for (int o = R / 2; o > 0; o >>= 1) {
      e0 += __shfl_xor_sync(0xffffffffu, e0, o, R);
      e1 += __shfl_xor_sync(0xffffffffu, e1, o, R);
      e2 += __shfl_xor_sync(0xffffffffu, e2, o, R);
    }
    if (live && lane == 0) {
      const int64_t t = row / cmp.HQ, hq = row - t * cmp.HQ;
      if (r0 >= 0) {  // regrouped row j = c d + r, head hq d + r: flash_attention's [HQ d, NC] layout
        const int64_t c = r0 / (cmp.HQ * cmp.d), h = r0 - c * cmp.HQ * cmp.d;
        dl.cmp[h * dl.NC + c] = (float)e0;
      }
      dl.slc[row] = (float)e1;
      dl.win[hq * dl.T + t] = (float)e2;
    }
  }
}

// The regrouped rows j = c d + r (all HQ heads) that no query fills, take[j] == limit: zeros (one thread per j).
template <class V>
__global__ void zero_untaken_kernel(V* __restrict__ out, const int32_t* __restrict__ take, int64_t rows, int HQ, int d,
                                    int chunks, int64_t limit) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= rows || take[j] != limit) return;
  for (int hq = 0; hq < HQ; ++hq) {
    V* row = out + (((j / d) * HQ + hq) * d + j % d) * chunks;
    for (int ch = 0; ch < chunks; ++ch) row[ch] = V{};
  }
}

// dq[t, hq] = bf16(acc[t, hq] + acc_r[regrouped row back[t], head hq d + back[t] % d]) (no acc_r term where
// back[t] == limit), 4 floats per thread.
__global__ void finish_dq_kernel(const float4* __restrict__ acc, const float4* __restrict__ acc_r,
                                 const int32_t* __restrict__ back, uint2* __restrict__ dq, int64_t T, int HQ, int d,
                                 int chunks, int64_t limit) {
  const int64_t total = T * HQ * chunks;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = i / chunks, t = n / HQ;
    const int hq = (int)(n - t * HQ), ch = (int)(i - n * chunks);
    const int64_t j = back[t];
    float4 a = acc[i];
    if (j != limit) {
      const float4 b = acc_r[(((j / d) * HQ + hq) * d + j % d) * chunks + ch];
      a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
    }
    const __nv_bfloat162 lo = __floats2bfloat162_rn(a.x, a.y), hi = __floats2bfloat162_rn(a.z, a.w);
    dq[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  }
}

// Elements per pack: 16 bytes when D allows it, else one element (row starts stay aligned: rows are D long).
template <class T> int pack_of(int64_t D) {
  const int v = (int)(16 / sizeof(T));
  return D % v == 0 ? v : 1;
}
}  // namespace

void nsa_regroup(size_t elem_bytes, const void* x, void* out, const int32_t* idx, int64_t rows_out, int64_t HQ,
                 int64_t d, int64_t D, int64_t limit, bool to_regrouped, cudaStream_t stream) {
  const int64_t bytes = D * (int64_t)elem_bytes;
  if (rows_out * HQ * bytes == 0) return;
  auto run = [&](auto zero) {
    using V = decltype(zero);
    const int chunks = (int)(bytes / sizeof(V));
    regroup_kernel<V><<<grid_for(rows_out * HQ * chunks, 256), 256, 0, stream>>>(
        static_cast<const V*>(x), static_cast<V*>(out), idx, rows_out, (int)HQ, (int)d, chunks, limit, to_regrouped);
  };
  if (bytes % 16 == 0) run(uint4{});
  else if (bytes % 8 == 0) run(uint2{});
  else if (bytes % 4 == 0) run(uint32_t{});
  else if (bytes % 2 == 0) run(uint16_t{});
  else run(uint8_t{});
  NT_CUDA_CHECK_LAUNCH();
}

void nsa_mix_forward(DType t, const void* o0, const void* o1, const void* o2, const void* gates, void* out,
                     int64_t rows, int64_t D, cudaStream_t stream, const NsaMixRegrouped* rg) {
  if (rows * D == 0) return;
  const Cmp cmp = rg ? Cmp{rg->back, (int)rg->d, (int)rg->HQ, rg->NC * rg->d} : Cmp{};
  NT_DISPATCH_FLOAT(t, "nsa_mix_forward", [&] {
    using T = scalar_t;
    auto go = [&](auto v) {
      constexpr int V = decltype(v)::value;
      mix_forward_kernel<T, V><<<grid_for(rows * (D / V), 256), 256, 0, stream>>>(
          static_cast<const T*>(o0), static_cast<const T*>(o1), static_cast<const T*>(o2), static_cast<const T*>(gates),
          static_cast<T*>(out), rows, (int)D, cmp);
    };
    if (pack_of<T>(D) > 1) go(std::integral_constant<int, (int)(16 / sizeof(T))>{});
    else go(std::integral_constant<int, 1>{});
  });
  NT_CUDA_CHECK_LAUNCH();
}

void nsa_mix_backward(DType t, const void* o0, const void* o1, const void* o2, const void* gates, const void* dy,
                      void* d0, void* d1, void* d2, void* dgates, int64_t rows, int64_t D, cudaStream_t stream,
                      const NsaMixRegrouped* rg, const NsaMixDeltas* deltas) {
  if (rows == 0) return;
  const Cmp cmp = rg ? Cmp{rg->back, (int)rg->d, (int)rg->HQ, rg->NC * rg->d} : Cmp{};
  DeltaOut dl;
  if (deltas) {
    if (!rg || t != DType::bf16 || !deltas->d[0] || !deltas->d[1] || !deltas->d[2])
      throw std::invalid_argument(std::string("nsa_mix_backward: deltas need bf16 (got ") + std::string(dtype_name(t)) +
                                  "), the regrouped layout (" + (rg ? "given" : "missing") +
                                  ") and all three buffers (" + (deltas->d[0] ? "cmp " : "no cmp ") +
                                  (deltas->d[1] ? "slc " : "no slc ") + (deltas->d[2] ? "win)" : "no win)"));
    dl = DeltaOut{deltas->d[0], deltas->d[1], deltas->d[2], rg->NC, rg->T};
  }
  NT_DISPATCH_FLOAT(t, "nsa_mix_backward", [&] {
    using T = scalar_t;
    auto go = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const int64_t packs = D / V;
      int R = 1;
      while (R < 32 && R < packs) R *= 2;
      const int64_t per_block = 256 / R;
      mix_backward_kernel<T, V><<<(unsigned)((rows + per_block - 1) / per_block), 256, 0, stream>>>(
          static_cast<const T*>(o0), static_cast<const T*>(o1), static_cast<const T*>(o2), static_cast<const T*>(gates),
          static_cast<const T*>(dy), static_cast<T*>(d0), static_cast<T*>(d1), static_cast<T*>(d2),
          static_cast<T*>(dgates), rows, (int)D, R, cmp, dl);
      if (rg && rg->NC * rg->d > 0) {
        using PT = Pack<T, V>;
        const int64_t nrow = rg->NC * rg->d;
        zero_untaken_kernel<PT><<<(unsigned)((nrow + 255) / 256), 256, 0, stream>>>(
            static_cast<PT*>(d0), rg->take, nrow, (int)rg->HQ, (int)rg->d, (int)packs, rg->T);
      }
    };
    if (pack_of<T>(D) > 1) go(std::integral_constant<int, (int)(16 / sizeof(T))>{});
    else go(std::integral_constant<int, 1>{});
  });
  NT_CUDA_CHECK_LAUNCH();
}

void nsa_finish_dq(const float* acc, const float* acc_r, const int32_t* back, void* dq, int64_t T, int64_t HQ,
                   int64_t d, int64_t D, int64_t limit, cudaStream_t stream) {
  if (D % 4 != 0) throw std::invalid_argument("nsa_finish_dq: D must be a multiple of 4, got " + std::to_string(D));
  const int chunks = (int)(D / 4);
  if (T * HQ * chunks == 0) return;
  finish_dq_kernel<<<grid_for(T * HQ * chunks, 256), 256, 0, stream>>>(
      reinterpret_cast<const float4*>(acc), reinterpret_cast<const float4*>(acc_r), back, static_cast<uint2*>(dq), T,
      (int)HQ, (int)d, chunks, limit);
  NT_CUDA_CHECK_LAUNCH();
}

}  // namespace nt::cuda
