// NSA block selection on Hopper's warpgroup MMA: nsa_select_tc's function (cuda/nsa_select.cu: block_indices
// [N, H, n] from p = exp(scale q.k_cmp - lse_cmp) summed over each GQA group's heads, folded into the selection
// blocks, top-n), the default where sm_90a runs and head dims are up to 128 (zero-padded).
//
// A block is one warpgroup owning PB = 128 / G consecutive positions of one sequence and one key/value head: 128
// query rows (row p G + g: position p, head g of the group), loaded once by TMA (one box of G heads x PB positions
// per column half). It walks the compressed keys its last position sees, 64 per tile, by TMA into two stages. The
// product is transposed, S^T = K Q^T (wgmma m64n128: keys as the 64 rows, the 128 query rows as columns), so a
// thread's accumulators hold two keys' values for columns of every position: a position's sum over its G heads is
// a sum of the thread's own columns and, for G >= 4, a transposing reduction over the 2 or 4 lanes of a quad (each
// lane ends with the sums of different (key, position) pairs: no lane computes a sum twice). The sums go to shared
// memory (three buffers), and after one barrier per tile the fold runs while the next tile's wgmma is in flight:
// where every 64-key tile starts a selection block (64 d a multiple of l', the paper's l = 32, d = 16, l' = 64)
// one thread per (position, block) adds the block's keys from a table built once (this tile's and the previous
// one's: each block's score is written once; where l = 2 d and l' = 4 d, keys and weights are constants instead,
// SelectFold::kFixed), else select_fold's general rule. The scores go to a slot in global
// memory (SelectSlots: one of a few per SM, in L2), then one warp per position chooses (select_top_n). Every sum
// runs in a fixed order: the choice is deterministic.
// Why: the mma.sync kernel (64 rows per block of 4 warps, S = Q K^T, shuffles over the rows of a warp) took 17.5 ms
// of NSA's 50 ms forward at 64k (H100, 2026-12-06), ~125 TFLOP/s; here each K tile meets 128 rows per wgmma and
// the head sums take a third of the shuffles. Nsight Compute (64k, H100): the kernel is bound by issuing
// instructions, not by the tensor cores (2 warps per scheduler, one instruction every ~6 cycles each), so what
// counts is the instructions per tile: the table fold (~50 instead of ~250 per thread and tile), descriptors
// computed once and shared-memory accesses that are not generic took it from 11.6 to 9.4 ms at 64k (0.47 -> 0.42
// ms at 8k; mma.sync: 16.0 ms in the same run; 2026-12-06). A second accumulator set (the next tile's S^T in
// flight during this one's exponentials) measured 12.2 against 11.6 ms and was dropped: the wgmma was not what
// the block waited for.
// Traffic: q once; each compressed key once per block of positions that sees it (from L2: k_cmp is small).
// Shared memory: Q 32 KB, K 2 x 16 KB, the sums 3 x 64 x cs floats: ~75 KB at G = 16 whatever T, three blocks
// per SM (with the scores in shared memory, 110 KB at 64k and two blocks per SM: 9.7 ms at 64k, H100, 2026-12-07).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda/attention_sm90.cuh"
#include "cuda/check.h"
#include "cuda/nsa_select.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
using namespace sm80;
using namespace sm90;

constexpr int kRowsW = 128, kKeysW = 64, kThreadsW = 128;
int g_select_slots = 0;  // score slots per SM; 0: as many as blocks fit (set_nsa_select_slots)
constexpr int kFoldUnroll = 8;  // the paper's l = 32, d = 16, l' = 64: fold_e = 8 (5 keys meet a block)
// The unrolled periodic fold (kTable): 8% faster than the loop (H100, bench_nsa: the selection 8.28 -> 7.61 ms at
// 64k, 0.336 -> 0.327 at 8k; 2026-12-07). kFixed, the default, drops its table where l = 2 d and l' = 4 d.
// NT_NSA_SELECT_FOLD: fixed (the default), table or loop; anything else is reported and ignored.
SelectFold g_select_fold = [] {
  const char* e = std::getenv("NT_NSA_SELECT_FOLD");
  const std::string v = e ? e : "";
  if (v == "loop") return SelectFold::kLoop;
  if (v == "table") return SelectFold::kTable;
  if (!v.empty() && v != "fixed")
    std::fprintf(stderr, "NT_NSA_SELECT_FOLD: expected fixed, table or loop, got '%s'; using fixed\n", v.c_str());
  return SelectFold::kFixed;
}();
constexpr int kQHalf = kRowsW * 128, kKHalf = kKeysW * 128;  // bytes of one 64-column half of Q and of a K tile

