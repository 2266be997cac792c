// Device memory and copies. Built from cuda/memory.cpp when CUDA is compiled in, else from cuda/memory_stub.cpp,
// whose device_count() is 0 and whose other functions throw a clear error.
#pragma once
#include <cstddef>
#include <string>

namespace nt::cuda {
bool compiled_in();
int device_count();  // 0 without CUDA or without a GPU
inline bool available() { return device_count() > 0; }
std::string device_name(int device);  // e.g. "NVIDIA H100 80GB HBM3"
// Free device memory in bytes as the driver reports it, plus what the caching allocator holds unused.
size_t free_memory(int device);
void* device_malloc(size_t bytes, int device);
void device_free(void* ptr, int device);
// Uploads on the device's current stream without waiting (src, pageable, may be freed on return).
void copy_h2d(void* dst, const void* src, size_t bytes, int device);
// Waits for the stream (so for every kernel queued before), then returns with dst filled.
void copy_d2h(void* dst, const void* src, size_t bytes, int device);
void copy_d2d(void* dst, const void* src, size_t bytes, int device);
}  // namespace nt::cuda
