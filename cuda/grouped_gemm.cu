// Grouped bf16 GEMMs on Hopper tensor cores (MoE experts), group sizes read on the device: no host sync, one launch.
//   rows:  C[o_g : o_g+1] = A[o_g : o_g+1] @ W[g]   (or @ W[g]^T)   A [M, K], W [G, K, N] (or [G, N, K]), C [M, N]
//          the forward and the input gradient of grouped_matmul;
//   wgrad: C[g] = A[o_g : o_g+1]^T @ B[o_g : o_g+1]                  A [M, Kx], B [M, N], C [G, Kx, N]
//          its weight gradient (the reduction runs over a group's rows; a group without rows gets C[g] = 0).
// o = offsets [G + 1], i32 on the device. f32 accumulation, bf16 out.
//
// One persistent block per SM walks BM x BN output tiles (128 x 128, 128 x 256 or 256 x 128: pick_tiles), groups one
// after another, n fastest. Warp 0 of warpgroup 0 is the producer: TMA copies the BM x 64 A tile and the BN x 64 B
// tile into a ring of shared-memory stages (full/empty mbarriers; it runs ahead into the next tile). Warpgroups 1 ..
// BM / 64 each multiply 64 rows of the tile with wgmma m64nBNk16 (f32 accumulators in registers, one k-tile's
// products kept in flight) and store bf16 from registers, masking rows past the group's end and columns past N
// (with four consumer warpgroups, 640 threads, the compiler keeps every thread under 96 registers: no setmaxnreg).
// A tile that runs past its group's rows reads the next group's rows: in `rows` those outputs are never stored, in
// `wgrad` they are zeroed in shared memory before the multiply (they would add to the sum). Traffic: every output
// tile reads its A rows and B columns once (L2 serves the re-reads across a group's tiles); C is written once. Needs
// K, N (and Kx) multiples of 8 (TMA's 16-byte strides); the host falls back to cuBLAS otherwise.
// Measured (H100, docs/moe.md): 450-510 TFLOP/s with 128-row tiles, L2-throughput-bound (Nsight: L2 80-88%, hit
// rate 67-70%, consumers mostly waiting on the full barriers); 256 x 128 tiles reach ~510. Pairing CTAs in
// 2-clusters that multicast the shared B tile was tried and ran at half the speed (not kept).
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "cuda/blas.h"
#include "cuda/check.h"
#include "cuda/hopper.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
using namespace sm90;

constexpr int kBK = 64, kMaxGroups = 1024;
constexpr int kAtom = 64 * 128;  // bytes of one 64-row x 128-byte swizzle atom column

// BM = 128 (two consumer warpgroups) or 256 (four; BN = 128 only: 64 accumulators per thread fit 640 threads).
template <int BM, int BN> struct Tiles {
  static constexpr int kConsumers = BM / 64, kThreads = 128 * (1 + kConsumers);
  static constexpr int kStages = BM * BN >= 32768 ? 4 : 6;
  static constexpr int kABytes = BM * kBK * 2, kBBytes = BN * kBK * 2, kStageBytes = kABytes + kBBytes;
  // stages, then full/empty barriers, then the offsets and each group's first tile
  static constexpr int kSmem = 1024 + kStages * kStageBytes + 2 * kStages * 8 + 2 * (kMaxGroups + 1) * 4;
};

struct Problem {
  int G, M, N, K;  // rows: C [M, N], reduction K. wgrad: M = Kx (C [G, Kx, N]); group rows are the reduction
  const int32_t* offsets;
  __nv_bfloat16* C;
  int store16;  // the epilogue's 16-byte stores (store_rows_16b) instead of 4-byte ones (experimental)
};

// The epilogue with 16-byte stores: a thread's accumulators hold rows r and r + 8, columns 8j + 2q (+1) (q = lane
// % 4). Two exchanges in each group of 4 lanes (xor 1: rows; xor 2: column segments j, j + 1) leave each lane with
// 8 consecutive columns of one row (lanes q = 0, 2: row r, segments 2m and 2m + 1; q = 1, 3: row r + 8), so a warp's
// store writes 16 whole 32-byte sectors instead of 8 half ones: a quarter of the store instructions and no
// partial-sector merges in L2. Every lane takes part in the shuffles; the masks come after them.
template <int BN>
__device__ __forceinline__ void store_rows_16b(const float (&acc)[BN / 2], __nv_bfloat16* base, int row0, int r,
                                               int rows, int n0, int N, int lane) {
  const int q = lane % 4, hi = q >> 1;
  const int row = r + ((q & 1) ? 8 : 0);
  __nv_bfloat16* out = base + (size_t)(row0 + row) * N + n0;
  auto pack = [](float a, float b) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&v);
  };
