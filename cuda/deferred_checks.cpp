// Index checks that do not stall the GPU (see cuda/runtime.h): the flags live in pinned host memory mapped into
// the device's address space, so a kernel's store reaches the host without a copy, and the host reads them only
// after a synchronization it makes anyway. Before this every index_select, gather, scatter_add, embedding,
// cross_entropy and moe_dispatch on CUDA waited for the GPU to finish before the next op could be queued.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda/check.h"
#include "cuda/runtime.h"
#include "tensor/error.h"

namespace nt::cuda {
namespace {
constexpr int kMaxDevices = 64;
constexpr int kSlots = 4096;  // flags per device; when all are pending the next one synchronizes first

struct Pool {
  int* host = nullptr;  // kSlots ints, pinned and mapped
  int* dev = nullptr;   // the same memory as the device sees it
  std::vector<int> free;
  std::vector<std::pair<int, std::string>> pending;  // (slot, message), in the order the ops ran
};
std::mutex g_mu;
Pool g_pools[kMaxDevices];

bool sync_from_env() {
  const char* v = std::getenv("NT_SYNC_CHECKS");
  return v != nullptr && std::strcmp(v, "0") != 0 && *v != '\0';
}
std::atomic<bool> g_sync{sync_from_env()};
}  // namespace

void set_sync_checks(bool on) { g_sync = on; }
bool sync_checks() { return g_sync; }

int* acquire_check_flag(int device) {
  NT_CHECK(device >= 0 && device < kMaxDevices, "acquire_check_flag: device {} out of range", device);
  for (;;) {
    {
      std::lock_guard lk(g_mu);
      Pool& p = g_pools[device];
      if (!p.host) {
        NT_CUDA_CHECK(cudaSetDevice(device));
        void* h = nullptr;
        NT_CUDA_CHECK(cudaHostAlloc(&h, kSlots * sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
        void* d = nullptr;
        NT_CUDA_CHECK(cudaHostGetDevicePointer(&d, h, 0));
        p.host = static_cast<int*>(h), p.dev = static_cast<int*>(d);
        for (int i = kSlots - 1; i >= 0; --i) p.free.push_back(i);
      }
      if (!p.free.empty()) {
        const int i = p.free.back();
        p.free.pop_back();
        // No kernel holds this slot: it was released after a synchronization that followed its last use.
        reinterpret_cast<volatile int*>(p.host)[i] = 0;
        return p.dev + i;
      }
    }
    synchronize(device);  // every flag is pending: read them (this returns them to the pool)
  }
}

void defer_check(int device, int* flag, std::string message) {
  const bool report = !message.empty();  // an unchecked flag only goes back to the pool
  {
    std::lock_guard lk(g_mu);
    Pool& p = g_pools[device];
    const int64_t i = flag - p.dev;
    NT_CHECK(p.dev != nullptr && i >= 0 && i < kSlots, "defer_check: the flag was not acquired on device {}", device);
    p.pending.emplace_back((int)i, std::move(message));
  }
  if (g_sync && report) synchronize(device);
}

size_t pending_checks(int device) {
  if (device < 0 || device >= kMaxDevices) return 0;
  std::lock_guard lk(g_mu);
  return g_pools[device].pending.size();
}

void run_deferred_checks(int device, size_t count) {
  if (device < 0 || device >= kMaxDevices) return;
  std::string failed;
  {
    std::lock_guard lk(g_mu);
    Pool& p = g_pools[device];
    // Only the flags deferred before the caller's wait began: a later one's kernel may not have run yet.
    const size_t n = std::min(count, p.pending.size());
    for (size_t k = 0; k < n; ++k) {
      auto& [i, message] = p.pending[k];
      if (failed.empty() && !message.empty() && reinterpret_cast<volatile int*>(p.host)[i] != 0) failed = std::move(message);
      p.free.push_back(i);
    }
    p.pending.erase(p.pending.begin(), p.pending.begin() + (std::ptrdiff_t)n);
  }
  if (failed.empty()) return;
  if (!g_sync)
    failed += " (found by a kernel queued earlier and reported at this synchronization; NT_SYNC_CHECKS=1 or "
              "cuda::set_sync_checks(true) reports it at the call)";
  throw Error(failed);
}
void throw_wait_failure(int device, size_t count, const std::string& what) {
  try {
    run_deferred_checks(device, count);
  } catch (const Error& e) {
    throw Error(what + "; an index check had failed before it: " + e.what());
  }
  throw Error(what);
}
}  // namespace nt::cuda