struct SelectWgSmem {
  size_t q, k, colsum, lse, nv, taken, chosen, weight, fold, bar, slot, total;
  int cs;        // floats per key row of a sums buffer (PB and a little padding against bank conflicts)
  int nblk = 0;  // > 0: the fold is the same for every tile (64 d a multiple of l'), nblk blocks per tile
  int fold_e;    // the fold table's entries per block (keys meeting it)
  bool fold_unrolled;  // the periodic fold's table read up front, unrolled (fold_e <= kFoldUnroll; nsa_select_wgmma's
                       // kUnrolled; SelectFold::kTable and kFixed)
  bool fold_fixed;     // l = 2 d, l' = 4 d: the unrolled fold with its keys and weights as constants (SelectFold::kFixed)
  // Whether a block's scores start at zero: the general fold adds to them tile after tile, and a periodic fold
  // writes each once but leaves blocks unwritten whose keys no position of the block sees (l > 2 l' + 1).
  bool zero;
};
// The scores (PB positions x ncand_max blocks, f32) live in global memory, in one of per_sm slots per SM that a block
// takes at its start and gives back at its end (bits of a mask per SM): shared memory then no longer grows with T,
// and three blocks fit per SM at G = 16 (~75 KB each) instead of two (~110 KB with the scores at 64k). The slots stay
// in L2 (132 x 3 x 32 KB at 64k). Correct for any per_sm: a block finding every slot of its SM taken waits for one.
struct SelectSlots {
  float* score;     // [nsm per_sm][PB][ncand_max]
  unsigned* mask;   // [nsm], zero at launch
  int nsm, per_sm;  // per_sm <= 32
};
// Whether the fold of a 64-key tile is the same for every tile: the tile's keys start a selection block (64 d a
// multiple of l') and a block meets keys of at most the previous tile (l <= 64 d).
int periodic_blocks(const NsaDims& a) { return (kKeysW * a.d) % a.lp == 0 && a.l <= kKeysW * a.d ? kKeysW * a.d / a.lp : 0; }
SelectWgSmem select_wg_smem(const NsaDims& a) {
  const int PB = kRowsW / a.G;
  auto up = [](size_t x, size_t m) { return (x + m - 1) / m * m; };
  SelectWgSmem s;
  s.cs = a.G == 16 ? 10 : a.G == 8 ? 18 : a.G == 4 ? 34 : PB + 4;  // conflict-free fold reads, at most 2-way stores
  s.nblk = periodic_blocks(a);
  s.fold_e = (a.lp + a.l) / a.d + 2;
  s.fold_unrolled = g_select_fold != SelectFold::kLoop && s.fold_e <= kFoldUnroll;
  s.fold_fixed = s.fold_unrolled && g_select_fold == SelectFold::kFixed && a.l == 2 * a.d && a.lp == 4 * a.d;
  s.q = 0;
  s.k = s.q + 2 * kQHalf;
  s.zero = s.nblk == 0 || a.l > 2 * a.lp + 1;
  s.colsum = s.k + 2 * 2 * kKHalf;
  s.lse = s.colsum + (size_t)(s.nblk > 0 ? 3 : 2) * kKeysW * s.cs * 4;  // the general fold reads one tile's sums
  s.nv = s.lse + kRowsW * 4;
  s.weight = s.nv + (size_t)PB * 4;
  s.fold = up(s.weight + ((size_t)std::min(a.l, a.lp) + 1) * 4, 8);
  s.bar = up(s.fold + (size_t)s.nblk * (s.fold_e + 1) * 8, 8);
  s.slot = s.bar + 2 * 8;
  s.total = s.slot + 8 + 1024;  // + the slack for aligning the base to 1024 bytes (TMA's 128-byte swizzle)
  // The top-n's scratch takes the place of Q and K once the walk is done.
  s.taken = 0;
  s.chosen = up(s.taken + (size_t)4 * a.ncand_max, 16);
  return s;
}

