// CUPTI activity records -> a per-name summary (see profiler.h). Compiled in every build; without CUDA start()
// is an error. libcupti is dlopen'ed: the binary keeps running where CUPTI is absent, and only profiling needs it.
#include "cuda/profiler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tensor/error.h"

#if NT_CUDA && !NT_NO_CUPTI
#include <cuda_runtime_api.h>
#include <cupti_activity.h>  // types only: the functions come from dlsym
#include <cupti_callbacks.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include "cuda/check.h"
#endif

namespace nt::cuda {

#if !NT_CUDA || NT_NO_CUPTI
void Profiler::start() {
#if NT_CUDA
  throw Error("Profiler: this build has no CUPTI (its headers were not found next to the CUDA toolkit)");
#else
  throw Error("Profiler: this build has no CUDA support (configure with -Dcuda=enabled)");
#endif
}
std::string Profiler::stop(int) { return {}; }
Profiler::~Profiler() = default;
#else
namespace {
struct Cupti {
  void* lib = nullptr;
  CUptiResult (*enable)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*disable)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*register_callbacks)(CUpti_BuffersCallbackRequestFunc, CUpti_BuffersCallbackCompleteFunc) = nullptr;
  CUptiResult (*flush_all)(uint32_t) = nullptr;
  CUptiResult (*next_record)(uint8_t*, size_t, CUpti_Activity**) = nullptr;
  CUptiResult (*timestamp)(uint64_t*) = nullptr;
  CUptiResult (*callback_name)(CUpti_CallbackDomain, uint32_t, const char**) = nullptr;
  bool registered = false;
};

Cupti& cupti() {
  static Cupti c = [] {
    Cupti r;
    std::vector<std::string> tried;
    std::vector<std::string> candidates = {"libcupti.so.13", "libcupti.so"};
    std::vector<std::string> roots;
    if (const char* h = std::getenv("CUDA_HOME")) roots.push_back(h);
    roots.insert(roots.end(), {"/usr/local/cuda", "/usr/local/cuda-13.0"});
    for (const auto& root : roots)
      for (const char* sub : {"lib64", "lib", "extras/CUPTI/lib64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"})
        candidates.push_back(root + "/" + sub + "/libcupti.so");
    for (const auto& name : candidates) {
      tried.push_back(name);
      if ((r.lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
    }
    if (!r.lib)
      throw Error(fmt::format("Profiler: could not load libcupti (tried {}); set CUDA_HOME to the CUDA toolkit or add "
                              "CUPTI's directory to LD_LIBRARY_PATH", fmt::join(tried, ", ")));
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(r.lib, name));
      if (!fn) throw Error(fmt::format("Profiler: libcupti lacks {}", name));
    };
    sym(r.enable, "cuptiActivityEnable");
    sym(r.disable, "cuptiActivityDisable");
    sym(r.register_callbacks, "cuptiActivityRegisterCallbacks");
    sym(r.flush_all, "cuptiActivityFlushAll");
    sym(r.next_record, "cuptiActivityGetNextRecord");
    sym(r.timestamp, "cuptiGetTimestamp");
    sym(r.callback_name, "cuptiGetCallbackName");
    return r;
  }();
  return c;
}

void check(CUptiResult r, const char* what) {
  if (r != CUPTI_SUCCESS) throw Error(fmt::format("Profiler: {} failed with CUPTI error {}", what, (int)r));
}

struct Entry {
  int64_t calls = 0;
  uint64_t total_ns = 0;
};
struct Records {
  std::mutex mu;
  std::map<std::string, Entry> by_name;
  std::map<std::string, Entry> host_by_name;  // CUDA runtime calls: host time inside each
  std::unordered_map<uint32_t, uint64_t> copy_call_ns;  // correlation id -> host time of a cudaMemcpy* call
  std::unordered_map<uint32_t, const char*> copy_kind;  // correlation id -> its copy's direction
  std::vector<std::pair<uint64_t, uint64_t>> intervals;
  bool active = false;
};
Records& records() {
  static Records r;
  return r;
}

