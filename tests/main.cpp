// The CPU suite. Its GPU cases (skipped without a GPU) run, like the CUDA suite, with new device allocations filled
// with NaN bytes, so an output element a kernel forgets to write fails the comparison instead of reading as zero.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "cuda/memory.h"
#if NT_CUDA
#include "cuda/allocator.h"
#endif

int main(int argc, char** argv) {
#if NT_CUDA
  if (nt::cuda::available()) nt::cuda::set_poison_allocations(true);
#endif
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
