// NSA's selected branch, forward, on tensor cores (bf16), group-centric as in the paper: one warp per (position t,
// key/value head h) holds the group's G query heads as the rows of one 16-row tile (G <= 16; the other rows are
// zeros), walks the blocks chosen for (t, h) in ascending order, 32 keys at a time (keys <= t only), with
// FlashAttention's online softmax: S = Q K^T and O += P V by mma.sync, f32 accumulation. It writes the branch's
// output and log-sum-exp (f32), e.g. into the fused op's branch_o[1] / lse[1], where the CUDA-core kernel then mixes
// the gates and its backward reads them as if it had computed them.
// Traffic: version 1 reads each chosen key block once per (position, key/value head) for all G heads (L2 mostly);
// version 2 (nsa_slc_fwd_tc2) shares each load among 8 consecutive positions, which mostly choose the same blocks.
// Version 3 (cuda/nsa_selected_sm90.cu, wgmma) is the default on sm_90a where it applies, version 2 elsewhere.
//
// Backward (the branch alone, gate 1: nsa_selected_branch), also on tensor cores, in three steps:
// 1. nsa_slc_bwd_dq_tc, query-centric like the forward (one warp per (t, h), the G heads as rows): delta =
//    rowsum(dO o) (written out for step 3), then over the chosen keys P = exp(scale q.k - lse), dP = dO V^T,
//    dS = P (dP - delta), dq += dS K; dq = scale dq.
// 2. The inverse of block_indices: for each (kv head, chunk of rows, selection block) the positions that chose it,
//    ascending (a stable radix sort of the (head, chunk, block) keys with the positions as values), cut into pieces
//    of at most kTilesPerPiece tiles of 32 (position, head) rows, so the blocks every position chooses (the first,
//    the local ones) are spread over many thread blocks. Chunks (set_nsa_selected_chunk) keep the rows that the
//    thread blocks running at once read and add to within L2.
// 3. nsa_slc_bwd_dkv_tc, key-centric: one thread block per piece holds its selection block's l' keys and values
//    (16 keys per warp) and streams the piece's q and dout rows through shared memory (cp.async, two stages): S^T =
//    K Q^T, P^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, then adds into f32 accumulators (atomics: the summation
//    order over a block's pieces varies, so dk/dv are not bitwise reproducible, like FlashAttention's dq).
// Traffic: step 1 reads each chosen key block once per (t, h) (L2 mostly); step 3 reads the q and dout rows of
// (t, h) once per chosen block (n times in all, L2 mostly) and each key block once per piece.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "cuda/mma_sm80.cuh"
#include "cuda/nsa_selected.cuh"

namespace nt::cuda {
namespace {
using namespace sm80;
constexpr int kWarpsSlc = 4, kChunk = 32;

template <int DP> constexpr size_t slc_smem() { return (size_t)kWarpsSlc * (16 + 2 * kChunk) * (DP + 8) * 2; }

// One warp's online-softmax step over a 32-key chunk (keys n0.. in Ks, Vs; those >= k_hi masked; the chunk's first
// key is always < k_hi, so no row is empty): S = Q K^T, running max and sum, O = alpha O + P V.
template <int DP>
__device__ __forceinline__ void slc_chunk(const uint16_t* Qs, const uint16_t* Ks, const uint16_t* Vs, int LD, int n0,
                                          int k_hi, float sl2, float (&m_run)[2], float (&l_run)[2],
                                          float (&acc)[DP / 8][4], int lane) {
  float s[4][4], alpha[2];
  qk_tile<DP, 4>(s, Qs, Ks, LD, 0, lane);
  online_softmax<4>(s, true, [&](int j, int e) { return n0 + j * 8 + (lane % 4) * 2 + (e & 1) >= k_hi; }, sl2, m_run,
                    l_run, alpha);
  pv_accumulate<DP / 8, 4>(acc, alpha, s, Vs, LD, lane);
}

// The warp's rows g < G (heads h G + g of packed row `row`): o = acc / l and lse (natural log).
template <int DP>
__device__ __forceinline__ void slc_write(float (&l_run)[2], const float (&m_run)[2], const float (&acc)[DP / 8][4],
                                          int64_t row, int h, float* o_slc, float* lse_slc, const NsaDims& a, int lane) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
    const int g = lane / 4 + 8 * i;
    if (g >= a.G) continue;
    const int64_t o = row * a.HQ + h * a.G + g;
    const float inv = l_run[i] > 0.f ? 1.f / l_run[i] : 0.f;  // a row given no blocks: o = 0, lse = -inf
    float* out = o_slc + o * a.D;
#pragma unroll
    for (int nt = 0; nt < DP / 8; ++nt) {
      const int c = nt * 8 + (lane % 4) * 2;
      if (c < a.D) out[c] = acc[nt][2 * i] * inv, out[c + 1] = acc[nt][2 * i + 1] * inv;
    }
    if (lane % 4 == 0) lse_slc[o] = (m_run[i] + log2f(l_run[i])) / kLog2e;
  }
}

// The warp's 16 query rows: heads h G + g (g < G) of packed row `row`, zeros below.
template <int CH>
__device__ __forceinline__ void slc_load_q(uint16_t* Qs, int LD, const uint16_t* q, int64_t row, int h,
                                           const NsaDims& a, int lane) {
  for (int i = lane; i < 16 * CH; i += 32) {
    const int r = i / CH, c = (i % CH) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < a.G && c < a.D) v = *reinterpret_cast<const uint4*>(q + (row * a.HQ + h * a.G + r) * a.D + c);
    *reinterpret_cast<uint4*>(Qs + r * LD + c) = v;
  }
}

// Version 1's walk: one warp loads the 32-key chunks of the blocks its position t chose (ascending, -1 after them;
// keys < min(block end, t + 1), zeros past them) into its own Ks, Vs and calls f(n0, k_hi) on each.
template <int DP, class F>
__device__ __forceinline__ void slc_warp_walk(const int32_t* blocks, uint16_t* Ks, uint16_t* Vs, const uint16_t* ks,
                                              const uint16_t* vs, int start, int h, int t, const NsaDims& a, int lane,
                                              F&& f) {
  constexpr int LD = DP + 8, CH = DP / 8;
  for (int bi = 0; bi < a.n; ++bi) {
    const int b = blocks[bi];
    if (b < 0) break;
    const int k_hi = min((b + 1) * a.lp, t + 1);
    for (int n0 = b * a.lp; n0 < k_hi; n0 += kChunk) {
      __syncwarp();  // every lane is done with the previous chunk (and the rows are stored)
      for (int i = lane; i < kChunk * CH; i += 32) {
        const int r = i / CH, c = (i % CH) * 8;
        uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
        if (n0 + r < k_hi && c < a.D) {
          const int64_t off = (((int64_t)start + n0 + r) * a.H + h) * a.D + c;
          kv = *reinterpret_cast<const uint4*>(ks + off), vv = *reinterpret_cast<const uint4*>(vs + off);
        }
        *reinterpret_cast<uint4*>(Ks + r * LD + c) = kv;
        *reinterpret_cast<uint4*>(Vs + r * LD + c) = vv;
      }
      __syncwarp();
      f(n0, k_hi);
    }
  }
}