// "void nt::cuda::(anonymous namespace)::attn_fwd_tc<64>(const unsigned short*, ...)" -> "attn_fwd_tc<64>".
std::string short_name(const char* mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {  // drop the parameter list (the first '(' outside template brackets)
    if (s[i] == '<') ++depth;
    else if (s[i] == '>') --depth;
    else if (s[i] == '(' && depth == 0 && s.compare(i, 21, "(anonymous namespace)") != 0) { s.resize(i); break; }
  }
  for (const std::string cut : {"(anonymous namespace)::", "nt::cuda::", "void "}) {
    for (size_t p; (p = s.find(cut)) != std::string::npos;) s.erase(p, cut.size());
  }
  if (s.size() > 72) s = s.substr(0, 69) + "...";
  return s;
}

const char* copy_kind(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[copy host to device]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[copy device to host]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[copy device to device]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "[copy peer to peer]";
    default: return "[copy, other]";
  }
}

constexpr size_t kBufferBytes = 8 << 20;
void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  Records& rec = records();
  CUpti_Activity* a = nullptr;
  std::lock_guard lk(rec.mu);
  while (cupti().next_record(buffer, valid, &a) == CUPTI_SUCCESS) {
    std::string name;
    uint64_t t0 = 0, t1 = 0;
    if (a->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || a->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(a);
      name = short_name(k->name), t0 = k->start, t1 = k->end;
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(a);
      name = copy_kind(m->copyKind), t0 = m->start, t1 = m->end;
      if (rec.active) rec.copy_kind[m->correlationId] = copy_kind(m->copyKind);
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(a);
      name = "[memset]", t0 = m->start, t1 = m->end;
    } else if (a->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      const auto* r = reinterpret_cast<const CUpti_ActivityAPI*>(a);
      const char* n = nullptr;
      if (cupti().callback_name(CUPTI_CB_DOMAIN_RUNTIME_API, r->cbid, &n) != CUPTI_SUCCESS || !n) n = "(unnamed)";
      std::string call = n;
      if (const size_t v = call.rfind("_v"); v != std::string::npos && v > 0) call.resize(v);  // "_v7000"
      if (rec.active) {
        Entry& e = rec.host_by_name[call];
        ++e.calls, e.total_ns += r->end - r->start;
        if (call.rfind("cudaMemcpy", 0) == 0) rec.copy_call_ns[r->correlationId] = r->end - r->start;
      }
      continue;
    } else {
      continue;
    }
    if (!rec.active) continue;
    Entry& e = rec.by_name[name];
    ++e.calls, e.total_ns += t1 - t0;
    rec.intervals.emplace_back(t0, t1);
  }
  std::free(buffer);
}

const CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                     CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME};
}  // namespace

