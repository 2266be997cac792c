// Timing for the benchmark programs: the median of fn over `iters` runs after 3 warm-up runs, in ms, timed with
// CUDA events on the library's stream (host work that delays the launches counts); and the PyTorch reference
// timings a script prints as 'name value' lines.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/runtime.h"

namespace nt::bench {
template <class F> double time_ms(F fn, int iters = 20) {
  cudaStream_t s = cuda::current_stream(0);
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t(iters);
  cudaEvent_t a, b;
  NT_CUDA_CHECK(cudaEventCreate(&a));
  NT_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < iters; ++i) {
    NT_CUDA_CHECK(cudaEventRecord(a, s));
    fn();
    NT_CUDA_CHECK(cudaEventRecord(b, s));
    NT_CUDA_CHECK(cudaEventSynchronize(b));
    NT_CUDA_CHECK(cudaEventElapsedTime(&t[i], a, b));
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[iters / 2];
}

// scripts/NAME as found above the executable (build/examples/bench_nsa, or build-gpu/bench_nsa as
// scripts/carry_check.sh runs it: the script of the checkout the binary was built in) or else from the working
// directory (the repository root, where README's commands run), so that a benchmark started anywhere finds its
// PyTorch script; "scripts/NAME" when none has it. Quoted for the shell (the path may hold spaces).
inline std::string script_path(const std::string& name) {
  namespace fs = std::filesystem;
  std::vector<fs::path> roots;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (fs::path d = exe.parent_path(); d.has_relative_path(); d = d.parent_path()) roots.push_back(d);
  if (const fs::path cwd = fs::current_path(ec); !ec) roots.push_back(cwd);
  std::string found = "scripts/" + name;
  for (const fs::path& r : roots)
    if (fs::exists(r / "scripts" / name, ec)) {
      found = (r / "scripts" / name).string();
      break;
    }
  std::string quoted = "'";
  for (char c : found) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// Runs `command` (a python3 script with torch) and collects its 'name value' lines; empty when python3 or torch is
// missing (the script's errors are discarded).
inline std::map<std::string, double> python_results(const std::string& command) {
  std::map<std::string, double> r;
  FILE* p = popen((command + " 2>/dev/null").c_str(), "r");
  if (!p) return r;
  char name[128];
  double v;
  while (fscanf(p, "%127s %lf", name, &v) == 2) r[name] = v;
  pclose(p);
  return r;
}
}  // namespace nt::bench
