// Fused causal attention, forward and backward (FlashAttention-2 scheme: tiles of queries and keys, online
// softmax, the backward recomputes probabilities from the forward's log-sum-exp).
//
// Layout: q, out [N, H, D] and k, v [N, Hkv, D] row-major (packed sequences, cu_seqlens on the device); lse and
// delta [H, N] f32. Query head h reads kv head h / (H / Hkv).
//
// Two paths:
//  - Tensor cores (bf16, D % 8 == 0, D <= 256, 16-byte aligned): mma.sync m16n8k16 with f32 accumulation. A
//    forward block of 4 warps owns 64 queries (16 rows per warp; version 3: 128, 32 per warp); a backward block of
//    8 (or 4) warps owns 128 (or 64) keys, 16 per warp. Head dims are zero-padded in shared memory to DP in
//    {64, 128, 256}. Shared-memory rows are padded by 8 elements so the fragment loads of 8 consecutive rows hit
//    distinct banks. The default forward for head dims 72..128 on Hopper is cuda/attention_sm90.cu (wgmma).
//    Forward traffic: q and out once, k and v once per 64-query tile that sees them. Backward: k, v once per block,
//    q and dout once per (key tile, query tile, head of the group); dq accumulated in f32 with atomics
//    (f32x4 reductions on Hopper).
//  - CUDA cores (f32, f64, and bf16 that does not fit the above): one warp per query row (forward, dq) or key row
//    (dk, dv), D spread over the lanes. Simple and exact in the accumulation type; for tests and small runs.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda/attention_sm90.h"
#include "cuda/common.cuh"
#include "cuda/mma_sm80.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
using namespace sm80;

__device__ __forceinline__ int first_key(int t, int window) { return window > 0 ? max(0, t - window + 1) : 0; }

// Sequence holding packed row n (cu_seqlens sorted; binary search).
__device__ __forceinline__ int seq_of(const int32_t* cu, int nseq, int64_t n) {
  int lo = 0, hi = nseq - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= n) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// ---------------------------------------------------------------- tensor-core path (bf16)

// Rows [0, R) of a tile into shared memory [R][DP + 8]; rows >= rows_valid and columns >= D are zeros.
template <int R, int DP>
__device__ __forceinline__ void load_tile(uint16_t* s, const uint16_t* g, int64_t row_stride, int rows_valid, int D) {
  constexpr int LD = DP + 8, CH = DP / 8;
  for (int i = threadIdx.x; i < R * CH; i += blockDim.x) {
    const int r = i / CH, c = (i % CH) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < rows_valid && c < D) val = *reinterpret_cast<const uint4*>(g + r * row_stride + c);
    *reinterpret_cast<uint4*>(s + r * LD + c) = val;
  }
}

// A fragment (16 x 16, row-major) of rows r0.. and columns c0.. of a shared tile with leading dimension ld.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* s, int ld, int r0, int c0, int lane) {
  const uint16_t* p = s + (r0 + lane / 4) * ld + c0 + (lane % 4) * 2;
  a[0] = lds32(p), a[1] = lds32(p + 8 * ld), a[2] = lds32(p + 8), a[3] = lds32(p + 8 * ld + 8);
}

constexpr int kBM = 64, kBN = 64, kThreads = 128;

template <int DP> constexpr size_t fwd_smem() { return (size_t)(kBM + 2 * kBN) * (DP + 8) * 2; }

template <int DP>
__global__ void __launch_bounds__(kThreads) attn_fwd_tc(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                                                       const uint16_t* __restrict__ v, uint16_t* __restrict__ o,
                                                       float* __restrict__ lse, AttentionDims a) {
  constexpr int LD = DP + 8, NT = DP / 8;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t *Qs = smem, *Ks = Qs + kBM * LD, *Vs = Ks + kBN * LD;
  const int seq = blockIdx.y, h = blockIdx.z, m0 = (gridDim.x - 1 - blockIdx.x) * kBM;  // longest tiles first
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  if (m0 >= len) return;
  const int hk = h / (a.H / a.Hkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qs = (int64_t)a.H * a.D, ks = (int64_t)a.Hkv * a.D;
  load_tile<kBM, DP>(Qs, q + (start + m0) * qs + h * a.D, qs, len - m0, a.D);
  const float sl2 = a.scale * kLog2e;
  const int row0 = m0 + warp * 16 + lane / 4;  // this thread's rows: row0 and row0 + 8
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  const int kv_lo = first_key(m0, a.window), kv_hi = min(len, m0 + kBM);
  for (int n0 = kv_lo / kBN * kBN; n0 < kv_hi; n0 += kBN) {
    __syncthreads();
    load_tile<kBN, DP>(Ks, k + (start + n0) * ks + hk * a.D, ks, len - n0, a.D);
    load_tile<kBN, DP>(Vs, v + (start + n0) * ks + hk * a.D, ks, len - n0, a.D);
    __syncthreads();
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t af[4];
      load_a(af, Qs, LD, warp * 16, kk * 16, lane);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint16_t* kb = Ks + (j * 8 + lane / 4) * LD + kk * 16 + (lane % 4) * 2;
        mma16816(s[j], af, lds32(kb), lds32(kb + 8));
      }
    }
    const bool need_mask = n0 + kBN > m0 || n0 + kBN > len || (a.window > 0 && n0 <= m0 + kBM - 1 - a.window);
    float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * sl2;
        if (need_mask) {
          const int kp = n0 + j * 8 + (lane % 4) * 2 + (e & 1), qp = row0 + (e >> 1) * 8;
          if (kp > qp || kp >= len || (a.window > 0 && kp <= qp - a.window)) x = -INFINITY;
        }
        s[j][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float alpha[2], ref[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      ref[i] = mx[i] == -INFINITY ? 0.f : mx[i];  // a row with nothing visible yet: keep everything 0, not NaN
      alpha[i] = exp2f(m_run[i] - ref[i]);
      m_run[i] = mx[i];
      l_run[i] *= alpha[i];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - ref[e >> 1]);
        l_run[e >> 1] += s[j][e];
      }
    pv_accumulate<NT, 8>(acc, alpha, s, Vs, LD, lane);
  }
  attn_write_rows<NT>(acc, l_run, m_run, o + (int64_t)start * qs + h * a.D, qs, lse + (int64_t)h * a.N + start, row0,
                      len, a.D, lane);
}

