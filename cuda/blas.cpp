// cuBLASLt GEMMs. cuBLAS is column-major: the row-major product C = op(A) op(B) is computed as the column-major
// C^T = op(B)^T op(A)^T, so B is passed first and no data is copied or transposed. Descriptors, layouts and the
// heuristic's algorithm are cached per problem shape; one 32 MiB workspace per device comes from the caching
// allocator. Grouped GEMMs run per group over four streams (or through cuBLAS's grouped batched API).
#include "cuda/blas.h"

#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "tensor/error.h"

namespace nt::cuda {
namespace {
bool g_tf32 = false;
GroupedBackend g_grouped = [] {
  const char* v = std::getenv("NT_GROUPED_GEMM");
  const std::string s = v ? v : "";
  return s == "cublas"    ? GroupedBackend::cublas_grouped
         : s == "streams" ? GroupedBackend::per_group
         : s == "kernel"  ? GroupedBackend::kernel
                          : GroupedBackend::automatic;
}();
constexpr size_t kWorkspace = 32u << 20;

const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS status";
  }
}
void check_lt(cublasStatus_t s, const char* expr, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(fmt::format("cuBLASLt error at {}:{}: {} failed: {} ({})", file, line, expr, status_name(s), (int)s));
}
#define NT_LT_CHECK(expr) check_lt((expr), #expr, __FILE__, __LINE__)

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  cublasHandle_t blas = nullptr;  // created on first grouped GEMM
  void* workspace = nullptr;
};
DeviceState& state(int device) {
  static DeviceState states[64];
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  DeviceState& s = states[device];
  if (!s.handle) {
    NT_CUDA_CHECK(cudaSetDevice(device));
    NT_LT_CHECK(cublasLtCreate(&s.handle));
    s.workspace = cached_malloc(kWorkspace, device);
  }
  return s;
}

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, bool, int>;
// Everything cublasLtMatmul needs besides pointers, built once per problem shape: creating the descriptors and
// layouts on every call cost about as much host time as a small expert GEMM takes on the GPU.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr, second = nullptr, result = nullptr;
  cublasLtMatmulAlgo_t algo;
};
std::map<Key, Plan>& plan_cache() {
  static std::map<Key, Plan> c;
  return c;
}
std::mutex g_plan_mutex;

cublasLtMatrixLayout_t make_layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                                   int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  NT_LT_CHECK(cublasLtMatrixLayoutCreate(&l, t, rows, cols, ld));
  if (batch > 1) {
    const int32_t b = (int32_t)batch;
    NT_LT_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof(b)));
    NT_LT_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return l;
}
}  // namespace

void set_allow_tf32(bool on) { g_tf32 = on; }
void set_grouped_gemm_backend(GroupedBackend b) { g_grouped = b; }
GroupedBackend grouped_gemm_backend() { return g_grouped; }
bool allow_tf32() { return g_tf32; }

namespace {
// gemm() with the workspace given (every workspace has kWorkspace bytes, so cached algorithms fit any of them).
void gemm_ws(DType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* A, bool ta, int64_t lda,
             int64_t stride_a, const void* B, bool tb, int64_t ldb, int64_t stride_b, void* C, int64_t ldc,
             int64_t stride_c, int device, cudaStream_t stream, void* workspace);
}  // namespace

void gemm(DType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* A, bool ta, int64_t lda, int64_t stride_a,
          const void* B, bool tb, int64_t ldb, int64_t stride_b, void* C, int64_t ldc, int64_t stride_c, int device,
          cudaStream_t stream) {
  gemm_ws(t, batch, M, N, K, A, ta, lda, stride_a, B, tb, ldb, stride_b, C, ldc, stride_c, device, stream,
          state(device).workspace);
}