// x[0 .. K) summed over the lanes that differ in bits 0 .. STEPS - 1, transposing: at each step a lane keeps the half
// its bit selects (the lower half for bit 0) and adds its partner's copy. Afterwards x[k], k < K >> STEPS, holds
// the sum of original entry k + sum over steps s of bit_s (K >> (s + 1)).
template <int K, int STEP, int STEPS>
__device__ __forceinline__ void lanes_transpose_sum(float (&x)[K], int lane) {
  if constexpr (STEP < STEPS) {
    constexpr int half = K >> (STEP + 1);
    const bool up = (lane >> STEP) & 1;
#pragma unroll
    for (int k = 0; k < half; ++k) {
      const float keep = up ? x[k + half] : x[k], send = up ? x[k] : x[k + half];
      x[k] = keep + __shfl_xor_sync(0xffffffffu, send, 1 << STEP);
    }
    lanes_transpose_sum<K, STEP + 1, STEPS>(x, lane);
  }
}

// This thread's probabilities p (S^T's fragment: keys kr, kr + 8 of the tile as i = 0, 1; columns 8 j + 2 q + e,
// q = lane % 4) summed per position into cs_buf[key][position] (row stride cs).
template <int G>
__device__ __forceinline__ void store_position_sums(const float (&p)[64], float* cs_buf, int cs, int kr, int lane) {
  const int q = lane % 4;
  auto at = [&](int i, int pos) -> float& { return cs_buf[(kr + 8 * i) * cs + pos]; };
  if constexpr (G == 1) {  // column = position
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) at(i, 8 * j + 2 * q + e) = p[4 * j + 2 * i + e];
  } else {
    float x[G == 16 ? 16 : 32];  // (i, position or n-tile) pairs summed within the thread
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float v = p[4 * j + 2 * i] + p[4 * j + 2 * i + 1];
        if constexpr (G == 16) {  // position j / 2: two n-tiles
          if (j % 2 == 0) x[i * 8 + j / 2] = v;
          else x[i * 8 + j / 2] += v;
        } else {
          x[i * 16 + j] = v;
        }
      }
    if constexpr (G == 2) {  // position 4 j + q
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 16; ++j) at(i, 4 * j + q) = x[i * 16 + j];
    } else if constexpr (G == 4) {  // position 2 j + q / 2: lanes q and q ^ 1 share it
      lanes_transpose_sum<32, 0, 1>(x, lane);  // x[k] = entry k + 16 (q & 1): i = q & 1, j = k
#pragma unroll
      for (int k = 0; k < 16; ++k) at(q & 1, 2 * k + q / 2) = x[k];
    } else if constexpr (G == 8) {  // position j: the whole quad
      lanes_transpose_sum<32, 0, 2>(x, lane);  // x[k] = entry k + 8 (q >> 1) + 16 (q & 1)
#pragma unroll
      for (int k = 0; k < 8; ++k) at(q & 1, k + 8 * (q >> 1)) = x[k];
    } else {  // G == 16, position j / 2: the whole quad
      lanes_transpose_sum<16, 0, 2>(x, lane);  // x[k] = entry k + 4 (q >> 1) + 8 (q & 1)
#pragma unroll
      for (int k = 0; k < 4; ++k) at(q & 1, k + 4 * (q >> 1)) = x[k];
    }
  }
}