// ---- forward, versions 2 and 3 (version 1 above: head dims over 128; version 4, the default, on wgmma in
// cuda/attention_sm90.cu; the choice: launch_fwd_tc) ----
// Same tiling and numerics as attn_fwd_tc, plus: K/V tiles arrive by cp.async while the tensor cores work (V of
// tile n loads during S = Q K^T, K of tile n+1 during P V); Q and K fragments come through ldmatrix (4 matrices per
// instruction instead of 2 LDS.32 per mma); a warp whose 16 rows see nothing of a tile skips it; the causal/window
// mask is applied only on tiles that cross an edge; the exponentials are ex2.approx.ftz with the scale folded into
// an FFMA.
template <int R, int DP, int NTH = kThreads>
__device__ __forceinline__ void cp_tile(uint16_t* s, const uint16_t* g, int64_t row_stride, int rows_valid, int D) {
  constexpr int LD = DP + 8, CH = DP / 8;
  static_assert(R * CH % NTH == 0, "whole copies per thread");
#pragma unroll
  for (int it = 0; it < R * CH / NTH; ++it) {
    const int i = threadIdx.x + it * NTH, r = i / CH, c = (i % CH) * 8;
    const bool ok = r < rows_valid && c < D;
    cp16(s + r * LD + c, ok ? g + r * row_stride + c : g, ok);  // row 0 is valid at every call
  }
}

