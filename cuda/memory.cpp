// Device memory for Storage: the caching allocator, and copies on the device's current stream. Host<->device
// copies synchronize before returning, since the host buffer may be released right after.
#include "cuda/memory.h"

#include <cuda_runtime.h>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/runtime.h"

namespace nt::cuda {

bool compiled_in() { return true; }
int device_count() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();  // no driver or no device: clear the error, report none
      return 0;
    }
    return c;
  }();
  return n;
}
std::string device_name(int device) {
  cudaDeviceProp p;
  NT_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}
size_t free_memory(int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  size_t free = 0, total = 0;
  NT_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  const AllocatorStats st = allocator_stats(device);
  return free + (size_t)(st.reserved - st.allocated);
}
void* device_malloc(size_t bytes, int device) { return cached_malloc(bytes, device); }
void device_free(void* ptr, int device) { cached_free(ptr, device); }
// No synchronization: from pageable memory (all the library's host memory) cudaMemcpyAsync copies the source into
// a staging buffer before it returns, so the caller may free it at once, and the stream orders the upload before
// the kernels that read it. (A synchronizing upload stalled the GPU: a training step makes dozens of small ones.)
void copy_h2d(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, current_stream(device)));
}
void copy_d2h(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t s = current_stream(device);
  NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  NT_CUDA_CHECK(cudaStreamSynchronize(s));
}
void copy_d2d(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream(device)));
}
}  // namespace nt::cuda
