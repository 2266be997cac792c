// Devices, streams, error reporting and the caching allocator.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/memory.h"
#include "cuda/runtime.h"
#include "tensor/error.h"

namespace nt::cuda {

void throw_cuda_error(const char* message, const char* expr, const char* file, int line) {
  throw Error(fmt::format("CUDA error at {}:{}: {} failed: {}", file, line, expr, message));
}

namespace {
constexpr int kMaxDevices = 64;
cudaStream_t g_own_streams[kMaxDevices] = {};
thread_local cudaStream_t g_user_streams[kMaxDevices] = {};
}  // namespace

cudaStream_t current_stream(int device) {
  if (g_user_streams[device]) return g_user_streams[device];
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (!g_own_streams[device]) {
    NT_CUDA_CHECK(cudaSetDevice(device));
    NT_CUDA_CHECK(cudaStreamCreateWithFlags(&g_own_streams[device], cudaStreamNonBlocking));
  }
  return g_own_streams[device];
}
void set_current_stream(int device, cudaStream_t stream) { g_user_streams[device] = stream; }
void synchronize(int device) {
  const size_t checks = pending_checks(device);
  if (const cudaError_t e = cudaStreamSynchronize(current_stream(device)); e != cudaSuccess)
    throw_wait_failure(device, checks, fmt::format("CUDA error: cudaStreamSynchronize failed: {}", cudaGetErrorString(e)));
  run_deferred_checks(device, checks);
}
int multiprocessor_count(int device) {
  static int counts[kMaxDevices] = {};
  if (!counts[device]) NT_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  return counts[device];
}

// ---------------------------------------------------------------- caching allocator

namespace {
struct DeviceCache {
  std::multimap<size_t, void*> free_blocks;   // size -> block
  std::unordered_map<void*, size_t> live;     // block -> size
  AllocatorStats stats;
};
std::mutex g_alloc_mutex;
std::vector<DeviceCache>& caches() {
  static std::vector<DeviceCache> c(kMaxDevices);
  return c;
}
bool g_poison = false;

size_t round_size(size_t bytes) {
  if (bytes < (1u << 20)) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
  return (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
}
void free_cached(int device, DeviceCache& c) {
  NT_CUDA_CHECK(cudaSetDevice(device));
  NT_CUDA_CHECK(cudaStreamSynchronize(current_stream(device)));
  for (auto& [size, p] : c.free_blocks) {
    cudaFree(p);
    c.stats.reserved -= size;
  }
  c.free_blocks.clear();
}
}  // namespace

void set_poison_allocations(bool on) { g_poison = on; }

void* cached_malloc(size_t bytes, int device) {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  DeviceCache& c = caches()[device];
  const size_t size = round_size(bytes);
  void* p = nullptr;
  // Best fit among cached blocks no more than 25% larger than asked (keeps big blocks for big requests).
  auto it = c.free_blocks.lower_bound(size);
  if (it != c.free_blocks.end() && it->first <= size + size / 4) {
    p = it->second;
    c.live[p] = it->first;
    c.stats.allocated += it->first;
    c.free_blocks.erase(it);
    ++c.stats.cache_hits;
  } else {
    NT_CUDA_CHECK(cudaSetDevice(device));
    cudaError_t e = cudaMalloc(&p, size);
    if (e != cudaSuccess) {
      cudaGetLastError();
      free_cached(device, c);  // give the cache back and retry once
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw Error(fmt::format(
          "CUDA out of memory on cuda:{}: tried to allocate {:.2f} MiB; {:.2f} GiB free of {:.2f} GiB, "
          "{:.2f} GiB allocated by this process, {:.2f} GiB reserved",
          device, bytes / 1048576.0, free_b / 1073741824.0, total_b / 1073741824.0, c.stats.allocated / 1073741824.0,
          c.stats.reserved / 1073741824.0));
    }
    c.live[p] = size;
    c.stats.allocated += size;
    c.stats.reserved += size;
    ++c.stats.device_mallocs;
  }
  ++c.stats.allocations;
  c.stats.peak_allocated = std::max(c.stats.peak_allocated, c.stats.allocated);
  if (g_poison) NT_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, c.live[p], current_stream(device)));
  return p;
}

void cached_free(void* ptr, int device) {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  DeviceCache& c = caches()[device];
  auto it = c.live.find(ptr);
  if (it == c.live.end()) return;
  c.stats.allocated -= it->second;
  c.free_blocks.emplace(it->second, ptr);
  c.live.erase(it);
}

AllocatorStats allocator_stats(int device) {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  return caches()[device].stats;
}
void reset_peak_stats(int device) {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  caches()[device].stats.peak_allocated = caches()[device].stats.allocated;
}
void empty_cache() {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  for (int d = 0; d < device_count(); ++d) free_cached(d, caches()[d]);
}

}  // namespace nt::cuda
