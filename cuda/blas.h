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
void set_grouped_gemm_streams(bool on);
bool allow_tf32();
}  // namespace nt::cuda
