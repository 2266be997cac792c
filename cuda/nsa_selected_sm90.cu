// NSA's selected branch, forward, on Hopper's warpgroup MMA: nsa_selected_forward_tc's version 3, the default on
// sm_90a where it applies (l' = 64, head dims up to 128 (zero-padded to 128), 2 <= G <= 16). Same function and
// outputs as the mma.sync kernels of cuda/nsa_selected.cu: o_slc [N, HQ, D] and lse_slc [N, HQ], f32 (version 6's
// forward writes o in bf16 instead where it is given o_bf16: the branch alone).
//
// A block is one warpgroup (128 threads) owning 64 query rows: P = 64 / GP consecutive positions x the GP heads of
// key/value head h's group (GP: G rounded up to a power of two; rows g >= G are zeros and never written). It walks
// the union of the blocks its positions chose, two 64-key blocks per 128-key tile, as attn_fwd_wgmma walks a row
// of tiles (cuda/attention_sm90.cuh): S = Q K^T by wgmma from shared memory, a mask per row (its position chose the
// block, key <= position), the online softmax in registers, O += P V with P from registers; tiles arrive by
// cp.async in the 128-byte swizzle (V of tile i during S of tile i, K of tile i + 1 during P V of tile i).
// Why: the mma.sync kernel (one position's 16 heads per warp) ran at ~60 TFLOP/s at 64k, latency-bound (Nsight
// Compute: no eligible warp in 70% of cycles), and four cp.async stages instead of two did not change it (H200,
// 2026-12-06); here each warp's 16 rows get 128 keys per wgmma and no operand passes through ldmatrix.
// Traffic: q and o once; each union block's keys and values once per P positions (mostly from L2).
#include <cuda_bf16.h>

#include <climits>
#include <stdexcept>
#include <string>

#include "cuda/attention_sm90.cuh"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/nsa_selected.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
using namespace sm80;
using namespace sm90;

constexpr int kSlcBlock = 64;  // l' this kernel takes: two blocks per 128-key tile

// The union of np <= P ascending block lists (n entries each, -1 after the chosen blocks; list p at lists + p
// stride): ublk[e] ascending, umask[e] the bits of the lists that hold it. Returns its size. Every thread takes
// part; vals (P n ints) and pre (P (n + 1)) are scratch in shared memory. An entry is the union's copy of its block
// if no earlier list holds the block; its place in the union is the number of such entries below it, summed over
// the lists (a prefix count per list and a binary search in each).
template <int P, int NTH>
__device__ int slc_union_merge(const int32_t* lists, int64_t stride, int np, int n, int* vals, int* pre, int* ublk,
                               unsigned* umask) {
  const int E = P * n;
  for (int k = threadIdx.x; k < E; k += NTH) {
    const int p = k / n, x = p < np ? lists[p * stride + k % n] : -1;
    vals[k] = x < 0 ? INT_MAX : x;  // ascending with the empty entries last
  }
  __syncthreads();
  auto lower_bound = [&](int p, int x) {  // entries of list p below x
    int lo = 0, hi = n;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (vals[p * n + mid] < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  for (int k = threadIdx.x; k < E; k += NTH) {
    const int p = k / n, x = vals[k];
    bool first = x != INT_MAX;
    for (int q = 0; q < p && first; ++q) {
      const int c = lower_bound(q, x);
      first = !(c < n && vals[q * n + c] == x);
    }
    pre[p * (n + 1) + k % n + 1] = first;
  }
  __syncthreads();
  if (threadIdx.x < P) {  // per-list prefix counts of the first copies
    int* c = pre + threadIdx.x * (n + 1);
    c[0] = 0;
    for (int i = 1; i <= n; ++i) c[i] += c[i - 1];
  }
  __syncthreads();
  for (int k = threadIdx.x; k < E; k += NTH) {
    const int p = k / n, x = vals[k];
    if (pre[p * (n + 1) + k % n + 1] == pre[p * (n + 1) + k % n]) continue;  // not a first copy
    int rank = 0;
    unsigned mask = 0;
    for (int q = 0; q < P; ++q) {
      const int c = lower_bound(q, x);
      rank += pre[q * (n + 1) + c];
      if (c < n && vals[q * n + c] == x) mask |= 1u << q;
    }
    ublk[rank] = x, umask[rank] = mask;
  }
  int nu = 0;
  for (int q = 0; q < P; ++q) nu += pre[q * (n + 1) + n];
  __syncthreads();
  return nu;
}

// The union as 128-key tiles of two blocks each (the forward's and the dq step's walk).
struct SlcUnionTiles {
  const int* ublk;
  const unsigned* umask;
  int nu, len, t0;
  unsigned all;  // the bits of every position
  int64_t kvs;   // row stride of k and v
  __device__ int count() const { return (nu + 1) / 2; }
  // Tile i's row r: key r % 64 of union block 2i + r / 64, from g (the sequence's first row of k or v, this kv
  // head); nullptr (zeros) past the union or the sequence.
  __device__ auto rows(const uint16_t* g, int i) const {
    const SlcUnionTiles u = *this;
    return [=](int r) -> const uint16_t* {
      const int e = 2 * i + r / kSlcBlock;
      if (e >= u.nu) return nullptr;
      const int key = u.ublk[e] * kSlcBlock + r % kSlcBlock;
      return key < u.len ? g + (int64_t)key * u.kvs : nullptr;
    };
  }
  // Tile i's first key per half and whether each of this thread's rows (their positions' indices pos) chose that
  // block. Returns whether masks are needed: not where every position chose both blocks and they end before t0.
  __device__ bool masks(int i, const int (&pos)[2], int (&base)[2], bool (&chose)[2][2]) const {
    bool edge = false;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int e = 2 * i + half;
      const unsigned m = e < nu ? umask[e] : 0u;
      base[half] = e < nu ? ublk[e] * kSlcBlock : 0;
      chose[half][0] = (m >> pos[0]) & 1, chose[half][1] = (m >> pos[1]) & 1;
      edge |= m != all || base[half] + kSlcBlock - 1 > t0;
    }
    return edge;
  }
};

// Positions t0 .. t0 + np - 1 of kv head h: merges their lists (every thread takes part) into tables in shared
// memory at `scratch` (P (4 n + 1) ints).
template <int P, int NTH = 128>
__device__ SlcUnionTiles slc_union_tiles(const int32_t* block_indices, const NsaDims& a, int start, int len, int t0,
                                         int np, int h, int* scratch) {
  int *vals = scratch, *pre = vals + P * a.n, *ublk = pre + P * (a.n + 1);
  unsigned* umask = reinterpret_cast<unsigned*>(ublk + P * a.n);
  const int nu = slc_union_merge<P, NTH>(block_indices + (((int64_t)start + t0) * a.H + h) * a.n, (int64_t)a.H * a.n,
                                         np, a.n, vals, pre, ublk, umask);
  return {ublk, umask, nu, len, t0, np == 32 ? 0xffffffffu : (1u << np) - 1, (int64_t)a.H * a.D};
}

// The forwards' rows of this thread (warp 16 + lane / 4, + 8 of the 64): the index of its position among the
// block's, the position, and whether it is an output row (a position of the sequence, a head of the group).
template <int GP>
__device__ __forceinline__ void slc_thread_rows(int warp, int lane, int t0, int t_last, int G, int (&pos)[2],
                                                int (&tq)[2], bool (&valid)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * 16 + lane / 4 + 8 * i;
    pos[i] = r / GP, tq[i] = t0 + pos[i], valid[i] = tq[i] <= t_last && r % GP < G;
  }
}