// Version 3 (MT = 2, BN = 32): each warp owns 32 rows as two m-tiles, so every K and V fragment read from shared
// memory feeds two mma instead of one (version 2, MT = 1, BN = 64, reads one ldmatrix.x4 per two mma in P V: bound
// by shared-memory bandwidth); the block holds 128 queries over 32-key tiles (64-key tiles need more than 255
// registers at D = 128). MT-wide versions of qk_tile / pv_accumulate:
template <int DP, int NJ, int MT>
__device__ __forceinline__ void qk_tile_mt(float (&s)[MT][NJ][4], const uint16_t* Qs, const uint16_t* Ks, int LD,
                                           int q_row0, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NJ; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll 2
  for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
    for (int jp = 0; jp < NJ / 2; ++jp) {
      uint32_t kb[4];
      ldsm_x4(kb, Ks + (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t qa[4];
        ldsm_x4(qa, Qs + (q_row0 + mt * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
        mma16816(s[mt][2 * jp], qa, kb[0], kb[1]);
        mma16816(s[mt][2 * jp + 1], qa, kb[2], kb[3]);
      }
    }
  }
}

template <int NT, int NJ, int MT>
__device__ __forceinline__ void pv_accumulate_mt(float (&acc)[MT][NT][4], const float (&alpha)[MT][2],
                                                 const float (&p)[MT][NJ][4], const uint16_t* Vs, int LD, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < NT; ++i)
      acc[mt][i][0] *= alpha[mt][0], acc[mt][i][1] *= alpha[mt][0], acc[mt][i][2] *= alpha[mt][1], acc[mt][i][3] *= alpha[mt][1];
#pragma unroll
  for (int kk = 0; kk < NJ / 2; ++kk) {
    uint32_t af[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) acc_to_a(af[mt], p[mt][2 * kk], p[mt][2 * kk + 1]);
#pragma unroll
    for (int dt = 0; dt < NT / 2; ++dt) {
      uint32_t bf[4];
      ldsm_x4_t(bf, Vs + (kk * 16 + (lane & 15)) * LD + dt * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816(acc[mt][2 * dt], af[mt], bf[0], bf[1]);
        mma16816(acc[mt][2 * dt + 1], af[mt], bf[2], bf[3]);
      }
    }
  }
}

template <int DP, int MT, int BN> constexpr size_t fwd2_smem() { return (size_t)(MT * kBM + 2 * BN) * (DP + 8) * 2; }

template <int DP, int MT, int BN>
__global__ void __launch_bounds__(kThreads) attn_fwd_tc2(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                                                        const uint16_t* __restrict__ v, uint16_t* __restrict__ o,
                                                        float* __restrict__ lse, AttentionDims a) {
  constexpr int LD = DP + 8, NT = DP / 8, NJ = BN / 8, BM = MT * kBM, WR = MT * 16;  // rows per block, per warp
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t *Qs = smem, *Ks = Qs + BM * LD, *Vs = Ks + BN * LD;
  const int seq = blockIdx.y, h = blockIdx.z, m0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  if (m0 >= len) return;
  const int hk = h / (a.H / a.Hkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qs = (int64_t)a.H * a.D, ks = (int64_t)a.Hkv * a.D;
  const uint16_t *kg = k + (int64_t)start * ks + hk * a.D, *vg = v + (int64_t)start * ks + hk * a.D;
  const int n_lo = first_key(m0, a.window) / BN * BN, n_hi = min(len, m0 + BM);
  cp_tile<BM, DP>(Qs, q + ((int64_t)start + m0) * qs + h * a.D, qs, len - m0, a.D);
  cp_tile<BN, DP>(Ks, kg + (int64_t)n_lo * ks, ks, len - n_lo, a.D);
  cp_commit();
  const float sl2 = a.scale * kLog2e;
  const int wrow = m0 + warp * WR;  // the warp's first row; its rows are wrow + 16 mt + lane / 4 (+ 8)
  float m_run[MT][2], l_run[MT][2], acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY, l_run[mt][0] = l_run[mt][1] = 0.f;
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
  }
  for (int n0 = n_lo; n0 < n_hi; n0 += BN) {
    cp_wait_all();
    __syncthreads();  // K(n0) (and Q) landed; every warp is done with P V on the previous V
    cp_tile<BN, DP>(Vs, vg + (int64_t)n0 * ks, ks, len - n0, a.D);
    cp_commit();
    // Some row r of the warp's WR sees some key of the tile: n0 <= r (causal, widest for the last row) and
    // n0 + BN - 1 > r - window (window, widest for the first row).
    const bool active = n0 <= wrow + WR - 1 && (a.window <= 0 || n0 + BN - 1 > wrow - a.window);
    float s[MT][NJ][4];
    float alpha[MT][2];
    if (active) {
      qk_tile_mt<DP, NJ, MT>(s, Qs, Ks, LD, warp * WR, lane);
      const bool edge = n0 + BN - 1 > wrow || n0 + BN > len || (a.window > 0 && n0 <= wrow + WR - 1 - a.window);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row0 = wrow + mt * 16 + lane / 4;
        online_softmax<NJ>(s[mt], edge, [&](int j, int e) {
          const int kp = n0 + j * 8 + (lane % 4) * 2 + (e & 1), qp = row0 + (e >> 1) * 8;
          return kp > qp || kp >= len || (a.window > 0 && kp <= qp - a.window);
        }, sl2, m_run[mt], l_run[mt], alpha[mt]);
      }
    }
    cp_wait_all();
    __syncthreads();  // V(n0) landed; every warp is done reading Ks
    if (n0 + BN < n_hi) cp_tile<BN, DP>(Ks, kg + (int64_t)(n0 + BN) * ks, ks, len - n0 - BN, a.D);
    cp_commit();
    if (active) pv_accumulate_mt<NT, NJ, MT>(acc, alpha, s, Vs, LD, lane);
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    attn_write_rows<NT>(acc[mt], l_run[mt], m_run[mt], o + (int64_t)start * qs + h * a.D, qs,
                        lse + (int64_t)h * a.N + start, wrow + mt * 16 + lane / 4, len, a.D, lane);
}

// Backward: a block owns BN (128 or 64) keys of one kv head (BN / 16 warps) and walks the query tiles (and the heads of the group, or `gs` of
// them) that see them. dk and dv accumulate in registers over DC columns at a time (DC = DP up to 128; 256-wide
// heads take two passes that recompute the probabilities), dq goes to an f32 buffer with atomics. Large groups
// (NSA's compressed branch regroups d x HQ query heads over each kv head) and grids of few blocks are split over
// blocks of gs heads each (blockIdx.z = kv head x splits + split); those add dk and dv into f32 buffers
// (dkv_acc: [N, Hkv, D] for dk, then dv), else they write them directly.
template <int DP, int BN> constexpr size_t bwd_smem() { return (size_t)(2 * BN + 2 * kBM) * (DP + 8) * 2 + BN * (kBM + 8) * 2 + 2 * kBM * 4; }

template <int DP, int DC, int BN>
__global__ void __launch_bounds__(2 * BN) attn_bwd_tc(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                                                       const uint16_t* __restrict__ v, const uint16_t* __restrict__ dout,
                                                       const float* __restrict__ lse, const float* __restrict__ delta,
                                                       float* __restrict__ dq_acc, uint16_t* __restrict__ dk,
                                                       uint16_t* __restrict__ dv, float* __restrict__ dkv_acc,
                                                       int gs, AttentionDims a) {
  constexpr int LD = DP + 8, LDS = kBM + 8, NC = DC / 8, NTH = 2 * BN, WC = BN / 64;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t *Ks = smem, *Vs = Ks + BN * LD, *Qs = Vs + BN * LD, *dOs = Qs + kBM * LD, *dSs = dOs + kBM * LD;
  float* lse_s = reinterpret_cast<float*>(dSs + BN * LDS);
  float* dlt_s = lse_s + kBM;
  // Key tiles near the start of a sequence are seen by the most query tiles: they go first (less tail).
  const AttnBwdBlock blk = attn_bwd_block(a, gs, BN);
  const int hk = blk.hk, n0 = blk.n0, h_lo = blk.h_lo, h_hi = blk.h_hi, start = blk.start, len = blk.len;
  if (n0 >= len) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qs = (int64_t)a.H * a.D, ks = (int64_t)a.Hkv * a.D;
  const float sl2 = a.scale * kLog2e;
  const int key0 = n0 + warp * 16 + lane / 4;  // this thread's keys: key0 and key0 + 8
  const int wkey = n0 + warp * 16;             // the warp's first key
  const int q_hi = a.window > 0 ? min(len, n0 + BN - 1 + a.window) : len;
  const int m_first = n0 / kBM * kBM;
  // Q, dO (and the rows' lse, delta) of tile (h, m0) start loading while the previous tile's dQ is computed.
  auto prefetch = [&](int h, int m0) {
    cp_tile<kBM, DP, NTH>(Qs, q + ((int64_t)start + m0) * qs + h * a.D, qs, len - m0, a.D);
    cp_tile<kBM, DP, NTH>(dOs, dout + ((int64_t)start + m0) * qs + h * a.D, qs, len - m0, a.D);
    cp_commit();
    attn_bwd_row_stats(lse_s, dlt_s, lse, delta, a.N, blk, h, m0, kBM);
  };
  cp_tile<BN, DP, NTH>(Ks, k + ((int64_t)start + n0) * ks + hk * a.D, ks, len - n0, a.D);
  cp_tile<BN, DP, NTH>(Vs, v + ((int64_t)start + n0) * ks + hk * a.D, ks, len - n0, a.D);
  for (int c0 = 0; c0 < DP; c0 += DC) {
    float dka[NC][4], dva[NC][4];
#pragma unroll
    for (int i = 0; i < NC; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dka[i][e] = dva[i][e] = 0.f;
    if (c0 > 0) __syncthreads();  // the previous pass's last dQ reads of dSs are done
    prefetch(h_lo, m_first);
    for (int h = h_lo; h < h_hi; ++h)
      for (int m0 = m_first; m0 < q_hi; m0 += kBM) {
        cp_wait_all();
        __syncthreads();  // Q, dO, lse, delta of (h, m0) (and K, V at the first tile) are in shared memory
        // S^T = K Q^T for this warp's 16 keys x 64 queries, and dP^T = V dO^T.
        float p[8][4], ds[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) p[j][e] = ds[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) {
          uint32_t af[4], vf[4];
          ldsm_x4(af, Ks + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
          ldsm_x4(vf, Vs + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int jp = 0; jp < 4; ++jp) {
            const int boff = (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
            uint32_t qb[4], ob[4];
            ldsm_x4(qb, Qs + boff);
            ldsm_x4(ob, dOs + boff);
            mma16816(p[2 * jp], af, qb[0], qb[1]);
            mma16816(p[2 * jp + 1], af, qb[2], qb[3]);
            mma16816(ds[2 * jp], vf, ob[0], ob[1]);
            mma16816(ds[2 * jp + 1], vf, ob[2], ob[3]);
          }
        }
        // Masks only where the tile crosses the diagonal, the sequence end or the window edge (per warp).
        const bool edge = wkey + 15 > m0 || m0 + kBM > len || wkey + 15 >= len ||
                          (a.window > 0 && wkey <= m0 + kBM - 1 - a.window);
        attn_bwd_probs(p, ds, edge, lse_s, dlt_s, sl2, m0, key0, len, a.window, lane);
        // dV += P^T dO and dK += dS^T Q over this pass's columns.
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk) {
          uint32_t pa[4], sa[4];
          acc_to_a(pa, p[2 * kk], p[2 * kk + 1]);
          acc_to_a(sa, ds[2 * kk], ds[2 * kk + 1]);
#pragma unroll
          for (int dt = 0; dt < NC / 2; ++dt) {
            uint32_t bf[4];
            ldsm_x4_t(bf, dOs + (kk * 16 + (lane & 15)) * LD + c0 + dt * 16 + (lane >> 4) * 8);
            mma16816(dva[2 * dt], pa, bf[0], bf[1]);
            mma16816(dva[2 * dt + 1], pa, bf[2], bf[3]);
            ldsm_x4_t(bf, Qs + (kk * 16 + (lane & 15)) * LD + c0 + dt * 16 + (lane >> 4) * 8);
            mma16816(dka[2 * dt], sa, bf[0], bf[1]);
            mma16816(dka[2 * dt + 1], sa, bf[2], bf[3]);
          }
        }
        // dQ (64 queries) += dS K: dS^T goes through shared memory to be re-read with queries as rows.
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          uint16_t* d = dSs + (warp * 16 + lane / 4) * LDS + j * 8 + (lane % 4) * 2;
          *reinterpret_cast<uint32_t*>(d) = pack_bf16(ds[j][0], ds[j][1]);
          *reinterpret_cast<uint32_t*>(d + 8 * LDS) = pack_bf16(ds[j][2], ds[j][3]);
        }
        __syncthreads();  // dS complete; every warp is done with Q, dO, lse and delta of this tile
        {
          const bool more_m = m0 + kBM < q_hi;
          if (more_m) prefetch(h, m0 + kBM);
          else if (h + 1 < h_hi) prefetch(h + 1, m_first);
        }
        // Warp w computes queries 16 (w % 4).. over column group w / 4 (BN = 128: 8 warps as 4 x 2).
        const int wq = WC == 1 ? warp : warp % 4, wc = WC == 1 ? 0 : warp / 4;
        uint32_t sf[BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
          ldsm_x4_t(sf[kk], dSs + (kk * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * LDS + wq * 16 + ((lane >> 3) & 1) * 8);
        const int qa = m0 + wq * 16 + lane / 4;
        const int cw = c0 + (WC == 1 ? 0 : wc * (DC / WC));  // the warp's first column
        const uint16_t* Kw = Ks + cw;
#pragma unroll
        for (int dt = 0; dt < NC / 2 / WC; ++dt) {
          float c[2][4] = {};
#pragma unroll
          for (int kk = 0; kk < BN / 16; ++kk) {
            uint32_t bf[4];
            ldsm_x4_t(bf, Kw + (kk * 16 + (lane & 15)) * LD + dt * 16 + (lane >> 4) * 8);
            mma16816(c[0], sf[kk], bf[0], bf[1]);
            mma16816(c[1], sf[kk], bf[2], bf[3]);
          }
#if __CUDA_ARCH__ >= 900
          {
            // Hopper: one 16-byte f32x4 reduction per 4 columns instead of four scalar ones (a dQ atomic per
            // element of every 64 x 64 tile is about what the L2's atomic units sustain: the dense and NSA
            // backward times of 2026-12-05 match ~190 G scalar atomics/s). Lane pairs swap halves so the even
            // lane holds row qa, the odd one row qa + 8, both on columns 4 (lane % 4 / 2) .. + 3.
            const bool odd = lane & 1;
            const int r = qa + (odd ? 8 : 0);
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const float s0 = odd ? c[half][0] : c[half][2], s1 = odd ? c[half][1] : c[half][3];
              const float g0 = __shfl_xor_sync(0xffffffffu, s0, 1), g1 = __shfl_xor_sync(0xffffffffu, s1, 1);
              const int col = cw + dt * 16 + half * 8 + (lane % 4 / 2) * 4;
              if (r < len && col < a.D) {
                const float4 v = odd ? make_float4(g0, g1, c[half][2], c[half][3]) : make_float4(c[half][0], c[half][1], g0, g1);
                atomicAdd(reinterpret_cast<float4*>(dq_acc + ((int64_t)start + r) * qs + h * a.D + col),
                          make_float4(v.x * a.scale, v.y * a.scale, v.z * a.scale, v.w * a.scale));
              }
            }
          }
#else
#pragma unroll
          for (int half = 0; half < 2; ++half)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              const int r = qa + i * 8, col = cw + dt * 16 + half * 8 + (lane % 4) * 2;
              if (r < len && col < a.D) {
                float* d = dq_acc + ((int64_t)start + r) * qs + h * a.D + col;
                atomicAdd(d, c[half][2 * i] * a.scale);
                atomicAdd(d + 1, c[half][2 * i + 1] * a.scale);
              }
            }
#endif
        }
      }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = key0 + i * 8;
      if (r >= len) continue;
      const int64_t off = ((int64_t)start + r) * ks + hk * a.D;
      uint16_t *krow = dk + off, *vrow = dv + off;
#pragma unroll
      for (int nt = 0; nt < NC; ++nt) {
        const int col = c0 + nt * 8 + (lane % 4) * 2;
        if (col < a.D && dkv_acc) {
          float *ka = dkv_acc + off + col, *va = ka + a.N * ks;
          atomicAdd(ka, dka[nt][2 * i] * a.scale), atomicAdd(ka + 1, dka[nt][2 * i + 1] * a.scale);
          atomicAdd(va, dva[nt][2 * i]), atomicAdd(va + 1, dva[nt][2 * i + 1]);
        } else if (col < a.D) {
          *reinterpret_cast<uint32_t*>(krow + col) = pack_bf16(dka[nt][2 * i] * a.scale, dka[nt][2 * i + 1] * a.scale);
          *reinterpret_cast<uint32_t*>(vrow + col) = pack_bf16(dva[nt][2 * i], dva[nt][2 * i + 1]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- CUDA-core path (any float dtype)
constexpr int kMaxPerLane = 8;  // D <= 256

template <class T, class A>
__device__ __forceinline__ A warp_dot(const T* x, const T* y, int D, int lane) {
  A s = 0;
  for (int d = lane; d < D; d += 32) s += (A)x[d] * (A)y[d];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

template <class T>
__global__ void attn_fwd_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                              float* __restrict__ lse, AttentionDims a) {
  using A = acc_t<T>;
  const int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= a.N * a.H) return;
  const int64_t n = w / a.H;
  const int h = (int)(w % a.H), hk = h / (a.H / a.Hkv), b = seq_of(a.cu_seqlens, a.nseq, n);
  const int start = a.cu_seqlens[b], t = (int)(n - start);
  const T* qr = q + w * a.D;
  A acc[kMaxPerLane] = {}, m = -INFINITY, l = 0;
  for (int j = first_key(t, a.window); j <= t; ++j) {
    const int64_t kr = ((int64_t)(start + j) * a.Hkv + hk) * a.D;
    const A s = warp_dot<T, A>(qr, k + kr, a.D, lane) * (A)a.scale;
    const A mn = s > m ? s : m, corr = exp(m - mn), p = exp(s - mn);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i)
      if (lane + 32 * i < a.D) acc[i] = acc[i] * corr + p * (A)v[kr + lane + 32 * i];
    m = mn;
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i)
    if (lane + 32 * i < a.D) o[w * a.D + lane + 32 * i] = T(acc[i] / l);
  if (lane == 0) lse[(int64_t)h * a.N + n] = (float)(m + log(l));
}

// delta[h, n] = dout[n, h] . out[n, h]
template <class T>
__global__ void attn_delta(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta, AttentionDims a) {
  using A = acc_t<T>;
  const int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  if (w >= a.N * a.H) return;
  const A s = warp_dot<T, A>(o + w * a.D, dout + w * a.D, a.D, threadIdx.x % 32);
  if (threadIdx.x % 32 == 0) delta[(int64_t)(w % a.H) * a.N + w / a.H] = (float)s;
}

// dq for one query row: scale * sum_j p_j (dout . v_j - delta) k_j.
template <class T>
__global__ void attn_bwd_dq_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                 const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                                 T* __restrict__ dq, AttentionDims a) {
  using A = acc_t<T>;
  const int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= a.N * a.H) return;
  const int64_t n = w / a.H;
  const int h = (int)(w % a.H), hk = h / (a.H / a.Hkv), b = seq_of(a.cu_seqlens, a.nseq, n);
  const int start = a.cu_seqlens[b], t = (int)(n - start);
  const A L = lse[(int64_t)h * a.N + n], dl = delta[(int64_t)h * a.N + n];
  A acc[kMaxPerLane] = {};
  for (int j = first_key(t, a.window); j <= t; ++j) {
    const int64_t kr = ((int64_t)(start + j) * a.Hkv + hk) * a.D;
    const A p = exp(warp_dot<T, A>(q + w * a.D, k + kr, a.D, lane) * (A)a.scale - L);
    const A ds = p * (warp_dot<T, A>(dout + w * a.D, v + kr, a.D, lane) - dl) * (A)a.scale;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i)
      if (lane + 32 * i < a.D) acc[i] += ds * (A)k[kr + lane + 32 * i];
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i)
    if (lane + 32 * i < a.D) dq[w * a.D + lane + 32 * i] = T(acc[i]);
}

// dk, dv for one key row of kv head hk: sums over the queries (of every head of the group) that see it.
template <class T>
__global__ void attn_bwd_dkv_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                                  T* __restrict__ dk, T* __restrict__ dv, AttentionDims a) {
  using A = acc_t<T>;
  const int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= a.N * a.Hkv) return;
  const int64_t n = w / a.Hkv;
  const int hk = (int)(w % a.Hkv), G = a.H / a.Hkv, b = seq_of(a.cu_seqlens, a.nseq, n);
  const int start = a.cu_seqlens[b], len = a.cu_seqlens[b + 1] - start, j = (int)(n - start);
  const int t_hi = a.window > 0 ? min(len, j + a.window) : len;
  A gk[kMaxPerLane] = {}, gv[kMaxPerLane] = {};
  for (int h = hk * G; h < hk * G + G; ++h)
    for (int t = j; t < t_hi; ++t) {
      const int64_t qr = ((int64_t)(start + t) * a.H + h) * a.D, li = (int64_t)h * a.N + start + t;
      const A p = exp(warp_dot<T, A>(q + qr, k + w * a.D, a.D, lane) * (A)a.scale - (A)lse[li]);
      const A ds = p * (warp_dot<T, A>(dout + qr, v + w * a.D, a.D, lane) - (A)delta[li]) * (A)a.scale;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i)
        if (lane + 32 * i < a.D) gk[i] += ds * (A)q[qr + lane + 32 * i], gv[i] += p * (A)dout[qr + lane + 32 * i];
    }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i)
    if (lane + 32 * i < a.D) dk[w * a.D + lane + 32 * i] = T(gk[i]), dv[w * a.D + lane + 32 * i] = T(gv[i]);
}

