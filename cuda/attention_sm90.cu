// Fused causal attention on Hopper's warpgroup MMA (wgmma): the forward (flash_attention's kernel version 4, the
// default on sm_90a for bf16 head dims 72..128, zero-padded to 128) and, further down, the backward. Same function
// and layout as cuda/attention.cu: q, out [N, H, D], k, v [N, Hkv, D] packed by cu_seqlens; lse [H, N] f32.
//
// A block is one warpgroup (4 warps, 128 threads) owning 64 queries of one head, or (WG = 2, version 5,
// experimental) two warpgroups owning 128 queries that share each K/V tile; it walks 128-key tiles. S = Q K^T
// is one m64n128 wgmma per 16 head dims with both operands in shared memory (Q and K K-major); the online softmax
// runs on the accumulators in registers (each warp owns 16 rows, in mma.sync's C layout); O += P V takes P from
// registers (repacked to bf16, mma.sync's A layout) and V from shared memory (MN-major, the transpose flag). Unlike
// the mma.sync kernels, no operand passes through ldmatrix: those kernels read one 512-byte ldmatrix per two mma
// and are bound by shared-memory bandwidth. Tiles arrive by cp.async in the 128-byte swizzle wgmma reads (V of tile
// n during S of tile n, K of tile n + 1 during P V of tile n). 81 KB of shared memory: two blocks per SM, whose
// softmax and MMAs overlap each other. Measured (H100, 2026-12-06, docs/cuda.md): 1.5x the mma.sync kernel (16 rows
// per warp) at D = 128, 271 TFLOP/s at 8k tokens, 0.45x cuDNN; slower than it at D = 64 (not used there).
// Traffic: q and out once, k and v once per 64-query tile that sees them.
#include <cuda_bf16.h>

#include <stdexcept>

#include "cuda/attention_sm90.h"
#include "cuda/attention_sm90.cuh"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
using namespace sm80;
using namespace sm90;

constexpr int kKeys = kAttnKeys;

// WG warpgroups per block, 64 queries each, sharing the K and V tiles (WG = 2 halves their traffic per FLOP).
template <int DP, int WG> struct FwdTiles {  // DP / 64 column halves of [rows][64] bf16 (128-byte rows) per tile
  static constexpr int kRows = 64 * WG, kThreads = 128 * WG;
  static constexpr int kQ = DP / 64 * kRows * 128, kK = DP / 64 * kKeys * 128;
  static constexpr size_t kSmem = 1024 + kQ + 2 * kK;  // + alignment slack
};

