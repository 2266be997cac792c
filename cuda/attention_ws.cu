// flash_attention on Hopper with warp specialization: the forward (kernel versions 6 and 7) and, further down, the
// backward (version 7). TMA loads by a producer warp, two consumer warpgroups, each overlapping its own work.
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

#include <algorithm>
#include <cstdint>
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
constexpr size_t kSmem = 1024 + 2 * kQBytes + 2 * kStages * kKVBytes + (2 + 4 * kStages) * 8;

// kPingPong (set_attention_fwd_pingpong; FlashAttention-3's inter-warpgroup schedule): the two consumers take turns
// issuing their wgmmas (named barriers 3 and 4, consumer 0 first), so one's softmax runs while the other's products
// hold the tensor cores, instead of both issuing at once and then both computing exponentials.
// Tiles (128 queries of one head) are numbered in launch order (grid_coords' order over a grid of ceil(max_len /
// 128) x nseq x H); block b takes one tile per round of gridDim.x tiles (fwd_round_tile; set_attention_fwd_blocks:
// one block per SM, or one per tile). Across a block's tiles the ring's stages and phases run on, and Q has its own empty barrier: the
// producer loads the next tile's Q once both consumers' last S has landed, and its first K and V while the
// consumers finish their last P V and write their rows, so a tile's start and end no longer leave the SM idle.
struct FwdTile {
  int seq, h, m0, start, len;
};
__device__ __forceinline__ bool fwd_tile(const AttentionDims& a, int64_t L, FwdTile& t) {
  const unsigned ntx = (unsigned)((a.max_len + kRows - 1) / kRows);
  const uint3 g = launch_coords((uint64_t)L, make_uint3(ntx, (unsigned)a.nseq, (unsigned)a.H), a.x_slowest);
  t.seq = (int)g.y, t.h = (int)g.z, t.m0 = (int)(ntx - 1 - g.x) * kRows;  // the longest walks first
  t.start = a.cu_seqlens[t.seq], t.len = a.cu_seqlens[t.seq + 1] - t.start;
  return t.m0 < t.len;
}
// This block's tile in round k (rounds of gridDim.x tiles in launch order): position blockIdx.x of the round, or
// with a.fwd_alternate from the back in odd rounds, so that block 0 does not take the longest tile of every round
// of a longest-first grid. Increases with k: once past total, every later round is too.
__device__ __forceinline__ int64_t fwd_round_tile(const AttentionDims& a, int64_t k) {
  const int64_t g = gridDim.x, b = blockIdx.x;
  return k * g + (a.fwd_alternate && (k & 1) ? g - 1 - b : b);
}
// The first round at or after k whose tile has queries (that tile in t); a round past the last tile when none is left.
__device__ __forceinline__ int64_t fwd_next_tile(const AttentionDims& a, int64_t k, int64_t total, FwdTile& t) {
  for (; fwd_round_tile(a, k) < total; ++k)
    if (fwd_tile(a, fwd_round_tile(a, k), t)) return k;
  return k;
}
template <bool kPingPong>
__global__ void __launch_bounds__(384, 1)
    attn_fwd_ws(const __grid_constant__ CUtensorMap mq, const __grid_constant__ CUtensorMap mk,
                const __grid_constant__ CUtensorMap mv, uint16_t* __restrict__ o, float* __restrict__ lse,
                AttentionDims a) {
#if NT_SM90A
  constexpr int NJ = kKeys / 8, NO = kAttnDim / 8;  // accumulator n-tiles of 8 columns: S (keys) and O (head dims)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Qs = smem, *Ks = Qs + 2 * kQBytes, *Vs = Ks + kStages * kKVBytes;
  uint64_t* q_full = reinterpret_cast<uint64_t*>(Vs + kStages * kKVBytes);
  uint64_t *q_empty = q_full + 1, *k_full = q_empty + 1, *v_full = k_full + kStages, *k_empty = v_full + kStages,
           *v_empty = k_empty + kStages;
  const int64_t total = (int64_t)((a.max_len + kRows - 1) / kRows) * a.nseq * a.H;
  FwdTile t;
  int64_t k = fwd_next_tile(a, 0, total, t);  // this block's round
  if (fwd_round_tile(a, k) >= total) return;   // the whole block, before any barrier
  auto key_range = [&](const FwdTile& u, int& n_lo, int& n_tiles) {
    const int first = a.window > 0 ? max(0, u.m0 - a.window + 1) : 0;
    const int n_hi = min(u.len, u.m0 + kRows);
    n_lo = first / kKeys * kKeys, n_tiles = (n_hi - n_lo + kKeys - 1) / kKeys;
  };
  if (threadIdx.x == 0) {
    mbar_init(q_full, 1), mbar_init(q_empty, 8);
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
      uint32_t kv = 0;  // key tiles so far, over all this block's tiles (unsigned: kStages divides 2^32 if it wraps)
      for (int jt = 0; fwd_round_tile(a, k) < total; k = fwd_next_tile(a, k + 1, total, t), ++jt) {
        const int hk = t.h / (a.H / a.Hkv);
        int n_lo, n_tiles;
        key_range(t, n_lo, n_tiles);
        mbar_wait(q_empty, (jt & 1) ^ 1);  // both consumers' last S of the previous tile has landed
        mbar_expect_tx(q_full, 2 * kQBytes);
        for (int c = 0; c < 2; ++c)
          for (int half = 0; half < 2; ++half)
            tma_load_3d(Qs + c * kQBytes + half * kRowsWG * 128, &mq, q_full, half * 64, t.h, t.start + t.m0 + c * kRowsWG);
        for (int it = 0; it < n_tiles; ++it, ++kv) {
          const int s = kv % kStages, n0 = n_lo + it * kKeys;
          const uint32_t phase = (kv / kStages) & 1;
          mbar_wait(&k_empty[s], phase ^ 1);
          mbar_expect_tx(&k_full[s], kKVBytes);
          for (int half = 0; half < 2; ++half)
            tma_load_3d(Ks + s * kKVBytes + half * kKeys * 128, &mk, &k_full[s], half * 64, hk, t.start + n0);
          mbar_wait(&v_empty[s], phase ^ 1);
          mbar_expect_tx(&v_full[s], kKVBytes);
          for (int half = 0; half < 2; ++half)
            tma_load_3d(Vs + s * kKVBytes + half * kKeys * 128, &mv, &v_full[s], half * 64, hk, t.start + n0);
        }
      }
    }
    return;
  }
  setmaxnreg_inc<240>();
  const int c = wg - 1, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32;
  const uint32_t q_addr = smem_addr(Qs + c * kQBytes), k_addr0 = smem_addr(Ks), v_addr0 = smem_addr(Vs);
  const float sl2 = a.scale * kLog2e;
  auto release = [&](uint64_t* bar) {  // this warp is done reading the stage
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };
  float s[NJ][4], acc[NO * 4];   // s[j][e], acc[4 j + e]: mma.sync's C layout per 8-column n-tile j
  uint32_t pa[kKeys / 16][4];    // P(n - 1) as bf16 A fragments of 16 keys each
  float(&sf)[NJ * 4] = reinterpret_cast<float(&)[NJ * 4]>(s);
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
  auto to_pa = [&] {
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) acc_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
  };
  // Every tile of the block's range is multiplied by both consumers, also where a consumer's rows see none of its
  // keys (the masks zero them; with a window or past the sequence's end that wastes a few tiles): a wgmma under a
  // condition would make ptxas serialize them all (warning C7520), losing the overlap.
  // The turns: wait for mine before issuing, pass it on after. Each consumer issues n_tiles + 1 times per tile;
  // consumer 1 passes its block's last turn to no one (consumer 0 waits once more than consumer 1 arrives, the
  // first turn given by the arrival below).
  auto turn_wait = [&] {
    if constexpr (kPingPong) named_barrier(3 + c, 256);
  };
  auto turn_pass = [&](bool last) {
    if constexpr (kPingPong)
      if (!(last && c == 1)) named_barrier_arrive(3 + (c ^ 1), 256);
  };
  if (kPingPong && c == 1) named_barrier_arrive(3, 256);  // consumer 0 goes first
  uint32_t kv = 0;
  for (int jt = 0; fwd_round_tile(a, k) < total; ++jt) {
    FwdTile nt = t;
    const int64_t k_next = fwd_next_tile(a, k + 1, total, nt);
    const bool last_tile = fwd_round_tile(a, k_next) >= total;
    int n_lo, n_tiles;
    key_range(t, n_lo, n_tiles);
    const int len = t.len;
    const int wm0 = t.m0 + c * kRowsWG, wrow = wm0 + warp * 16, row0 = wrow + lane / 4;  // rows row0, row0 + 8
    // The online softmax of the tile at n0 in s (alpha: the factor for what O holds so far).
    auto softmax = [&](int n0, float (&alpha)[2], float (&m_run)[2], float (&l_run)[2]) {
      const bool edge = n0 + kKeys - 1 > wrow || n0 + kKeys > len || (a.window > 0 && n0 <= wrow + 15 - a.window);
      online_softmax<NJ>(s, edge, [&](int j, int e) {
        const int kp = n0 + j * 8 + (lane % 4) * 2 + (e & 1), qp = row0 + (e >> 1) * 8;
        return kp > qp || kp >= len || (a.window > 0 && kp <= qp - a.window);
      }, sl2, m_run, l_run, alpha);
    };
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < NO * 4; ++i) acc[i] = 0.f;
    mbar_wait(q_full, jt & 1);
    {
      const int st = kv % kStages;
      mbar_wait(&k_full[st], (kv / kStages) & 1);
      turn_wait();
      issue_qk(st);
      turn_pass(false);
      wgmma_wait<0>();
      fence_regs(sf);
      release(&k_empty[st]);
      if (n_tiles == 1) release(q_empty);
      float alpha[2];
      softmax(n_lo, alpha, m_run, l_run);  // O is still zero: alpha has nothing to scale
      to_pa();
    }
    for (int it = 1; it < n_tiles; ++it) {
      const int st = (kv + it) % kStages, sp = (kv + it - 1) % kStages, n0 = n_lo + it * kKeys;
      mbar_wait(&k_full[st], ((kv + it) / kStages) & 1);
      if constexpr (kPingPong) {  // both products in one turn
        mbar_wait(&v_full[sp], ((kv + it - 1) / kStages) & 1);
        turn_wait();
        issue_qk(st);
        issue_pv(sp);
        turn_pass(false);
      } else {  // S(n) issued while V(n - 1) may still be arriving
        issue_qk(st);
        mbar_wait(&v_full[sp], ((kv + it - 1) / kStages) & 1);
        issue_pv(sp);
      }
      wgmma_wait<1>();  // S(n) is done, P V still in flight
      fence_regs(sf);
      release(&k_empty[st]);
      if (it == n_tiles - 1) release(q_empty);  // the producer may load the next tile's Q
      float alpha[2];
      softmax(n0, alpha, m_run, l_run);
      wgmma_wait<0>();
      fence_regs(acc);
      fence_regs(reinterpret_cast<uint32_t(&)[kKeys / 4]>(pa));  // pa stays live (read by the P V in flight) until here
      release(&v_empty[sp]);
#pragma unroll
      for (int j = 0; j < NO; ++j)
        acc[4 * j] *= alpha[0], acc[4 * j + 1] *= alpha[0], acc[4 * j + 2] *= alpha[1], acc[4 * j + 3] *= alpha[1];
      to_pa();
    }
    const int last = (kv + n_tiles - 1) % kStages;
    mbar_wait(&v_full[last], ((kv + n_tiles - 1) / kStages) & 1);
    turn_wait();
    issue_pv(last);
    turn_pass(last_tile);
    wgmma_wait<0>();
    fence_regs(acc);
    release(&v_empty[last]);
    if (wm0 < len)
      attn_write_rows<NO>(reinterpret_cast<const float(&)[NO][4]>(acc), l_run, m_run,
                          o + (int64_t)t.start * a.H * a.D + t.h * a.D, (int64_t)a.H * a.D,
                          lse + (int64_t)t.h * a.N + t.start, row0, len, a.D, lane);
    kv += n_tiles, k = k_next, t = nt;
  }