template <int DP>
__global__ void __launch_bounds__(kWarpsSlc * 32) nsa_slc_fwd_tc(const uint16_t* __restrict__ q,
                                                                 const uint16_t* __restrict__ ks,
                                                                 const uint16_t* __restrict__ vs,
                                                                 const int32_t* __restrict__ block_indices,
                                                                 float* __restrict__ o_slc, float* __restrict__ lse_slc,
                                                                 NsaDims a) {
  constexpr int LD = DP + 8, NT = DP / 8, CH = DP / 8;
  extern __shared__ __align__(16) uint16_t smem_slc[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint16_t* Qs = smem_slc + warp * (16 + 2 * kChunk) * LD;
  uint16_t* Ks = Qs + 16 * LD;
  uint16_t* Vs = Ks + kChunk * LD;
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t = blockIdx.x * kWarpsSlc + warp;
  if (t >= len) return;  // warp-uniform; the warps never synchronize with each other
  const int64_t row = start + t;
  slc_load_q<CH>(Qs, LD, q, row, h, a, lane);
  const int32_t* blocks = block_indices + (row * a.H + h) * a.n;
  const float sl2 = (float)a.scale * kLog2e;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  slc_warp_walk<DP>(blocks, Ks, Vs, ks, vs, start, h, t, a, lane, [&](int n0, int k_hi) {
    slc_chunk<DP>(Qs, Ks, Vs, LD, n0, k_hi, sl2, m_run, l_run, acc, lane);
  });
  slc_write<DP>(l_run, m_run, acc, row, h, o_slc, lse_slc, a, lane);
}

// Version 2: kPosShared consecutive positions per thread block, one warp each, share the loads of the key blocks
// they chose. The block walks the union of their (ascending) block lists in 32-key chunks through a cp.async
// pipeline; a warp computes only on the chunks of blocks its position chose. Neighbouring positions mostly choose
// the same blocks, so each key block is read from L2 about once per kPosShared positions instead of once per
// position (version 1). The backward's dq kernel walks the same way. Versions 3, 4 and 6 (cuda/nsa_selected_sm90.cu)
// run on wgmma where they apply; 6 is the default there.
constexpr int kPosShared = 8;
int g_slc_kernel = [] {  // 0: automatic (6 where the wgmma kernels apply, else 2)
  const char* e = std::getenv("NT_NSA_SLC_KERNEL");
  const std::string v = e ? e : "";
  return v.size() == 1 && ((v[0] >= '1' && v[0] <= '4') || v[0] == '6') ? v[0] - '0' : 0;
}();
bool slc_v1() { return g_slc_kernel == 1; }
// Rows per chunk of the backward's key-centric walk (set_nsa_selected_chunk; NT_NSA_SLC_CHUNK=R).
int g_slc_chunk = [] {
  const char* e = std::getenv("NT_NSA_SLC_CHUNK");
  return e ? std::max(0, std::atoi(e)) : 2048;
}();
// Thread blocks of the wgmma walk (set_nsa_selected_walk_blocks; NT_NSA_SLC_WALK_BLOCKS=N).
int g_slc_walk_blocks = [] {
  const char* e = std::getenv("NT_NSA_SLC_WALK_BLOCKS");
  return e ? std::max(-1, std::atoi(e)) : 0;
}();

// The union's tables in shared memory (ints after the bf16 tiles): per union entry its block and the mask of the
// warps whose position chose it; per chunk its first key and union entry; the chunk count.
struct SlcUnion {
  int *ublk, *umask, *chunk_n0, *chunk_u, *nc;
};
__host__ __device__ inline int slc_union_max_chunks(const NsaDims& a) {
  return kPosShared * a.n * ((a.lp + kChunk - 1) / kChunk);
}
inline size_t slc_union_bytes(const NsaDims& a) {
  return ((size_t)kPosShared * a.n * 2 + (size_t)slc_union_max_chunks(a) * 2 + 4) * sizeof(int);
}
__device__ inline SlcUnion slc_union_carve(int* p, const NsaDims& a) {
  const int mc = slc_union_max_chunks(a);
  return {p, p + kPosShared * a.n, p + 2 * kPosShared * a.n, p + 2 * kPosShared * a.n + mc, p + 2 * kPosShared * a.n + 2 * mc};
}

// Thread 0 merges the ascending lists (n each, -1 after the chosen blocks) of positions t0..t_last of kv head h
// and lists the chunks (keys < t_last + 1 only); everyone waits.
__device__ void slc_union_build(const SlcUnion& u, const int32_t* block_indices, int start, int t0, int t_last, int h,
                                const NsaDims& a) {
  if (threadIdx.x == 0) {
    int pos[kPosShared] = {}, nu = 0;
    const int np = t_last - t0 + 1;
    const int32_t* lists = block_indices + (((int64_t)start + t0) * a.H + h) * a.n;
    const int64_t stride = (int64_t)a.H * a.n;
    for (;;) {
      int b = 0x7fffffff;
      for (int p = 0; p < np; ++p) {
        const int x = pos[p] < a.n ? lists[p * stride + pos[p]] : -1;
        if (x >= 0) b = min(b, x);
      }
      if (b == 0x7fffffff) break;
      int mask = 0;
      for (int p = 0; p < np; ++p)
        if (pos[p] < a.n && lists[p * stride + pos[p]] == b) mask |= 1 << p, ++pos[p];
      u.ublk[nu] = b, u.umask[nu] = mask, ++nu;
    }
    int nc = 0;
    for (int e = 0; e < nu; ++e)
      for (int n0 = u.ublk[e] * a.lp; n0 < min((u.ublk[e] + 1) * a.lp, t_last + 1); n0 += kChunk)
        u.chunk_n0[nc] = n0, u.chunk_u[nc] = e, ++nc;
    *u.nc = nc;
  }
  __syncthreads();
}

// Walks the union's chunks through S stages of K and V tiles (stage0: S x (K, V) chunks of kChunk rows; S - 1
// chunks in flight while one is computed; one barrier per chunk: it also frees the stage the next load overwrites);
// calls f(Ks, Vs, n0, k_hi) in each warp whose position t chose the chunk's block (k_hi: min(block end, t + 1)).
// Why several stages: the forward at 64k (2 stages, two barriers per chunk) was latency-bound (Nsight Compute,
// H100, 2026-12-06: L2 at 45% of its throughput, no eligible warp in 70% of cycles); 4 stages measured the same
// as 2 (H200, same day: 36.9 ms), so the latency is not the loads' (version 3 replaced the MMAs instead).
template <int DP, int S, class F>
__device__ void slc_union_walk(const SlcUnion& u, uint16_t* stage0, const uint16_t* ks, const uint16_t* vs, int start,
                               int len, int h, int t, bool active, const NsaDims& a, F&& f) {
  constexpr int LD = DP + 8, CH = DP / 8;
  const int nc = *u.nc, warp = threadIdx.x / 32;
  auto load_chunk = [&](int st, int c) {
    uint16_t* Ks = stage0 + st * 2 * kChunk * LD;
    uint16_t* Vs = Ks + kChunk * LD;
    const int n0 = u.chunk_n0[c];
    for (int i = threadIdx.x; i < kChunk * CH; i += blockDim.x) {
      const int r = i / CH, c8 = (i % CH) * 8;
      const bool ok = n0 + r < len && c8 < a.D;  // past the sequence: zeros (P = 0 must not meet NaN)
      const int64_t off = ok ? (((int64_t)start + n0 + r) * a.H + h) * a.D + c8 : 0;
      cp16(Ks + r * LD + c8, ks + off, ok);
      cp16(Vs + r * LD + c8, vs + off, ok);
    }
  };
#pragma unroll
  for (int c = 0; c < S - 1; ++c) {
    if (c < nc) load_chunk(c, c);
    cp_commit();
  }
  for (int c = 0; c < nc; ++c) {
    cp_async_wait<S - 2>();  // chunk c landed (one commit group per chunk, chunks c + 1.. may be in flight)
    __syncthreads();         // ... for every thread; and every warp is done with chunk c - 1
    if (c + S - 1 < nc) load_chunk((c + S - 1) % S, c + S - 1);  // into chunk c - 1's stage
    cp_commit();
    const int n0 = u.chunk_n0[c], e = u.chunk_u[c];
    if (active && ((u.umask[e] >> warp) & 1) && n0 <= t) {  // warp-uniform
      const uint16_t* Ks = stage0 + (c % S) * 2 * kChunk * LD;
      f(Ks, Ks + kChunk * LD, n0, min((u.ublk[e] + 1) * a.lp, t + 1));
    }
  }
}

template <int DP, int S> size_t slc2_smem(const NsaDims& a) {
  return (size_t)(kPosShared * 16 + S * 2 * kChunk) * (DP + 8) * 2 + slc_union_bytes(a);
}

// Stages of the forward's walk: 4 (two blocks of 8 warps per SM at D = 128: 2 x 107 KB of shared memory), 2 at
// D = 256 or where 4 would not leave two blocks per SM, or with NT_NSA_SLC_STAGES=2 (for comparison).
bool slc_two_stages() {
  static const bool two = [] {
    const char* e = std::getenv("NT_NSA_SLC_STAGES");
    return e && std::string(e) == "2";
  }();
  return two;
}

template <int DP, int S>
__global__ void __launch_bounds__(kPosShared * 32) nsa_slc_fwd_tc2(const uint16_t* __restrict__ q,
                                                                   const uint16_t* __restrict__ ks,
                                                                   const uint16_t* __restrict__ vs,
                                                                   const int32_t* __restrict__ block_indices,
                                                                   float* __restrict__ o_slc,
                                                                   float* __restrict__ lse_slc, NsaDims a) {
  constexpr int LD = DP + 8, NT = DP / 8, CH = DP / 8;
  extern __shared__ __align__(16) uint16_t smem_slc2[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t0 = blockIdx.x * kPosShared;
  if (t0 >= len) return;  // block-uniform
  const int t_last = min(t0 + kPosShared, len) - 1, t = t0 + warp;
  const bool active = t <= t_last;
  uint16_t* Qs = smem_slc2 + warp * 16 * LD;
  uint16_t* stage0 = smem_slc2 + kPosShared * 16 * LD;
  const SlcUnion u = slc_union_carve(reinterpret_cast<int*>(stage0 + S * 2 * kChunk * LD), a);
  if (active) slc_load_q<CH>(Qs, LD, q, start + t, h, a, lane);
  slc_union_build(u, block_indices, start, t0, t_last, h, a);
  const float sl2 = (float)a.scale * kLog2e;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  slc_union_walk<DP, S>(u, stage0, ks, vs, start, len, h, t, active, a,
                        [&](const uint16_t* Ks, const uint16_t* Vs, int n0, int k_hi) {
                          slc_chunk<DP>(Qs, Ks, Vs, LD, n0, k_hi, sl2, m_run, l_run, acc, lane);
                     });
  if (active) slc_write<DP>(l_run, m_run, acc, start + t, h, o_slc, lse_slc, a, lane);
}
}  // namespace

// ---- Backward ----
namespace {
using namespace sm80;
constexpr int kTileRows = 32, kTilesPerPiece = 64;

template <int DP> constexpr size_t slc_dq_smem() {
  return (size_t)kWarpsSlc * (32 + 2 * kChunk) * (DP + 8) * 2 + kWarpsSlc * 16 * sizeof(float);
}

// A warp's rows (heads h G + g of one position, from row head0 of [N HQ, D]): q and dout into Qs, dOs (zeros past
// G), delta = rowsum(dout o) in f32 into dl[16] and delta; then lse2 (lse log2 e; +inf past G, so p = 0 there) and
// delta of the rows lane / 4 and lane / 4 + 8.
template <int CH>
__device__ __forceinline__ void slc_dq_rows(uint16_t* Qs, uint16_t* dOs, float* dl, int LD, const uint16_t* q,
                                            const uint16_t* dout, const float* o_slc, const float* lse_slc,
                                            float* delta, int64_t head0, const NsaDims& a, float (&lse2)[2],
                                            float (&dlt)[2], int lane) {
  const int G = a.G;
  for (int i = lane; i < 16 * CH; i += 32) {
    const int r = i / CH, c = (i % CH) * 8;
    uint4 qv = make_uint4(0, 0, 0, 0), dv = qv;
    if (r < G && c < a.D) {
      qv = *reinterpret_cast<const uint4*>(q + (head0 + r) * a.D + c);
      dv = *reinterpret_cast<const uint4*>(dout + (head0 + r) * a.D + c);
    }
    *reinterpret_cast<uint4*>(Qs + r * LD + c) = qv;
    *reinterpret_cast<uint4*>(dOs + r * LD + c) = dv;
  }
  for (int r = 0; r < 16; ++r) {
    const float sum = r < G ? slc_row_delta(o_slc + (head0 + r) * a.D, dout + (head0 + r) * a.D, a.D, lane) : 0.f;
    if (lane == 0) {
      dl[r] = sum;
      if (r < G) delta[head0 + r] = sum;
    }
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int g = lane / 4 + 8 * i;
    lse2[i] = g < G ? lse_slc[head0 + g] * kLog2e : INFINITY;
    dlt[i] = dl[g];
  }
}

// dq += dS K over one 32-key chunk (keys >= k_hi masked): P = exp(scale q.k - lse), dP = dO V^T, dS = P (dP - delta).
template <int DP>
__device__ __forceinline__ void slc_dq_chunk(const uint16_t* Qs, const uint16_t* dOs, const uint16_t* Ks,
                                             const uint16_t* Vs, int LD, int n0, int k_hi, float sl2,
                                             const float (&lse2)[2], const float (&dlt)[2], float (&acc)[DP / 8][4],
                                             int lane) {
  float s[4][4], dp[4][4];
  qk_tile<DP, 4>(s, Qs, Ks, LD, 0, lane);
  qk_tile<DP, 4>(dp, dOs, Vs, LD, 0, lane);
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool ok = n0 + j * 8 + (lane % 4) * 2 + (e & 1) < k_hi;
      const float p = ok ? ex2(fmaf(s[j][e], sl2, -lse2[e >> 1])) : 0.f;
      s[j][e] = p * (dp[j][e] - dlt[e >> 1]);  // dS
    }
  pv_add<DP / 8, 4>(acc, s, Ks, LD, lane);
}

template <int DP>
__device__ __forceinline__ void slc_dq_write(const float (&acc)[DP / 8][4], uint16_t* dq, int64_t head0,
                                             const NsaDims& a, int lane) {
  const float sc = (float)a.scale;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int g = lane / 4 + 8 * i;
    if (g >= a.G) continue;
    uint16_t* out = dq + (head0 + g) * a.D;
#pragma unroll
    for (int nt = 0; nt < DP / 8; ++nt) {
      const int c = nt * 8 + (lane % 4) * 2;
      if (c < a.D) *reinterpret_cast<uint32_t*>(out + c) = pack_bf16(acc[nt][2 * i] * sc, acc[nt][2 * i + 1] * sc);
    }
  }
}