unsigned warp_blocks(int64_t rows) { return (unsigned)((rows * 32 + 255) / 256); }

bool use_tensor_cores(DType t, const AttentionDims& d, std::initializer_list<const void*> ptrs) {
  if (t != DType::bf16 || d.D % 8 != 0 || d.D > 256) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

int g_attention_kernel = [] {
  const char* e = std::getenv("NT_ATTENTION_KERNEL");
  const std::string v = e ? e : "";
  return v.size() == 1 && v[0] >= '1' && v[0] <= '7' ? v[0] - '0' : 7;
}();

template <int DP> void launch_fwd_tc(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                                     cudaStream_t stream) {
  // Versions 2 and 3 spill at DP = 256. Version 4 (wgmma) lands here for head dims up to 64 and on GPUs other than
  // sm_90a: it then runs the mma.sync kernel that was fastest at that width (H100, 2026-12-06: version 2 at D = 64,
  // 3 at D = 128).
  const int version = DP > 128 ? 1 : g_attention_kernel >= 4 ? (DP <= 64 ? 2 : 3) : g_attention_kernel;
  auto run = [&](auto kernel, int rows, size_t smem) {
    const dim3 grid((unsigned)((d.max_len + rows - 1) / rows), (unsigned)d.nseq, (unsigned)d.H);
    allow_smem(kernel, smem);
    kernel<<<grid, kThreads, smem, stream>>>(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k),
                                             static_cast<const uint16_t*>(v), static_cast<uint16_t*>(out), lse, d);
    NT_CUDA_CHECK(cudaGetLastError());
  };
  if constexpr (DP <= 128) {
    if (version == 2) return run(attn_fwd_tc2<DP, 1, 64>, kBM, fwd2_smem<DP, 1, 64>());
    if (version == 3) return run(attn_fwd_tc2<DP, 2, 32>, 2 * kBM, fwd2_smem<DP, 2, 32>());
  }
  run(attn_fwd_tc<DP>, kBM, fwd_smem<DP>());
}

