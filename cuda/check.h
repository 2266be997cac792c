// Error checking for every CUDA runtime call and kernel launch. Free of fmt so .cu files can include it.
#pragma once
#include <cuda_runtime_api.h>

namespace nt::cuda {
// Throws nt::Error: "CUDA error at file:line: <expr> failed: <message>".
[[noreturn]] void throw_cuda_error(const char* message, const char* expr, const char* file, int line);
}  // namespace nt::cuda

#define NT_CUDA_CHECK(expr)                                                                    \
  do {                                                                                         \
    const cudaError_t nt_err_ = (expr);                                                        \
    if (nt_err_ != cudaSuccess)                                                                \
      ::nt::cuda::throw_cuda_error(cudaGetErrorString(nt_err_), #expr, __FILE__, __LINE__);    \
  } while (0)
// After a <<<>>> launch: catches bad launch configurations at once (asynchronous faults surface at the next sync).
#define NT_CUDA_CHECK_LAUNCH() NT_CUDA_CHECK(cudaGetLastError())