// Version 1 (set_nsa_selected_kernel(1)): one warp per (t, h), its own loads.
template <int DP>
__global__ void __launch_bounds__(kWarpsSlc * 32) nsa_slc_bwd_dq_tc(
    const uint16_t* __restrict__ q, const uint16_t* __restrict__ ks, const uint16_t* __restrict__ vs,
    const int32_t* __restrict__ block_indices, const float* __restrict__ o_slc, const float* __restrict__ lse_slc,
    const uint16_t* __restrict__ dout, uint16_t* __restrict__ dq, float* __restrict__ delta, NsaDims a) {
  constexpr int LD = DP + 8, NT = DP / 8, CH = DP / 8;
  extern __shared__ __align__(16) uint16_t smem_dq[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint16_t* Qs = smem_dq + warp * (32 + 2 * kChunk) * LD;
  uint16_t* dOs = Qs + 16 * LD;
  uint16_t* Ks = dOs + 16 * LD;
  uint16_t* Vs = Ks + kChunk * LD;
  float* dl = reinterpret_cast<float*>(smem_dq + kWarpsSlc * (32 + 2 * kChunk) * LD) + warp * 16;
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t = blockIdx.x * kWarpsSlc + warp;
  if (t >= len) return;  // warp-uniform
  const int64_t row = start + t, head0 = row * a.HQ + (int64_t)h * a.G;  // the group's first row of [N HQ, D]
  float lse2[2], dlt[2];
  slc_dq_rows<CH>(Qs, dOs, dl, LD, q, dout, o_slc, lse_slc, delta, head0, a, lse2, dlt, lane);
  const int32_t* blocks = block_indices + (row * a.H + h) * a.n;
  const float sl2 = (float)a.scale * kLog2e;
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  slc_warp_walk<DP>(blocks, Ks, Vs, ks, vs, start, h, t, a, lane, [&](int n0, int k_hi) {
    slc_dq_chunk<DP>(Qs, dOs, Ks, Vs, LD, n0, k_hi, sl2, lse2, dlt, acc, lane);
  });
  slc_dq_write<DP>(acc, dq, head0, a, lane);
}

// Version 2 (default): kPosShared positions per thread block walk the union of their blocks, as the forward.
template <int DP> size_t slc_dq2_smem(const NsaDims& a) {
  return (size_t)(kPosShared * 32 + 2 * 2 * kChunk) * (DP + 8) * 2 + kPosShared * 16 * sizeof(float) +
         slc_union_bytes(a);
}

template <int DP>
__global__ void __launch_bounds__(kPosShared * 32, 2) nsa_slc_bwd_dq_tc2(
    const uint16_t* __restrict__ q, const uint16_t* __restrict__ ks, const uint16_t* __restrict__ vs,
    const int32_t* __restrict__ block_indices, const float* __restrict__ o_slc, const float* __restrict__ lse_slc,
    const uint16_t* __restrict__ dout, uint16_t* __restrict__ dq, float* __restrict__ delta, NsaDims a) {
  constexpr int LD = DP + 8, NT = DP / 8, CH = DP / 8;
  extern __shared__ __align__(16) uint16_t smem_dq2[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = blockIdx.y, h = blockIdx.z;
  const int start = a.cu_seqlens[seq], len = a.cu_seqlens[seq + 1] - start;
  const int t0 = blockIdx.x * kPosShared;
  if (t0 >= len) return;  // block-uniform
  const int t_last = min(t0 + kPosShared, len) - 1, t = t0 + warp;
  const bool active = t <= t_last;
  uint16_t* Qs = smem_dq2 + warp * 32 * LD;
  uint16_t* dOs = Qs + 16 * LD;
  uint16_t* stage0 = smem_dq2 + kPosShared * 32 * LD;
  float* dl = reinterpret_cast<float*>(stage0 + 2 * 2 * kChunk * LD);
  const SlcUnion u = slc_union_carve(reinterpret_cast<int*>(dl + kPosShared * 16), a);
  dl += warp * 16;
  const int64_t head0 = ((int64_t)start + t) * a.HQ + (int64_t)h * a.G;
  float lse2[2] = {INFINITY, INFINITY}, dlt[2] = {0.f, 0.f};
  if (active) slc_dq_rows<CH>(Qs, dOs, dl, LD, q, dout, o_slc, lse_slc, delta, head0, a, lse2, dlt, lane);
  slc_union_build(u, block_indices, start, t0, t_last, h, a);
  const float sl2 = (float)a.scale * kLog2e;
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  slc_union_walk<DP, 2>(u, stage0, ks, vs, start, len, h, t, active, a,
                        [&](const uint16_t* Ks, const uint16_t* Vs, int n0, int k_hi) {
                          slc_dq_chunk<DP>(Qs, dOs, Ks, Vs, LD, n0, k_hi, sl2, lse2, dlt, acc, lane);
                     });
  if (active) slc_dq_write<DP>(acc, dq, head0, a, lane);
}

// Step 2: one (key, position) pair per chosen block: key = (h nch + row / chunk) NB + the block's global number
// (H nch NB: none).
__global__ void slc_inverse_keys(const int32_t* __restrict__ block_indices, int32_t* __restrict__ keys,
                                 int32_t* __restrict__ rows, int chunk, int nch, NsaDims a) {
  const int64_t E = a.N * a.H * a.n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < E; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / ((int64_t)a.H * a.n);
    const int h = (int)(i / a.n % a.H), b = block_indices[i];
    int key = a.H * nch * a.NB;
    if (b >= 0) {
      int lo = 0, hi = a.nseq;  // cu_seqlens[lo] <= row < cu_seqlens[hi]
      while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (a.cu_seqlens[mid] <= row) lo = mid;
        else hi = mid;
      }
      key = (h * nch + (int)(row / chunk)) * a.NB + a.slc_starts[lo] + b;
    }
    keys[i] = key, rows[i] = (int32_t)row;
  }
}
__global__ void slc_count(const int32_t* __restrict__ keys, int32_t* __restrict__ count, int64_t E, int K) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < E; i += (int64_t)gridDim.x * blockDim.x)
    if (keys[i] < K) atomicAdd(count + keys[i], 1);
}
__global__ void slc_pieces(const int32_t* __restrict__ seg_off, int32_t* __restrict__ pieces, int K, int per_piece) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k <= K) pieces[k] = k < K ? (seg_off[k + 1] - seg_off[k] + per_piece - 1) / per_piece : 0;
}
// Each piece's segment (slc_piece reads it): a thread per segment writes its pieces' entries.
__global__ void slc_piece_segments(const int32_t* __restrict__ piece_off, int32_t* __restrict__ piece_seg, int K) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k < K)
    for (int p = piece_off[k]; p < piece_off[k + 1]; ++p) piece_seg[p] = k;
}