#endif
}

// Backward (version 7): attn_bwd_wgmma's function and arguments (cuda/attention_sm90.cu) with the same split of the
// work: a block owns 128 keys of one kv head, consumer warpgroup c = 1, 2 the keys n0 + 64 (c - 1) .., and walks the
// 64-query tiles (and the heads of the group, or `gs` of them) that see them. Warp 0 of warpgroup 0 is the
// producer: K and V once by TMA, then per tile Q and dO by TMA and the rows' lse and delta by its 32 lanes into a
// ring of two stages (a tile's full barrier takes the 32 lanes' arrivals and TMA's bytes). Per tile a consumer
//   issues S^T = K_c Q^T and dP^T = V_c dO^T (m64n64) and waits; P^T, dS^T in registers;
//   issues dV_c += P^T dO, writes dS^T (bf16) into one of two shared buffers while it runs, issues dK_c += dS^T Q
//   (m64n128, A from registers); after a barrier of both consumers, issues dQ[:, 64 (c - 1) ..] = dS K (m64n64,
//   both operands MN-major); releases the Q/dO stage when dV/dK land and adds dQ with 16-byte reductions.
// Every tile is multiplied by both consumers, also one whose keys none of the tile's queries sees (masked to zero):
// no wgmma sits under a branch (ptxas would serialize them all). The dS buffers alternate, so a consumer writing
// tile i + 1's waits only for the barrier of tile i, which the other passes after its dQ of tile i - 1 landed.
// Shared memory: K, V 32 KB each, Q, dO 2 x 16 KB each, dS^T 2 x 16 KB: one block per SM.
// Measured (H100, 2026-12-06, docs/cuda.md): forward + backward 1.10x version 6's (attn_bwd_wgmma) at 8k dense,
// equal on NSA's compressed branch. Its limit: both consumers meet at the dS barrier every tile, so they run the
// same phase at the same time, and each waits for its own S^T/dP^T before the softmax (S and dP for the next tile
// in flight would need registers it does not have: at 232 per thread ptxas already serializes the wgmmas, C7512).
constexpr int kBwdKeys = 128, kBwdRows = 64;
// kTmaDQ (the default since 2026-12-06, 349 against 312 TFLOP/s forward + backward at B1 T8192 H32/8 on the H100;
// NT_ATTENTION_BWD_DQ=red turns it off): each consumer stores its dQ tile (f32,
// times scale) into one of two shared buffers instead of adding it with 16-byte reductions, and warp 1 of warpgroup
// 0 adds the buffer into dq_acc with one TMA reduce per half (FlashAttention-3's dQ path: the consumers issue no
// global reductions). Shared memory grows by 2 x 32 KB to ~226 KB.
constexpr int kBwdKV = kBwdKeys * 256, kBwdQ = kBwdRows * 256, kBwdDS = kBwdKeys * 128, kBwdDQ = kBwdRows * 64 * 4;
// A block's walk: step `it` of count() = ntiles x nh as (query head, first query row). Heads first: every query tile
// of head h_lo, ascending, then of h_lo + 1, ... Rows first (AttentionDims::bwd_rows_first): the last query tile of
// every head, then the one before, down to the block's first, so the blocks of one head group (each starting at
// its own diagonal) stay on the same query rows and heads while they all walk: those rows' q, dO and dQ sums are
// read from and added in L2 by every block of the group instead of each block's sweep over all of them.
struct BwdWalk {
  int h_lo, nh, m_first, ntiles;
  bool rows_first;
  __device__ int count() const { return nh * ntiles; }
  __device__ void at(int it, int& h, int& m0) const {
    if (rows_first) h = h_lo + it % nh, m0 = m_first + (ntiles - 1 - it / nh) * kBwdRows;
    else h = h_lo + it / ntiles, m0 = m_first + it % ntiles * kBwdRows;
  }
};
template <bool kTmaDQ>
constexpr size_t bwd_smem() {
  return 1024 + 2 * kBwdKV + 4 * kBwdQ + 2 * kBwdDS + (kTmaDQ ? 4 * kBwdDQ : 0) + 2 * 2 * kBwdRows * sizeof(float) + 8 * 8;
}

