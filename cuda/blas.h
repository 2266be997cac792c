// Matrix products through cuBLASLt. Row-major semantics: C[M, N] = op(A) [M, K] @ op(B) [K, N], where A is stored
// row-major as [M, K] with leading dimension lda (or as [K, M] when ta), likewise B; C is row-major with ldc.
// batch > 1 walks A, B and C by their batch strides (0 broadcasts an operand). bf16 and f32 inputs accumulate in
// f32 (f32 uses TF32 tensor cores only when allowed); f64 accumulates in f64.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "tensor/dtype.h"

namespace nt::cuda {
void gemm(DType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* A, bool ta, int64_t lda, int64_t stride_a,
          const void* B, bool tb, int64_t ldb, int64_t stride_b, void* C, int64_t ldc, int64_t stride_c, int device,
          cudaStream_t stream);
// f32 matmuls may use TF32 (10-bit mantissa) tensor cores; off by default, as PyTorch.
void set_allow_tf32(bool on);
bool allow_tf32();
}  // namespace nt::cuda