// delta = rowsum(dout o) of every (position, head) row, a warp per row, o f32 or bf16 (versions 4 and 6's
// backwards, whose dq steps do not compute it on the way).
template <typename O>
__global__ void slc_delta(const O* __restrict__ o_slc, const uint16_t* __restrict__ dout, float* __restrict__ delta,
                          int64_t rows, int D) {
  const int lane = threadIdx.x % 32, wpb = blockDim.x / 32;
  for (int64_t r = (int64_t)blockIdx.x * wpb + threadIdx.x / 32; r < rows; r += (int64_t)gridDim.x * wpb) {
    const float sum = slc_row_delta(o_slc + r * D, dout + r * D, D, lane);
    if (lane == 0) delta[r] = sum;
  }
}

// The kernels that compute delta themselves (versions 1-3's dq steps) read o in f32: a bf16 o widened for them.
__global__ void slc_widen(const uint16_t* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __uint_as_float((uint32_t)x[i] << 16);
}

template <int DP> size_t slc_dkv_smem(int lp) {
  return (size_t)(lp + 2 * kTileRows) * 2 * (DP + 8) * 2 + 2 * kTileRows * 3 * sizeof(float);
}

template <int DP>
__global__ void __launch_bounds__(256) nsa_slc_bwd_dkv_tc(
    const uint16_t* __restrict__ q, const uint16_t* __restrict__ ks, const uint16_t* __restrict__ vs,
    const uint16_t* __restrict__ dout, const float* __restrict__ lse_slc, const float* __restrict__ delta,
    const int32_t* __restrict__ rows, const int32_t* __restrict__ seg_off, const int32_t* __restrict__ piece_off,
    const int32_t* __restrict__ piece_seg, int nch, float* __restrict__ dk_acc, float* __restrict__ dv_acc, NsaDims a,
    int per_piece) {
  constexpr int LD = DP + 8, NT = DP / 8, CH = DP / 8;
  extern __shared__ __align__(16) uint16_t smem_kv[];
  SlcPiece pc;
  if (!slc_piece(blockIdx.x, seg_off, piece_off, piece_seg, nch, a, per_piece, pc)) return;
  const int h = pc.h, start = pc.start, key0 = pc.key0, nk = pc.nk, e0 = pc.e0, e1 = pc.e1;
  const int G = a.G, ppt = kTileRows / G, tid = threadIdx.x, nthr = blockDim.x;
  const int warp = tid / 32, lane = tid % 32;
  uint16_t* Ks = smem_kv;
  uint16_t* Vs = Ks + a.lp * LD;
  uint16_t* stage0 = Vs + a.lp * LD;  // per stage: Q rows, then dout rows
  float* meta0 = reinterpret_cast<float*>(stage0 + 2 * 2 * kTileRows * LD);  // per stage: t, lse * log2 e, delta
  for (int i = tid; i < a.lp * CH; i += nthr) {
    const int r = i / CH, c = (i % CH) * 8;
    const bool ok = r < nk && c < a.D;
    const int64_t off = ok ? (((int64_t)start + key0 + r) * a.H + h) * a.D + c : 0;
    cp16(Ks + r * LD + c, ks + off, ok);
    cp16(Vs + r * LD + c, vs + off, ok);
  }
  // Tile e (positions e .. e + ppt - 1 of the piece, G heads each) into stage st.
  auto load_tile = [&](int st, int e) {
    uint16_t* Qs = stage0 + st * 2 * kTileRows * LD;
    uint16_t* dOs = Qs + kTileRows * LD;
    for (int i = tid; i < kTileRows * CH; i += nthr) {
      const int r = i / CH, c = (i % CH) * 8, pos = e + r / G;
      const bool ok = r < ppt * G && pos < e1 && c < a.D;
      const int64_t off = ok ? ((int64_t)rows[pos] * a.HQ + h * G + r % G) * a.D + c : 0;
      cp16(Qs + r * LD + c, q + off, ok);
      cp16(dOs + r * LD + c, dout + off, ok);
    }
    float* meta = meta0 + st * 3 * kTileRows;
    for (int r = tid; r < kTileRows; r += nthr) {
      const int pos = e + r / G;
      const bool ok = r < ppt * G && pos < e1;
      const int64_t hr = ok ? (int64_t)rows[pos] * a.HQ + h * G + r % G : 0;
      meta[r] = __int_as_float(ok ? rows[pos] - start : -1);  // the row's position in its sequence
      meta[kTileRows + r] = ok ? lse_slc[hr] * kLog2e : 0.f;
      meta[2 * kTileRows + r] = ok ? delta[hr] : 0.f;
    }
  };
  float dk[NT][4], dv[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const float sl2 = (float)a.scale * kLog2e;
  load_tile(0, e0);
  cp_commit();
  int st = 0;
  for (int e = e0; e < e1; e += ppt, st ^= 1) {
    if (e + ppt < e1) load_tile(st ^ 1, e + ppt);  // that stage was released by the last iteration's barrier
    cp_commit();
    cp_async_wait<1>();  // this tile's group (and K, V) landed
    __syncthreads();
    const uint16_t* Qs = stage0 + st * 2 * kTileRows * LD;
    const uint16_t* dOs = Qs + kTileRows * LD;
    const float* meta = meta0 + st * 3 * kTileRows;
    float s[4][4], dp[4][4];
    qk_tile<DP, 4>(s, Ks, Qs, LD, 16 * warp, lane);   // S^T: this warp's 16 keys x 32 rows
    qk_tile<DP, 4>(dp, Vs, dOs, LD, 16 * warp, lane);  // dP^T
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int key = key0 + 16 * warp + lane / 4 + 8 * (x >> 1), col = j * 8 + (lane % 4) * 2 + (x & 1);
        const float pr = key <= __float_as_int(meta[col]) ? ex2(fmaf(s[j][x], sl2, -meta[kTileRows + col])) : 0.f;
        s[j][x] = pr;
        dp[j][x] = pr * (dp[j][x] - meta[2 * kTileRows + col]);  // dS^T
      }
    pv_add<NT, 4>(dv, s, dOs, LD, lane);
    pv_add<NT, 4>(dk, dp, Qs, LD, lane);
    __syncthreads();  // every warp is done with stage st before it is refilled
  }
  const float sc = (float)a.scale;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key = 16 * warp + lane / 4 + 8 * i;
    if (key >= nk) continue;
    const int64_t base = (((int64_t)start + key0 + key) * a.H + h) * a.D;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + (lane % 4) * 2;
      if (c >= a.D) continue;
      atomicAdd(dk_acc + base + c, dk[nt][2 * i] * sc), atomicAdd(dk_acc + base + c + 1, dk[nt][2 * i + 1] * sc);
      atomicAdd(dv_acc + base + c, dv[nt][2 * i]), atomicAdd(dv_acc + base + c + 1, dv[nt][2 * i + 1]);
    }
  }
}