// Two consecutive values stored as f32 or as bf16.
__device__ __forceinline__ void store_pair(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }
__device__ __forceinline__ void store_pair(uint16_t* p, float x, float y) { *reinterpret_cast<uint32_t*>(p) = pack_bf16(x, y); }

// The forwards' end: o = acc / l and lse = m + log l of this thread's valid rows; l summed over the row's 4
// lanes here. o goes to o_bf16 when given (the branch alone: its output, no f32 copy to cast), else to o_slc in
// f32. A row given no blocks gets o = 0, lse = -inf.
template <int GP>
__device__ __forceinline__ void slc_write_rows(const float (&acc)[kAttnDim / 2], const float (&m_run)[2],
                                               float (&l_run)[2], const bool (&valid)[2], const int (&tq)[2],
                                               float* o_slc, uint16_t* o_bf16, float* lse_slc, const NsaDims& a,
                                               int start, int h, int warp, int lane) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
    if (!valid[i]) continue;
    const int g = (warp * 16 + lane / 4 + 8 * i) % GP;
    const int64_t o = ((int64_t)start + tq[i]) * a.HQ + h * a.G + g;
    const float inv = l_run[i] > 0.f ? 1.f / l_run[i] : 0.f;
    auto write = [&](auto* out) {
#pragma unroll
      for (int j = 0; j < kAttnDim / 8; ++j) {
        const int c = j * 8 + (lane % 4) * 2;
        if (c < a.D) store_pair(out + c, acc[4 * j + 2 * i] * inv, acc[4 * j + 2 * i + 1] * inv);
      }
    };
    if (o_bf16) write(o_bf16 + o * a.D);
    else write(o_slc + o * a.D);
    if (lane % 4 == 0) lse_slc[o] = (m_run[i] + log2f(l_run[i])) / kLog2e;
  }
}

template <int P> size_t slc_wgmma_smem(int n) {
  return 1024 + 64 * 256 + 2 * kAttnKeys * 256 + (size_t)P * (4 * n + 1) * sizeof(int);
}

template <int GP>
__global__ void __launch_bounds__(128) nsa_slc_fwd_wgmma(const uint16_t* __restrict__ q,
                                                         const uint16_t* __restrict__ ks,
                                                         const uint16_t* __restrict__ vs,
                                                         const int32_t* __restrict__ block_indices,
                                                         float* __restrict__ o_slc, float* __restrict__ lse_slc,
                                                         NsaDims a) {
#if NT_SM90A
  constexpr int P = 64 / GP, NJ = kAttnKeys / 8, NO = kAttnDim / 8;
  constexpr int kQ = 64 * 2 * kAttnDim, kKV = kAttnKeys * 2 * kAttnDim;  // bytes
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Qs = smem, *Ks = Qs + kQ, *Vs = Ks + kKV;
  int* scratch = reinterpret_cast<int*>(Vs + kKV);  // the union's tables
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t0 = blockIdx.x * P;
  if (t0 >= len) return;  // block-uniform
  const int np = min(P, len - t0), t_last = t0 + np - 1;
  const int64_t qs = (int64_t)a.HQ * a.D, kvs = (int64_t)a.H * a.D;
  const uint16_t *kg = ks + (int64_t)start * kvs + h * a.D, *vg = vs + (int64_t)start * kvs + h * a.D;
  cp_rows_swizzled<64, kAttnDim, 128>(Qs, [&](int r) -> const uint16_t* {
    const int t = t0 + r / GP, g = r % GP;
    return t <= t_last && g < a.G ? q + ((int64_t)start + t) * qs + (int64_t)(h * a.G + g) * a.D : nullptr;
  }, a.D, q);
  cp_commit();
  const SlcUnionTiles u = slc_union_tiles<P>(block_indices, a, start, len, t0, np, h, scratch);
  const int ntiles = u.count();
  if (ntiles > 0) cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Ks, u.rows(kg, 0), a.D, ks);
  cp_commit();
  const uint32_t q_addr = smem_addr(Qs), k_addr = smem_addr(Ks), v_addr = smem_addr(Vs);
  const float sl2 = (float)a.scale * kLog2e;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int pos[2], tq[2];  // this thread's rows (warp 16 + lane / 4, + 8): their position's index and the position
  bool valid[2];
  slc_thread_rows<GP>(warp, lane, t0, t_last, a.G, pos, tq, valid);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float s[NJ][4], acc[NO * 4];
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) acc[i] = 0.f;
  for (int it = 0; it < ntiles; ++it) {
    cp_wait_all();
    fence_async_smem();
    __syncthreads();  // K(it) (and Q) landed, visible to wgmma; every warp is done with P V on the previous V
    cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Vs, u.rows(vg, it), a.D, vs);
    cp_commit();
    attn_qk_wgmma<64>(s, q_addr, k_addr);
    int base[2];
    bool chose[2][2];
    const bool edge = u.masks(it, pos, base, chose);
    float alpha[2];
    online_softmax<NJ>(s, edge, [&](int j, int e) {
      const int half = j / (kSlcBlock / 8), i = e >> 1;
      const int key = base[half] + (j % (kSlcBlock / 8)) * 8 + (lane % 4) * 2 + (e & 1);
      return !chose[half][i] || key > tq[i];
    }, sl2, m_run, l_run, alpha);
    cp_wait_all();
    fence_async_smem();
    __syncthreads();  // V(it) landed; every warp is done reading Ks
    if (it + 1 < ntiles) cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Ks, u.rows(kg, it + 1), a.D, ks);
    cp_commit();
    attn_pv_wgmma(acc, s, alpha, v_addr);
  }
  cp_wait_all();  // with no tiles (positions that chose no block) the Q copies are still in flight
  slc_write_rows<GP>(acc, m_run, l_run, valid, tq, o_slc, nullptr, lse_slc, a, start, h, warp, lane);
