// A kernel-level GPU profiler, like the kernel summary of Nsight Systems, through CUPTI's activity API: between
// start() and stop() every kernel, copy and memset on the GPU is recorded with its GPU start and end times; the
// report lists the most expensive ones by name (calls, total and mean time, share of GPU time) and how busy the GPU
// was over the wall-clock time of the window (a low share means the host, not the GPU, sets the pace), then the
// host's time inside CUDA runtime calls by call (where it waits: stream synchronizations, copies to the host).
// libcupti is loaded at run time (from the CUDA toolkit, CUDA_HOME or LD_LIBRARY_PATH), so nothing links it.
//   train_lm training.profile_steps=5     (or in code:)
//   cuda::Profiler prof; prof.start(); ...; fmt::print("{}", prof.stop());
#pragma once
#include <cstdint>
#include <string>

namespace nt::cuda {

class Profiler {
 public:
  // Begins recording (one profiler may record at a time). An nt::Error when CUDA is not compiled in or libcupti
  // cannot be loaded (the message lists where it looked).
  void start();
  // Waits for the GPU, stops recording and returns the report: the `top` most expensive names by total time.
  std::string stop(int top = 30);
  ~Profiler();

 private:
  bool running_ = false;
  int64_t wall_start_ns_ = 0;
};

}  // namespace nt::cuda
