// Warp-level tensor-core helpers (sm_80 and later: mma.sync, ldmatrix, cp.async) shared by the attention kernels
// (cuda/attention.cu) and NSA's (cuda/nsa_select.cu). bf16 operands as uint16_t, f32 accumulators.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace nt::cuda::sm80 {
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices, transposed: lanes 8i..8i+7 give the row addresses of matrix i; register i of lane t
// holds elements (2 (t % 4), t / 4) and (2 (t % 4) + 1, t / 4) of matrix i.
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ uint32_t lds32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void cp16(void* s, const void* g, bool ok) {  // src-size 0 zero-fills the 16 bytes
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"((uint32_t)__cvta_generic_to_shared(s)), "l"(g),
               "r"(ok ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Non-transposed ldmatrix: register i of lane t holds elements (t / 4, 2 (t % 4)) and (t / 4, 2 (t % 4) + 1) of
// matrix i, whose row addresses lanes 8i..8i+7 give.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// The A fragment of a 16 x 16 product block from accumulators of two adjacent n-tiles (FlashAttention's
// register reuse: the C layout of S is the A layout of P).
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]), a[1] = pack_bf16(c0[2], c0[3]), a[2] = pack_bf16(c1[0], c1[1]), a[3] = pack_bf16(c1[2], c1[3]);
}

// S = Q K^T for one warp: its 16 query rows (from row q_row0 of Qs) against 8 NJ keys (rows 0.. of Ks), both
// bf16 tiles in shared memory with leading dimension LD, head dim DP (a multiple of 16). s[j] is the 16 x 8
// accumulator block of keys 8j..8j+7 in mma's C layout (zeroed first). NJ even.
template <int DP, int NJ>
__device__ __forceinline__ void qk_tile(float (&s)[NJ][4], const uint16_t* Qs, const uint16_t* Ks, int LD, int q_row0,
                                        int lane) {
#pragma unroll
  for (int j = 0; j < NJ; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    uint32_t qa[4];
    ldsm_x4(qa, Qs + (q_row0 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int jp = 0; jp < NJ / 2; ++jp) {
      uint32_t kb[4];
      ldsm_x4(kb, Ks + (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
      mma16816(s[2 * jp], qa, kb[0], kb[1]);
      mma16816(s[2 * jp + 1], qa, kb[2], kb[3]);
    }
  }
}

// FlashAttention's online-softmax step for one warp's 16 rows (lane / 4 and lane / 4 + 8) over a score tile of 8 NJ
// keys in mma's C layout: where `mask`, the entries with masked(j, e) become -inf; the running max and sum (log2
// domain, the scale folded into sl2) advance; alpha gets the factor the output accumulated so far must be scaled by;
// s becomes the tile's unnormalized probabilities. A row with nothing visible yet keeps reference 0, not NaN.
template <int NJ, class Masked>
__device__ __forceinline__ void online_softmax(float (&s)[NJ][4], bool mask, Masked&& masked, float sl2,
                                               float (&m_run)[2], float (&l_run)[2], float (&alpha)[2]) {
  float mx[2] = {-INFINITY, -INFINITY};  // raw scores (scale > 0, so the max commutes with scaling)
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (mask && masked(j, e)) s[j][e] = -INFINITY;
      mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
    }
  float ref[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    const float mnew = fmaxf(m_run[i], mx[i] * sl2);
    ref[i] = mnew == -INFINITY ? 0.f : mnew;
    alpha[i] = ex2(m_run[i] - ref[i]);
    m_run[i] = mnew;
    l_run[i] *= alpha[i];
  }
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = ex2(fmaf(s[j][e], sl2, -ref[e >> 1]));
      l_run[e >> 1] += s[j][e];
    }
}

// The end of a forward's online softmax for one warp's 16 rows (this thread's: row0 and row0 + 8, rows >= len
// skipped): out = acc / l as bf16 into o_rows + r row_stride (columns < D) and lse = m + log l (natural log) into
// lse_rows[r]. l_run is summed over the row's 4 lanes here.
template <int NT>
__device__ __forceinline__ void attn_write_rows(const float (&acc)[NT][4], const float (&l_run)[2],
                                                const float (&m_run)[2], uint16_t* o_rows, int64_t row_stride,
                                                float* lse_rows, int row0, int len, int D, int lane) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float l = l_run[i];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = row0 + i * 8;
    if (r >= len) continue;
    const float inv = 1.f / l;
    uint16_t* orow = o_rows + (int64_t)r * row_stride;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + (lane % 4) * 2;
      if (c < D) *reinterpret_cast<uint32_t*>(orow + c) = pack_bf16(acc[nt][2 * i] * inv, acc[nt][2 * i + 1] * inv);
    }
    if (lane % 4 == 0) lse_rows[r] = (m_run[i] + log2f(l)) / kLog2e;
  }
}

// The coordinates of the L-th block in launch order over a grid of n blocks: x varying fastest, or with x_slowest
// slowest (every (y, z) pair's x = 0 block launches before any x = 1 block). (64 bits: x y z may pass 2^32 for many
// packed sequences.)
__device__ __forceinline__ uint3 launch_coords(uint64_t L, uint3 n, bool x_slowest) {
  if (x_slowest) {
    const uint64_t rest = L % ((uint64_t)n.y * n.z);
    return make_uint3((unsigned)(L / ((uint64_t)n.y * n.z)), (unsigned)(rest % n.y), (unsigned)(rest / n.y));
  }
  const uint64_t yz = L / n.x;
  return make_uint3((unsigned)(L % n.x), (unsigned)(yz % n.y), (unsigned)(yz / n.y));
}
// This block's grid coordinates in launch order: blockIdx, or with x_slowest the linear block index read with x
// varying slowest.
__device__ __forceinline__ uint3 grid_coords(bool x_slowest) {
  if (!x_slowest) return blockIdx;
  const uint64_t L = blockIdx.x + (uint64_t)gridDim.x * (blockIdx.y + (uint64_t)gridDim.y * blockIdx.z);
  return launch_coords(L, make_uint3(gridDim.x, gridDim.y, gridDim.z), true);
}