#endif
}

template <int GP>
void launch_slc_wgmma(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices, float* o_slc,
                      float* lse_slc, const NsaDims& a, int max_len, cudaStream_t stream) {
  constexpr int P = 64 / GP;
  const size_t smem = slc_wgmma_smem<P>(a.n);
  allow_smem(nsa_slc_fwd_wgmma<GP>, smem);
  const dim3 grid((unsigned)((max_len + P - 1) / P), (unsigned)a.nseq, (unsigned)a.H);
  nsa_slc_fwd_wgmma<GP><<<grid, 128, smem, stream>>>(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k_slc),
                                                     static_cast<const uint16_t*>(v_slc), block_indices, o_slc, lse_slc, a);
  NT_CUDA_CHECK(cudaGetLastError());
}

// Version 6's forward (the default where the wgmma kernels apply since 2026-12-06; the branch's forward at 64k: 35.0
// against version 4's 49.9 ms, H100): nsa_slc_fwd_wgmma's function, warp-specialized as flash_attention's version 6
// (cuda/attention_ws.cu). A block of two warpgroups owns the same 64 rows (P positions x GP heads); all 256 threads
// merge the union first, then warpgroup 0 gives its registers away and one thread issues TMA copies: Q once (one box of
// P positions x GP heads per column half), then each union block's 64 keys and values into rings of two stages.
// Warpgroup 1 walks the union one block (64 keys) per tile: S(i) is issued, then O += P(i-1) V(i-1), and the softmax of
// S(i) runs while that P V is in flight. Positions that chose no block still walk one tile (every key masked: o = 0,
// lse = -inf), so no wgmma sits under a branch. 81 KB of shared memory plus the union's tables (P (4 n + 1) ints): two
// blocks per SM while those stay under ~32 KB (e.g. n <= 63 at P = 32), else one.
constexpr int kWsStages = 2, kWsQ = 64 * 2 * 128, kWsKV = kSlcBlock * 2 * 128;
template <int P> size_t slc_ws_smem(int n) {
  return 1024 + kWsQ + 2 * kWsStages * kWsKV + (1 + 4 * kWsStages) * 8 + (size_t)P * (4 * n + 1) * sizeof(int);
}