#pragma unroll
  for (int m = 0; m < BN / 16; ++m) {
    uint32_t w[2][2];  // after the first exchange: segment 2m + jj, row `row`, columns 4 hi .. 4 hi + 3
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      const int j = 2 * m + jj;
      const uint32_t lo = pack(acc[4 * j], acc[4 * j + 1]), up = pack(acc[4 * j + 2], acc[4 * j + 3]);  // rows r, r + 8
      const uint32_t got = __shfl_xor_sync(0xffffffffu, (q & 1) ? lo : up, 1);
      w[jj][0] = (q & 1) ? got : lo;
      w[jj][1] = (q & 1) ? up : got;
    }
    const uint32_t s0 = hi ? w[0][0] : w[1][0], s1 = hi ? w[0][1] : w[1][1];
    const uint32_t g0 = __shfl_xor_sync(0xffffffffu, s0, 2), g1 = __shfl_xor_sync(0xffffffffu, s1, 2);
    const uint4 v = hi ? make_uint4(g0, g1, w[1][0], w[1][1]) : make_uint4(w[0][0], w[0][1], g0, g1);
    const int col = 8 * (2 * m + hi);
    if (row < rows && n0 + col < N) *reinterpret_cast<uint4*>(out + col) = v;
  }
}

struct Tile {
  int g, row0, rows;  // rows: first A/C row and valid rows; wgrad: first row of C[g] and valid rows (of Kx)
  int n0, k_tiles, red0, red_len;  // wgrad: the group's reduction rows [red0, red0 + red_len)
};

// Tile t in group order: rows has ceil(count_g / BM) * n_tiles tiles per group (a group's first tile in start[]),
// wgrad ceil(Kx / BM) * n_tiles in every group; n fastest.
template <int kBM, bool kWgrad>
__device__ __forceinline__ Tile decode(int t, const Problem& p, const int32_t* off, const int32_t* start, int n_tiles,
                                       int BN) {
  Tile tl;
  int local;
  if constexpr (kWgrad) {
    const int per = ((p.M + kBM - 1) / kBM) * n_tiles;
    tl.g = t / per, local = t % per;
  } else {
    int lo = 0, hi = p.G;  // the last group whose first tile is <= t (empty groups share their successor's start)
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (start[mid] <= t) lo = mid;
      else hi = mid;
    }
    tl.g = lo, local = t - start[lo];
  }
  const int mt = local / n_tiles;
  tl.n0 = (local % n_tiles) * BN;
  const int count = off[tl.g + 1] - off[tl.g];
  if constexpr (kWgrad) {
    tl.row0 = mt * kBM, tl.rows = min(kBM, p.M - tl.row0);
    tl.red0 = off[tl.g], tl.red_len = count, tl.k_tiles = (count + kBK - 1) / kBK;
  } else {
    tl.row0 = off[tl.g] + mt * kBM, tl.rows = min(kBM, count - mt * kBM);
    tl.red0 = 0, tl.red_len = p.K, tl.k_tiles = (p.K + kBK - 1) / kBK;
  }
  return tl;
}

