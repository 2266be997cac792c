// CPU matmul: one GEMM per batch entry, through CBLAS (OpenBLAS) when the build has it, else a plain loop that
// accumulates in double. Operands whose last two dims are row- or column-major are passed without a copy
// (a transposed view becomes a transposed GEMM); bf16 is computed in f32.
#include <vector>

#include "ops/cpu/copy.h"
#include "ops/cpu/loops.h"
#include "tensor/convert.h"
#if NT_HAVE_CBLAS
#include <cblas.h>
#endif

namespace nt::cpu {
namespace {
struct MatLayout {
  bool ok = false, trans = false;
  int64_t ld = 0;
};
// How a GEMM can read an R x C matrix with strides (sr, sc).
MatLayout layout(int64_t R, int64_t C, int64_t sr, int64_t sc) {
  if ((sc == 1 || C == 1) && (sr >= std::max<int64_t>(1, C) || R == 1)) return {true, false, R == 1 ? std::max<int64_t>(1, C) : sr};
  if ((sr == 1 || R == 1) && (sc >= std::max<int64_t>(1, R) || C == 1)) return {true, true, C == 1 ? std::max<int64_t>(1, R) : sc};
  return {};
}

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C) {
#if NT_HAVE_CBLAS
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                1.f, A, (int)lda, B, (int)ldb, 0.f, C, (int)N);
    return;
  } else {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                1.0, A, (int)lda, B, (int)ldb, 0.0, C, (int)N);
    return;
  }
#endif
  std::vector<double> row(N);
  for (int64_t i = 0; i < M; ++i) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int64_t k = 0; k < K; ++k) {
      const double aik = (double)(ta ? A[k * lda + i] : A[i * lda + k]);
      if (aik == 0) continue;
      for (int64_t j = 0; j < N; ++j) row[j] += aik * (double)(tb ? B[j * ldb + k] : B[k * ldb + j]);
    }
    for (int64_t j = 0; j < N; ++j) C[i * N + j] = (T)row[j];
  }
}

template <class T> void matmul_typed(Tensor a, Tensor b, const Tensor& out) {
  const int64_t nd = out.dim(), M = out.size(-2), N = out.size(-1), K = a.size(-1);
  MatLayout la = layout(M, K, a.stride(-2), a.stride(-1)), lb = layout(K, N, b.stride(-2), b.stride(-1));
  if (!la.ok) a = contiguous_raw(a), la = layout(M, K, a.stride(-2), a.stride(-1));
  if (!lb.ok) b = contiguous_raw(b), lb = layout(K, N, b.stride(-2), b.stride(-1));
  const Shape batch(out.shape().begin(), out.shape().end() - 2);
  const Shape as(a.strides().begin(), a.strides().end() - 2), bs(b.strides().begin(), b.strides().end() - 2),
      os(out.strides().begin(), out.strides().end() - 2);
  const T *ap = static_cast<const T*>(a.data_ptr()), *bp = static_cast<const T*>(b.data_ptr());
  T* op = static_cast<T*>(out.data_ptr());
  (void)nd;
  if (M == 0 || N == 0) return;
  for_each_offset<3>(batch, {os, as, bs}, [&](const auto& o) {
    gemm<T>(la.trans, lb.trans, M, N, K, ap + o[1], la.ld, bp + o[2], lb.ld, op + o[0]);
  });
}
}  // namespace

// a [..., M, K], b [..., K, N] already expanded to out's batch dims; out contiguous.
void matmul_forward(const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (a.dtype()) {
    case DType::f32: matmul_typed<float>(a, b, out); break;
    case DType::f64: matmul_typed<double>(a, b, out); break;
    case DType::bf16: {
      Tensor a32 = empty(a.shape(), DType::f32), b32 = empty(b.shape(), DType::f32), o32 = empty(out.shape(), DType::f32);
      copy(a32, a), copy(b32, b);
      matmul_typed<float>(a32, b32, o32);
      copy(out, o32);
      break;
    }
    default: throw Error(fmt::format("matmul: dtype {} is not supported", dtype_name(a.dtype())));
  }
}
}  // namespace nt::cpu
