// Fused causal attention forward on Hopper's warpgroup MMA (wgmma; flash_attention's forward kernel version 4, the
// default on sm_90a for bf16 head dims 72..128, zero-padded to 128). Same function and layout as cuda/attention.cu:
// q, out [N, H, D], k, v [N, Hkv, D] packed by cu_seqlens; lse [H, N] f32.
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
  unsigned char* smem = (unsigned char*)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
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
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
    const int r = row0 + i * 8;
    if (r >= len) continue;
    const float inv = 1.f / l_run[i];
    uint16_t* orow = o + ((int64_t)start + r) * qs + h * a.D;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      const int c = j * 8 + (lane % 4) * 2;
      if (c < a.D) *reinterpret_cast<uint32_t*>(orow + c) = pack_bf16(acc[4 * j + 2 * i] * inv, acc[4 * j + 2 * i + 1] * inv);
    }
    if (lane % 4 == 0) lse[(int64_t)h * a.N + start + r] = (m_run[i] + log2f(l_run[i])) / kLog2e;
  }
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
}  // namespace

bool attention_forward_wgmma(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                             int warpgroups, cudaStream_t stream) {
  int device = 0;
  NT_CUDA_CHECK(cudaGetDevice(&device));
  if (d.D <= 64 || d.D > 128 || !sm90a_available(device)) return false;
  if (warpgroups == 2) launch_fwd_wgmma<128, 2>(q, k, v, out, lse, d, stream);
  else launch_fwd_wgmma<128, 1>(q, k, v, out, lse, d, stream);
  return true;
}

}  // namespace nt::cuda