// The positions that chose each (kv head, chunk, block), ascending, cut into pieces of at most per_piece (the
// backward's key-centric step walks them): a stable radix sort of (head, chunk, block) keys, the counts, their
// prefix sums, the pieces per segment and theirs, and each piece's segment. grid bounds the number of pieces
// (sum ceil(c / P) <= E / P + K).
struct SlcPieces {
  int64_t E;
  int nch, chunk, K, per_piece;
  int64_t grid;
  ScratchBuffer srows, seg_off, piece_off, piece_seg;
  SlcPieces(const int32_t* block_indices, const NsaDims& a, cudaStream_t stream)
      : E(a.N * a.H * a.n), nch(chunks(a)), chunk((int)((a.N + nch - 1) / nch)), K(a.H * nch * a.NB),
        per_piece(kTilesPerPiece * (kTileRows / a.G)), grid(E / per_piece + K + 1), srows(E * 4),
        seg_off((K + 1) * 4), piece_off((K + 1) * 4), piece_seg(grid * 4) {
    ScratchBuffer keys(E * 4), rows(E * 4), skeys(E * 4), count((K + 1) * 4), pieces((K + 1) * 4);
    slc_inverse_keys<<<grid_for(E, 256), 256, 0, stream>>>(block_indices, i32(keys), i32(rows), chunk, nch, a);
    NT_CUDA_CHECK(cudaGetLastError());
    int end_bit = 1;
    while (end_bit < 31 && ((int64_t)1 << end_bit) <= K) ++end_bit;
    size_t sort_bytes = 0, scan_bytes = 0;
    NT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, i32(keys), i32(skeys), i32(rows), i32(srows),
                                                  (int)E, 0, end_bit, stream));
    NT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, i32(count), i32(seg_off), K + 1, stream));
    ScratchBuffer temp(std::max(sort_bytes, scan_bytes) + 1);
    NT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.p, sort_bytes, i32(keys), i32(skeys), i32(rows), i32(srows),
                                                  (int)E, 0, end_bit, stream));
    NT_CUDA_CHECK(cudaMemsetAsync(count.p, 0, (K + 1) * 4, stream));
    slc_count<<<grid_for(E, 256), 256, 0, stream>>>(i32(skeys), i32(count), E, K);
    NT_CUDA_CHECK(cudaGetLastError());
    size_t bytes = scan_bytes;
    NT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.p, bytes, i32(count), i32(seg_off), K + 1, stream));
    slc_pieces<<<grid_for(K + 1, 256), 256, 0, stream>>>(i32(seg_off), i32(pieces), K, per_piece);
    NT_CUDA_CHECK(cudaGetLastError());
    bytes = scan_bytes;
    NT_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.p, bytes, i32(pieces), i32(piece_off), K + 1, stream));
    slc_piece_segments<<<grid_for(K, 256), 256, 0, stream>>>(i32(piece_off), i32(piece_seg), K);
    NT_CUDA_CHECK(cudaGetLastError());
  }
  // Chunks of at most g_slc_chunk rows (0: one chunk), no more of them than keeps H nch NB <= 2^22 (a huge batch
  // gets longer chunks; one where H NB alone exceeds it).
  static int chunks(const NsaDims& a) {
    const int64_t rows = std::max<int64_t>(a.N, 1), chunk = g_slc_chunk > 0 ? g_slc_chunk : rows;
    const int64_t nch = (rows + chunk - 1) / chunk, per = std::max<int64_t>((int64_t)a.H * a.NB, 1);
    return (int)std::max<int64_t>(1, std::min(nch, ((int64_t)1 << 22) / per));
  }
  static int32_t* i32(const ScratchBuffer& b) { return static_cast<int32_t*>(b.p); }
  SlcWalkArgs walk() const {
    SlcWalkArgs w;
    w.rows = i32(srows), w.seg_off = i32(seg_off), w.piece_off = i32(piece_off), w.piece_seg = i32(piece_seg);
    w.nch = nch;
    return w;
  }
};

}  // namespace