template <bool kTmaDQ>
__global__ void __launch_bounds__(384, 1)
    attn_bwd_ws(const __grid_constant__ CUtensorMap mq, const __grid_constant__ CUtensorMap mk,
                const __grid_constant__ CUtensorMap mv, const __grid_constant__ CUtensorMap mdo,
                const __grid_constant__ CUtensorMap mdq, const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dq_acc,
                uint16_t* __restrict__ dk, uint16_t* __restrict__ dv, float* __restrict__ dkv_acc, int gs,
                AttentionDims a) {
#if NT_SM90A
  constexpr int NO = kAttnDim / 8;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Ks = smem, *Vs = Ks + kBwdKV, *Qs = Vs + kBwdKV, *dOs = Qs + 2 * kBwdQ, *dSs = dOs + 2 * kBwdQ;
  unsigned char* dQs = dSs + 2 * kBwdDS;  // kTmaDQ: [buffer][half][64 rows][64] f32
  float* lse_s = reinterpret_cast<float*>(dQs + (kTmaDQ ? 4 * kBwdDQ : 0));  // [stage][64] lse log2 e, [stage][64] delta
  float* dlt_s = lse_s + 2 * kBwdRows;
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(dlt_s + 2 * kBwdRows);
  uint64_t *q_full = kv_full + 1, *q_empty = q_full + 2, *dq_empty = q_empty + 2;
  const AttnBwdBlock blk = attn_bwd_block(a, gs, kBwdKeys);
  const int hk = blk.hk, n0 = blk.n0, h_lo = blk.h_lo, h_hi = blk.h_hi, start = blk.start, len = blk.len;
  if (n0 >= len) return;  // the whole block, before any barrier
  const int q_hi = a.window > 0 ? min(len, n0 + kBwdKeys - 1 + a.window) : len;
  const int m_first = n0 / kBwdRows * kBwdRows;
  const BwdWalk walk{h_lo, h_hi - h_lo, m_first, (q_hi - m_first + kBwdRows - 1) / kBwdRows, a.bwd_rows_first};
  if (threadIdx.x == 0) {
    mbar_init(kv_full, 1);
    for (int s = 0; s < 2; ++s) mbar_init(&q_full[s], 32), mbar_init(&q_empty[s], 8), mbar_init(&dq_empty[s], 1);
    mbar_fence_init();
  }
  __syncthreads();
  const int wg = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32;
  if (wg == 0) {  // producer: warp 0
    setmaxnreg_dec<24>();  // 24 + 2 x 240 per thread fill the register file (232 would serialize the wgmmas: C7512)
    if (kTmaDQ && warp == 1) {  // the dQ writer: per tile, each consumer's half once it is in the buffer
      for (int it = 0; it < walk.count(); ++it) {
        const int b = it & 1;
        int h, m0;
        walk.at(it, h, m0);
        for (int half = 0; half < 2; ++half) {
          named_barrier(2 + half, 160);  // consumer `half` stored its tile
          if (lane == 0) tma_reduce_add_3d(&mdq, dQs + (2 * b + half) * kBwdDQ, half * 64, h, start + m0);
        }
        if (lane == 0) {
          bulk_commit();
          bulk_wait_read<0>();  // both halves read: the buffer is free
          mbar_arrive(&dq_empty[b]);
        }
        __syncwarp();
      }
      if (lane == 0) bulk_wait<0>();
      return;
    }
    if (warp != 0) return;
    if (lane == 0) {
      tma_prefetch_map(&mq), tma_prefetch_map(&mk), tma_prefetch_map(&mv), tma_prefetch_map(&mdo);
      if constexpr (kTmaDQ) tma_prefetch_map(&mdq);
      mbar_expect_tx(kv_full, 2 * kBwdKV);
      for (int half = 0; half < 2; ++half) {
        tma_load_3d(Ks + half * kBwdKeys * 128, &mk, kv_full, half * 64, hk, start + n0);
        tma_load_3d(Vs + half * kBwdKeys * 128, &mv, kv_full, half * 64, hk, start + n0);
      }
    }
    for (int it = 0; it < walk.count(); ++it) {
      const int s = it & 1;
      int h, m0;
      walk.at(it, h, m0);
      mbar_wait(&q_empty[s], ((it >> 1) & 1) ^ 1);
#pragma unroll
      for (int i = 0; i < 2; ++i) {  // rows lane and lane + 32: lse log2 e and delta, 0 past the sequence's end
        const int r = lane + 32 * i;
        const bool ok = m0 + r < len;
        const int64_t idx = (int64_t)h * a.N + start + m0 + r;
        lse_s[s * kBwdRows + r] = ok ? lse[idx] * kLog2e : 0.f;
        dlt_s[s * kBwdRows + r] = ok ? delta[idx] : 0.f;
      }
      if (lane == 0) {
        mbar_expect_tx(&q_full[s], 2 * kBwdQ);
        for (int half = 0; half < 2; ++half) {
          tma_load_3d(Qs + s * kBwdQ + half * kBwdRows * 128, &mq, &q_full[s], half * 64, h, start + m0);
          tma_load_3d(dOs + s * kBwdQ + half * kBwdRows * 128, &mdo, &q_full[s], half * 64, h, start + m0);
        }
      } else {
        mbar_arrive(&q_full[s]);
      }
    }
    return;
  }
  setmaxnreg_inc<240>();
  const int c = wg - 1;
  const int64_t qs = (int64_t)a.H * a.D;
  const float sl2 = a.scale * kLog2e;
  const int wk0 = n0 + c * 64;                         // this warpgroup's first key
  const int key0 = wk0 + warp * 16 + lane / 4;         // this thread's keys: key0 and key0 + 8
  const uint32_t k_addr = smem_addr(Ks), v_addr = smem_addr(Vs), q_addr0 = smem_addr(Qs), do_addr0 = smem_addr(dOs);
  const uint32_t ds_addr0 = smem_addr(dSs);
  float dka[NO * 4], dva[NO * 4];
#pragma unroll
  for (int i = 0; i < NO * 4; ++i) dka[i] = dva[i] = 0.f;
  mbar_wait(kv_full, 0);
  for (int it = 0; it < walk.count(); ++it) {
    const int s = it & 1;
    int h, m0;
    walk.at(it, h, m0);
    const uint32_t q_addr = q_addr0 + s * kBwdQ, do_addr = do_addr0 + s * kBwdQ, ds_addr = ds_addr0 + s * kBwdDS;
    float p[kBwdRows / 8][4], ds[kBwdRows / 8][4], dq[8][4];
    float(&pf)[32] = reinterpret_cast<float(&)[32]>(p);
    float(&dsf)[32] = reinterpret_cast<float(&)[32]>(ds);
    float(&dqf)[32] = reinterpret_cast<float(&)[32]>(dq);  // none zeroed: each product's first k-step overwrites
    mbar_wait(&q_full[s], (it >> 1) & 1);
    // S^T (64 keys x 64 queries) and dP^T: K_c / V_c K-major (rows of the 128-key tiles), Q / dO K-major.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kAttnDim / 16; ++kk) {
      const uint32_t ko = c * 64 * 128 + (kk / 4) * (kBwdKeys * 128) + (kk % 4) * 32;
      const uint32_t qo = (kk / 4) * (kBwdRows * 128) + (kk % 4) * 32;
      wgmma_m64n64<0, 0>(pf, smem_desc(k_addr + ko, 16, 1024), smem_desc(q_addr + qo, 16, 1024), kk > 0);
      wgmma_m64n64<0, 0>(dsf, smem_desc(v_addr + ko, 16, 1024), smem_desc(do_addr + qo, 16, 1024), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(pf), fence_regs(dsf);
    const bool edge = wk0 + 63 > m0 || m0 + kBwdRows > len || wk0 + 63 >= len ||
                      (a.window > 0 && wk0 <= m0 + kBwdRows - 1 - a.window);
    attn_bwd_probs(p, ds, edge, lse_s + s * kBwdRows, dlt_s + s * kBwdRows, sl2, m0, key0, len, a.window, lane);
    uint32_t pa[kBwdRows / 16][4], da[kBwdRows / 16][4];  // P^T, dS^T as bf16 A fragments of 16 queries
#pragma unroll
    for (int kk = 0; kk < kBwdRows / 16; ++kk)
      acc_to_a(pa[kk], p[2 * kk], p[2 * kk + 1]), acc_to_a(da[kk], ds[2 * kk], ds[2 * kk + 1]);
    // dV_c += P^T dO, then dK_c += dS^T Q (dO, Q MN-major: 16 queries = 2048 bytes on; column halves 64 x 128
    // apart). dS^T goes to shared memory between the two issues: da may not be touched while a wgmma reads it.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBwdRows / 16; ++kk)
      wgmma_m64n128_rs<1>(dva, pa[kk], smem_desc(do_addr + kk * 2048, kBwdRows * 128, 1024));
    // dS^T into this tile's buffer: row = key (of the block's 128), 64 queries = one 128-byte swizzled row; da's
    // registers hold exactly the bf16 pairs (query pair 2 (lane % 4) of 8-query group j, rows key and key + 8).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = c * 64 + warp * 16 + lane / 4 + 8 * i;
#pragma unroll
      for (int j = 0; j < kBwdRows / 8; ++j)
        *reinterpret_cast<uint32_t*>(dSs + s * kBwdDS + r * 128 + ((j ^ (r % 8)) << 4) + (lane % 4) * 4) =
            da[j / 2][(j % 2) * 2 + i];
    }
    wgmma_fence();  // orders the stores' reads of da before the wgmma that reads it (and pins them here)
#pragma unroll
    for (int kk = 0; kk < kBwdRows / 16; ++kk)
      wgmma_m64n128_rs<1>(dka, da[kk], smem_desc(q_addr + kk * 2048, kBwdRows * 128, 1024));
    wgmma_commit();
    fence_async_smem();
    named_barrier(1, 256);  // both consumers' dS^T of this tile are in the buffer
    // dQ[:, 64 c ..] = dS K[:, 64 c ..]: A = dS (64 queries x 128 keys) MN-major from the buffer, B = K's column
    // half c (128 keys x 64 dims) MN-major.
#pragma unroll
    for (int kk = 0; kk < kBwdKeys / 16; ++kk)
      wgmma_m64n64<1, 1>(dqf, smem_desc(ds_addr + kk * 2048, kBwdKeys * 128, 1024),
                         smem_desc(k_addr + c * (kBwdKeys * 128) + kk * 2048, kBwdKeys * 128, 1024), kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // dV, dK landed: the Q / dO stage is free
    fence_regs(dka), fence_regs(dva), fence_regs(reinterpret_cast<uint32_t(&)[kBwdRows / 4]>(pa)),
        fence_regs(reinterpret_cast<uint32_t(&)[kBwdRows / 4]>(da));
    __syncwarp();
    if (lane == 0) mbar_arrive(&q_empty[s]);
    wgmma_wait<0>();
    fence_regs(dqf);
    if constexpr (kTmaDQ) {
      // This consumer's half of the tile's dQ into buffer it % 2 (rows past the sequence's end hold exact zeros:
      // their dS is masked), then the writer adds it. Rows of 256 bytes: the 8 rows of a store share banks.
      const int b = it & 1;
      mbar_wait(&dq_empty[b], ((it >> 1) & 1) ^ 1);
      float* half = reinterpret_cast<float*>(dQs + (2 * b + c) * kBwdDQ);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = warp * 16 + lane / 4 + 8 * i;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          *reinterpret_cast<float2*>(half + row * 64 + j * 8 + (lane % 4) * 2) =
              make_float2(dq[j][2 * i] * a.scale, dq[j][2 * i + 1] * a.scale);
      }
      fence_async_smem();
      named_barrier_arrive(2 + c, 160);  // the writer waits there; this consumer goes on
    } else {
      const int r = m0 + warp * 16 + lane / 4 + ((lane & 1) ? 8 : 0);  // this lane's row in red_add_m64n64
      red_add_m64n64(dq, r < len ? dq_acc + ((int64_t)start + r) * qs + h * a.D : nullptr, c * 64, a.D, a.scale, lane);
    }
  }
  attn_bwd_store_dkv(dka, dva, dk, dv, dkv_acc, a, start, len, hk, key0, lane);
#endif
}
// [N, heads, D] bf16 as (D, heads, N): boxes of 64 head dims x 1 head x rows (columns past D arrive as zeros).
CUtensorMap rows_map(const void* base, const AttentionDims& d, int64_t heads, uint32_t rows) {
  const uint64_t dims[3] = {(uint64_t)d.D, (uint64_t)heads, (uint64_t)d.N};
  const uint64_t strides[2] = {(uint64_t)d.D * 2, (uint64_t)heads * d.D * 2};
  const uint32_t box[3] = {64, 1, rows};
  return tensor_map_bf16(base, 3, dims, strides, box);
}
}  // namespace

