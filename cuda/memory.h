// Device memory and copies. Built from cuda/memory.cpp when CUDA is compiled in, else from cuda/memory_stub.cpp,
// whose device_count() is 0 and whose other functions throw a clear error.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

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

// Page-locked host memory (cudaHostAlloc): device copies from it run asynchronously at full link speed. Freed
// blocks are cached (pinning is slow: tens of ms per GiB) and served again for requests of about their size; the
// caller must not free a block that an asynchronous copy still uses.
void* host_malloc_pinned(size_t bytes);
void host_free_pinned(void* ptr);
size_t host_pinned_cached_bytes();  // held in the cache, not in use

// Uploads from pinned host memory on the device's copy stream, so they overlap the kernels of the current stream.
// They start after the work queued so far on the current stream: a destination the caching allocator just recycled
// may still be read by that work. wait() makes the current stream wait for them (the host does not block);
// destroying an Upload that was never waited for waits first.
struct CopySpan {
  void* dst;
  const void* src;  // host memory; pinned, or the copy blocks the host until the source has been read
  size_t bytes;
};
class Upload {
 public:
  Upload() = default;
  Upload(const std::vector<CopySpan>& spans, int device);
  Upload(Upload&& o) noexcept;
  Upload& operator=(Upload&& o) noexcept;
  Upload(const Upload&) = delete;
  Upload& operator=(const Upload&) = delete;
  ~Upload();
  bool pending() const { return event_ != nullptr; }
  void wait();

 private:
  void* event_ = nullptr;  // cudaEvent_t recorded on the copy stream after the copies
  int device_ = 0;
};
}  // namespace nt::cuda
