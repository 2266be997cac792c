// NSA's selected branch, forward, on tensor cores (bf16), group-centric as in the paper: one warp per (position t,
// key/value head h) holds the group's G query heads as the rows of one 16-row tile (G <= 16; the other rows are
// zeros), walks the blocks chosen for (t, h) in ascending order, 32 keys at a time (keys <= t only), with
// FlashAttention's online softmax: S = Q K^T and O += P V by mma.sync, f32 accumulation. It writes the branch's
// output and log-sum-exp (f32) into the fused op's branch_o[1] / lse[1]; the CUDA-core kernel then mixes the gates,
// and the backward (still on CUDA cores) reads them as if it had computed them.
// Traffic: each chosen key block is read once per (position, key/value head) for all G heads; neighbouring
// positions mostly choose the same blocks, which L2 serves. Shared memory: per warp, Q (16 rows) and a 32-key
// chunk of K and V.
#include "cuda/common.cuh"
#include "cuda/mma_sm80.cuh"

namespace nt::cuda {
namespace {
using namespace sm80;
constexpr int kWarpsSlc = 4, kChunk = 32;

template <int DP> constexpr size_t slc_smem() { return (size_t)kWarpsSlc * (16 + 2 * kChunk) * (DP + 8) * 2; }

template <int DP>
__global__ void __launch_bounds__(kWarpsSlc * 32) nsa_slc_fwd_tc(const uint16_t* __restrict__ q,
                                                                 const uint16_t* __restrict__ ks,
                                                                 const uint16_t* __restrict__ vs,
                                                                 const int32_t* __restrict__ block_indices,
                                                                 float* __restrict__ branch_o, float* __restrict__ lse,
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
  const int G = a.G;
  const int64_t row = start + t;
  for (int i = lane; i < 16 * CH; i += 32) {  // rows g < G: heads h G + g of position t (contiguous)
    const int r = i / CH, c = (i % CH) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < G && c < a.D) v = *reinterpret_cast<const uint4*>(q + (row * a.HQ + h * G + r) * a.D + c);
    *reinterpret_cast<uint4*>(Qs + r * LD + c) = v;
  }
  const int32_t* blocks = block_indices + (row * a.H + h) * a.n;
  const float sl2 = (float)a.scale * kLog2e;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  for (int bi = 0; bi < a.n; ++bi) {
    const int b = blocks[bi];
    if (b < 0) break;  // -1 only after the chosen blocks
    const int k_hi = min((b + 1) * a.lp, t + 1);
    for (int n0 = b * a.lp; n0 < k_hi; n0 += kChunk) {
      __syncwarp();  // every lane is done with the previous chunk (and Q is stored)
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
      float s[4][4];
      qk_tile<DP, 4>(s, Qs, Ks, LD, 0, lane);
      // Keys past the block's end or past t; every chunk keeps at least its first key, so no row is empty.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (n0 + j * 8 + (lane % 4) * 2 + (e & 1) >= k_hi) s[j][e] = -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
        }
      float alpha[2], ref[2];
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
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = ex2(fmaf(s[j][e], sl2, -ref[e >> 1]));
          l_run[e >> 1] += s[j][e];
        }
      pv_accumulate<NT, 4>(acc, alpha, s, Vs, LD, lane);
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
    const int g = lane / 4 + 8 * i;
    if (g >= G) continue;
    const int64_t o = ((int64_t)a.N + row) * a.HQ + h * G + g;  // branch 1
    const float inv = 1.f / l_run[i];
    float* out = branch_o + o * a.D;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + (lane % 4) * 2;
      if (c < a.D) out[c] = acc[nt][2 * i] * inv, out[c + 1] = acc[nt][2 * i + 1] * inv;
    }
    if (lane % 4 == 0) lse[o] = (m_run[i] + log2f(l_run[i])) / kLog2e;
  }
}
}  // namespace

bool nsa_selected_tc_supported(const NsaDims& a) { return a.D % 8 == 0 && a.D <= 256 && a.G <= 16; }

void nsa_selected_forward_tc(const void* q, const void* k_slc, const void* v_slc, const int32_t* block_indices,
                             float* branch_o, float* lse, const NsaDims& a, int max_len, cudaStream_t stream) {
  if (a.N == 0 || max_len == 0) return;
  const dim3 grid((unsigned)((max_len + kWarpsSlc - 1) / kWarpsSlc), (unsigned)a.nseq, (unsigned)a.H);
  auto run = [&](auto kernel, size_t smem) {
    allow_smem(kernel, smem);
    kernel<<<grid, kWarpsSlc * 32, smem, stream>>>(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k_slc),
                                                    static_cast<const uint16_t*>(v_slc), block_indices, branch_o, lse, a);
    NT_CUDA_CHECK(cudaGetLastError());
  };
  if (a.D <= 64) run(nsa_slc_fwd_tc<64>, slc_smem<64>());
  else if (a.D <= 128) run(nsa_slc_fwd_tc<128>, slc_smem<128>());
  else run(nsa_slc_fwd_tc<256>, slc_smem<256>());
}

}  // namespace nt::cuda