// kUnrolled: the periodic fold's table and sums loaded up front (a template parameter, so that the loop's
// instantiation keeps its own register count).
template <int G, bool kUnrolled>
__global__ void __launch_bounds__(kThreadsW, 3) nsa_select_wgmma(const __grid_constant__ CUtensorMap mq,
                                                              const __grid_constant__ CUtensorMap mk,
                                                              const float* __restrict__ lse_cmp,
                                                              int32_t* __restrict__ block_indices, NsaDims a,
                                                              SelectWgSmem off, SelectSlots slots) {
#if NT_SM90A
  constexpr int PB = kRowsW / G;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  unsigned char *Qs = smem + off.q, *Ks = smem + off.k;
  float* colsum = reinterpret_cast<float*>(smem + off.colsum);  // [3 (periodic fold) or 2][64 keys][cs]
  float* lse_s = reinterpret_cast<float*>(smem + off.lse);      // [128 rows] lse log2 e; +inf: the row adds nothing
  int* nv_s = reinterpret_cast<int*>(smem + off.nv);            // [PB] keys each position sees
  unsigned char* taken = smem + off.taken;
  int32_t* chosen = reinterpret_cast<int32_t*>(smem + off.chosen);
  float* weight = reinterpret_cast<float*>(smem + off.weight);
  // nblk > 0: per block jr of a tile, the keys meeting it, ascending, as (the key's row in its sums buffer times cs,
  // weight): fold_n[jr] of them at fold_tab[jr fold_e], the first fold_neg[jr] of them the previous tile's.
  int2* fold_tab = reinterpret_cast<int2*>(smem + off.fold);
  int* fold_n = reinterpret_cast<int*>(fold_tab + off.nblk * off.fold_e);
  int* fold_neg = fold_n + off.nblk;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + off.bar);  // per K stage (stage 0's first phase: Q too)
  int* slot_s = reinterpret_cast<int*>(smem + off.slot);
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start, cs0 = a.cmp_starts[seq];
  const int t0 = (gridDim.x - 1 - blockIdx.x) * PB;  // the longest walks start first
  if (t0 >= len) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, npos = min(PB, len - t0), t_last = t0 + npos - 1;
  const int nvis_max = t_last + 1 < a.l ? 0 : (t_last + 1 - a.l) / a.d + 1;
  const int ntiles = (nvis_max + kKeysW - 1) / kKeysW;
  auto load_k = [&](int i, bool arm) {  // K tile i into stage i % 2 (rows past the sequence's keys are masked)
    uint64_t* bar = &full[i & 1];
    if (arm) mbar_expect_tx(bar, 2 * kKHalf);
    for (int half = 0; half < 2; ++half)
      tma_load_3d(Ks + (i & 1) * 2 * kKHalf + half * kKHalf, &mk, bar, half * 64, h, cs0 + i * kKeysW);
  };
  unsigned* slot_mask = nullptr;
  if (threadIdx.x == 0) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    slot_mask = slots.mask + smid % (unsigned)slots.nsm;
    for (int k = 0;; k = k + 1 == slots.per_sm ? 0 : k + 1) {  // take a free slot of this SM
      if (!(atomicOr(slot_mask, 1u << k) & (1u << k))) {
        *slot_s = (int)(smid % (unsigned)slots.nsm) * slots.per_sm + k;
        break;
      }
      if (k + 1 == slots.per_sm) __nanosleep(256);
    }
    __threadfence();  // the previous owner's reads are done before this block writes
    mbar_init(&full[0], 1), mbar_init(&full[1], 1);
    mbar_fence_init();
    if (ntiles > 0) {
      mbar_expect_tx(&full[0], 2 * kQHalf + 2 * kKHalf);  // Q arrives with tile 0 (one arrival: the count is 1)
      for (int half = 0; half < 2; ++half) tma_load_3d(Qs + half * kQHalf, &mq, &full[0], half * 64, h * G, start + t0);
      load_k(0, false);
      if (ntiles > 1) load_k(1, true);
    }
  }
  {
    const int r = threadIdx.x, p = r / G;  // 128 threads: one per query row
    const float L = p < npos ? lse_cmp[(int64_t)(start + t0 + p) * a.HQ + h * G + r % G] : -INFINITY;
    lse_s[r] = L == -INFINITY ? INFINITY : L * kLog2e;
  }
  for (int p = threadIdx.x; p < PB; p += kThreadsW) {
    const int t = t0 + p;
    nv_s[p] = p >= npos || t + 1 < a.l ? 0 : (t + 1 - a.l) / a.d + 1;
  }
  for (int i = threadIdx.x; i <= min(a.l, a.lp); i += kThreadsW) weight[i] = (float)i / (float)a.d;
  for (int jr = threadIdx.x; jr < off.nblk; jr += kThreadsW) {  // block jr meets keys c with c d < (jr + 1) l' and
    int n = 0, neg = 0;                                          // c d + l > jr l' (relative to the tile)
    for (int c = -((a.l + a.d - 1) / a.d); c * a.d < (jr + 1) * a.lp; ++c) {
      const int ov = min(c * a.d + a.l, (jr + 1) * a.lp) - max(c * a.d, jr * a.lp);
      if (ov <= 0) continue;
      fold_tab[jr * off.fold_e + n++] = make_int2((c < 0 ? c + kKeysW : c) * off.cs, __float_as_int((float)ov / (float)a.d));
      neg += c < 0;
    }
    fold_n[jr] = n, fold_neg[jr] = neg;
  }
  const FastDiv div_d = fast_div_for((uint32_t)a.d);
  __syncthreads();  // the barriers' init, lse, nv, the slot
  const int slot = *slot_s;
  float* score = slots.score + (size_t)slot * PB * a.ncand_max;  // [PB][ncand_max]
  if (off.zero)  // (the first fold comes after the loop's first barrier, the top-n after the last one)
    for (int i = threadIdx.x; i < npos * a.ncand_max; i += kThreadsW) score[i] = 0.f;

  if (ntiles > 0) {
    const int q = lane % 4, kr = 16 * warp + lane / 4;  // this thread's keys kr, kr + 8 of a tile
    float lr[32];  // lse log2 e of this thread's columns 8 j + 2 q + e
#pragma unroll
    for (int j = 0; j < 16; ++j) lr[2 * j] = lse_s[8 * j + 2 * q], lr[2 * j + 1] = lse_s[8 * j + 2 * q + 1];
    const int nv_min = npos < PB ? 0 : nv_s[0];  // positions ascend: the first sees the fewest keys
    const float sl2 = (float)a.scale * kLog2e;
    const uint32_t q_addr = smem_addr(Qs), k_addr0 = smem_addr(Ks);
    float s[64];
    // The descriptors' address field is the byte address / 16 (shared memory < 256 KB: offsets never carry out).
    const uint64_t dq0 = smem_desc(q_addr, 16, 1024), dk0 = smem_desc(k_addr0, 16, 1024);
    auto issue = [&](int i) {  // S^T = K_i Q^T into s (committed, not waited for)
      const uint64_t dk = dk0 + (i & 1) * (2 * kKHalf / 16);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kAttnDim / 16; ++kk)
        wgmma_m64n128<0, 0>(s, dk + ((kk / 4) * kKHalf + (kk % 4) * 32) / 16,
                            dq0 + ((kk / 4) * kQHalf + (kk % 4) * 32) / 16, kk > 0);
      wgmma_commit();
    };
    // The periodic fold of tile i: thread (position p, block jr) adds the keys of tile i (cur) and, from tile 1 on,
    // of tile i - 1 (prev) meeting block i nblk + jr; every block's score is written by one tile's fold, so it is
    // stored, not added (with off.zero the blocks no tile reaches stay 0). (The last tile's keys also meet the block
    // after it, which no fold takes: that block is at or past every position's current block, which the top-n takes
    // without its score. The blocks before a position's previous one, which the top-n reads, start at or before
    // position - 2 l' and so in a tile the walk reaches when l <= 2 l' + 1.)
    auto fold_periodic = [&](int i, const float* cur, const float* prev) {
      for (int e = threadIdx.x; e < PB * off.nblk; e += kThreadsW) {
        const int p = e % PB, jr = e / PB, j = i * off.nblk + jr;
        if (p >= npos || j >= a.ncand_max) continue;
        float acc = 0.f;
        if (kUnrolled && off.fold_fixed) {
          // l = 2 d, l' = 4 d: block jr meets keys 4 jr - 1 .. 4 jr + 3 of the tile (key -1: the previous tile's
          // last) with weights 1, 2, 2, 2, 1, the table's entries in its order: kTable's sums, bit for bit.
          const float* row = cur + 4 * jr * off.cs + p;
          const float* first = jr > 0 ? row - off.cs : prev ? prev + (kKeysW - 1) * off.cs + p : nullptr;
          const float v0 = first ? *first : 0.f, v1 = row[0], v2 = row[off.cs], v3 = row[2 * off.cs];
          const float v4 = row[3 * off.cs];
          acc = v0;
          acc = fmaf(v1, 2.f, acc);
          acc = fmaf(v2, 2.f, acc);
          acc = fmaf(v3, 2.f, acc);
          acc += v4;
        } else {
          const int2* tab = fold_tab + jr * off.fold_e;
          const int nneg = fold_neg[jr], n = fold_n[jr];
          if constexpr (kUnrolled) {  // every table entry, then every sum, loaded before the first product: no chain
            int2 e2[kFoldUnroll];     // of dependent shared-memory loads per key
#pragma unroll
            for (int k = 0; k < kFoldUnroll; ++k) e2[k] = k < n ? tab[k] : make_int2(0, 0);
            float v[kFoldUnroll];
#pragma unroll
            for (int k = 0; k < kFoldUnroll; ++k)
              v[k] = k < n && (k >= nneg || prev) ? (k < nneg ? prev : cur)[e2[k].x + p] : 0.f;
#pragma unroll
            for (int k = 0; k < kFoldUnroll; ++k) acc += v[k] * __int_as_float(e2[k].y);
          } else {
            if (prev)
              for (int k = 0; k < nneg; ++k) acc += prev[tab[k].x + p] * __int_as_float(tab[k].y);
            for (int k = nneg; k < n; ++k) acc += cur[tab[k].x + p] * __int_as_float(tab[k].y);
          }
        }
        score[p * a.ncand_max + j] = acc;
      }
    };
    mbar_wait(&full[0], 0);
    issue(0);
    for (int i = 0; i < ntiles; ++i) {
      const int c0 = i * kKeysW, buf = i % (off.nblk > 0 ? 3 : 2);
      wgmma_wait<0>();
      fence_regs(s);
      float pr[64];  // the probabilities (not in s: the next tile's wgmma writes s while the sums are stored)
      if (c0 + kKeysW > nv_min) {  // some key of the tile is past what some position sees
#pragma unroll
        for (int j = 0; j < 16; ++j)
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            const int col = 8 * j + 2 * q + (x & 1), key = c0 + kr + 8 * (x >> 1);
            pr[4 * j + x] = key < nv_s[col / G] ? ex2(fmaf(s[4 * j + x], sl2, -lr[2 * j + (x & 1)])) : 0.f;
          }
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j)
#pragma unroll
          for (int x = 0; x < 4; ++x) pr[4 * j + x] = ex2(fmaf(s[4 * j + x], sl2, -lr[2 * j + (x & 1)]));
      }
      float* cbuf = colsum + buf * kKeysW * off.cs;
      store_position_sums<G>(pr, cbuf, off.cs, kr, lane);
      // The sums of tile i are complete; every warp's wgmma of tile i is done (stage i % 2 is free) and so is the
      // fold of tile i - 1 (which read buffer (i - 1) % 3 and, periodic, (i + 1) % 3: the one written next).
      __syncthreads();
      if (threadIdx.x == 0 && i + 2 < ntiles) load_k(i + 2, true);
      // The next tile's product runs during the fold; after the last tile the last one again, its result unused
      // (a wgmma under a branch would make ptxas serialize them all).
      const int nx = min(i + 1, ntiles - 1);
      mbar_wait(&full[nx & 1], (nx >> 1) & 1);
      issue(nx);
      if (off.nblk > 0)
        fold_periodic(i, cbuf, i > 0 ? colsum + ((i + 2) % 3) * kKeysW * off.cs : nullptr);
      else
        select_fold(score, weight, a, div_d, c0, kKeysW, npos, kThreadsW,
                    [&](int p, int cc) { return cbuf[cc * off.cs + p]; });
    }
    wgmma_wait<0>();
    fence_regs(s);
  }
  __syncthreads();  // the last fold is done; Q and K are free for the top-n's scratch
  select_top_n(score, taken, chosen, block_indices, a, start, t0, npos, h, warp, 4, lane);
  __syncthreads();  // every read of the slot is done
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAnd(slot_mask, ~(1u << (slot % slots.per_sm)));
  }