// Keys per backward block: 128 (8 warps) by default: each block adds its dQ tile once per 128 keys instead of 64,
// half the L2 atomics per FLOP. NT_ATTENTION_BWD_KEYS=64 keeps 4-warp blocks of 64 keys.
int g_bwd_keys = [] {
  const char* e = std::getenv("NT_ATTENTION_BWD_KEYS");
  return e && std::string(e) == "64" ? 64 : 128;
}();

// Heads per backward block: at most 16 (a block walks every query tile of each of its heads, so big groups make
// long blocks), fewer while the grid has under 8 warps per SM.
int bwd_heads_per_block(const AttentionDims& d, int bn) {
  int dev = 0;
  NT_CUDA_CHECK(cudaGetDevice(&dev));
  const int sms = multiprocessor_count(dev);
  const int G = d.H / d.Hkv;
  const int64_t tiles = (int64_t)(d.max_len + bn - 1) / bn * d.nseq * d.Hkv;
  int gs = std::min(G, 16);
  while (gs > 1 && tiles * ((G + gs - 1) / gs) * (bn / 16) < 8 * sms) gs = (gs + 1) / 2;
  return gs;
}

// Runs a backward kernel over the head splits of bwd_heads_per_block: launch(gs, dkv_acc) with dkv_acc an f32
// buffer for dk then dv when the group is split (then converted into dk, dv), else nullptr.
template <class Launch>
void run_bwd_split(const AttentionDims& d, int bn, void* dk, void* dv, cudaStream_t stream, Launch&& launch) {
  const int G = d.H / d.Hkv, gs = bwd_heads_per_block(d, bn), splits = (G + gs - 1) / gs;
  const int64_t kv_elems = d.N * d.Hkv * d.D;
  ScratchBuffer acc(splits > 1 ? 2 * kv_elems * sizeof(float) : 0);
  if (splits > 1) NT_CUDA_CHECK(cudaMemsetAsync(acc.p, 0, 2 * kv_elems * sizeof(float), stream));
  launch(gs, static_cast<float*>(acc.p));
  if (splits > 1) {
    float* a = static_cast<float*>(acc.p);
    cast_f32_to_bf16(a, dk, kv_elems, stream);
    cast_f32_to_bf16(a + kv_elems, dv, kv_elems, stream);
  }
}