// kBKMajor: B's tile is K-major (rows with W transposed); otherwise MN-major. A is K-major in rows, MN-major in wgrad.
template <int BM, int BN, bool kWgrad, bool kBKMajor>
__global__ void __launch_bounds__(Tiles<BM, BN>::kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b, Problem p) {
#ifdef NT_SM90A
  using T = Tiles<BM, BN>;
  constexpr int kBM = BM, kC = T::kConsumers;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_align(smem_raw);
  uint64_t* full = (uint64_t*)(smem + T::kStages * T::kStageBytes);
  uint64_t* empty = full + T::kStages;
  int32_t* off = (int32_t*)(empty + T::kStages);
  int32_t* start = off + kMaxGroups + 1;
  auto stage_a = [&](int s) { return smem + s * T::kStageBytes; };
  auto stage_b = [&](int s) { return smem + s * T::kStageBytes + T::kABytes; };

  const int wg = threadIdx.x / 128, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int n_tiles = (p.N + BN - 1) / BN;
  for (int i = threadIdx.x; i <= p.G; i += blockDim.x) off[i] = p.offsets[i];
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], 4 * kC);
    mbar_fence_init();
  }
  __syncthreads();
  int total;
  if constexpr (kWgrad) {
    total = p.G * ((p.M + kBM - 1) / kBM) * n_tiles;
  } else {
    if (warp == 0) {  // first tile of each group: a warp-wide running sum over groups, 32 at a time
      int carry = 0;
      for (int base = 0; base < p.G; base += 32) {
        const int g = base + lane;
        const int n = g < p.G ? ((off[g + 1] - off[g] + kBM - 1) / kBM) * n_tiles : 0;
        int incl = n;
        for (int d = 1; d < 32; d <<= 1) {
          const int v = __shfl_up_sync(0xffffffffu, incl, d);
          if (lane >= d) incl += v;
        }
        if (g < p.G) start[g] = carry + incl - n;
        carry += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (lane == 0) start[p.G] = carry;
    }
    __syncthreads();
    total = start[p.G];
  }

  if (wg == 0) {
    if constexpr (kC == 2) setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(&map_a), tma_prefetch_map(&map_b);
      int s = 0;
      uint32_t phase = 0;
      for (int t = blockIdx.x; t < total; t += gridDim.x) {
        const Tile tl = decode<kBM, kWgrad>(t, p, off, start, n_tiles, BN);
        for (int kt = 0; kt < tl.k_tiles; ++kt) {
          mbar_wait(&empty[s], phase ^ 1);
          mbar_expect_tx(&full[s], T::kStageBytes);
          unsigned char *a = stage_a(s), *b = stage_b(s);
          if constexpr (kWgrad) {  // A = rows of [M, Kx] (MN-major atoms), B = rows of [M, N]
            const int r0 = tl.red0 + kt * kBK;
#pragma unroll
            for (int i = 0; i < kC; ++i) tma_load_2d(a + i * kAtom, &map_a, &full[s], tl.row0 + 64 * i, r0);
#pragma unroll
            for (int i = 0; i < BN / 64; ++i) tma_load_2d(b + i * kAtom, &map_b, &full[s], tl.n0 + 64 * i, r0);
          } else {
            tma_load_2d(a, &map_a, &full[s], kt * kBK, tl.row0);
            if constexpr (kBKMajor) {  // W [G, N, K]: BN rows of 64 k
              tma_load_3d(b, &map_b, &full[s], kt * kBK, tl.n0, tl.g);
            } else {  // W [G, K, N]: 64 k rows of 64 n per atom
#pragma unroll
              for (int i = 0; i < BN / 64; ++i) tma_load_3d(b + i * kAtom, &map_b, &full[s], tl.n0 + 64 * i, kt * kBK, tl.g);
            }
          }
          if (++s == T::kStages) s = 0, phase ^= 1;
        }
      }
    }
  } else {
    // Consumers: warpgroup c = wg - 1 owns rows [64 c, 64 c + 64) of the tile.
    if constexpr (kC == 2) setmaxnreg_inc<232>();
    const int c = wg - 1, tid = threadIdx.x - 128;
    float acc[BN / 2];
    int s = 0;
    uint32_t phase = 0;
    auto release = [&](int stage) {  // this warp is done reading the stage
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[stage]);
    };
    for (int t = blockIdx.x; t < total; t += gridDim.x) {
      const Tile tl = decode<kBM, kWgrad>(t, p, off, start, n_tiles, BN);
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
      int prev = -1;
      for (int kt = 0; kt < tl.k_tiles; ++kt) {
        mbar_wait(&full[s], phase);
        unsigned char *a = stage_a(s), *b = stage_b(s);
        if constexpr (kWgrad) {
          const int valid = tl.red_len - kt * kBK;
          if (valid < kBK) {  // the group ends inside this tile: zero rows [valid, 64) of every atom
            const int atoms = kC + BN / 64, per_atom = (kBK - valid) * 8;
            for (int i = tid; i < atoms * per_atom; i += 128 * kC) {
              const int atom = i / per_atom, r = valid + (i % per_atom) / 8, chunk = i % 8;
              *(uint4*)(a + atom * kAtom + r * 128 + chunk * 16) = make_uint4(0, 0, 0, 0);
            }
            fence_async_smem();
            named_barrier(1, 128 * kC);
          }
        }
        fence_regs(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
          uint64_t da, db;
          if constexpr (kWgrad) da = smem_desc(smem_addr(a + c * kAtom + kk * 2048), kAtom, 1024);
          else da = smem_desc(smem_addr(a + c * 64 * 128 + kk * 32), 16, 1024);
          if constexpr (kBKMajor) db = smem_desc(smem_addr(b + kk * 32), 16, 1024);
          else db = smem_desc(smem_addr(b + kk * 2048), kAtom, 1024);
          if constexpr (BN == 256) wgmma_m64n256<kWgrad ? 1 : 0, kBKMajor ? 0 : 1>(acc, da, db);
          else wgmma_m64n128<kWgrad ? 1 : 0, kBKMajor ? 0 : 1>(acc, da, db);
        }
        wgmma_commit();
        wgmma_wait<1>();  // this k-tile's products stay in flight; the previous one's stage is free
        fence_regs(acc);
        if (prev >= 0) release(prev);
        prev = s;
        if (++s == T::kStages) s = 0, phase ^= 1;
      }
      wgmma_wait<0>();
      fence_regs(acc);
      if (prev >= 0) release(prev);
      // Store: this thread's rows r and r + 8 of the warpgroup's 64, columns n0 + 8j + 2 (lane % 4) (+1).
      const int r = 64 * c + 16 * (warp % 4) + lane / 4;
      __nv_bfloat16* base = p.C + (kWgrad ? (size_t)tl.g * p.M * p.N : 0);
      if (p.store16) {
        store_rows_16b<BN>(acc, base, tl.row0, r, tl.rows, tl.n0, p.N, lane);
        continue;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = r + 8 * h;
        if (row >= tl.rows) continue;
        __nv_bfloat16* out = base + (size_t)(tl.row0 + row) * p.N + tl.n0 + 2 * (lane % 4);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
          if (tl.n0 + 8 * j < p.N)
            *(__nv_bfloat162*)(out + 8 * j) = __floats2bfloat162_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      }
    }
  }