template <int GP>
__global__ void __launch_bounds__(256, 2)
    nsa_slc_fwd_ws(const __grid_constant__ CUtensorMap mq, const __grid_constant__ CUtensorMap mk,
                   const __grid_constant__ CUtensorMap mv, const int32_t* __restrict__ block_indices,
                   float* __restrict__ o_slc, uint16_t* __restrict__ o_bf16, float* __restrict__ lse_slc, NsaDims a) {
#if NT_SM90A
  constexpr int P = 64 / GP, NJ = kSlcBlock / 8, NO = kAttnDim / 8;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // smem_align, not integer rounding: with the predicated mask below it measured 14.83 against 15.66 ms at 64k
  // (H100, 2026-12-06, same run).
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Qs = smem, *Ks = Qs + kWsQ, *Vs = Ks + kWsStages * kWsKV;
  uint64_t* q_full = reinterpret_cast<uint64_t*>(Vs + kWsStages * kWsKV);
  uint64_t *k_full = q_full + 1, *v_full = k_full + kWsStages, *k_empty = v_full + kWsStages, *v_empty = k_empty + kWsStages;
  int* scratch = reinterpret_cast<int*>(v_empty + kWsStages);  // the union's tables
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t0 = blockIdx.x * P;
  if (t0 >= len) return;  // block-uniform
  const int np = min(P, len - t0), t_last = t0 + np - 1;
  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < kWsStages; ++s)
      mbar_init(&k_full[s], 1), mbar_init(&v_full[s], 1), mbar_init(&k_empty[s], 4), mbar_init(&v_empty[s], 4);
    mbar_fence_init();
    tma_prefetch_map(&mq), tma_prefetch_map(&mk), tma_prefetch_map(&mv);
    mbar_expect_tx(q_full, kWsQ);  // Q does not depend on the union: its copy runs during the merge
    for (int half = 0; half < 2; ++half)  // rows r = (t - t0) GP + g: heads h G + g of positions t0 ..
      tma_load_3d(Qs + half * 64 * 128, &mq, q_full, half * 64, h * a.G, start + t0);
  }
  const SlcUnionTiles u = slc_union_tiles<P, 256>(block_indices, a, start, len, t0, np, h, scratch);  // syncs
  const int ntiles = max(u.nu, 1);  // one all-masked tile where no block was chosen
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<40>();  // 40 + 216: the register file of two blocks per SM
    if (threadIdx.x == 0) {
      for (int it = 0; it < ntiles; ++it) {
        const int s = it % kWsStages, row = start + (it < u.nu ? u.ublk[it] : 0) * kSlcBlock;
        const uint32_t phase = (it / kWsStages) & 1;
        mbar_wait(&k_empty[s], phase ^ 1);
        mbar_expect_tx(&k_full[s], kWsKV);
        for (int half = 0; half < 2; ++half)
          tma_load_3d(Ks + s * kWsKV + half * kSlcBlock * 128, &mk, &k_full[s], half * 64, h, row);
        mbar_wait(&v_empty[s], phase ^ 1);
        mbar_expect_tx(&v_full[s], kWsKV);
        for (int half = 0; half < 2; ++half)
          tma_load_3d(Vs + s * kWsKV + half * kSlcBlock * 128, &mv, &v_full[s], half * 64, h, row);
      }
    }
    return;
  }
  setmaxnreg_inc<216>();
  const int warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32;
  const uint32_t q_addr = smem_addr(Qs), k_addr0 = smem_addr(Ks), v_addr0 = smem_addr(Vs);
  const float sl2 = (float)a.scale * kLog2e;
  int pos[2], tq[2];  // this thread's rows (warp 16 + lane / 4, + 8): their position's index and the position
  bool valid[2];
  slc_thread_rows<GP>(warp, lane, t0, t_last, a.G, pos, tq, valid);
  auto release = [&](uint64_t* bar) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float s[NJ][4], acc[NO * 4];
  uint32_t pa[kSlcBlock / 16][4];  // P(i - 1) as bf16 A fragments of 16 keys
  float(&sf)[NJ * 4] = reinterpret_cast<float(&)[NJ * 4]>(s);
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) acc[i] = 0.f;
  auto issue_qk = [&](int st) {  // S = Q K^T, m64n64 (the first k-step overwrites)
    wgmma_fence();
    const uint32_t k_addr = k_addr0 + st * kWsKV;
#pragma unroll
    for (int kk = 0; kk < kAttnDim / 16; ++kk)
      wgmma_m64n64<0, 0>(sf, smem_desc(q_addr + (kk / 4) * (64 * 128) + (kk % 4) * 32, 16, 1024),
                         smem_desc(k_addr + (kk / 4) * (kSlcBlock * 128) + (kk % 4) * 32, 16, 1024), kk > 0);
    wgmma_commit();
  };
  auto issue_pv = [&](int st) {  // O += P V, V MN-major (16 keys = 2048 bytes on; column halves 64 x 128 apart)
    wgmma_fence();
    const uint32_t v_addr = v_addr0 + st * kWsKV;
#pragma unroll
    for (int kk = 0; kk < kSlcBlock / 16; ++kk)
      wgmma_m64n128_rs<1>(acc, pa[kk], smem_desc(v_addr + kk * 2048, kSlcBlock * 128, 1024));
    wgmma_commit();
  };
  auto softmax = [&](int it, float (&alpha)[2]) {  // block `it` of the union (none past it: all masked)
    const unsigned m = it < u.nu ? u.umask[it] : 0u;
    const int base = it < u.nu ? u.ublk[it] * kSlcBlock : 0;
    const bool chose[2] = {((m >> pos[0]) & 1) != 0, ((m >> pos[1]) & 1) != 0};
    const bool edge = m != u.all || base + kSlcBlock - 1 > t0;
    // The mask folds `edge` in with non-short-circuit operators: passed as online_softmax's `mask` argument, the
    // PTX branched on it for every score once the shared-memory base went through smem_align (228 basic blocks
    // against 132; 21.3 against 14.8 ms at 64k, H100); as predicates it selects with either base.
    online_softmax<NJ>(s, true, [&](int j, int e) {
      const int i = e >> 1, key = base + j * 8 + (lane % 4) * 2 + (e & 1);
      return edge & (!chose[i] | (key > tq[i]));
    }, sl2, m_run, l_run, alpha);
  };
  auto to_pa = [&] {
#pragma unroll
    for (int kk = 0; kk < kSlcBlock / 16; ++kk) acc_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
  };
  mbar_wait(q_full, 0);
  mbar_wait(&k_full[0], 0);
  issue_qk(0);
  wgmma_wait<0>();
  fence_regs(sf);
  release(&k_empty[0]);
  {
    float alpha[2];
    softmax(0, alpha);  // O is still zero
    to_pa();
  }
  for (int it = 1; it < ntiles; ++it) {
    const int st = it % kWsStages, sp = (it - 1) % kWsStages;
    mbar_wait(&k_full[st], (it / kWsStages) & 1);
    issue_qk(st);
    mbar_wait(&v_full[sp], ((it - 1) / kWsStages) & 1);
    issue_pv(sp);
    wgmma_wait<1>();
    fence_regs(sf);
    release(&k_empty[st]);
    float alpha[2];
    softmax(it, alpha);
    wgmma_wait<0>();
    fence_regs(acc);
    fence_regs(reinterpret_cast<uint32_t(&)[kSlcBlock / 4]>(pa));
    release(&v_empty[sp]);
#pragma unroll
    for (int j = 0; j < NO; ++j)
      acc[4 * j] *= alpha[0], acc[4 * j + 1] *= alpha[0], acc[4 * j + 2] *= alpha[1], acc[4 * j + 3] *= alpha[1];
    to_pa();
  }
  const int last = (ntiles - 1) % kWsStages;
  mbar_wait(&v_full[last], ((ntiles - 1) / kWsStages) & 1);
  issue_pv(last);
  wgmma_wait<0>();
  fence_regs(acc);
  release(&v_empty[last]);
  slc_write_rows<GP>(acc, m_run, l_run, valid, tq, o_slc, o_bf16, lse_slc, a, start, h, warp, lane);
#endif
}