// The flash backward's thread block (either kernel): keys n0 .. n0 + keys - 1 of sequence blockIdx.y, kv head hk,
// query heads [h_lo, h_hi) (the group's heads, or gs of them when it is split: blockIdx.z = hk x splits + split).
struct AttnBwdBlock {
  int seq, hk, n0, h_lo, h_hi, start, len;
};
template <class Dims>
__device__ __forceinline__ AttnBwdBlock attn_bwd_block(const Dims& a, int gs, int keys) {
  const int G = a.H / a.Hkv, splits = (G + gs - 1) / gs;
  const uint3 g = grid_coords(a.x_slowest);  // (the key blocks nearest a sequence's start walk the most queries)
  AttnBwdBlock b;
  b.seq = (int)g.y, b.hk = (int)g.z / splits, b.n0 = (int)g.x * keys;
  b.h_lo = b.hk * G + (int)(g.z % splits) * gs, b.h_hi = min(b.h_lo + gs, b.hk * G + G);
  b.start = a.cu_seqlens[b.seq], b.len = a.cu_seqlens[b.seq + 1] - b.start;
  return b;
}

// The flash backward's per-query values of rows m0 .. m0 + rows - 1 of head h (block b) into shared memory, by the
// block's first `rows` threads: lse log2 e and delta ([H, N] each), 0 past the sequence's end.
__device__ __forceinline__ void attn_bwd_row_stats(float* lse2_s, float* delta_s, const float* lse, const float* delta,
                                                   int64_t N, const AttnBwdBlock& b, int h, int m0, int rows) {
  if ((int)threadIdx.x < rows) {
    const bool ok = m0 + (int)threadIdx.x < b.len;
    const int64_t idx = (int64_t)h * N + b.start + m0 + threadIdx.x;
    lse2_s[threadIdx.x] = ok ? lse[idx] * kLog2e : 0.f;
    delta_s[threadIdx.x] = ok ? delta[idx] : 0.f;
  }
}

// The flash backward's P^T and dS^T for one warp's 16 keys (this thread's: key0 and key0 + 8) x 64 queries m0..:
// p holds S^T and ds holds dP^T (mma's C layout, query = column); afterwards p = exp(scale S - lse) and
// ds = p (dP - delta), with lse2 (lse log2 e) and delta per query column. Where `edge`, entries outside the causal
// (and window, if > 0) range or past len are 0.
__device__ __forceinline__ void attn_bwd_probs(float (&p)[8][4], float (&ds)[8][4], bool edge, const float* lse2,
                                               const float* delta, float sl2, int m0, int key0, int len, int window,
                                               int lane) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int qr = j * 8 + (lane % 4) * 2 + (e & 1);
      float pe = ex2(fmaf(p[j][e], sl2, -lse2[qr]));
      if (edge) {
        const int qp = m0 + qr, kp = key0 + (e >> 1) * 8;
        const bool vis = kp <= qp && qp < len && kp < len && !(window > 0 && kp <= qp - window);
        pe = vis ? pe : 0.f;
      }
      p[j][e] = pe;
      ds[j][e] = pe * (ds[j][e] - delta[qr]);
    }
}

// acc += P V for one warp: P a 16 x 8 NJ block in the accumulators of qk_tile (the C layout of S is the A layout
// of P), V rows 0.. of the shared tile Vs (leading dimension LD), acc in NT accumulator blocks of 8 columns. Also
// the backward's products dQ += dS K, dV += P^T dO, dK += dS^T Q (the shared tile is then K, dO or Q).
template <int NT, int NJ>
__device__ __forceinline__ void pv_add(float (&acc)[NT][4], const float (&p)[NJ][4], const uint16_t* Vs, int LD,
                                       int lane) {
#pragma unroll
  for (int kk = 0; kk < NJ / 2; ++kk) {
    uint32_t af[4];
    acc_to_a(af, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int dt = 0; dt < NT / 2; ++dt) {
      uint32_t bf[4];
      ldsm_x4_t(bf, Vs + (kk * 16 + (lane & 15)) * LD + dt * 16 + (lane >> 4) * 8);
      mma16816(acc[2 * dt], af, bf[0], bf[1]);
      mma16816(acc[2 * dt + 1], af, bf[2], bf[3]);
    }
  }
}

// O = alpha O + P V (FlashAttention's update): rows lane / 4 and lane / 4 + 8 of O scale by alpha[0] and alpha[1].
template <int NT, int NJ>
__device__ __forceinline__ void pv_accumulate(float (&acc)[NT][4], const float (&alpha)[2], const float (&p)[NJ][4],
                                              const uint16_t* Vs, int LD, int lane) {
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] *= alpha[0], acc[i][1] *= alpha[0], acc[i][2] *= alpha[1], acc[i][3] *= alpha[1];
  pv_add<NT, NJ>(acc, p, Vs, LD, lane);
}

}  // namespace nt::cuda::sm80
