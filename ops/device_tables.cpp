// The per-thread cache of ops/device_tables.h: a short list searched linearly (a few entries are live at a time:
// one per table kind of the current batch), the most recent last.
#include "ops/device_tables.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace nt {
namespace {
struct Entry {
  const char* kind;
  std::vector<int64_t> key;
  DType dtype;
  Device device;
  Tensor table;
};
thread_local std::vector<Entry> t_cache;
thread_local int64_t t_builds = 0;
}  // namespace

Tensor cached_table(const char* kind, const std::vector<int64_t>& key, DType dtype, Device device,
                    const std::function<std::vector<double>()>& make) {
  // NT_TABLE_CACHE=0 builds every table at every call, as before 2026-12-06 (to measure the difference).
  static const bool off = [] {
    const char* v = std::getenv("NT_TABLE_CACHE");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  if (off) {
    const std::vector<double> values = make();
    ++t_builds;
    return from_vector(values, {(int64_t)values.size()}, dtype, device);
  }
  for (size_t i = t_cache.size(); i-- > 0;) {
    Entry& e = t_cache[i];
    if (e.dtype == dtype && e.device == device && std::strcmp(e.kind, kind) == 0 && e.key == key) {
      if (i + 1 != t_cache.size()) {  // most recent last
        Entry hit = std::move(e);
        t_cache.erase(t_cache.begin() + (std::ptrdiff_t)i);
        t_cache.push_back(std::move(hit));
      }
      return t_cache.back().table;
    }
  }
  const std::vector<double> values = make();
  Tensor t = from_vector(values, {(int64_t)values.size()}, dtype, device);
  ++t_builds;
  if ((int)t_cache.size() >= kTableCacheSize) t_cache.erase(t_cache.begin());
  t_cache.push_back({kind, key, dtype, device, t});
  return t;
}

int64_t cached_table_builds() { return t_builds; }
}  // namespace nt