template <int GP>
void launch_slc_ws(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices, float* o_slc,
                   uint16_t* o_bf16, float* lse_slc, const NsaDims& a, int max_len, cudaStream_t stream) {
  constexpr int P = 64 / GP;
  // q [N, HQ, D] as (D, HQ, N), boxes of 64 dims x GP heads x P positions; k, v [N, H, D] as (D, H, N), 64 rows.
  const uint64_t qd[3] = {(uint64_t)a.D, (uint64_t)a.HQ, (uint64_t)a.N}, qst[2] = {(uint64_t)a.D * 2, (uint64_t)a.HQ * a.D * 2};
  const uint64_t kd[3] = {(uint64_t)a.D, (uint64_t)a.H, (uint64_t)a.N}, kst[2] = {(uint64_t)a.D * 2, (uint64_t)a.H * a.D * 2};
  const uint32_t qbox[3] = {64, (uint32_t)GP, (uint32_t)P}, kbox[3] = {64, 1, (uint32_t)kSlcBlock};
  const CUtensorMap mq = tensor_map_bf16(q, 3, qd, qst, qbox), mk = tensor_map_bf16(k_slc, 3, kd, kst, kbox),
                    mv = tensor_map_bf16(v_slc, 3, kd, kst, kbox);
  const size_t smem = slc_ws_smem<P>(a.n);
  allow_smem(nsa_slc_fwd_ws<GP>, smem);
  const dim3 grid((unsigned)((max_len + P - 1) / P), (unsigned)a.nseq, (unsigned)a.H);
  nsa_slc_fwd_ws<GP><<<grid, 256, smem, stream>>>(mq, mk, mv, block_indices, o_slc, o_bf16, lse_slc, a);
  NT_CUDA_CHECK(cudaGetLastError());
}

// The backward's first step (nsa_selected_backward_tc's dq, version 3): the same blocks, rows and walk as the
// forward, with dout's rows next to q's: S = Q K^T and dP = dO V^T by wgmma from shared memory, P = exp(scale S -
// lse), dS = P (dP - delta), dq += dS K with dS from registers and K read MN-major (as V in the forward); delta =
// rowsum(dout o) is computed first and written out for the key-centric step. V of tile i + 1 loads during dS and
// dq of tile i, K of tile i + 1 after them.
template <int P> size_t slc_dq_wgmma_smem(int n) {
  return 1024 + 2 * 64 * 256 + 2 * kAttnKeys * 256 + 64 * sizeof(float) + (size_t)P * (4 * n + 1) * sizeof(int);
}

template <int GP>
__global__ void __launch_bounds__(128) nsa_slc_bwd_dq_wgmma(
    const uint16_t* __restrict__ q, const uint16_t* __restrict__ ks, const uint16_t* __restrict__ vs,
    const int32_t* __restrict__ block_indices, const float* __restrict__ o_slc, const float* __restrict__ lse_slc,
    const uint16_t* __restrict__ dout, uint16_t* __restrict__ dq, float* __restrict__ delta, NsaDims a) {
#if NT_SM90A
  constexpr int P = 64 / GP, NJ = kAttnKeys / 8, NO = kAttnDim / 8;
  constexpr int kQ = 64 * 2 * kAttnDim, kKV = kAttnKeys * 2 * kAttnDim;  // bytes
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Qs = smem, *dOs = Qs + kQ, *Ks = dOs + kQ, *Vs = Ks + kKV;
  float* dl = reinterpret_cast<float*>(Vs + kKV);
  int* scratch = reinterpret_cast<int*>(dl + 64);  // the union's tables
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t0 = blockIdx.x * P;
  if (t0 >= len) return;  // block-uniform
  const int np = min(P, len - t0), t_last = t0 + np - 1;
  const int64_t kvs = (int64_t)a.H * a.D;
  const uint16_t *kg = ks + (int64_t)start * kvs + h * a.D, *vg = vs + (int64_t)start * kvs + h * a.D;
  auto row_of = [&](int r) -> int64_t {  // tile row r's row of [N HQ, D], -1 for padding
    const int t = t0 + r / GP, g = r % GP;
    return t <= t_last && g < a.G ? ((int64_t)start + t) * a.HQ + h * a.G + g : -1;
  };
  cp_rows_swizzled<64, kAttnDim, 128>(Qs, [&](int r) -> const uint16_t* {
    const int64_t o = row_of(r);
    return o >= 0 ? q + o * a.D : nullptr;
  }, a.D, q);
  cp_rows_swizzled<64, kAttnDim, 128>(dOs, [&](int r) -> const uint16_t* {
    const int64_t o = row_of(r);
    return o >= 0 ? dout + o * a.D : nullptr;
  }, a.D, dout);
  cp_commit();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int rr = 0; rr < 16; ++rr) {  // delta of the warp's 16 rows
    const int r = warp * 16 + rr;
    const int64_t o = row_of(r);
    const float sum = o >= 0 ? slc_row_delta(o_slc + o * a.D, dout + o * a.D, a.D, lane) : 0.f;
    if (lane == 0) {
      dl[r] = sum;
      if (o >= 0) delta[o] = sum;
    }
  }
  // (the merge's barriers also publish dl)
  const SlcUnionTiles u = slc_union_tiles<P>(block_indices, a, start, len, t0, np, h, scratch);
  const int ntiles = u.count();
  if (ntiles > 0) {
    cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Ks, u.rows(kg, 0), a.D, ks);
    cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Vs, u.rows(vg, 0), a.D, vs);
  }
  cp_commit();
  const uint32_t q_addr = smem_addr(Qs), do_addr = smem_addr(dOs), k_addr = smem_addr(Ks), v_addr = smem_addr(Vs);
  const float sl2 = (float)a.scale * kLog2e;
  int pos[2], tq[2];
  float lse2[2], dlt[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * 16 + lane / 4 + 8 * i;
    const int64_t o = row_of(r);
    pos[i] = r / GP, tq[i] = t0 + pos[i];
    lse2[i] = o >= 0 ? lse_slc[o] * kLog2e : INFINITY;  // padding rows: p = 0
    dlt[i] = dl[r];
  }
  const float one[2] = {1.f, 1.f};
  float acc[NO * 4];
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) acc[i] = 0.f;
  for (int it = 0; it < ntiles; ++it) {
    cp_wait_all();
    fence_async_smem();
    __syncthreads();  // K(it), V(it) (and Q, dO) landed, visible to wgmma
    float s[NJ][4], dp[NJ][4];
    attn_qk_wgmma<64>(s, q_addr, k_addr);
    attn_qk_wgmma<64>(dp, do_addr, v_addr);
    __syncthreads();  // every warp is done reading Vs
    if (it + 1 < ntiles) cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Vs, u.rows(vg, it + 1), a.D, vs);
    cp_commit();
    int base[2];
    bool chose[2][2];
    const bool edge = u.masks(it, pos, base, chose);
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int half = j / (kSlcBlock / 8), i = e >> 1;
        const int key = base[half] + (j % (kSlcBlock / 8)) * 8 + (lane % 4) * 2 + (e & 1);
        const bool ok = !edge || (chose[half][i] && key <= tq[i]);
        const float p = ok ? ex2(fmaf(s[j][e], sl2, -lse2[i])) : 0.f;
        s[j][e] = p * (dp[j][e] - dlt[i]);  // dS
      }
    attn_pv_wgmma(acc, s, one, k_addr);  // dq += dS K
    __syncthreads();                     // every warp is done reading Ks
    if (it + 1 < ntiles) cp_rows_swizzled<kAttnKeys, kAttnDim, 128>(Ks, u.rows(kg, it + 1), a.D, ks);
    cp_commit();
  }
  cp_wait_all();  // with no tiles the Q and dO copies are still in flight
  const float sc = (float)a.scale;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t o = row_of(warp * 16 + lane / 4 + 8 * i);
    if (o < 0) continue;
    uint16_t* out = dq + o * a.D;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      const int c = j * 8 + (lane % 4) * 2;
      if (c < a.D) *reinterpret_cast<uint32_t*>(out + c) = pack_bf16(acc[4 * j + 2 * i] * sc, acc[4 * j + 2 * i + 1] * sc);
    }
  }