bool attention_forward_ws(const void* q, const void* k, const void* v, void* out, float* lse, const AttentionDims& d,
                          cudaStream_t stream) {
  if (!attention_wgmma_available(d)) return false;
  auto map = [&](const void* base, int64_t heads, uint32_t rows) { return rows_map(base, d, heads, rows); };
  const CUtensorMap mq = map(q, d.H, kRowsWG), mk = map(k, d.Hkv, kKeys), mv = map(v, d.Hkv, kKeys);
  const int64_t tiles = (int64_t)((d.max_len + kRows - 1) / kRows) * d.nseq * d.H;
  int dev = 0;
  NT_CUDA_CHECK(cudaGetDevice(&dev));
  const int sms = multiprocessor_count(dev);
  int64_t blocks = attention_fwd_blocks();
  // One block per SM by default (-1); -2 keeps the older automatic rule: persistent where a window makes the tiles
  // alike or there are many tiles per SM, else one block per tile. Per SM used to lose on causal grids of few tiles
  // per SM, where a block taking one tile per round of a longest-first grid got long or short tiles by its index;
  // alternating rounds (fwd_round_tile) fixed that. H100, 2026-12-07, bench_kernels timing all settings in rounds
  // within one process (two calls): -2 (one per tile there) took 1.05-1.06x the time of -1 at dense causal B2 T4096
  // H16 D128 and 1.08-1.09x at B1 T8192 H32/8 (docs/cuda.md, "One block per SM, the default").
  if (blocks == -2) blocks = d.window > 0 || tiles >= 24 * (int64_t)sms ? -1 : 0;
  if (blocks < 0) blocks = sms;  // one block per SM (kSmem)
  blocks = blocks == 0 ? tiles : std::min(blocks, tiles);
  if (blocks > INT32_MAX) throw std::length_error("attention_forward_ws: more than 2^31 - 1 tiles of 128 queries");
  AttentionDims dd = d;
  dd.x_slowest = attention_longest_first(false, tiles);
  dd.fwd_alternate = attention_fwd_alternate();
  auto launch = [&](auto kernel) {
    allow_smem(kernel, kSmem);
    kernel<<<(unsigned)blocks, 384, kSmem, stream>>>(mq, mk, mv, static_cast<uint16_t*>(out), lse, dd);
  };
  if (attention_fwd_pingpong()) launch(attn_fwd_ws<true>);
  else launch(attn_fwd_ws<false>);
  NT_CUDA_CHECK(cudaGetLastError());
  return true;
}

