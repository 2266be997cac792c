// Device pieces of the wgmma attention kernels (cuda/attention_sm90.cu, cuda/nsa_selected_sm90.cu): one warpgroup
// multiplies 64 query rows by 128-key tiles, head dims zero-padded to 128, operands in shared memory in the 128-byte
// swizzle (cuda/hopper.cuh): a tile of R rows is two column halves of [R][64] bf16 (128-byte rows), 16-byte chunk c of
// row r at chunk c ^ (r % 8), each half 1024-byte aligned. S and O stay in registers in mma.sync's C layout per warp
// (16 rows each), so the online softmax of cuda/mma_sm80.cuh runs on them unchanged.
#pragma once
#include "cuda/hopper.cuh"
#include "cuda/mma_sm80.cuh"

namespace nt::cuda::sm90 {
using namespace sm80;
constexpr int kAttnKeys = 128;  // keys per tile
constexpr int kAttnDim = 128;   // padded head dim

// Rows [0, R) of a bf16 tile into shared memory (the layout above, DP / 64 halves) by cp.async from NTH threads:
// row r from src(r) (nullptr: zeros), columns >= D zeros. `any` is a valid global address for the zero copies.
template <int R, int DP, int NTH, class Src>
__device__ __forceinline__ void cp_rows_swizzled(unsigned char* s, Src&& src, int D, const uint16_t* any) {
  constexpr int CH = DP / 8;
  static_assert(R * CH % NTH == 0, "whole copies per thread");
#pragma unroll
  for (int it = 0; it < R * CH / NTH; ++it) {
    const int i = threadIdx.x % NTH + it * NTH, r = i / CH, c = i % CH;
    const uint16_t* g = src(r);
    const bool ok = g != nullptr && c * 8 < D;
    cp16(s + (c / 8) * (R * 128) + r * 128 + (((c % 8) ^ (r % 8)) << 4), ok ? g + c * 8 : any, ok);
  }
}

// s = Q K^T for the warpgroup's 64 rows against N = 128 or 64 keys: Q's tile (QR rows per column half) at q_addr,
// K's tile (N rows) at k_addr, both K-major. Returns with the result in registers.
template <int QR, int N = kAttnKeys>
__device__ __forceinline__ void attn_qk_wgmma(float (&s)[N / 8][4], uint32_t q_addr, uint32_t k_addr) {
  static_assert(N == 128 || N == 64, "m64n128 or m64n64");
  float(&flat)[N / 2] = reinterpret_cast<float(&)[N / 2]>(s);  // wgmma's fragment, the same registers
#pragma unroll
  for (int i = 0; i < N / 2; ++i) flat[i] = 0.f;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kAttnDim / 16; ++kk) {
    const uint64_t da = smem_desc(q_addr + (kk / 4) * (QR * 128) + (kk % 4) * 32, 16, 1024);
    const uint64_t db = smem_desc(k_addr + (kk / 4) * (N * 128) + (kk % 4) * 32, 16, 1024);
    if constexpr (N == 128) wgmma_m64n128<0, 0>(flat, da, db);
    else wgmma_m64n64<0, 0>(flat, da, db);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(flat);
}

// acc = alpha acc + P V: P the probabilities in s (after online_softmax) over NK keys, V's tile of NK rows at
// v_addr, read MN-major (the transpose flag). Also the backward's dQ += dS K, dV += P^T dO, dK += dS^T Q. Returns
// with the result in registers.
template <int NK = kAttnKeys>
__device__ __forceinline__ void attn_pv_wgmma(float (&acc)[kAttnDim / 2], const float (&s)[NK / 8][4],
                                              const float (&alpha)[2], uint32_t v_addr) {
#pragma unroll
  for (int j = 0; j < kAttnDim / 8; ++j)
    acc[4 * j] *= alpha[0], acc[4 * j + 1] *= alpha[0], acc[4 * j + 2] *= alpha[1], acc[4 * j + 3] *= alpha[1];
  uint32_t pa[NK / 16][4];  // P as the A fragments of 16 keys each (the C layout of S is the A layout of P)
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) acc_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk)  // 16 keys are 2048 bytes on; the column halves NK x 128 apart
    wgmma_m64n128_rs<1>(acc, pa[kk], smem_desc(v_addr + kk * 2048, NK * 128, 1024));
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(acc);
}
// acc = A B, A (64 rows x NK) and B (NK x 64) both MN-major in the 128-byte swizzle (16 of the NK = 2048 bytes on,
// lbo the stride of their column halves): the backward's dQ = dS K (dS^T stored keys as rows), the selected walk's
// P V and dS K. Returns with the result in registers.
template <int NK>
__device__ __forceinline__ void attn_mn_m64n64(float (&acc)[8][4], uint32_t a_addr, uint32_t b_addr, uint32_t lbo) {
  float(&flat)[32] = reinterpret_cast<float(&)[32]>(acc);  // wgmma's fragment, the same registers
#pragma unroll
  for (int i = 0; i < 32; ++i) flat[i] = 0.f;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk)
    wgmma_m64n64<1, 1>(flat, smem_desc(a_addr + kk * 2048, lbo, 1024), smem_desc(b_addr + kk * 2048, lbo, 1024));
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(flat);
}

