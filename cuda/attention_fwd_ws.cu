// flash_attention's forward on Hopper with warp specialization (kernel version 6): TMA loads by a producer warp,
// two consumer warpgroups of 64 queries each, and each consumer's softmax overlapped with its own tensor-core work.
// Same function and layout as cuda/attention_sm90.cu's attn_fwd_wgmma: q, out [N, H, D], k, v [N, Hkv, D] packed
// by cu_seqlens, lse [H, N] f32; bf16, head dims 72..128 (zero-padded to 128), 16-byte aligned.
//
// A block of three warpgroups owns 128 queries of one head. Warpgroup 0 gives its registers away (setmaxnreg) and
// one thread issues the TMA copies: both consumers' Q once, then K and V tiles of 128 keys into a ring of two stages
// each (full/empty mbarriers; the 128-byte swizzle wgmma reads). Consumer c = 1, 2 multiplies its 64 rows:
//   S(n) = Q K(n)^T is issued, then O += P(n-1) V(n-1); the softmax of S(n) runs while that P V is in flight, and O
//   is rescaled once it lands (FlashAttention-3's intra-warpgroup overlap). K(n)'s stage is released when S(n) is
//   done, V(n-1)'s when P V is.
// Keys past a sequence's end come from the next sequence (or TMA's zeros past the tensor) and are masked, as are
// queries past it (never written). Traffic: q and out once, k and v once per 128-query block that sees them.
// Shared memory: Q 32 KB, K and V 2 x 32 KB each: one block per SM.
// Measured (H100, 2026-12-06, docs/cuda.md): 516 TFLOP/s at 8k tokens, 0.86x cuDNN, 2.1x version 4.
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

constexpr int kKeys = kAttnKeys, kRowsWG = 64, kRows = 2 * kRowsWG, kStages = 2;
constexpr int kQBytes = kRowsWG * 2 * 128;  // one consumer's Q: two column halves of [64][64] bf16
constexpr int kKVBytes = kKeys * 2 * 128;   // one K or V tile
constexpr size_t kSmem = 1024 + 2 * kQBytes + 2 * kStages * kKVBytes + (1 + 4 * kStages) * 8;

