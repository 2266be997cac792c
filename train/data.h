// Token shards (written by scripts/prepare_brown.py) and batch sampling.
// Shard: 8 bytes magic "NTTOKENS", u32 vocab size, u32 bytes per token (2), u64 token count, u16 tokens.
#pragma once
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace nt::train {

struct TokenShard {
  std::vector<uint16_t> tokens;
  int64_t vocab = 0;
};
// A missing, truncated or corrupt file is an error naming the file and what is wrong.
TokenShard load_shard(const std::string& path);

// B windows of T + 1 tokens from random offsets (drawn from gen): inputs x [B, T] and next-token targets y [B, T].
struct Batch {
  Tensor x, y;
};
Batch sample_batch(const TokenShard& shard, int64_t B, int64_t T, Generator& gen, Device device = kCPU);
// The windows [i * T, i * T + T + 1) for i in [first, first + B): a fixed, repeatable evaluation batch.
Batch sequential_batch(const TokenShard& shard, int64_t first, int64_t B, int64_t T, Device device = kCPU);

}  // namespace nt::train