template <int DP, int WG>  // DP 128 (the P V product is one m64n128 wgmma per 16 keys)
__global__ void __launch_bounds__(128 * WG) attn_fwd_wgmma(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                                                          const uint16_t* __restrict__ v, uint16_t* __restrict__ o,
                                                          float* __restrict__ lse, AttentionDims a) {
#if NT_SM90A
  constexpr int NJ = kKeys / 8, NO = DP / 8;  // accumulator n-tiles of 8 columns: S (keys) and O (head dims)
  using Tiles = FwdTiles<DP, WG>;
  constexpr int kRows = Tiles::kRows, kThreads = Tiles::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Qs = smem, *Ks = Qs + Tiles::kQ, *Vs = Ks + Tiles::kK;
  const int seq = blockIdx.y, h = blockIdx.z, m0 = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  if (m0 >= len) return;
  const int hk = h / (a.H / a.Hkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wg = WG == 1 ? 0 : threadIdx.x / 128, wm0 = m0 + wg * 64;  // this warpgroup and its first row
  const int64_t qs = (int64_t)a.H * a.D, ks = (int64_t)a.Hkv * a.D;
  const uint16_t *kg = k + (int64_t)start * ks + hk * a.D, *vg = v + (int64_t)start * ks + hk * a.D;
  const int first = a.window > 0 ? max(0, m0 - a.window + 1) : 0;
  const int n_lo = first / kKeys * kKeys, n_hi = min(len, m0 + kRows);
  // Rows r0.. of a [rows][D] matrix with row stride `stride` into a tile: rows past the sequence are zeros.
  auto rows_from = [&](const uint16_t* g, int64_t stride, int r0) {
    return [=](int r) { return r0 + r < len ? g + (int64_t)(r0 + r) * stride : nullptr; };
  };
  cp_rows_swizzled<kRows, DP, kThreads>(Qs, rows_from(q + (int64_t)start * qs + h * a.D, qs, m0), a.D, q);
  cp_rows_swizzled<kKeys, DP, kThreads>(Ks, rows_from(kg, ks, n_lo), a.D, k);
  cp_commit();
  const uint32_t q_addr = smem_addr(Qs) + wg * 64 * 128, k_addr = smem_addr(Ks), v_addr = smem_addr(Vs);
  const float sl2 = a.scale * kLog2e;
  const int wrow = m0 + warp * 16, row0 = wrow + lane / 4;  // this thread's rows: row0 and row0 + 8
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float s[NJ][4], acc[NO * 4];  // s[j][e], acc[4 j + e]: mma.sync's C layout per 8-column n-tile j
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) acc[i] = 0.f;
  for (int n0 = n_lo; n0 < n_hi; n0 += kKeys) {
    cp_wait_all();
    fence_async_smem();
    __syncthreads();  // K(n0) (and Q) landed, visible to wgmma; every warp is done with P V on the previous V
    cp_rows_swizzled<kKeys, DP, kThreads>(Vs, rows_from(vg, ks, n0), a.D, v);
    cp_commit();
    // wgmma is warpgroup-wide, so the skip test is the warpgroup's: some of its 64 rows sees some key of the tile.
    const bool active = n0 <= wm0 + 63 && (a.window <= 0 || n0 + kKeys - 1 > wm0 - a.window);
    float alpha[2] = {1.f, 1.f};
    if (active) {
      attn_qk_wgmma<kRows>(s, q_addr, k_addr);
      const bool edge = n0 + kKeys - 1 > wrow || n0 + kKeys > len || (a.window > 0 && n0 <= wrow + 15 - a.window);
      online_softmax<NJ>(s, edge, [&](int j, int e) {
        const int kp = n0 + j * 8 + (lane % 4) * 2 + (e & 1), qp = row0 + (e >> 1) * 8;
        return kp > qp || kp >= len || (a.window > 0 && kp <= qp - a.window);
      }, sl2, m_run, l_run, alpha);
    }
    cp_wait_all();
    fence_async_smem();
    __syncthreads();  // V(n0) landed; every warp is done reading Ks
    if (n0 + kKeys < n_hi) cp_rows_swizzled<kKeys, DP, kThreads>(Ks, rows_from(kg, ks, n0 + kKeys), a.D, k);
    cp_commit();
    if (active) attn_pv_wgmma(acc, s, alpha, v_addr);
  }
  attn_write_rows<NO>(reinterpret_cast<const float(&)[NO][4]>(acc), l_run, m_run, o + (int64_t)start * qs + h * a.D, qs,
                      lse + (int64_t)h * a.N + start, row0, len, a.D, lane);
#endif
}

template <int DP, int WG>
void launch_fwd_wgmma(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                      cudaStream_t stream) {
  using Tiles = FwdTiles<DP, WG>;
  allow_smem(attn_fwd_wgmma<DP, WG>, Tiles::kSmem);
  const dim3 grid((unsigned)((d.max_len + Tiles::kRows - 1) / Tiles::kRows), (unsigned)d.nseq, (unsigned)d.H);
  attn_fwd_wgmma<DP, WG><<<grid, Tiles::kThreads, Tiles::kSmem, stream>>>(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k),
                                                       static_cast<const uint16_t*>(v), static_cast<uint16_t*>(out), lse, d);
  NT_CUDA_CHECK(cudaGetLastError());
}

// Backward (kernel versions 4 and 5): a block of two warpgroups owns 128 keys of one kv head (warpgroup w keys
// 64 w ..) and walks the query tiles of 64 rows (and the heads of the group, or `gs` of them) that see them, as
// attn_bwd_tc does (cuda/attention.cu), with every product on wgmma:
//   S^T = K_w Q^T and dP^T = V_w dO^T (m64n64, both operands in shared memory), P^T = exp(scale S^T - lse),
//   dS^T = P^T (dP^T - delta); dV_w += P^T dO and dK_w += dS^T Q (m64n128, P^T / dS^T from registers, dO and Q
//   read MN-major); dS^T goes to shared memory (bf16, keys as rows in the 128-byte swizzle) and warpgroup w
//   computes dQ[:, 64 w .. 64 w + 63] = dS K[:, 64 w ..] (m64n64, dS read MN-major from it, K MN-major), added to
//   the f32 buffer with 16-byte reductions.
// dK and dV stay in registers over the whole walk (128 per thread); a warpgroup whose 64 keys no query of the tile
// sees skips its products and writes zeros for its dS^T rows. Shared memory: K, V 32 KB each, Q, dO 16 KB each,
// dS^T 16 KB: one block per SM. Traffic: K, V once; Q, dO, lse, delta once per 128-key block that sees them; dQ
// as f32 reductions once per (query tile, key block).
constexpr int kBwdKeys = 128, kBwdRows = 64;
constexpr size_t kBwdSmem = 1024 + 2 * kBwdKeys * 256 + 2 * kBwdRows * 256 + kBwdKeys * 128 + 2 * kBwdRows * sizeof(float);