template <int DP, int DC, int BN>
void launch_bwd_tc(const void* q, const void* k, const void* v, const void* dout, const float* lse, const float* delta,
                   float* dq_acc, void* dk, void* dv, const AttentionDims& d, cudaStream_t stream) {
  const size_t smem = bwd_smem<DP, BN>();
  allow_smem(attn_bwd_tc<DP, DC, BN>, smem);
  run_bwd_split(d, BN, dk, dv, stream, [&](int gs, float* dkv_acc) {
    const int splits = (d.H / d.Hkv + gs - 1) / gs;
    const dim3 grid((unsigned)((d.max_len + BN - 1) / BN), (unsigned)d.nseq, (unsigned)(d.Hkv * splits));
    attn_bwd_tc<DP, DC, BN><<<grid, 2 * BN, smem, stream>>>(
        static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v),
        static_cast<const uint16_t*>(dout), lse, delta, dq_acc, static_cast<uint16_t*>(dk), static_cast<uint16_t*>(dv),
        dkv_acc, gs, d);
    NT_CUDA_CHECK(cudaGetLastError());
  });
}
}  // namespace

void set_attention_kernel(int version) {
  if (version < 1 || version > 7)
    throw std::invalid_argument("set_attention_kernel: version must be 1..7, got " + std::to_string(version));
  g_attention_kernel = version;
}
int attention_kernel() { return g_attention_kernel; }