bool nsa_selected_tc_supported(const NsaDims& a) {
  return a.D % 8 == 0 && a.D <= 256 && a.G <= 16 && slc2_smem<256, 2>(a) <= 220 * 1024;
}

bool nsa_selected_forward_writes_bf16(const NsaDims& a) {
  return (g_slc_kernel == 0 || g_slc_kernel == 6) && nsa_selected_wgmma_applies(a);
}

void nsa_selected_forward_tc(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                             float* o_slc, float* lse_slc, const NsaDims& a, int max_len, cudaStream_t stream,
                             void* o_bf16) {
  if (o_bf16 && !nsa_selected_forward_writes_bf16(a))
    throw std::logic_error("nsa_selected_forward_tc: o_bf16 given where the forward writes o in f32");
  if (a.N == 0 || max_len == 0) return;
  if ((g_slc_kernel == 0 || g_slc_kernel == 6) &&
      nsa_selected_forward_ws(q, k_slc, v_slc, block_indices, o_slc, o_bf16, lse_slc, a, max_len, stream))
    return;
  if ((g_slc_kernel == 0 || g_slc_kernel >= 3) &&
      nsa_selected_forward_wgmma(q, k_slc, v_slc, block_indices, o_slc, lse_slc, a, max_len, stream))
    return;
  const bool v1 = slc_v1();
  const int per_block = v1 ? kWarpsSlc : kPosShared;
  const dim3 grid((unsigned)((max_len + per_block - 1) / per_block), (unsigned)a.nseq, (unsigned)a.H);
  auto run = [&](auto kernel, size_t smem) {
    allow_smem(kernel, smem);
    kernel<<<grid, per_block * 32, smem, stream>>>(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k_slc),
                                                    static_cast<const uint16_t*>(v_slc), block_indices, o_slc, lse_slc, a);
    NT_CUDA_CHECK(cudaGetLastError());
  };
  if (v1) {
    if (a.D <= 64) run(nsa_slc_fwd_tc<64>, slc_smem<64>());
    else if (a.D <= 128) run(nsa_slc_fwd_tc<128>, slc_smem<128>());
    else run(nsa_slc_fwd_tc<256>, slc_smem<256>());
  } else {
    // 4 stages while two blocks still fit an SM (113 KB each), else 2.
    const bool two = slc_two_stages() || (a.D <= 64 ? slc2_smem<64, 4>(a) : slc2_smem<128, 4>(a)) > 113 * 1024;
    if (a.D <= 64 && two) run(nsa_slc_fwd_tc2<64, 2>, slc2_smem<64, 2>(a));
    else if (a.D <= 64) run(nsa_slc_fwd_tc2<64, 4>, slc2_smem<64, 4>(a));
    else if (a.D <= 128 && two) run(nsa_slc_fwd_tc2<128, 2>, slc2_smem<128, 2>(a));
    else if (a.D <= 128) run(nsa_slc_fwd_tc2<128, 4>, slc2_smem<128, 4>(a));
    else run(nsa_slc_fwd_tc2<256, 2>, slc2_smem<256, 2>(a));
  }
}

