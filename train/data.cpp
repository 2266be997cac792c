#include "train/data.h"

#include <cstring>
#include <fstream>

#include "tensor/philox.h"

namespace nt::train {

TokenShard load_shard(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  NT_CHECK(in.good(), "data: cannot open token shard '{}' (run scripts/prepare_data.sh to create it)", path);
  const uint64_t size = (uint64_t)in.tellg();
  NT_CHECK(size >= 24, "data: '{}' is truncated ({} bytes; the header alone is 24)", path, size);
  in.seekg(0);
  char magic[8];
  uint32_t vocab = 0, width = 0;
  uint64_t count = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&vocab), 4);
  in.read(reinterpret_cast<char*>(&width), 4);
  in.read(reinterpret_cast<char*>(&count), 8);
  NT_CHECK(std::memcmp(magic, "NTTOKENS", 8) == 0, "data: '{}' is not a token shard (bad magic)", path);
  NT_CHECK(width == 2, "data: '{}' has {}-byte tokens, expected 2", path, width);
  NT_CHECK(24 + count * 2 == size, "data: '{}' is truncated or corrupt: header says {} tokens ({} bytes), file has {} bytes",
           path, count, 24 + count * 2, size);
  TokenShard s;
  s.vocab = vocab;
  s.tokens.resize(count);
  in.read(reinterpret_cast<char*>(s.tokens.data()), (std::streamsize)(count * 2));
  for (uint64_t i = 0; i < count; ++i)
    NT_CHECK(s.tokens[i] < vocab, "data: '{}': token {} at position {} is outside the vocabulary of {}", path, s.tokens[i], i, vocab);
  return s;
}

static Batch make_batch(const TokenShard& s, const std::vector<int64_t>& starts, int64_t T, Device device) {
  const int64_t B = (int64_t)starts.size();
  Tensor x = empty({B, T}, DType::i64), y = empty({B, T}, DType::i64);
  int64_t *xp = x.data<int64_t>(), *yp = y.data<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) xp[b * T + t] = s.tokens[starts[b] + t], yp[b * T + t] = s.tokens[starts[b] + t + 1];
  return {x.to(device), y.to(device)};
}

Batch sample_batch(const TokenShard& s, int64_t B, int64_t T, Generator& gen, Device device) {
  NT_CHECK((int64_t)s.tokens.size() > T + 1, "data: the shard has {} tokens, too few for windows of {}", s.tokens.size(), T + 1);
  const uint64_t range = s.tokens.size() - (uint64_t)T - 1;
  const uint64_t off = gen.advance(philox::uniform_blocks((uint64_t)B));
  std::vector<int64_t> starts(B);
  for (int64_t b = 0; b < B; ++b)
    starts[b] = (int64_t)(((uint64_t)philox::block(gen.seed, off + b / 4).x[b % 4] * range) >> 32);
  return make_batch(s, starts, T, device);
}

Batch sequential_batch(const TokenShard& s, int64_t first, int64_t B, int64_t T, Device device) {
  std::vector<int64_t> starts(B);
  for (int64_t b = 0; b < B; ++b) {
    starts[b] = (first + b) * T;
    NT_CHECK(starts[b] + T + 1 <= (int64_t)s.tokens.size(), "data: evaluation window {} runs past the {} tokens of the shard",
             first + b, s.tokens.size());
  }
  return make_batch(s, starts, T, device);
}

}  // namespace nt::train