void set_attention_bwd_keys(int keys) {
  if (keys != 64 && keys != 128)
    throw std::invalid_argument("set_attention_bwd_keys: keys must be 64 or 128, got " + std::to_string(keys));
  g_bwd_keys = keys;
}
int attention_bwd_keys() { return g_bwd_keys; }

namespace {
bool env_is(const char* name, const char* value) {  // the variable is set to exactly `value`
  const char* e = std::getenv(name);
  return e && std::string(e) == value;
}
// NT_ATTENTION_BLOCK_ORDER: longest (or longest_first), per_group, automatic; anything else is reported and ignored.
AttentionBlockOrder block_order_from_env() {
  const char* e = std::getenv("NT_ATTENTION_BLOCK_ORDER");
  const std::string v = e ? e : "automatic";
  if (v == "longest" || v == "longest_first") return AttentionBlockOrder::longest_first;
  if (v == "per_group") return AttentionBlockOrder::per_group;
  if (v != "automatic" && v != "auto" && !v.empty())
    std::fprintf(stderr, "NT_ATTENTION_BLOCK_ORDER: expected longest, per_group or automatic, got '%s'; using automatic\n",
                 v.c_str());
  return AttentionBlockOrder::automatic;
}
// The TMA-reduce dQ: the default since 2026-12-06 (docs/cuda.md); NT_ATTENTION_BWD_DQ=red: the reductions.
bool g_bwd_tma_dq = !env_is("NT_ATTENTION_BWD_DQ", "red");
// On by default since 2026-12-07 (H100, bench_kernels: 0.296 against 0.310 ms at B2 T4096 H16 D128, 0.226 against
// 0.240 with a 512-key window, 1.081 against 1.061 at B1 T8192 H32/8; NSA at 64k: compressed branch 10.1 against
// 10.7 ms, window 3.37 against 3.54).
bool g_fwd_pingpong = !env_is("NT_ATTENTION_FWD_PINGPONG", "0");
AttentionBlockOrder g_block_order = block_order_from_env();
}  // namespace
void set_attention_bwd_tma_dq(bool on) { g_bwd_tma_dq = on; }
bool attention_bwd_tma_dq() { return g_bwd_tma_dq; }
namespace {
AttentionBwdWalk g_bwd_walk = [] {
  const char* e = std::getenv("NT_ATTENTION_BWD_WALK");
  const std::string v = e ? e : "";
  if (v == "rows") return AttentionBwdWalk::rows_first;
  if (v == "heads") return AttentionBwdWalk::heads_first;
  if (!v.empty() && v != "automatic")
    std::fprintf(stderr, "NT_ATTENTION_BWD_WALK: expected rows, heads or automatic, got '%s'; using automatic\n",
                 v.c_str());
  return AttentionBwdWalk::automatic;
}();
}  // namespace
void set_attention_bwd_walk(AttentionBwdWalk walk) { g_bwd_walk = walk; }
AttentionBwdWalk attention_bwd_walk() { return g_bwd_walk; }
bool attention_bwd_rows_first(int window) {
  return g_bwd_walk == AttentionBwdWalk::rows_first || (g_bwd_walk == AttentionBwdWalk::automatic && window == 0);
}
void set_attention_fwd_pingpong(bool on) { g_fwd_pingpong = on; }
bool attention_fwd_pingpong() { return g_fwd_pingpong; }
namespace {
int g_fwd_blocks = [] {
  const char* e = std::getenv("NT_ATTENTION_FWD_BLOCKS");
  if (!e || !*e) return -1;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (*end || v < -2 || v > INT32_MAX) {
    std::fprintf(stderr, "NT_ATTENTION_FWD_BLOCKS: expected -2 (automatic), -1 (one block per SM), 0 (one per tile) "
                         "or a count, got '%s'; using -1\n", e);
    return -1;
  }
  return (int)v;
}();
}  // namespace
void set_attention_fwd_blocks(int blocks) {
  if (blocks < -2)
    throw std::invalid_argument("set_attention_fwd_blocks: blocks must be -2 (automatic), -1 (one per SM), 0 (one per "
                                "tile) or positive, got " + std::to_string(blocks));
  g_fwd_blocks = blocks;
}
int attention_fwd_blocks() { return g_fwd_blocks; }
namespace {
bool g_fwd_alternate = !env_is("NT_ATTENTION_FWD_ALTERNATE", "0");
}  // namespace
void set_attention_fwd_alternate(bool on) { g_fwd_alternate = on; }
bool attention_fwd_alternate() { return g_fwd_alternate; }
void set_attention_block_order(AttentionBlockOrder order) { g_block_order = order; }
AttentionBlockOrder attention_block_order() { return g_block_order; }
// automatic, from bench_kernels and bench_nsa (H100, 2026-12-07): longest first took the forward 4-6% faster on
// dense shapes (0.94x at B2 T4096 H16 and B1 T8192 H32/8) and NSA's compressed and window branches 2% faster at 64k
// (2% slower at 8k); forward + backward 9-16% faster at B1 T8192 H32/8 (512 backward blocks: 3.9 waves of one
// block per SM) and 8-9% at B2 T4096 H16 (1024: 7.8 waves), but NSA's compressed backward 22% slower at 64k (2048
// blocks, 15.5 waves: 40.2 -> 49.0 ms). With few waves the causal tail is a large share of the time; with many,
// the per-group order keeps the blocks running together on a few heads, whose queries the key blocks walk from L2.
bool attention_longest_first(bool backward, int64_t blocks) {
  switch (g_block_order) {
    case AttentionBlockOrder::per_group: return false;
    case AttentionBlockOrder::longest_first: return true;
    case AttentionBlockOrder::automatic: break;
  }
  if (!backward) return true;
  int dev = 0;
  NT_CUDA_CHECK(cudaGetDevice(&dev));
  return blocks <= 8 * (int64_t)multiprocessor_count(dev);
}