#endif
}

template <int G>
void launch_select_wgmma(const void* q, const void* k_cmp, const float* lse_cmp, int32_t* block_indices,
                         const NsaDims& a, int max_len, const SelectWgSmem& off, cudaStream_t stream) {
  constexpr int PB = kRowsW / G;
  // q [N, HQ, D] as (D, HQ, N): boxes of 64 dims x G heads x PB positions; k_cmp [NC, H, D] as (D, H, NC): 64 rows.
  const uint64_t qd[3] = {(uint64_t)a.D, (uint64_t)a.HQ, (uint64_t)a.N}, qst[2] = {(uint64_t)a.D * 2, (uint64_t)a.HQ * a.D * 2};
  const uint64_t kd[3] = {(uint64_t)a.D, (uint64_t)a.H, (uint64_t)a.NC}, kst[2] = {(uint64_t)a.D * 2, (uint64_t)a.H * a.D * 2};
  const uint32_t qbox[3] = {64, (uint32_t)G, (uint32_t)PB}, kbox[3] = {64, 1, (uint32_t)kKeysW};
  const CUtensorMap mq = tensor_map_bf16(q, 3, qd, qst, qbox), mk = tensor_map_bf16(k_cmp, 3, kd, kst, kbox);
  const auto kernel = off.nblk > 0 && off.fold_unrolled ? nsa_select_wgmma<G, true> : nsa_select_wgmma<G, false>;
  allow_smem(kernel, off.total);
  int device = 0, per_sm = 0;
  NT_CUDA_CHECK(cudaGetDevice(&device));
  const int nsm = multiprocessor_count(device);
  NT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreadsW, off.total));
  per_sm = g_select_slots > 0 ? g_select_slots : std::clamp(per_sm, 1, 32);
  const size_t slot_floats = (size_t)PB * a.ncand_max;
  ScratchBuffer score((size_t)nsm * per_sm * slot_floats * sizeof(float)), mask((size_t)nsm * sizeof(unsigned));
  NT_CUDA_CHECK(cudaMemsetAsync(mask.p, 0, (size_t)nsm * sizeof(unsigned), stream));
  const SelectSlots slots{static_cast<float*>(score.p), static_cast<unsigned*>(mask.p), nsm, per_sm};
  const dim3 grid((unsigned)((max_len + PB - 1) / PB), (unsigned)a.nseq, (unsigned)a.H);
  kernel<<<grid, kThreadsW, off.total, stream>>>(mq, mk, lse_cmp, block_indices, a, off, slots);
  NT_CUDA_CHECK(cudaGetLastError());
}
}  // namespace