#endif
}



template <int BM, int BN, bool kWgrad, bool kBKMajor>
void launch(const CUtensorMap& a, const CUtensorMap& b, const Problem& p, int64_t max_tiles, int device,
            cudaStream_t stream) {
  using T = Tiles<BM, BN>;
  auto kernel = grouped_gemm_kernel<BM, BN, kWgrad, kBKMajor>;
  static std::once_flag once[64];
  std::call_once(once[device], [&] {
    NT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmem));
  });
  const int grid = (int)std::max<int64_t>(1, std::min<int64_t>(multiprocessor_count(device), max_tiles));
  kernel<<<grid, T::kThreads, T::kSmem, stream>>>(a, b, p);
  NT_CUDA_CHECK_LAUNCH();
}

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

struct TileShape {
  int BM, BN;
};

// NT_GROUPED_STORE16=0: the 4-byte-store epilogue, for comparison (not yet measured which is faster).
int store16() {
  static const int v = [] {
    const char* e = std::getenv("NT_GROUPED_STORE16");
    return e && e[0] == '0' ? 0 : 1;
  }();
  return v;
}

// Output tiles: 128 x 256 where N pads no further to 256 than to 128 columns; otherwise 256 x 128 where the rows
// allow it (tall256: the weight gradient's Kx pads no further to 256 than to 128, or in `rows` the groups average
// 512 rows or more, so the last tile of a group wastes little), else 128 x 128. Per k-step a 128 x 128 tile reads
// 32 KB from L2 for 2.1 MFLOP, the larger ones 48 KB for 4.2: the kernel is bound by L2 throughput (docs/moe.md),
// so the larger tiles win where their padding is small. H100, 8192 tokens x top-6, 64 experts, N = 1408: x @ w1
// 0.622 -> 0.557 ms with 256 x 128 instead of 128 x 128.
// NT_GROUPED_BM=128|256 and NT_GROUPED_BN=128|256 (with BM 128) force a shape, for comparisons.
TileShape pick_tiles(int64_t N, bool tall256) {
  static const int forced_bm = env_int("NT_GROUPED_BM"), forced_bn = env_int("NT_GROUPED_BN");
  if (forced_bm == 256) return {256, 128};
  if (forced_bn == 128 || forced_bn == 256) return {128, forced_bn};
  if ((N + 255) / 256 * 256 <= (N + 127) / 128 * 128) return {128, 256};
  return {tall256 && forced_bm != 128 ? 256 : 128, 128};
}
}  // namespace