#endif
}

template <int GP>
void launch_slc_dq_wgmma(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                         const float* o_slc, const float* lse_slc, const void* dout, void* dq, float* delta,
                         const NsaDims& a, int max_len, cudaStream_t stream) {
  constexpr int P = 64 / GP;
  const size_t smem = slc_dq_wgmma_smem<P>(a.n);
  allow_smem(nsa_slc_bwd_dq_wgmma<GP>, smem);
  const dim3 grid((unsigned)((max_len + P - 1) / P), (unsigned)a.nseq, (unsigned)a.H);
  auto u16 = [](const void* p) { return static_cast<const uint16_t*>(p); };
  nsa_slc_bwd_dq_wgmma<GP><<<grid, 128, smem, stream>>>(u16(q), u16(k_slc), u16(v_slc), block_indices, o_slc, lse_slc,
                                                        u16(dout), static_cast<uint16_t*>(dq), delta, a);
  NT_CUDA_CHECK(cudaGetLastError());
}

// The block-major walk of the backward (versions 3, 4): one warpgroup per piece (the positions of one chunk that chose
// one (kv head, block), cuda/nsa_selected.cuh) holds the block's 64 keys and values as the 64 rows of every product and streams the
// piece's rows in tiles of 64 (64 / G positions x G heads, two cp.async stages), S^T = K Q^T by wgmma m64n64 from
// shared memory, masked key <= position. What it does with S^T, by mode:
//   kWalkDkv (the backward, version 3): dP^T = V dO^T, P^T, dS^T = P^T (dP^T - delta), dV += P^T dO and
//     dK += dS^T Q (P^T, dS^T from registers, dO and Q read MN-major); dk, dv go into f32 accumulators at the end
//     (float2 atomics). The mma.sync kernel ran at ~170 TFLOP/s (H100, 2026-12-06); here the block's keys fill
//     wgmma's 64 rows and the measured rate was 210.
//   kWalkDkvDq (version 4, the default): the same, and dq as attn_bwd_wgmma computes it: dS^T to shared memory
//     (bf16, keys as rows), dQ = dS K (m64n64 per 64 columns, both operands MN-major) added to an f32 [N, HQ, D]
//     buffer with 16-byte reductions, once per (row, chosen block): no separate dq kernel re-walking every row's
//     blocks, at the price of N HQ n D / 4 reductions (~2.1 G at 64k, 64 query heads, n = 16). H100, 2026-12-06,
//     bench_nsa 64k: this kernel 43.8 ms against version 3's dq + dk/dv 42.5 + 22.5 ms.
// (A block-major forward over the same pieces, two passes: per-(row, block) max and sum, then O = P V with
// reductions, was tried as version 5: 17.7 + 42.1 ms against the union walk's 31.3; removed.)
// The pieces are cut for the mma.sync kernel's 32-row tiles (64 x 32 / G positions), so at G = 16 a piece is 32 of
// these tiles; where G does not divide 64 (G = 3: 63 rows) or a piece's length is not a multiple of 64 / G, the
// last tile or rows are padding.
constexpr int kDkvRows = 64;

// P^T or dS^T (this thread's keys 16 warp + lane / 4 (+ 8), tile rows 8j + 2 (lane % 4) (+ 1)) into rs (bf16, keys
// as rows, the 128-byte swizzle), then out[row, :] += sc P V (or dS K: b_addr is V's or K's tile) for the tile's 64
// rows, column halves of 64 one after the other (32 accumulators each). orow: each tile row's row of [N HQ] (int
// bits, -1 for padding). Ends with every wgmma done reading rs.
__device__ __forceinline__ void slc_rows_times_block(const float (&pt)[kDkvRows / 8][4], unsigned char* rs,
                                                     uint32_t b_addr, const float* orow, float* out, float sc,
                                                     const NsaDims& a, int warp, int lane) {
#if NT_SM90A  // float4 atomics exist from sm_90 on
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * 16 + lane / 4 + 8 * i;  // a key of the block: a row of P^T
#pragma unroll
    for (int j = 0; j < kDkvRows / 8; ++j)  // tile rows j 8 + (lane % 4) 2, + 1: 4 bytes of 16-byte chunk j
      *reinterpret_cast<uint32_t*>(rs + r * 128 + ((j ^ (r % 8)) << 4) + (lane % 4) * 4) =
          pack_bf16(pt[j][2 * i], pt[j][2 * i + 1]);
  }
  fence_async_smem();
  __syncthreads();  // P^T complete and visible to wgmma
  const uint32_t rs_addr = smem_addr(rs);
  const int o = __float_as_int(orow[warp * 16 + lane / 4 + ((lane & 1) ? 8 : 0)]);  // this lane's row (red_add_m64n64)
