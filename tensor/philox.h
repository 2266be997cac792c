// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based generator.
// The numbers depend only on (seed, counter), so the CPU loops and the CUDA kernels produce the same stream.
//
// Stream layout shared by every backend: element i of a draw that starts at generator offset `off` uses the
// block counter c = off + i / 4 and lane i % 4 (uniform); normals use block c = off + i / 2 and Box-Muller on
// lanes (0,1) for even i and (2,3) for odd i, computed in double so host and device round to the same float.
#pragma once
#include <cmath>
#include <cstdint>
#include "tensor/dtype.h"

namespace nt::philox {
struct U4 {
  uint32_t x[4];
};
NT_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}
// Counter (c0..c3) = (block lo, block hi, 0, 0), key = seed.
NT_HD U4 block(uint64_t seed, uint64_t counter) {
  uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  return U4{{c0, c1, c2, c3}};
}
// Uniform in [0, 1) with 24 random bits (exactly representable in f32).
NT_HD float to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

// The i-th uniform of a draw starting at block offset `off`.
NT_HD float uniform_at(uint64_t seed, uint64_t off, uint64_t i) {
  return to_unit(block(seed, off + i / 4).x[i % 4]);
}
// The i-th standard normal: Box-Muller on one lane pair, cosine branch only (one normal per pair keeps the
// mapping element -> counter trivial on any backend).
NT_HD float normal_at(uint64_t seed, uint64_t off, uint64_t i) {
  const U4 b = block(seed, off + i / 2);
  const int l = (int)(i % 2) * 2;
  const double u1 = 1.0 - (double)to_unit(b.x[l]);  // (0, 1]: log is finite
  const double u2 = (double)to_unit(b.x[l + 1]);
  return (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}
// Blocks consumed by a draw of n elements.
NT_HD uint64_t uniform_blocks(uint64_t n) { return (n + 3) / 4; }
NT_HD uint64_t normal_blocks(uint64_t n) { return (n + 1) / 2; }
}  // namespace nt::philox