// Adds sc * acc (a warpgroup's m64n64 f32 result, mma.sync's C layout per warp) to global memory with 16-byte
// reductions: lane pairs swap halves so the even lane holds row lane / 4 of the warp's 16 and the odd one row
// lane / 4 + 8, each on 4 consecutive columns col0 + 8j + 4 (lane % 4 / 2). out: this lane's row (nullptr: skip it);
// columns >= D are skipped (D a multiple of 4). Every lane must take part (shuffles).
__device__ __forceinline__ void red_add_m64n64(const float (&acc)[8][4], float* out, int col0, int D, float sc,
                                               int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // float4 atomics
  const bool odd = lane & 1;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float s0 = odd ? acc[j][0] : acc[j][2], s1 = odd ? acc[j][1] : acc[j][3];
    const float g0 = __shfl_xor_sync(0xffffffffu, s0, 1), g1 = __shfl_xor_sync(0xffffffffu, s1, 1);
    const int col = col0 + j * 8 + (lane % 4 / 2) * 4;
    if (out != nullptr && col < D) {
      const float4 x = odd ? make_float4(g0, g1, acc[j][2], acc[j][3]) : make_float4(acc[j][0], acc[j][1], g0, g1);
      atomicAdd(reinterpret_cast<float4*>(out + col), make_float4(x.x * sc, x.y * sc, x.z * sc, x.w * sc));
    }
  }
#endif
}
// The end of a wgmma backward block (attn_bwd_wgmma, attn_bwd_ws): this thread's dK (times scale) and dV rows key0
// and key0 + 8 (accumulators in mma.sync's C layout, 16 n-tiles of 8 head dims) written as bf16 into dk / dv
// ([N, Hkv, D] rows start + key), or added into dkv_acc ([N, Hkv, D] dk then dv, f32) when the group is split.
template <class Dims>
__device__ __forceinline__ void attn_bwd_store_dkv(const float (&dka)[kAttnDim / 2], const float (&dva)[kAttnDim / 2],
                                                   uint16_t* dk, uint16_t* dv, float* dkv_acc, const Dims& a, int start,
                                                   int len, int hk, int key0, int lane) {
  const int64_t ks = (int64_t)a.Hkv * a.D;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = key0 + i * 8;
    if (r >= len) continue;
    const int64_t off = ((int64_t)start + r) * ks + hk * a.D;
#pragma unroll
    for (int j = 0; j < kAttnDim / 8; ++j) {
      const int col = j * 8 + (lane % 4) * 2;
      if (col >= a.D) continue;
      const float k0 = dka[4 * j + 2 * i] * a.scale, k1 = dka[4 * j + 2 * i + 1] * a.scale;
      const float v0 = dva[4 * j + 2 * i], v1 = dva[4 * j + 2 * i + 1];
      if (dkv_acc) {
        atomicAdd(reinterpret_cast<float2*>(dkv_acc + off + col), make_float2(k0, k1));
        atomicAdd(reinterpret_cast<float2*>(dkv_acc + a.N * ks + off + col), make_float2(v0, v1));
      } else {
        *reinterpret_cast<uint32_t*>(dk + off + col) = pack_bf16(k0, k1);
        *reinterpret_cast<uint32_t*>(dv + off + col) = pack_bf16(v0, v1);
      }
    }
  }
}
}  // namespace nt::cuda::sm90