void set_nsa_selected_kernel(int version) {
  if (version < 0 || version > 6 || version == 5)  // 5 was the block-major forward, removed (docs/nsa-history.md)
    throw std::invalid_argument("set_nsa_selected_kernel: version must be 0..4 or 6, got " + std::to_string(version));
  g_slc_kernel = version;
}
int nsa_selected_kernel() { return g_slc_kernel; }
void set_nsa_selected_chunk(int rows) {
  if (rows < 0) throw std::invalid_argument("set_nsa_selected_chunk: rows must be >= 0, got " + std::to_string(rows));
  g_slc_chunk = rows;
}
int nsa_selected_chunk() { return g_slc_chunk; }
void set_nsa_selected_walk_blocks(int blocks) {
  if (blocks < -1)
    throw std::invalid_argument("set_nsa_selected_walk_blocks: blocks must be >= -1, got " + std::to_string(blocks));
  g_slc_walk_blocks = blocks;
}
int nsa_selected_walk_blocks() { return g_slc_walk_blocks; }

bool nsa_selected_backward_tc_supported(const NsaDims& a) {
  return a.D % 8 == 0 && a.D <= 128 && a.G <= 16 && a.lp % 16 == 0 && a.lp <= 128 &&
         slc_dq2_smem<128>(a) <= 220 * 1024 &&
         a.N * a.H * (int64_t)a.n < (int64_t)1 << 31 && (int64_t)a.H * a.NB < (int64_t)1 << 30;
}

bool nsa_selected_backward_fuses_dq(const NsaDims& a, int max_len) {
  return (g_slc_kernel == 0 || g_slc_kernel >= 4) && max_len > 0 && nsa_selected_wgmma_applies(a);
}