void Profiler::start() {
  NT_CHECK(!running_, "Profiler::start: already recording");
  Cupti& c = cupti();
  Records& rec = records();
  {
    std::lock_guard lk(rec.mu);
    NT_CHECK(!rec.active, "Profiler::start: another profiler is recording (one at a time)");
    rec.by_name.clear(), rec.host_by_name.clear(), rec.intervals.clear();
    rec.copy_call_ns.clear(), rec.copy_kind.clear();
    rec.active = true;
  }
  if (!c.registered) check(c.register_callbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
  c.registered = true;
  NT_CUDA_CHECK(cudaDeviceSynchronize());  // earlier work stays out of the window
  for (auto k : kKinds) check(c.enable(k), "cuptiActivityEnable");
  uint64_t now = 0;
  check(c.timestamp(&now), "cuptiGetTimestamp");
  wall_start_ns_ = (int64_t)now;
  running_ = true;
}

std::string Profiler::stop(int top) {
  NT_CHECK(running_, "Profiler::stop: start() was not called");
  Cupti& c = cupti();
  check(c.disable(CUPTI_ACTIVITY_KIND_RUNTIME), "cuptiActivityDisable");  // the wait below is the profiler's own
  NT_CUDA_CHECK(cudaDeviceSynchronize());
  uint64_t now = 0;
  check(c.timestamp(&now), "cuptiGetTimestamp");
  for (auto k : kKinds)
    if (k != CUPTI_ACTIVITY_KIND_RUNTIME) check(c.disable(k), "cuptiActivityDisable");
  check(c.flush_all(1), "cuptiActivityFlushAll");  // 1: CUPTI_ACTIVITY_FLAG_FLUSH_FORCED
  running_ = false;
  Records& rec = records();
  std::lock_guard lk(rec.mu);
  rec.active = false;
  std::vector<std::pair<std::string, Entry>> rows(rec.by_name.begin(), rec.by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.total_ns > b.second.total_ns; });
  uint64_t total = 0;
  int64_t calls = 0;
  for (const auto& r : rows) total += r.second.total_ns, calls += r.second.calls;
  // Busy time: the union of the intervals (kernels on several streams may overlap).
  std::sort(rec.intervals.begin(), rec.intervals.end());
  uint64_t busy = 0, cur0 = 0, cur1 = 0;
  for (const auto& [a, b] : rec.intervals) {
    if (a > cur1) busy += cur1 - cur0, cur0 = a, cur1 = b;
    else cur1 = std::max(cur1, b);
  }
  busy += cur1 - cur0;
  const double wall_ms = (double)(now - (uint64_t)wall_start_ns_) * 1e-6;
  std::string out = fmt::format("GPU profile: {} launches, {:.2f} ms of GPU time, busy {:.2f} of {:.2f} ms wall ({:.0f}%)\n",
                                calls, total * 1e-6, busy * 1e-6, wall_ms, wall_ms > 0 ? 100 * busy * 1e-6 / wall_ms : 0.0);
  out += fmt::format("{:>6} {:>10} {:>8} {:>10}  {}\n", "%", "total ms", "calls", "mean us", "name");
  for (int i = 0; i < (int)rows.size() && i < top; ++i) {
    const auto& [name, e] = rows[i];
    out += fmt::format("{:>5.1f}% {:>10.3f} {:>8} {:>10.1f}  {}\n", total ? 100.0 * e.total_ns / total : 0.0, e.total_ns * 1e-6,
                       e.calls, e.total_ns * 1e-3 / e.calls, name);
  }
  if ((int)rows.size() > top) {
    uint64_t rest = 0;
    for (size_t i = top; i < rows.size(); ++i) rest += rows[i].second.total_ns;
    out += fmt::format("{:>5.1f}% {:>10.3f} {:>8} {:>10}  ({} more names)\n", total ? 100.0 * rest / total : 0.0, rest * 1e-6, "",
                       "", rows.size() - top);
  }
  // The host's side: time inside CUDA runtime calls (a synchronizing call waits for the GPU there; a host that
  // launches slower than the GPU runs shows many cheap launches and a GPU busy well under 100%).
  std::vector<std::pair<std::string, Entry>> host(rec.host_by_name.begin(), rec.host_by_name.end());
  std::sort(host.begin(), host.end(), [](const auto& a, const auto& b) { return a.second.total_ns > b.second.total_ns; });
  uint64_t host_ns = 0;
  int64_t host_calls = 0;
  for (const auto& r : host) host_ns += r.second.total_ns, host_calls += r.second.calls;
  if (host_calls > 0) {
    out += fmt::format("host: {} CUDA runtime calls, {:.2f} ms inside them ({:.0f}% of the wall)\n", host_calls, host_ns * 1e-6,
                       wall_ms > 0 ? 100 * host_ns * 1e-6 / wall_ms : 0.0);
    for (int i = 0; i < (int)host.size() && i < 8; ++i) {
      const auto& [name, e] = host[i];
      out += fmt::format("{:>5.1f}% {:>10.3f} {:>8} {:>10.1f}  {}\n", wall_ms > 0 ? 100 * e.total_ns * 1e-6 / wall_ms : 0.0,
                         e.total_ns * 1e-6, e.calls, e.total_ns * 1e-3 / e.calls, name);
    }
    // The copy calls by direction (joined with their copies): a copy to the host waits for the stream; an upload
    // from pageable memory may too.
    std::map<std::string, Entry> by_kind;
    for (const auto& [corr, ns] : rec.copy_call_ns) {
      const auto it = rec.copy_kind.find(corr);
      Entry& e = by_kind[it == rec.copy_kind.end() ? "(no copy recorded)" : it->second];
      ++e.calls, e.total_ns += ns;
    }
    for (const auto& [kind, e] : by_kind)
      out += fmt::format("{:>5.1f}% {:>10.3f} {:>8} {:>10.1f}    cudaMemcpy* {}\n",
                         wall_ms > 0 ? 100 * e.total_ns * 1e-6 / wall_ms : 0.0, e.total_ns * 1e-6, e.calls,
                         e.total_ns * 1e-3 / e.calls, kind);
  }
  return out;
}

Profiler::~Profiler() {
  if (running_) try {
      stop();
    } catch (...) {
    }
}
#endif

}  // namespace nt::cuda
