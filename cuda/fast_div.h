// Division by a divisor fixed before the launch, for any dividend below 2^31, as a multiply-high, an add and a
// shift (Granlund and Montgomery, "Division by invariant integers using multiplication", PLDI 1994): the strided
// kernels' offsets (offset_of in cuda/common.cuh) divide the linear index by every extent, and a 64-bit division
// is a long instruction sequence on the GPU. No CUDA headers: the CPU tests check it against '/'.
#pragma once
#include <cstdint>

#include "tensor/dtype.h"  // NT_HD

namespace nt::cuda {

// n / d == (mulhi(n, magic) + n) >> shift for 0 <= n < 2^31, where shift = ceil(log2 d) and
// magic = floor(2^32 (2^shift - d) / d) + 1 (< 2^32 because 2^shift - d < d).
struct FastDiv {
  uint32_t magic = 1, shift = 0;  // dividing by 1
};

// For 1 <= d < 2^31 (on the host, or once per thread in a kernel's prologue).
NT_HD FastDiv fast_div_for(uint32_t d) {
  uint32_t s = 0;
  while ((uint64_t{1} << s) < d) ++s;
  return {(uint32_t)(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1), s};
}

NT_HD uint32_t fast_div(uint32_t n, FastDiv f) {
#ifdef __CUDA_ARCH__
  return (__umulhi(n, f.magic) + n) >> f.shift;
#else
  return (uint32_t)((((uint64_t)n * f.magic) >> 32) + n) >> f.shift;
#endif
}

}  // namespace nt::cuda