#pragma unroll
  for (int half = 0; half < kAttnDim / 64; ++half) {
    if (half * 64 >= a.D) break;  // uniform
    float acc[8][4];  // A = P (64 rows x 64 keys), B = the block's column half
    attn_mn_m64n64<kSlcBlock>(acc, rs_addr, b_addr + half * (kSlcBlock * 128), kSlcBlock * 128);
    red_add_m64n64(acc, o >= 0 ? out + (int64_t)o * a.D : nullptr, half * 64, a.D, sc, lane);
  }
#endif
}

template <int kMode>
constexpr int walk_meta() { return kMode == kWalkDkv ? 3 : 4; }

template <int kMode>
size_t slc_walk_smem() {
  return 1024 + 2 * kSlcBlock * 256 + 2 * 2 * kDkvRows * 256 + (kMode == kWalkDkvDq ? kSlcBlock * 128 : 0) +
         2 * walk_meta<kMode>() * kDkvRows * sizeof(float);
}

template <int kMode>
__global__ void __launch_bounds__(128) nsa_slc_walk_wgmma(SlcWalkArgs w, NsaDims a, int per_piece) {
#if NT_SM90A
  constexpr int NO = kAttnDim / 8, kT = kDkvRows * 2 * kAttnDim;  // a 64-row tile's bytes
  constexpr int kStage = 2 * kT, kMeta = walk_meta<kMode>();
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Ks = smem, *Vs = Ks + kT, *stage0 = Vs + kT;  // per stage: Q rows, then dout rows
  unsigned char* rs = stage0 + 2 * kStage;  // kWalkDkvDq: dS^T, 64 keys x 64 rows (1024-aligned)
  // per stage and row: position (int bits), lse log2 e, delta, and in kWalkDkvDq the row of [N HQ] (int bits; -1
  // for padding)
  float* meta0 = reinterpret_cast<float*>(rs + (kMode == kWalkDkvDq ? kSlcBlock * 128 : 0));
  const int G = a.G, ppt = kDkvRows / G, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t kvs = (int64_t)a.H * a.D;
  // One piece after another, gridDim.x apart: the launch is either one thread block per piece or fewer, each taking
  // several (set_nsa_selected_walk_blocks). Each piece ends with a barrier (and its wgmma waited for), so the next
  // one may refill K, V and the stages.
  SlcPiece pc;
  for (int p = blockIdx.x; slc_piece(p, w.seg_off, w.piece_off, w.piece_seg, w.nch, a, per_piece, pc);
       p += gridDim.x) {
    auto key_rows = [&](const uint16_t* g) {
      return [=](int r) -> const uint16_t* {
        return r < pc.nk ? g + ((int64_t)pc.start + pc.key0 + r) * kvs + pc.h * a.D : nullptr;
      };
    };
    cp_rows_swizzled<kSlcBlock, kAttnDim, 128>(Ks, key_rows(w.ks), a.D, w.ks);
    cp_rows_swizzled<kSlcBlock, kAttnDim, 128>(Vs, key_rows(w.vs), a.D, w.vs);
    // Tile e (positions e .. e + ppt - 1 of the piece, G heads each) into stage st.
    auto load_tile = [&](int st, int e) {
      auto head_row = [&](int r) -> int64_t {  // tile row r's row of [N HQ, D], -1 for padding
        const int pos = e + r / G;
        return r < ppt * G && pos < pc.e1 ? (int64_t)w.rows[pos] * a.HQ + pc.h * G + r % G : -1;
      };
      unsigned char* Qs = stage0 + st * kStage;
      cp_rows_swizzled<kDkvRows, kAttnDim, 128>(Qs, [&](int r) -> const uint16_t* {
        const int64_t o = head_row(r);
        return o >= 0 ? w.q + o * a.D : nullptr;
      }, a.D, w.q);
      cp_rows_swizzled<kDkvRows, kAttnDim, 128>(Qs + kT, [&](int r) -> const uint16_t* {
        const int64_t o = head_row(r);
        return o >= 0 ? w.dout + o * a.D : nullptr;
      }, a.D, w.dout);
      float* meta = meta0 + st * kMeta * kDkvRows;
      for (int r = threadIdx.x; r < kDkvRows; r += 128) {
        const int64_t o = head_row(r);
        meta[r] = __int_as_float(o >= 0 ? w.rows[e + r / G] - pc.start : -1);  // the row's position in its sequence
        meta[kDkvRows + r] = o >= 0 ? w.lse[o] * kLog2e : 0.f;
        meta[2 * kDkvRows + r] = o >= 0 ? w.delta[o] : 0.f;
        if constexpr (kMode == kWalkDkvDq) meta[3 * kDkvRows + r] = __int_as_float((int)o);
      }
    };
    const float sl2 = (float)a.scale * kLog2e, one[2] = {1.f, 1.f};
    float dk[NO * 4], dv[NO * 4];
#pragma unroll
    for (int i = 0; i < NO * 4; ++i) dk[i] = dv[i] = 0.f;
    load_tile(0, pc.e0);
    cp_commit();
    int st = 0;
    for (int e = pc.e0; e < pc.e1; e += ppt, st ^= 1) {
      if (e + ppt < pc.e1) load_tile(st ^ 1, e + ppt);  // that stage was released by the last iteration's barrier
      cp_commit();
      cp_async_wait<1>();  // this tile's group (and K, V) landed
      fence_async_smem();
      __syncthreads();
      const uint32_t q_addr = smem_addr(stage0 + st * kStage), do_addr = q_addr + kT;
      const float* meta = meta0 + st * kMeta * kDkvRows;
      float s[kDkvRows / 8][4];
      attn_qk_wgmma<kSlcBlock, kDkvRows>(s, smem_addr(Ks), q_addr);  // S^T: 64 keys x 64 rows
      float dp[kDkvRows / 8][4];
      attn_qk_wgmma<kSlcBlock, kDkvRows>(dp, smem_addr(Vs), do_addr);  // dP^T
#pragma unroll
      for (int j = 0; j < kDkvRows / 8; ++j)
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const int key = pc.key0 + 16 * warp + lane / 4 + 8 * (x >> 1), col = j * 8 + (lane % 4) * 2 + (x & 1);
          const float pr = key <= __float_as_int(meta[col]) ? ex2(fmaf(s[j][x], sl2, -meta[kDkvRows + col])) : 0.f;
          s[j][x] = pr;
          dp[j][x] = pr * (dp[j][x] - meta[2 * kDkvRows + col]);  // dS^T
        }
      attn_pv_wgmma<kDkvRows>(dv, s, one, do_addr);  // dV += P^T dO
      attn_pv_wgmma<kDkvRows>(dk, dp, one, q_addr);  // dK += dS^T Q
      if constexpr (kMode == kWalkDkvDq)  // dQ += scale dS K
        slc_rows_times_block(dp, rs, smem_addr(Ks), meta + 3 * kDkvRows, w.row_acc, (float)a.scale, a, warp, lane);
      __syncthreads();  // every warp is done with stage st (and rs) before it is refilled
    }
    const float sc = (float)a.scale;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int key = 16 * warp + lane / 4 + 8 * i;
      if (key >= pc.nk) continue;
      const int64_t base = ((int64_t)pc.start + pc.key0 + key) * kvs + pc.h * a.D;
#pragma unroll
      for (int j = 0; j < NO; ++j) {
        const int c = j * 8 + (lane % 4) * 2;
        if (c >= a.D) continue;
        atomicAdd(reinterpret_cast<float2*>(w.dk_acc + base + c),
                  make_float2(dk[4 * j + 2 * i] * sc, dk[4 * j + 2 * i + 1] * sc));
        atomicAdd(reinterpret_cast<float2*>(w.dv_acc + base + c),
                  make_float2(dv[4 * j + 2 * i], dv[4 * j + 2 * i + 1]));
      }
    }
  }
