// Timing for the benchmark programs: the median of fn over `iters` runs after 3 warm-up runs, in ms, timed with
// CUDA events on the library's stream (host work that delays the launches counts); and the PyTorch reference
// timings a script prints as 'name value' lines.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
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
