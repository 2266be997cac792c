// Caching device allocator. Sizes are rounded (512 B below 1 MiB, 2 MiB above) and freed blocks go to a per-device
// free list keyed by size, from which later requests of the same or slightly smaller size are served without
// cudaMalloc. All work runs on one stream per device, so a freed block can be handed out again at once.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nt::cuda {
struct AllocatorStats {
  size_t allocated = 0;       // bytes in blocks handed out now
  size_t reserved = 0;        // bytes obtained from cudaMalloc (allocated + cached)
  size_t peak_allocated = 0;  // high-water mark of `allocated` since start or reset_peak_stats
  uint64_t allocations = 0;   // requests served
  uint64_t cache_hits = 0;    // requests served from the cache
  uint64_t device_mallocs = 0;
};
void* cached_malloc(size_t bytes, int device);
void cached_free(void* ptr, int device);
AllocatorStats allocator_stats(int device);
void reset_peak_stats(int device);
// Returns every cached (free) block to the driver.
void empty_cache();
// Test aid: fill every new allocation with 0xFF bytes (NaN for floats, -1 for integers), so a kernel that forgets
// to write an element is caught.
void set_poison_allocations(bool on);
}  // namespace nt::cuda