void set_nsa_select_fold(SelectFold fold) { g_select_fold = fold; }
SelectFold nsa_select_fold() { return g_select_fold; }

void set_nsa_select_slots(int per_sm) {
  if (per_sm < 0 || per_sm > 32)
    throw std::invalid_argument("set_nsa_select_slots: per_sm must be in [0, 32] (0: as many as blocks fit), got " +
                                std::to_string(per_sm));
  g_select_slots = per_sm;
}

bool nsa_select_wgmma_applies(const NsaDims& a) {
  if (a.D % 8 != 0 || a.D > kAttnDim || a.G > 16 || (a.G & (a.G - 1)) != 0 || a.NC == 0) return false;
  const SelectWgSmem s = select_wg_smem(a);
  if (s.total > 200 * 1024 || s.chosen + (size_t)4 * a.n * 4 > s.colsum) return false;  // the top-n's scratch fits Q, K
  if ((size_t)(kRowsW / a.G) * a.ncand_max * sizeof(float) > (1u << 20)) return false;  // a slot: at most 1 MB
  int device = 0;
  NT_CUDA_CHECK(cudaGetDevice(&device));
  return sm90a_available(device);
}

bool nsa_select_wgmma(const void* q, const void* k_cmp, const float* lse_cmp, int32_t* block_indices,
                      const NsaDims& a, int max_len, cudaStream_t stream) {
  if (!nsa_select_wgmma_applies(a)) return false;
  if (a.N == 0 || max_len == 0) return true;
  const SelectWgSmem off = select_wg_smem(a);
  switch (a.G) {
    case 1: launch_select_wgmma<1>(q, k_cmp, lse_cmp, block_indices, a, max_len, off, stream); break;
    case 2: launch_select_wgmma<2>(q, k_cmp, lse_cmp, block_indices, a, max_len, off, stream); break;
    case 4: launch_select_wgmma<4>(q, k_cmp, lse_cmp, block_indices, a, max_len, off, stream); break;
    case 8: launch_select_wgmma<8>(q, k_cmp, lse_cmp, block_indices, a, max_len, off, stream); break;
    default: launch_select_wgmma<16>(q, k_cmp, lse_cmp, block_indices, a, max_len, off, stream); break;
  }
  return true;
}
}  // namespace nt::cuda