namespace {
void gemm_ws(DType t, int64_t batch, int64_t M, int64_t N, int64_t K, const void* A, bool ta, int64_t lda,
             int64_t stride_a, const void* B, bool tb, int64_t ldb, int64_t stride_b, void* C, int64_t ldc,
             int64_t stride_c, int device, cudaStream_t stream, void* workspace) {
  if (M == 0 || N == 0 || batch == 0) return;
  cudaDataType_t dt;
  cublasComputeType_t ct;
  cudaDataType_t scale_t = CUDA_R_32F;
  switch (t) {
    case DType::bf16: dt = CUDA_R_16BF, ct = CUBLAS_COMPUTE_32F; break;
    case DType::f32: dt = CUDA_R_32F, ct = g_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F; break;
    case DType::f64: dt = CUDA_R_64F, ct = CUBLAS_COMPUTE_64F, scale_t = CUDA_R_64F; break;
    default: throw Error(fmt::format("matmul: CUDA matmul does not support dtype {}", dtype_name(t)));
  }
  if (K == 0) {  // C = 0: cuBLASLt does not accept k = 0
    for (int64_t b = 0; b < batch; ++b)
      NT_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(C) + b * stride_c * dtype_size(t), ldc * dtype_size(t), 0,
                                      N * dtype_size(t), M, stream));
    return;
  }
  DeviceState& st = state(device);
  const Key key{(int)t, batch, M, N, K, ta, tb, lda, ldb, ldc, stride_a, stride_b, stride_c, g_tf32, device};
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(g_plan_mutex);
    auto it = plan_cache().find(key);
    if (it != plan_cache().end()) {
      plan = it->second;
    } else {
      NT_LT_CHECK(cublasLtMatmulDescCreate(&plan.desc, ct, scale_t));
      // Column-major view: first operand = B^T (N x K), second = A^T (K x M), result C^T (N x M).
      const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
      NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
      plan.first = make_layout(dt, tb ? K : N, tb ? N : K, ldb, batch, stride_b);
      plan.second = make_layout(dt, ta ? M : K, ta ? K : M, lda, batch, stride_a);
      plan.result = make_layout(dt, N, M, ldc, batch, stride_c);
      cublasLtMatmulPreference_t pref;
      NT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspace,
                                                       sizeof(kWorkspace)));
      cublasLtMatmulHeuristicResult_t res;
      int found = 0;
      NT_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(st.handle, plan.desc, plan.first, plan.second, plan.result,
                                                 plan.result, pref, 1, &res, &found));
      cublasLtMatmulPreferenceDestroy(pref);
      if (found == 0) {
        cublasLtMatmulDescDestroy(plan.desc);
        for (auto l : {plan.first, plan.second, plan.result}) cublasLtMatrixLayoutDestroy(l);
        throw Error(fmt::format("matmul: cuBLASLt found no algorithm for M={} N={} K={} batch={} dtype {}", M, N, K,
                                batch, dtype_name(t)));
      }
      plan.algo = res.algo;
      plan_cache()[key] = plan;
    }
  }
  const float one_f = 1.f, zero_f = 0.f;
  const double one_d = 1.0, zero_d = 0.0;
  const void* alpha = t == DType::f64 ? (const void*)&one_d : (const void*)&one_f;
  const void* beta = t == DType::f64 ? (const void*)&zero_d : (const void*)&zero_f;
  NT_LT_CHECK(cublasLtMatmul(st.handle, plan.desc, alpha, B, plan.first, A, plan.second, beta, C, plan.result, C,
                             plan.result, &plan.algo, workspace, kWorkspace, stream));
}

// Side streams for grouped GEMMs run as concurrent per-group GEMMs, each with its own workspace.
constexpr int kSideStreams = 3;
struct SideStreams {
  cudaStream_t stream[kSideStreams] = {};
  void* workspace[kSideStreams] = {};
  cudaEvent_t fork = nullptr, join[kSideStreams] = {};
};
SideStreams& side_streams(int device) {
  static SideStreams all[64];
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  SideStreams& s = all[device];
  if (!s.fork) {
    NT_CUDA_CHECK(cudaSetDevice(device));
    int lo = 0, hi = 0;
    NT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    for (int i = 0; i < kSideStreams; ++i) {
      NT_CUDA_CHECK(cudaStreamCreateWithPriority(&s.stream[i], cudaStreamNonBlocking, lo));
      NT_CUDA_CHECK(cudaEventCreateWithFlags(&s.join[i], cudaEventDisableTiming));
      s.workspace[i] = cached_malloc(kWorkspace, device);
    }
    NT_CUDA_CHECK(cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming));
  }
  return s;
}

}  // namespace

