// Whether a device runs this build's sm_90a code (wgmma, TMA): the device must be compute 9.0 and the binary must carry
// sm_90a code for it. A one-thread kernel reports which variant the driver loaded; the answer is cached per device.
#include <atomic>

#include "cuda/check.h"
#include "cuda/hopper.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
__global__ void probe_sm90a(int* out) {
#ifdef NT_SM90A
  *out = 1;
#else
  *out = 0;
#endif
}
}  // namespace

bool sm90a_available(int device) {
  constexpr int kCached = 64;
  static std::atomic<int> known[kCached] = {};  // 0 unknown, 1 yes, 2 no (racing first calls probe twice: harmless)
  if (device >= 0 && device < kCached && known[device].load(std::memory_order_relaxed))
    return known[device].load(std::memory_order_relaxed) == 1;
  int major = 0, minor = 0;
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  int ok = 0;
  if (major == 9 && minor == 0) {
    int prev = 0;
    NT_CUDA_CHECK(cudaGetDevice(&prev));
    NT_CUDA_CHECK(cudaSetDevice(device));
    int* flag = nullptr;
    NT_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    probe_sm90a<<<1, 1>>>(flag);
    NT_CUDA_CHECK_LAUNCH();
    NT_CUDA_CHECK(cudaMemcpy(&ok, flag, sizeof(int), cudaMemcpyDeviceToHost));
    NT_CUDA_CHECK(cudaFree(flag));
    NT_CUDA_CHECK(cudaSetDevice(prev));
  }
  if (device >= 0 && device < kCached) known[device].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok == 1;
}
}  // namespace nt::cuda