__global__ void __launch_bounds__(256) attn_bwd_wgmma(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k,
                                                      const uint16_t* __restrict__ v, const uint16_t* __restrict__ dout,
                                                      const float* __restrict__ lse, const float* __restrict__ delta,
                                                      float* __restrict__ dq_acc, uint16_t* __restrict__ dk,
                                                      uint16_t* __restrict__ dv, float* __restrict__ dkv_acc, int gs,
                                                      AttentionDims a) {
#if NT_SM90A
  constexpr int NO = kAttnDim / 8, kKV = kBwdKeys * 2 * kAttnDim, kQ = kBwdRows * 2 * kAttnDim;  // bytes
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Ks = smem, *Vs = Ks + kKV, *Qs = Vs + kKV, *dOs = Qs + kQ, *dSs = dOs + kQ;
  float* lse_s = reinterpret_cast<float*>(dSs + kBwdKeys * 128);
  float* dlt_s = lse_s + kBwdRows;
  const AttnBwdBlock blk = attn_bwd_block(a, gs, kBwdKeys);
  const int hk = blk.hk, n0 = blk.n0, h_lo = blk.h_lo, h_hi = blk.h_hi, start = blk.start, len = blk.len;
  if (n0 >= len) return;
  const int wg = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32;
  const int64_t qs = (int64_t)a.H * a.D, ks = (int64_t)a.Hkv * a.D;
  const float sl2 = a.scale * kLog2e, one[2] = {1.f, 1.f};
  const int wk0 = n0 + wg * 64;                        // this warpgroup's first key
  const int key0 = wk0 + warp * 16 + lane / 4;         // this thread's keys: key0 and key0 + 8
  const int q_hi = a.window > 0 ? min(len, n0 + kBwdKeys - 1 + a.window) : len;
  const int m_first = n0 / kBwdRows * kBwdRows;
  auto rows_from = [&](const uint16_t* g, int64_t stride, int r0) {
    return [=](int r) { return r0 + r < len ? g + (int64_t)(r0 + r) * stride : nullptr; };
  };
  // Q, dO (and the rows' lse, delta) of tile (h, m0) start loading while the previous tile's dQ is computed.
  auto prefetch = [&](int h, int m0) {
    cp_rows_swizzled<kBwdRows, kAttnDim, 256>(Qs, rows_from(q + (int64_t)start * qs + h * a.D, qs, m0), a.D, q);
    cp_rows_swizzled<kBwdRows, kAttnDim, 256>(dOs, rows_from(dout + (int64_t)start * qs + h * a.D, qs, m0), a.D, dout);
    cp_commit();
    attn_bwd_row_stats(lse_s, dlt_s, lse, delta, a.N, blk, h, m0, kBwdRows);
  };
  cp_rows_swizzled<kBwdKeys, kAttnDim, 256>(Ks, rows_from(k + (int64_t)start * ks + hk * a.D, ks, n0), a.D, k);
  cp_rows_swizzled<kBwdKeys, kAttnDim, 256>(Vs, rows_from(v + (int64_t)start * ks + hk * a.D, ks, n0), a.D, v);
  const uint32_t k_addr = smem_addr(Ks), v_addr = smem_addr(Vs), q_addr = smem_addr(Qs), do_addr = smem_addr(dOs);
  const uint32_t ds_addr = smem_addr(dSs);
  float dka[NO * 4], dva[NO * 4];
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) dka[i] = dva[i] = 0.f;
  prefetch(h_lo, m_first);
  for (int h = h_lo; h < h_hi; ++h)
    for (int m0 = m_first; m0 < q_hi; m0 += kBwdRows) {
      cp_wait_all();
      fence_async_smem();
      __syncthreads();  // Q, dO, lse, delta of (h, m0) (and K, V at the first tile) are in shared memory
      // Does some query of the tile see some key of this warpgroup? (wgmma is warpgroup-wide.)
      const bool active = wk0 <= m0 + kBwdRows - 1 && wk0 < len && !(a.window > 0 && wk0 + 63 <= m0 - a.window);
      float p[kBwdRows / 8][4], ds[kBwdRows / 8][4];
      if (active) {
        attn_qk_wgmma<kBwdKeys, kBwdRows>(p, k_addr + wg * 64 * 128, q_addr);   // S^T: 64 keys x 64 queries
        attn_qk_wgmma<kBwdKeys, kBwdRows>(ds, v_addr + wg * 64 * 128, do_addr);  // dP^T
        const bool edge = wk0 + 63 > m0 || m0 + kBwdRows > len || wk0 + 63 >= len ||
                          (a.window > 0 && wk0 <= m0 + kBwdRows - 1 - a.window);
        attn_bwd_probs(p, ds, edge, lse_s, dlt_s, sl2, m0, key0, len, a.window, lane);
        attn_pv_wgmma<kBwdRows>(dva, p, one, do_addr);  // dV += P^T dO
        attn_pv_wgmma<kBwdRows>(dka, ds, one, q_addr);  // dK += dS^T Q
      } else {
#pragma unroll
        for (int j = 0; j < kBwdRows / 8; ++j) ds[j][0] = ds[j][1] = ds[j][2] = ds[j][3] = 0.f;
      }
      // dS^T into shared memory: row = key (of the block's 128), 64 queries = one 128-byte swizzled row.
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wg * 64 + warp * 16 + lane / 4 + 8 * i;
#pragma unroll
        for (int j = 0; j < kBwdRows / 8; ++j)  // queries j 8 + (lane % 4) 2, + 1: 4 bytes of 16-byte chunk j
          *reinterpret_cast<uint32_t*>(dSs + r * 128 + ((j ^ (r % 8)) << 4) + (lane % 4) * 4) =
              pack_bf16(ds[j][2 * i], ds[j][2 * i + 1]);
      }
      fence_async_smem();
      __syncthreads();  // dS^T complete and visible to wgmma; every warp is done with Q, dO, lse and delta
      if (m0 + kBwdRows < q_hi) prefetch(h, m0 + kBwdRows);
      else if (h + 1 < h_hi) prefetch(h + 1, m_first);
      // dQ[:, 64 wg ..] = dS K[:, 64 wg ..]: A = dS (64 queries x 128 keys) MN-major from dSs (16 keys = 2048 bytes
      // on), B = K's column half wg (128 keys x 64 dims) MN-major.
      float dq[8][4];
      attn_mn_m64n64<kBwdKeys>(dq, ds_addr, k_addr + wg * (kBwdKeys * 128), kBwdKeys * 128);
      const int r = m0 + warp * 16 + lane / 4 + ((lane & 1) ? 8 : 0);  // this lane's row in red_add_m64n64
      red_add_m64n64(dq, r < len ? dq_acc + ((int64_t)start + r) * qs + h * a.D : nullptr, wg * 64, a.D, a.scale, lane);
    }
  attn_bwd_store_dkv(dka, dva, dk, dv, dkv_acc, a, start, len, hk, key0, lane);
