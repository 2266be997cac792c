// Device memory for Storage: the caching allocator, and copies on the device's current stream. Uploads return at
// once; copies to the host wait for the stream.
#include "cuda/memory.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>

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
// The caller may free src at once, and the stream orders the upload before the kernels that read it. The call does
// not wait for the GPU, but it is not cheap: ~38 us of host time per small upload (H100, 2026-12-06, the NSA + MoE
// LM's ~270 a step). A pinned staging ring in front of it was slower (copy calls ~32 us, but 127k against 146k
// tokens/s in the same run): fewer uploads is the cure, not another path.
void copy_h2d(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, current_stream(device)));
}
void copy_d2h(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t s = current_stream(device);
  const size_t checks = pending_checks(device);
  NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  if (const cudaError_t e = cudaStreamSynchronize(s); e != cudaSuccess)
    throw_wait_failure(device, checks, std::string("CUDA error: copy to the host failed: ") + cudaGetErrorString(e));
  run_deferred_checks(device, checks);
}
void copy_d2d(void* dst, const void* src, size_t bytes, int device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream(device)));
}

namespace {
struct PinnedCache {
  std::mutex m;
  std::multimap<size_t, void*> free_blocks;  // size -> block
  std::unordered_map<void*, size_t> size_of;  // every block, live or cached
  size_t cached = 0;
};
PinnedCache& pinned_cache() {
  static PinnedCache* c = new PinnedCache;  // never destroyed: blocks may be freed during static destruction
  return *c;
}
}  // namespace

void* host_malloc_pinned(size_t bytes) {
  // Rounded as the device allocator rounds (512 B, or 2 MiB above 1 MiB), so repeated shapes hit the cache.
  const size_t size = bytes <= (1u << 20) ? std::max<size_t>(512, (bytes + 511) / 512 * 512)
                                          : (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  PinnedCache& c = pinned_cache();
  {
    std::lock_guard<std::mutex> lock(c.m);
    auto it = c.free_blocks.lower_bound(size);
    if (it != c.free_blocks.end() && it->first <= size + size / 8) {  // at most an eighth wasted
      void* p = it->second;
      c.cached -= it->first;
      c.free_blocks.erase(it);
      return p;
    }
  }
  void* p = nullptr;
  NT_CUDA_CHECK(cudaHostAlloc(&p, size, cudaHostAllocPortable));
  std::lock_guard<std::mutex> lock(c.m);
  c.size_of[p] = size;
  return p;
}
void host_free_pinned(void* ptr) {
  if (!ptr) return;
  PinnedCache& c = pinned_cache();
  std::lock_guard<std::mutex> lock(c.m);
  const size_t size = c.size_of.at(ptr);
  c.free_blocks.emplace(size, ptr);
  c.cached += size;
}
size_t host_pinned_cached_bytes() {
  PinnedCache& c = pinned_cache();
  std::lock_guard<std::mutex> lock(c.m);
  return c.cached;
}

namespace {
cudaStream_t copy_stream(int device) {
  static std::mutex m;
  static cudaStream_t streams[64] = {};
  std::lock_guard<std::mutex> lock(m);
  if (!streams[device]) {
    NT_CUDA_CHECK(cudaSetDevice(device));
    NT_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  }
  return streams[device];
}
cudaEvent_t new_event() {
  cudaEvent_t e;
  NT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}
}  // namespace

Upload::Upload(const std::vector<CopySpan>& spans, int device) : device_(device) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t cs = copy_stream(device);
  cudaEvent_t before = new_event();
  NT_CUDA_CHECK(cudaEventRecord(before, current_stream(device)));
  NT_CUDA_CHECK(cudaStreamWaitEvent(cs, before, 0));
  NT_CUDA_CHECK(cudaEventDestroy(before));  // released once the wait is done
  for (const CopySpan& c : spans)
    if (c.bytes) NT_CUDA_CHECK(cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyHostToDevice, cs));
  cudaEvent_t done = new_event();
  NT_CUDA_CHECK(cudaEventRecord(done, cs));
  event_ = done;
}
Upload::Upload(Upload&& o) noexcept : event_(o.event_), device_(o.device_) { o.event_ = nullptr; }
Upload& Upload::operator=(Upload&& o) noexcept {
  if (this != &o) {
    try {
      wait();
    } catch (...) {
    }
    event_ = o.event_, device_ = o.device_;
    o.event_ = nullptr;
  }
  return *this;
}
Upload::~Upload() {
  try {
    wait();
  } catch (...) {
  }
}
void Upload::wait() {
  if (!event_) return;
  cudaEvent_t e = static_cast<cudaEvent_t>(event_);
  event_ = nullptr;
  NT_CUDA_CHECK(cudaSetDevice(device_));
  NT_CUDA_CHECK(cudaStreamWaitEvent(current_stream(device_), e, 0));
  NT_CUDA_CHECK(cudaEventDestroy(e));
}
}  // namespace nt::cuda
