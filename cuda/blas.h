// Matrix products through cuBLASLt. Row-major semantics: C[M, N] = op(A) [M, K] @ op(B) [K, N], where A is stored
// row-major as [M, K] with leading dimension lda (or as [K, M] when ta), likewise B; C is row-major with ldc.
// batch > 1 walks A, B and C by their batch strides (0 broadcasts an operand). bf16 and f32 inputs accumulate in
// f32 (f32 uses TF32 tensor cores only when allowed); f64 accumulates in f64.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "tensor/dtype.h"

namespace nt::cuda {
void gemm(DType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* A, bool ta, int64_t lda, int64_t stride_a,
          const void* B, bool tb, int64_t ldb, int64_t stride_b, void* C, int64_t ldc, int64_t stride_c, int device,
          cudaStream_t stream);
// Grouped GEMMs (MoE experts): per group g, C_g [M_g, N_g] = op(A_g) @ op(B_g), row-major as gemm() with the
// same transposes for every group, each with its own sizes, pointers and leading dims. Groups with M_g or N_g = 0
// are skipped; groups with K_g = 0 get C_g = 0. bf16/f32 run one cuBLASLt GEMM per group, largest first, spread
// over `stream` and three side streams (each with its own workspace) that start after the work queued on
// `stream` and that `stream` waits for: one expert's GEMM fills about a third of an H100. f64, or all dtypes after
// set_grouped_gemm_streams(false) (or NT_GROUPED_GEMM=cublas), make one cublasGemmGroupedBatchedEx call instead.
struct GemmGroup {
  int64_t M, N, K;
  const void* A;
  int64_t lda;
  const void* B;
  int64_t ldb;
  void* C;
  int64_t ldc;
};
void grouped_gemm(DType t, bool ta, bool tb, const std::vector<GemmGroup>& groups, int device, cudaStream_t stream);
// f32 matmuls may use TF32 (10-bit mantissa) tensor cores; off by default, as PyTorch.
void set_allow_tf32(bool on);

// How grouped_matmul runs on CUDA. kernel: bf16 on sm_90 with K and N multiples of 8 takes the Hopper kernel below
// (group sizes read on the device, one launch), everything else grouped_gemm() (per-group cuBLASLt over four
// streams); per_group: always grouped_gemm(); cublas_grouped: grouped_gemm() as one cuBLAS grouped call;
// automatic (default): kernel while groups average under 1024 rows, else per_group (H100, 2026-11-23: the kernel
// runs at 450-510 TFLOP/s whatever the group size, per-expert cuBLASLt at 355 with 768-row groups and 690 with
// 1365-row ones). Start-up default from NT_GROUPED_GEMM (kernel | streams | cublas).
enum class GroupedBackend { automatic, kernel, per_group, cublas_grouped };
void set_grouped_gemm_backend(GroupedBackend b);
GroupedBackend grouped_gemm_backend();

// The Hopper grouped GEMMs (cuda/grouped_gemm.cu), bf16 with f32 accumulation, offsets [G + 1] i32 on the device:
//   rows:  C[o_g : o_g+1] = A[o_g : o_g+1] @ W[g] (W [G, K, N]) or @ W[g]^T (trans_w, W [G, N, K]); A [M, K], C [M, N]
//   wgrad: C[g] = A[o_g : o_g+1]^T @ B[o_g : o_g+1], A [M, Kx], B [M, N], C [G, Kx, N] (zero for empty groups).
// fits: the sizes suit it (N, K multiples of 8); cuda::sm90a_available (cuda/runtime.h) says whether the device runs it.
bool grouped_gemm_sm90_fits(int64_t G, int64_t M, int64_t N, int64_t K);
void grouped_gemm_rows_bf16(const void* A, const void* W, bool trans_w, void* C, const int32_t* offsets, int64_t G,
                            int64_t M, int64_t N, int64_t K, int device, cudaStream_t stream);
void grouped_gemm_wgrad_bf16(const void* A, const void* B, void* C, const int32_t* offsets, int64_t G, int64_t M,
                             int64_t Kx, int64_t N, int device, cudaStream_t stream);
bool allow_tf32();
}  // namespace nt::cuda