void nsa_selected_backward_tc(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                              const void* o_in, bool o_is_bf16, const float* lse_slc, const void* dout, void* dq,
                              void* dk_slc, void* dv_slc, const NsaDims& a, int max_len, cudaStream_t stream,
                              float* dq_acc_given, const float* delta_given) {
  if (a.N == 0) return;
  auto u16 = [](const void* p) { return static_cast<const uint16_t*>(p); };
  const int64_t kv_elems = a.N * a.H * a.D;
  // 1. dq and delta; under versions 4 and 6 (the default where they apply) delta alone (dq comes with dk/dv in
  // step 3).
  ScratchBuffer delta(delta_given ? 0 : a.N * a.HQ * sizeof(float));
  const bool fused_dq = nsa_selected_backward_fuses_dq(a, max_len);
  if ((dq_acc_given || delta_given) && !fused_dq)
    throw std::logic_error("nsa_selected_backward_tc: dq_acc or delta given where the walk does not compute dq");
  const int64_t q_elems = a.N * a.HQ * a.D;
  ScratchBuffer dq_acc(fused_dq && !dq_acc_given ? q_elems * 4 : 0);
  float* dq_sum = dq_acc_given ? dq_acc_given : static_cast<float*>(dq_acc.p);
  // The dq steps of versions 1-3 read o in f32.
  ScratchBuffer o_wide(o_is_bf16 && !fused_dq ? q_elems * 4 : 0);
  if (o_wide.p) {
    slc_widen<<<grid_for(q_elems, 256), 256, 0, stream>>>(u16(o_in), static_cast<float*>(o_wide.p), q_elems);
    NT_CUDA_CHECK(cudaGetLastError());
  }
  const float* o_slc = o_wide.p ? static_cast<const float*>(o_wide.p) : static_cast<const float*>(o_in);
  if (fused_dq) {
    float* dl = static_cast<float*>(delta.p);
    if (!delta_given) {  // else rowsum(dout o) came from the caller
      if (o_is_bf16)
        slc_delta<<<grid_for(a.N * a.HQ, 8), 256, 0, stream>>>(u16(o_in), u16(dout), dl, a.N * a.HQ, a.D);
      else
        slc_delta<<<grid_for(a.N * a.HQ, 8), 256, 0, stream>>>(static_cast<const float*>(o_in), u16(dout), dl,
                                                                a.N * a.HQ, a.D);
      NT_CUDA_CHECK(cudaGetLastError());
    }
    if (!dq_acc_given) NT_CUDA_CHECK(cudaMemsetAsync(dq_sum, 0, q_elems * 4, stream));
  } else {
    const int per_block = slc_v1() ? kWarpsSlc : kPosShared;
    const dim3 grid((unsigned)((max_len + per_block - 1) / per_block), (unsigned)a.nseq, (unsigned)a.H);
    auto run = [&](auto kernel, size_t smem) {
      allow_smem(kernel, smem);
      kernel<<<grid, per_block * 32, smem, stream>>>(u16(q), u16(k_slc), u16(v_slc), block_indices, o_slc, lse_slc,
                                                      u16(dout), static_cast<uint16_t*>(dq),
                                                      static_cast<float*>(delta.p), a);
      NT_CUDA_CHECK(cudaGetLastError());
    };
    const bool on_wgmma = (g_slc_kernel == 0 || g_slc_kernel >= 3) && max_len > 0 &&
                          nsa_selected_dq_wgmma(q, k_slc, v_slc, block_indices, o_slc, lse_slc, dout, dq,
                                                static_cast<float*>(delta.p), a, max_len, stream);
    if (max_len > 0 && !on_wgmma) {
      if (slc_v1()) run(a.D <= 64 ? nsa_slc_bwd_dq_tc<64> : nsa_slc_bwd_dq_tc<128>, a.D <= 64 ? slc_dq_smem<64>() : slc_dq_smem<128>());
      else run(a.D <= 64 ? nsa_slc_bwd_dq_tc2<64> : nsa_slc_bwd_dq_tc2<128>, a.D <= 64 ? slc_dq2_smem<64>(a) : slc_dq2_smem<128>(a));
    }
  }
  // 2. The positions that chose each (kv head, chunk, block), ascending, and the pieces.
  const SlcPieces pcs(block_indices, a, stream);
  // 3. dk, dv (and under versions 4 and 6 dq): one thread block per piece, or fewer each walking several
  // (set_nsa_selected_walk_blocks).
  ScratchBuffer dk_acc(kv_elems * 4), dv_acc(kv_elems * 4);
  NT_CUDA_CHECK(cudaMemsetAsync(dk_acc.p, 0, kv_elems * 4, stream));
  NT_CUDA_CHECK(cudaMemsetAsync(dv_acc.p, 0, kv_elems * 4, stream));
  const bool dkv_wgmma = g_slc_kernel == 0 || g_slc_kernel >= 3;  // falls back below where it does not apply
  SlcWalkArgs w = pcs.walk();
  w.q = u16(q), w.ks = u16(k_slc), w.vs = u16(v_slc), w.dout = u16(dout), w.lse = lse_slc;
  w.delta = delta_given ? delta_given : static_cast<const float*>(delta.p);
  w.dk_acc = static_cast<float*>(dk_acc.p), w.dv_acc = static_cast<float*>(dv_acc.p);
  w.row_acc = dq_sum;
  auto run = [&](auto kernel, size_t smem) {
    allow_smem(kernel, smem);
    kernel<<<(unsigned)pcs.grid, a.lp * 2, smem, stream>>>(u16(q), u16(k_slc), u16(v_slc), u16(dout), lse_slc,
                                                           w.delta, w.rows, w.seg_off, w.piece_off, w.piece_seg,
                                                           w.nch, w.dk_acc, w.dv_acc, a, pcs.per_piece);
    NT_CUDA_CHECK(cudaGetLastError());
  };
  if (!(dkv_wgmma && nsa_selected_walk_wgmma(fused_dq ? kWalkDkvDq : kWalkDkv, w, a, pcs.per_piece, pcs.grid,
                                              g_slc_walk_blocks, stream))) {
    if (fused_dq) throw std::logic_error("nsa_selected_backward_tc: the dk/dv/dq walk did not run");
    if (a.D <= 64) run(nsa_slc_bwd_dkv_tc<64>, slc_dkv_smem<64>(a.lp));
    else run(nsa_slc_bwd_dkv_tc<128>, slc_dkv_smem<128>(a.lp));
  }
  cast_f32_to_bf16(static_cast<const float*>(dk_acc.p), dk_slc, kv_elems, stream);
  cast_f32_to_bf16(static_cast<const float*>(dv_acc.p), dv_slc, kv_elems, stream);
  if (fused_dq && !dq_acc_given) cast_f32_to_bf16(dq_sum, dq, q_elems, stream);
}

}  // namespace nt::cuda
