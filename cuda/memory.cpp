// Device memory through the CUDA runtime. Every call is checked; an allocation failure says what was asked for
// and what is free. (The caching allocator and streams come with the CUDA backend issue.)
#include "cuda/memory.h"

#include <cuda_runtime.h>

#include "tensor/error.h"

namespace nt::cuda {
namespace {
void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) throw Error(fmt::format("CUDA error at {}:{}: {} failed: {}", file, line, what, cudaGetErrorString(e)));
}
#define NT_CUDA_CHECK(call) check((call), #call, __FILE__, __LINE__)
}  // namespace

bool compiled_in() { return true; }
int device_count() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();  // no driver or no device: clear the sticky error, report none
      return 0;
    }
    return c;
  }();
  return n;
}
void* device_malloc(size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw Error(fmt::format("CUDA out of memory on cuda:{}: asked for {} bytes ({:.2f} GiB), {:.2f} GiB free of {:.2f} GiB",
                            device, bytes, bytes / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0));
  }
  return p;
}
void device_free(void* ptr, int device) {
  cudaSetDevice(device);
  cudaFree(ptr);  // not checked: runs in destructors, possibly during shutdown
}
void copy_h2d(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_d2h(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_d2d(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
}  // namespace nt::cuda