#endif
}
}  // namespace

bool attention_wgmma_available(const AttentionDims& d) {
  int device = 0;
  NT_CUDA_CHECK(cudaGetDevice(&device));
  return d.D > 64 && d.D <= 128 && sm90a_available(device);
}

bool attention_forward_wgmma(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                             int warpgroups, cudaStream_t stream) {
  if (!attention_wgmma_available(d)) return false;
  if (warpgroups == 2) launch_fwd_wgmma<128, 2>(q, k, v, out, lse, d, stream);
  else launch_fwd_wgmma<128, 1>(q, k, v, out, lse, d, stream);
  return true;
}

void attention_backward_wgmma(const void* q, const void* k, const void* v, const void* dout, const float* lse,
                              const float* delta, float* dq_acc, void* dk, void* dv, float* dkv_acc, int gs,
                              const AttentionDims& d, cudaStream_t stream) {
  if (!attention_wgmma_available(d))  // the kernel body is empty without sm_90a code
    throw std::logic_error("attention_backward_wgmma: called where attention_wgmma_available is false");
  const int G = d.H / d.Hkv, splits = (G + gs - 1) / gs;
  allow_smem(attn_bwd_wgmma, kBwdSmem);
  const dim3 grid((unsigned)((d.max_len + kBwdKeys - 1) / kBwdKeys), (unsigned)d.nseq, (unsigned)(d.Hkv * splits));
  attn_bwd_wgmma<<<grid, 256, kBwdSmem, stream>>>(
      static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v),
      static_cast<const uint16_t*>(dout), lse, delta, dq_acc, static_cast<uint16_t*>(dk), static_cast<uint16_t*>(dv),
      dkv_acc, gs, d);
  NT_CUDA_CHECK(cudaGetLastError());
}
}  // namespace nt::cuda