void attention_forward(DType t, const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                       cudaStream_t stream) {
  if (d.N == 0 || d.max_len == 0) return;
  if (use_tensor_cores(t, d, {q, k, v, out})) {
    // wgmma only above D = 64: at D = 64 version 2 was 1.25x faster (H100, 2026-12-06, B4 T2048 H12: 0.162 against
    // 0.203 ms), at D = 128 wgmma 1.5x faster than version 2 and 1.1-1.2x than version 3.
    if (g_attention_kernel >= 6 && d.D > 64 && attention_forward_ws(q, k, v, out, lse, d, stream)) return;
    if (g_attention_kernel >= 4 && d.D > 64 &&
        attention_forward_wgmma(q, k, v, out, lse, d, g_attention_kernel == 5 ? 2 : 1, stream))
      return;
    if (d.D <= 64) launch_fwd_tc<64>(q, k, v, out, lse, d, stream);
    else if (d.D <= 128) launch_fwd_tc<128>(q, k, v, out, lse, d, stream);
    else launch_fwd_tc<256>(q, k, v, out, lse, d, stream);
    return;
  }
  NT_DISPATCH_FLOAT(t, "flash_attention", [&] {
    using T = scalar_t;
    attn_fwd_simt<T><<<warp_blocks(d.N * d.H), 256, 0, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out), lse, d);
    NT_CUDA_CHECK(cudaGetLastError());
  });
}

bool attention_backward_on_tensor_cores(DType t, const AttentionDims& d, std::initializer_list<const void*> ptrs) {
  return use_tensor_cores(t, d, ptrs);
}

void attention_backward(DType t, const void* q, const void* k, const void* v, const void* out, const void* dout,
                        const float* lse, float* delta, float* dq_acc, void* dq, void* dk, void* dv,
                        const AttentionDims& d, cudaStream_t stream, bool delta_given) {
  if (d.N == 0) return;
  // dq == nullptr: dq is added onto dq_acc, which the caller zeroed and converts (the tensor-core path only).
  if (!dq && !use_tensor_cores(t, d, {q, k, v, dout, dk, dv}))
    throw std::logic_error("attention_backward: dq == nullptr (add into dq_acc) needs the tensor-core path");
  const unsigned rows_blocks = warp_blocks(d.N * d.H);
  if (!delta_given)
    NT_DISPATCH_FLOAT(t, "flash_attention_backward", [&] {
      using T = scalar_t;
      attn_delta<T><<<rows_blocks, 256, 0, stream>>>(static_cast<const T*>(out), static_cast<const T*>(dout), delta, d);
      NT_CUDA_CHECK(cudaGetLastError());
    });
  if (use_tensor_cores(t, d, {q, k, v, dout, dk, dv})) {
    if (dq) NT_CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, (size_t)d.N * d.H * d.D * sizeof(float), stream));
    const bool wide = g_bwd_keys == 128;  // 256-wide heads keep 64 keys (the 128-key tile's smem would not fit twice)
    if (g_attention_kernel >= 4 && attention_wgmma_available(d))  // versions 4-7: Hopper kernels both ways (7: the warp-specialized backward)
      run_bwd_split(d, 128, dk, dv, stream, [&](int gs, float* dkv_acc) {
        if (g_attention_kernel == 7) attention_backward_ws(q, k, v, dout, lse, delta, dq_acc, dk, dv, dkv_acc, gs, d, stream);
        else attention_backward_wgmma(q, k, v, dout, lse, delta, dq_acc, dk, dv, dkv_acc, gs, d, stream);
      });
    else if (d.D <= 64 && wide) launch_bwd_tc<64, 64, 128>(q, k, v, dout, lse, delta, dq_acc, dk, dv, d, stream);
    else if (d.D <= 64) launch_bwd_tc<64, 64, 64>(q, k, v, dout, lse, delta, dq_acc, dk, dv, d, stream);
    else if (d.D <= 128 && wide) launch_bwd_tc<128, 128, 128>(q, k, v, dout, lse, delta, dq_acc, dk, dv, d, stream);
    else if (d.D <= 128) launch_bwd_tc<128, 128, 64>(q, k, v, dout, lse, delta, dq_acc, dk, dv, d, stream);
    else launch_bwd_tc<256, 128, 64>(q, k, v, dout, lse, delta, dq_acc, dk, dv, d, stream);
    if (dq) cast_f32_to_bf16(dq_acc, dq, d.N * d.H * d.D, stream);
    return;
  }
  NT_DISPATCH_FLOAT(t, "flash_attention_backward", [&] {
    using T = scalar_t;
    const T *Q = static_cast<const T*>(q), *K = static_cast<const T*>(k), *V = static_cast<const T*>(v),
            *dO = static_cast<const T*>(dout);
    attn_bwd_dq_simt<T><<<rows_blocks, 256, 0, stream>>>(Q, K, V, dO, lse, delta, static_cast<T*>(dq), d);
    NT_CUDA_CHECK(cudaGetLastError());
    attn_bwd_dkv_simt<T><<<warp_blocks(d.N * d.Hkv), 256, 0, stream>>>(Q, K, V, dO, lse, delta, static_cast<T*>(dk),
                                                                               static_cast<T*>(dv), d);
    NT_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace nt::cuda