__global__ void __launch_bounds__(384, 1)
    attn_fwd_ws(const __grid_constant__ CUtensorMap mq, const __grid_constant__ CUtensorMap mk,
                const __grid_constant__ CUtensorMap mv, uint16_t* __restrict__ o, float* __restrict__ lse,
                AttentionDims a) {
#if NT_SM90A
  constexpr int NJ = kKeys / 8, NO = kAttnDim / 8;  // accumulator n-tiles of 8 columns: S (keys) and O (head dims)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = (unsigned char*)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
  unsigned char *Qs = smem, *Ks = Qs + 2 * kQBytes, *Vs = Ks + kStages * kKVBytes;
  uint64_t* q_full = reinterpret_cast<uint64_t*>(Vs + kStages * kKVBytes);
  uint64_t *k_full = q_full + 1, *v_full = k_full + kStages, *k_empty = v_full + kStages, *v_empty = k_empty + kStages;
  const int seq = blockIdx.y, h = blockIdx.z, m0 = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  if (m0 >= len) return;  // the whole block, before any barrier
  const int hk = h / (a.H / a.Hkv);
  const int first = a.window > 0 ? max(0, m0 - a.window + 1) : 0;
  const int n_lo = first / kKeys * kKeys, n_hi = min(len, m0 + kRows), n_tiles = (n_hi - n_lo + kKeys - 1) / kKeys;
  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < kStages; ++s)
      mbar_init(&k_full[s], 1), mbar_init(&v_full[s], 1), mbar_init(&k_empty[s], 8), mbar_init(&v_empty[s], 8);
    mbar_fence_init();
  }
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) {  // producer
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(&mq), tma_prefetch_map(&mk), tma_prefetch_map(&mv);
      mbar_expect_tx(q_full, 2 * kQBytes);
      for (int c = 0; c < 2; ++c)
        for (int half = 0; half < 2; ++half)
          tma_load_3d(Qs + c * kQBytes + half * kRowsWG * 128, &mq, q_full, half * 64, h, start + m0 + c * kRowsWG);
      for (int it = 0; it < n_tiles; ++it) {
        const int s = it % kStages, n0 = n_lo + it * kKeys;
        const uint32_t phase = (it / kStages) & 1;
        mbar_wait(&k_empty[s], phase ^ 1);
        mbar_expect_tx(&k_full[s], kKVBytes);
        for (int half = 0; half < 2; ++half)
          tma_load_3d(Ks + s * kKVBytes + half * kKeys * 128, &mk, &k_full[s], half * 64, hk, start + n0);
        mbar_wait(&v_empty[s], phase ^ 1);
        mbar_expect_tx(&v_full[s], kKVBytes);
        for (int half = 0; half < 2; ++half)
          tma_load_3d(Vs + s * kKVBytes + half * kKeys * 128, &mv, &v_full[s], half * 64, hk, start + n0);
      }
    }
    return;
  }
  setmaxnreg_inc<240>();
  const int c = wg - 1, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32;
  const int wm0 = m0 + c * kRowsWG, wrow = wm0 + warp * 16, row0 = wrow + lane / 4;  // rows row0 and row0 + 8
  const uint32_t q_addr = smem_addr(Qs + c * kQBytes), k_addr0 = smem_addr(Ks), v_addr0 = smem_addr(Vs);
  const float sl2 = a.scale * kLog2e;
  auto release = [&](uint64_t* bar) {  // this warp is done reading the stage
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float s[NJ][4], acc[NO * 4];   // s[j][e], acc[4 j + e]: mma.sync's C layout per 8-column n-tile j
  uint32_t pa[kKeys / 16][4];    // P(n - 1) as bf16 A fragments of 16 keys each
  float(&sf)[NJ * 4] = reinterpret_cast<float(&)[NJ * 4]>(s);
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) acc[i] = 0.f;
  // S = Q K^T for the tile in stage st (issued and committed, not waited for).
  auto issue_qk = [&](int st) {
#pragma unroll
    for (int i = 0; i < NJ * 4; ++i) sf[i] = 0.f;
    wgmma_fence();
    const uint32_t k_addr = k_addr0 + st * kKVBytes;
#pragma unroll
    for (int kk = 0; kk < kAttnDim / 16; ++kk)
      wgmma_m64n128<0, 0>(sf, smem_desc(q_addr + (kk / 4) * (kRowsWG * 128) + (kk % 4) * 32, 16, 1024),
                          smem_desc(k_addr + (kk / 4) * (kKeys * 128) + (kk % 4) * 32, 16, 1024));
    wgmma_commit();
  };
  // O += P V for the tile in stage st, P from pa (issued and committed).
  auto issue_pv = [&](int st) {
    wgmma_fence();  // P's registers were written since the last fence (the compiler may sink to_pa below it)
    const uint32_t v_addr = v_addr0 + st * kKVBytes;
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk)
      wgmma_m64n128_rs<1>(acc, pa[kk], smem_desc(v_addr + kk * 2048, kKeys * 128, 1024));
    wgmma_commit();
  };
  // The online softmax of the tile at n0 in s (alpha: the factor for what O holds so far).
  auto softmax = [&](int n0, float (&alpha)[2]) {
    const bool edge = n0 + kKeys - 1 > wrow || n0 + kKeys > len || (a.window > 0 && n0 <= wrow + 15 - a.window);
    online_softmax<NJ>(s, edge, [&](int j, int e) {
      const int kp = n0 + j * 8 + (lane % 4) * 2 + (e & 1), qp = row0 + (e >> 1) * 8;
      return kp > qp || kp >= len || (a.window > 0 && kp <= qp - a.window);
    }, sl2, m_run, l_run, alpha);
  };
  auto to_pa = [&] {
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) acc_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
  };
  // Every tile of the block's range is multiplied by both consumers, also where a consumer's rows see none of its
  // keys (the masks zero them; with a window or past the sequence's end that wastes a few tiles): a wgmma under a
  // condition would make ptxas serialize them all (warning C7520), losing the overlap.
  mbar_wait(q_full, 0);
  mbar_wait(&k_full[0], 0);
  issue_qk(0);
  wgmma_wait<0>();
  fence_regs(sf);
  release(&k_empty[0]);
  {
    float alpha[2];
    softmax(n_lo, alpha);  // O is still zero: alpha has nothing to scale
    to_pa();
  }
  for (int it = 1; it < n_tiles; ++it) {
    const int st = it % kStages, sp = (it - 1) % kStages, n0 = n_lo + it * kKeys;
    mbar_wait(&k_full[st], (it / kStages) & 1);
    issue_qk(st);
    mbar_wait(&v_full[sp], ((it - 1) / kStages) & 1);
    issue_pv(sp);
    wgmma_wait<1>();  // S(n) is done, P V still in flight
    fence_regs(sf);
    release(&k_empty[st]);
    float alpha[2];
    softmax(n0, alpha);
    wgmma_wait<0>();
    fence_regs(acc);
    fence_regs(reinterpret_cast<uint32_t(&)[kKeys / 4]>(pa));  // pa stays live (read by the P V in flight) until here
    release(&v_empty[sp]);
#pragma unroll
    for (int j = 0; j < NO; ++j)
      acc[4 * j] *= alpha[0], acc[4 * j + 1] *= alpha[0], acc[4 * j + 2] *= alpha[1], acc[4 * j + 3] *= alpha[1];
    to_pa();
  }
  const int last = (n_tiles - 1) % kStages;
  mbar_wait(&v_full[last], ((n_tiles - 1) / kStages) & 1);
  issue_pv(last);
  wgmma_wait<0>();
  fence_regs(acc);
  release(&v_empty[last]);
  if (wm0 < len)
    attn_write_rows<NO>(reinterpret_cast<const float(&)[NO][4]>(acc), l_run, m_run, o + (int64_t)start * a.H * a.D + h * a.D,
                        (int64_t)a.H * a.D, lse + (int64_t)h * a.N + start, row0, len, a.D, lane);
#endif
}
}  // namespace

bool attention_forward_ws(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                          cudaStream_t stream) {
  if (!attention_wgmma_available(d)) return false;
  // [N, heads, D] bf16 as (D, heads, N): boxes of 64 head dims x 1 head x rows (columns past D arrive as zeros).
  auto map = [&](const void* base, int64_t heads, uint32_t rows) {
    const uint64_t dims[3] = {(uint64_t)d.D, (uint64_t)heads, (uint64_t)d.N};
    const uint64_t strides[2] = {(uint64_t)d.D * 2, (uint64_t)heads * d.D * 2};
    const uint32_t box[3] = {64, 1, rows};
    return tensor_map_bf16(base, 3, dims, strides, box);
  };
  const CUtensorMap mq = map(q, d.H, kRowsWG), mk = map(k, d.Hkv, kKeys), mv = map(v, d.Hkv, kKeys);
  allow_smem(attn_fwd_ws, kSmem);
  const dim3 grid((unsigned)((d.max_len + kRows - 1) / kRows), (unsigned)d.nseq, (unsigned)d.H);
  attn_fwd_ws<<<grid, 384, kSmem, stream>>>(mq, mk, mv, static_cast<uint16_t*>(out), lse, d);
  NT_CUDA_CHECK(cudaGetLastError());
  return true;
}
}  // namespace nt::cuda