void grouped_gemm(DType t, bool ta, bool tb, const std::vector<GemmGroup>& groups, int device, cudaStream_t stream) {
  cudaDataType_t dt;
  cublasComputeType_t ct;
  switch (t) {
    case DType::bf16: dt = CUDA_R_16BF, ct = CUBLAS_COMPUTE_32F; break;
    case DType::f32: dt = CUDA_R_32F, ct = g_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F; break;
    case DType::f64: dt = CUDA_R_64F, ct = CUBLAS_COMPUTE_64F; break;
    default: throw Error(fmt::format("grouped_matmul: CUDA does not support dtype {}", dtype_name(t)));
  }
  // Column-major view as in gemm(): first operand B^T (N x K), second A^T (K x M), result C^T (N x M).
  std::vector<int> m, n, k, lda, ldb, ldc;
  std::vector<const void*> ptrs;  // first operands, then second operands, then results: one upload
  std::vector<const GemmGroup*> live;
  for (const GemmGroup& g : groups) {
    if (g.M == 0 || g.N == 0) continue;
    if (g.K == 0) {
      NT_CUDA_CHECK(cudaMemset2DAsync(g.C, g.ldc * dtype_size(t), 0, g.N * dtype_size(t), g.M, stream));
      continue;
    }
    NT_CHECK(g.M < INT32_MAX && g.N < INT32_MAX && g.K < INT32_MAX && g.lda < INT32_MAX && g.ldb < INT32_MAX &&
             g.ldc < INT32_MAX, "grouped_matmul: a group's size ({} x {} x {}) exceeds cuBLAS's 32-bit sizes", g.M, g.N, g.K);
    m.push_back((int)g.N), n.push_back((int)g.M), k.push_back((int)g.K);
    lda.push_back((int)g.ldb), ldb.push_back((int)g.lda), ldc.push_back((int)g.ldc);
    live.push_back(&g);
  }
  const int count = (int)live.size();
  if (count == 0) return;
  if (g_grouped != GroupedBackend::cublas_grouped && t != DType::f64) {
    // The largest groups first, each to the stream with the least work so far (FLOPs); the side streams start
    // after everything already queued on `stream`, and `stream` waits for all of them at the end.
    std::vector<int> order(count);
    std::iota(order.begin(), order.end(), 0);
    auto work = [&](int i) { return (double)live[i]->M * live[i]->N * live[i]->K; };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return work(a) > work(b); });
    SideStreams& side = side_streams(device);
    NT_CUDA_CHECK(cudaEventRecord(side.fork, stream));
    for (int i = 0; i < kSideStreams; ++i) NT_CUDA_CHECK(cudaStreamWaitEvent(side.stream[i], side.fork, 0));
    double load[1 + kSideStreams] = {};
    DeviceState& st = state(device);
    for (int i : order) {
      const int lane = (int)(std::min_element(load, load + 1 + kSideStreams) - load);
      load[lane] += work(i);
      const GemmGroup& g = *live[i];
      gemm_ws(t, 1, g.M, g.N, g.K, g.A, ta, g.lda, 0, g.B, tb, g.ldb, 0, g.C, g.ldc, 0, device,
              lane == 0 ? stream : side.stream[lane - 1], lane == 0 ? st.workspace : side.workspace[lane - 1]);
    }
    for (int i = 0; i < kSideStreams; ++i) {
      NT_CUDA_CHECK(cudaEventRecord(side.join[i], side.stream[i]));
      NT_CUDA_CHECK(cudaStreamWaitEvent(stream, side.join[i], 0));
    }
    return;
  }
  for (const GemmGroup* g : live) ptrs.push_back(g->B);
  for (const GemmGroup* g : live) ptrs.push_back(g->A);
  for (const GemmGroup* g : live) ptrs.push_back(g->C);
  DeviceState& st = state(device);
  {
    static std::mutex m_create;
    std::lock_guard<std::mutex> lock(m_create);
    if (!st.blas) {
      NT_LT_CHECK(cublasCreate(&st.blas));
      NT_LT_CHECK(cublasSetWorkspace(st.blas, st.workspace, kWorkspace));
    }
  }
  NT_LT_CHECK(cublasSetStream(st.blas, stream));
  // The pointer arrays live on the device for the call; the caching allocator's block is reused in stream order.
  const size_t bytes = ptrs.size() * sizeof(void*);
  void* dev_ptrs = cached_malloc(bytes, device);
  NT_CUDA_CHECK(cudaMemcpyAsync(dev_ptrs, ptrs.data(), bytes, cudaMemcpyHostToDevice, stream));
  const void* const* first = static_cast<const void* const*>(dev_ptrs);
  const std::vector<cublasOperation_t> op_first(count, tb ? CUBLAS_OP_T : CUBLAS_OP_N),
      op_second(count, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
  const std::vector<int> sizes(count, 1);
  const std::vector<float> one_f(count, 1.f), zero_f(count, 0.f);
  const std::vector<double> one_d(count, 1.0), zero_d(count, 0.0);
  const bool f64 = t == DType::f64;
  const cublasStatus_t s = cublasGemmGroupedBatchedEx(
      st.blas, op_first.data(), op_second.data(), m.data(), n.data(), k.data(),
      f64 ? (const void*)one_d.data() : (const void*)one_f.data(), first, dt, lda.data(), first + count, dt,
      ldb.data(), f64 ? (const void*)zero_d.data() : (const void*)zero_f.data(),
      const_cast<void* const*>(first + 2 * count), dt, ldc.data(), count, sizes.data(), ct);
  cached_free(dev_ptrs, device);
  NT_LT_CHECK(s);
}
}  // namespace nt::cuda
