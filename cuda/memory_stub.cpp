// CUDA not compiled in: no devices, and a clear error for anything that needs one.
#include "cuda/allocator.h"
#include "cuda/memory.h"
#include "tensor/error.h"

namespace nt::cuda {
namespace {
[[noreturn]] void no_cuda() { throw Error("CUDA: this build has no CUDA support (configure with -Dcuda=enabled)"); }
}  // namespace
bool compiled_in() { return false; }
int device_count() { return 0; }
std::string device_name(int) { no_cuda(); }
size_t free_memory(int) { no_cuda(); }
void* device_malloc(size_t, int) { no_cuda(); }
void device_free(void*, int) {}
void copy_h2d(void*, const void*, size_t, int) { no_cuda(); }
void copy_d2h(void*, const void*, size_t, int) { no_cuda(); }
void copy_d2d(void*, const void*, size_t, int) { no_cuda(); }
AllocatorStats allocator_stats(int) { return {}; }
void* host_malloc_pinned(size_t) { no_cuda(); }
void host_free_pinned(void*) {}
size_t host_pinned_cached_bytes() { return 0; }
Upload::Upload(const std::vector<CopySpan>&, int) { no_cuda(); }
Upload::Upload(Upload&& o) noexcept : event_(o.event_), device_(o.device_) { o.event_ = nullptr; }
Upload& Upload::operator=(Upload&& o) noexcept {
  event_ = o.event_, device_ = o.device_;
  o.event_ = nullptr;
  return *this;
}
Upload::~Upload() = default;
void Upload::wait() { event_ = nullptr; }
}  // namespace nt::cuda