#endif
}

bool slc_wgmma_applies(const NsaDims& a) {
  if (a.lp != kSlcBlock || a.D > kAttnDim || a.D % 8 != 0 || a.G < 2 || a.G > 16 || a.n < 1) return false;
  if (slc_dq_wgmma_smem<32>(a.n) > 200 * 1024) return false;
  int device = 0;
  NT_CUDA_CHECK(cudaGetDevice(&device));
  return sm90a_available(device);
}
}  // namespace

bool nsa_selected_forward_wgmma(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                                float* o_slc, float* lse_slc, const NsaDims& a, int max_len, cudaStream_t stream) {
  if (!slc_wgmma_applies(a)) return false;
  if (a.N == 0 || max_len == 0) return true;
  if (a.G <= 2) launch_slc_wgmma<2>(q, k_slc, v_slc, block_indices, o_slc, lse_slc, a, max_len, stream);
  else if (a.G <= 4) launch_slc_wgmma<4>(q, k_slc, v_slc, block_indices, o_slc, lse_slc, a, max_len, stream);
  else if (a.G <= 8) launch_slc_wgmma<8>(q, k_slc, v_slc, block_indices, o_slc, lse_slc, a, max_len, stream);
  else launch_slc_wgmma<16>(q, k_slc, v_slc, block_indices, o_slc, lse_slc, a, max_len, stream);
  return true;
}

bool nsa_selected_forward_ws(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                             float* o_slc, void* o_bf16, float* lse_slc, const NsaDims& a, int max_len,
                             cudaStream_t stream) {
  if (!slc_wgmma_applies(a)) return false;
  if (a.N == 0 || max_len == 0) return true;
  uint16_t* ob = static_cast<uint16_t*>(o_bf16);
  if (a.G <= 2) launch_slc_ws<2>(q, k_slc, v_slc, block_indices, o_slc, ob, lse_slc, a, max_len, stream);
  else if (a.G <= 4) launch_slc_ws<4>(q, k_slc, v_slc, block_indices, o_slc, ob, lse_slc, a, max_len, stream);
  else if (a.G <= 8) launch_slc_ws<8>(q, k_slc, v_slc, block_indices, o_slc, ob, lse_slc, a, max_len, stream);
  else launch_slc_ws<16>(q, k_slc, v_slc, block_indices, o_slc, ob, lse_slc, a, max_len, stream);
  return true;
}

bool nsa_selected_dq_wgmma(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                           const float* o_slc, const float* lse_slc, const void* dout, void* dq, float* delta,
                           const NsaDims& a, int max_len, cudaStream_t stream) {
  if (!slc_wgmma_applies(a)) return false;
  if (a.N == 0 || max_len == 0) return true;
  auto run = [&](auto launch) { launch(q, k_slc, v_slc, block_indices, o_slc, lse_slc, dout, dq, delta, a, max_len, stream); };
  if (a.G <= 2) run(launch_slc_dq_wgmma<2>);
  else if (a.G <= 4) run(launch_slc_dq_wgmma<4>);
  else if (a.G <= 8) run(launch_slc_dq_wgmma<8>);
  else run(launch_slc_dq_wgmma<16>);
  return true;
}
bool nsa_selected_wgmma_applies(const NsaDims& a) { return slc_wgmma_applies(a); }

bool nsa_selected_walk_wgmma(int mode, const SlcWalkArgs& w, const NsaDims& a, int per_piece, int64_t grid,
                             int blocks, cudaStream_t stream) {
  if (!slc_wgmma_applies(a)) return false;
  if (grid == 0) return true;
  auto run = [&](auto kernel, size_t smem) {
    allow_smem(kernel, smem);
    if (blocks < 0) {  // as many as run at once
      int device = 0, per_sm = 0;
      NT_CUDA_CHECK(cudaGetDevice(&device));
      const int sms = multiprocessor_count(device);
      NT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, smem));
      blocks = std::max(per_sm, 1) * sms;
    }
    if (blocks > 0) grid = std::min<int64_t>(grid, blocks);
    kernel<<<(unsigned)grid, 128, smem, stream>>>(w, a, per_piece);
    NT_CUDA_CHECK(cudaGetLastError());
  };
  switch (mode) {
    case kWalkDkv: run(nsa_slc_walk_wgmma<kWalkDkv>, slc_walk_smem<kWalkDkv>()); break;
    case kWalkDkvDq: run(nsa_slc_walk_wgmma<kWalkDkvDq>, slc_walk_smem<kWalkDkvDq>()); break;
    default: throw std::logic_error("nsa_selected_walk_wgmma: unknown mode " + std::to_string(mode));
  }
  return true;
}
}  // namespace nt::cuda