void attention_backward_ws(const void* q, const void* k, const void* v, const void* dout, const float* lse,
                           const float* delta, float* dq_acc, void* dk, void* dv, float* dkv_acc, int gs,
                           const AttentionDims& d, cudaStream_t stream) {
  if (!attention_wgmma_available(d))  // the kernel body is empty without sm_90a code
    throw std::logic_error("attention_backward_ws: called where attention_wgmma_available is false");
  const int G = d.H / d.Hkv, splits = (G + gs - 1) / gs;
  const CUtensorMap mq = rows_map(q, d, d.H, kBwdRows), mdo = rows_map(dout, d, d.H, kBwdRows);
  const CUtensorMap mk = rows_map(k, d, d.Hkv, kBwdKeys), mv = rows_map(v, d, d.Hkv, kBwdKeys);
  const dim3 grid((unsigned)((d.max_len + kBwdKeys - 1) / kBwdKeys), (unsigned)d.nseq, (unsigned)(d.Hkv * splits));
  AttentionDims dd = d;
  dd.x_slowest = attention_longest_first(true, (int64_t)grid.x * grid.y * grid.z);
  dd.bwd_rows_first = attention_bwd_rows_first(d.window);
  auto launch = [&](auto kernel, size_t smem, const CUtensorMap& mdq) {
    allow_smem(kernel, smem);
    kernel<<<grid, 384, smem, stream>>>(mq, mk, mv, mdo, mdq, lse, delta, dq_acc, static_cast<uint16_t*>(dk),
                                        static_cast<uint16_t*>(dv), dkv_acc, gs, dd);
  };
  if (attention_bwd_tma_dq()) {
    // dq_acc [N, H, D] f32 as (D, H, N), boxes of 64 head dims x 1 head x 64 rows (columns past D are skipped).
    const uint64_t dims[3] = {(uint64_t)d.D, (uint64_t)d.H, (uint64_t)d.N};
    const uint64_t strides[2] = {(uint64_t)d.D * 4, (uint64_t)d.H * d.D * 4};
    const uint32_t box[3] = {64, 1, kBwdRows};
    launch(attn_bwd_ws<true>, bwd_smem<true>(), tensor_map_f32(dq_acc, 3, dims, strides, box));
  } else {
    launch(attn_bwd_ws<false>, bwd_smem<false>(), mq);  // mdq unused
  }
  NT_CUDA_CHECK(cudaGetLastError());
}
}  // namespace nt::cuda