bool grouped_gemm_sm90_fits(int64_t G, int64_t M, int64_t N, int64_t K) {
  return G >= 1 && G <= kMaxGroups && M < INT32_MAX && N < INT32_MAX && K < INT32_MAX && N % 8 == 0 && K % 8 == 0;
}

void grouped_gemm_rows_bf16(const void* A, const void* W, bool trans_w, void* C, const int32_t* offsets, int64_t G,
                            int64_t M, int64_t N, int64_t K, int device, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  const auto [BM, BN] = pick_tiles(N, M >= 512 * G);
  const uint64_t a_dims[2] = {(uint64_t)K, (uint64_t)M}, a_strides[1] = {(uint64_t)K * 2};
  const uint32_t a_box[2] = {64, (uint32_t)BM};
  const CUtensorMap ma = tensor_map_bf16(A, 2, a_dims, a_strides, a_box);
  // W [G, K, N]: boxes of 64 n x 64 k; W [G, N, K] (trans_w): boxes of 64 k x BN n.
  const uint64_t w_dims[3] = {(uint64_t)(trans_w ? K : N), (uint64_t)(trans_w ? N : K), (uint64_t)G};
  const uint64_t w_strides[2] = {w_dims[0] * 2, w_dims[0] * w_dims[1] * 2};
  const uint32_t w_box[3] = {64, trans_w ? (uint32_t)BN : 64u, 1};
  const CUtensorMap mb = tensor_map_bf16(W, 3, w_dims, w_strides, w_box);
  const Problem p{(int)G, (int)M, (int)N, (int)K, offsets, (__nv_bfloat16*)C, store16()};
  const int64_t max_tiles = (M / BM + G) * ((N + BN - 1) / BN);
  if (BM == 256) {
    if (trans_w) launch<256, 128, false, true>(ma, mb, p, max_tiles, device, stream);
    else launch<256, 128, false, false>(ma, mb, p, max_tiles, device, stream);
  } else if (BN == 256) {
    if (trans_w) launch<128, 256, false, true>(ma, mb, p, max_tiles, device, stream);
    else launch<128, 256, false, false>(ma, mb, p, max_tiles, device, stream);
  } else {
    if (trans_w) launch<128, 128, false, true>(ma, mb, p, max_tiles, device, stream);
    else launch<128, 128, false, false>(ma, mb, p, max_tiles, device, stream);
  }
}

void grouped_gemm_wgrad_bf16(const void* A, const void* B, void* C, const int32_t* offsets, int64_t G, int64_t M,
                             int64_t Kx, int64_t N, int device, cudaStream_t stream) {
  if (Kx == 0 || N == 0) return;
  const auto [BM, BN] = pick_tiles(N, (Kx + 255) / 256 * 256 <= (Kx + 127) / 128 * 128);
  const uint64_t a_dims[2] = {(uint64_t)Kx, (uint64_t)std::max<int64_t>(M, 1)}, a_strides[1] = {(uint64_t)Kx * 2};
  const uint64_t b_dims[2] = {(uint64_t)N, (uint64_t)std::max<int64_t>(M, 1)}, b_strides[1] = {(uint64_t)N * 2};
  const uint32_t box[2] = {64, 64};
  const CUtensorMap ma = tensor_map_bf16(A, 2, a_dims, a_strides, box), mb = tensor_map_bf16(B, 2, b_dims, b_strides, box);
  const Problem p{(int)G, (int)Kx, (int)N, 0, offsets, (__nv_bfloat16*)C, store16()};
  const int64_t max_tiles = G * ((Kx + BM - 1) / BM) * ((N + BN - 1) / BN);
  if (BM == 256) launch<256, 128, true, false>(ma, mb, p, max_tiles, device, stream);
  else if (BN == 256) launch<128, 256, true, false>(ma, mb, p, max_tiles, device, stream);
  else launch<128, 128, true, false>(ma, mb, p, max_tiles, device, stream);
}

}  // namespace nt::cuda
