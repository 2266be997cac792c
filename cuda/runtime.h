// Devices and streams. Each device has one current stream (created on first use, non-blocking); every kernel,
// copy and GEMM of the library runs on it, so the caching allocator can reuse a freed block at once.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace nt::cuda {
cudaStream_t current_stream(int device);
// Makes `stream` the current stream of `device` (nullptr restores the library's own stream).
void set_current_stream(int device, cudaStream_t stream);
void synchronize(int device);
int multiprocessor_count(int device);
// The device is compute 9.0 and this build carries sm_90a code (wgmma, TMA) for it (cuda/hopper.cu).
bool sm90a_available(int device);
}  // namespace nt::cuda
