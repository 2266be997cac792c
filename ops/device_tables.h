// Small index tables built on the host from a batch's layout (cu_seqlens and an op's settings) and read by kernels:
// every layer of a step, forward and backward, asks for the same ones, so each is uploaded once and kept. On the
// H100 an upload costs ~38 us of host time, and the NSA + MoE LM made ~270 a step (docs/training.md).
#pragma once
#include <functional>
#include <vector>

#include "tensor/tensor.h"

namespace nt {
// The table named `kind` (a string literal: the cache keeps the pointer) for `key` (everything its values depend
// on) as a 1-D tensor of `dtype` on `device`: from the cache (the last kTableCacheSize tables, per thread), else
// make() uploaded. The result is shared by every caller: read it only.
constexpr int kTableCacheSize = 32;
Tensor cached_table(const char* kind, const std::vector<int64_t>& key, DType dtype, Device device,
                    const std::function<std::vector<double>()>& make);
// Tables made since the thread started (cache misses): for tests and profiles.
int64_t cached_table_builds();
}  // namespace nt
