// The CUDA suite: every op on the GPU against the CPU reference. Without a GPU every case is skipped (and says so).
// New device allocations are filled with NaN bytes, so an output element a kernel forgets to write fails the
// comparison.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "cuda/memory.h"
#if NT_CUDA
#include "cuda/allocator.h"
#endif

int main(int argc, char** argv) {
  if (!nt::cuda::available())
    std::printf("CUDA suite: %s; every CUDA test case is skipped\n",
                nt::cuda::compiled_in() ? "no GPU found" : "this build has no CUDA support");
#if NT_CUDA
  else
    nt::cuda::set_poison_allocations(true);
#endif
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
