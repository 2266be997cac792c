#include "train/data.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>

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
  const std::string docs = doc_index_path(path);
  if (std::ifstream(docs, std::ios::binary).good()) s.doc_starts = load_doc_index(docs, (int64_t)count);
  return s;
}

std::string doc_index_path(const std::string& shard_path) {
  const bool bin = shard_path.size() > 4 && shard_path.ends_with(".bin");
  return (bin ? shard_path.substr(0, shard_path.size() - 4) : shard_path) + ".docs";
}

std::vector<int64_t> load_doc_index(const std::string& path, int64_t tokens) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  NT_CHECK(in.good(), "data: cannot open document index '{}' (examples/prepare_data writes it)", path);
  const uint64_t size = (uint64_t)in.tellg();
  NT_CHECK(size >= 24, "data: document index '{}' is truncated ({} bytes; the header alone is 24)", path, size);
  in.seekg(0);
  char magic[8];
  uint64_t total = 0, count = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&total), 8);
  in.read(reinterpret_cast<char*>(&count), 8);
  NT_CHECK(std::memcmp(magic, "NTDOCIDX", 8) == 0, "data: '{}' is not a document index (bad magic)", path);
  NT_CHECK(count == (size - 24) / 8 && (size - 24) % 8 == 0,
           "data: document index '{}' is truncated or corrupt: header says {} documents, the file's {} bytes hold {:.3f}", path,
           count, size, (double)(size - 24) / 8);
  NT_CHECK(tokens < 0 || total == (uint64_t)tokens,
           "data: document index '{}' is for a shard of {} tokens, but its shard has {} (written by another prepare run?)", path,
           total, tokens);
  std::vector<uint64_t> raw(count);
  in.read(reinterpret_cast<char*>(raw.data()), (std::streamsize)(count * 8));
  NT_CHECK(in.good(), "data: cannot read document index '{}'", path);
  NT_CHECK(count == 0 || raw[0] == 0, "data: document index '{}': the first document starts at {}, expected 0", path,
           count ? raw[0] : 0);
  std::vector<int64_t> starts(count);
  for (uint64_t i = 0; i < count; ++i) {
    NT_CHECK(i == 0 || raw[i] > raw[i - 1], "data: document index '{}': start {} ({}) is not after start {} ({})", path, i,
             raw[i], i - 1, raw[i - 1]);
    NT_CHECK(raw[i] < total, "data: document index '{}': start {} ({}) is past the shard's {} tokens", path, i, raw[i], total);
    starts[i] = (int64_t)raw[i];
  }
  return starts;
}

// Written beside the target and renamed over it, so a reader never sees half a file.
static void write_atomic(const std::string& path, const std::string& what,
                         const std::function<void(std::ofstream&)>& body) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    NT_CHECK(out.good(), "data: cannot write {} '{}'", what, tmp);
    body(out);
    out.flush();
    NT_CHECK(out.good(), "data: writing {} '{}' failed (disk full?)", what, tmp);
  }
  NT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "data: cannot rename '{}' to '{}'", tmp, path);
}

void save_shard(const std::string& path, const std::vector<uint16_t>& tokens, int64_t vocab) {
  NT_CHECK(vocab > 0 && vocab <= 65535, "data: save_shard '{}': vocab {} does not fit u16 token ids (1..65535)", path, vocab);
  for (size_t i = 0; i < tokens.size(); ++i)
    NT_CHECK(tokens[i] < vocab, "data: save_shard '{}': token {} at position {} is outside the vocabulary of {}", path,
             tokens[i], i, vocab);
  write_atomic(path, "token shard", [&](std::ofstream& out) {
    const uint32_t v = (uint32_t)vocab, width = 2;
    const uint64_t count = tokens.size();
    out.write("NTTOKENS", 8);
    out.write(reinterpret_cast<const char*>(&v), 4);
    out.write(reinterpret_cast<const char*>(&width), 4);
    out.write(reinterpret_cast<const char*>(&count), 8);
    out.write(reinterpret_cast<const char*>(tokens.data()), (std::streamsize)(count * 2));
  });
}

void save_doc_index(const std::string& path, const std::vector<int64_t>& starts, int64_t tokens) {
  for (size_t i = 0; i < starts.size(); ++i)
    NT_CHECK((i == 0 ? starts[i] == 0 : starts[i] > starts[i - 1]) && starts[i] < tokens,
             "data: save_doc_index '{}': start {} is {}; starts must begin at 0, increase strictly and stay below the {} tokens",
             path, i, starts[i], tokens);
  write_atomic(path, "document index", [&](std::ofstream& out) {
    const uint64_t total = (uint64_t)tokens, count = starts.size();
    out.write("NTDOCIDX", 8);
    out.write(reinterpret_cast<const char*>(&total), 8);
    out.write(reinterpret_cast<const char*>(&count), 8);
    for (int64_t v : starts) {
      const uint64_t u = (uint64_t)v;
      out.write(reinterpret_cast<const char*>(&u), 8);
    }
  });
}

static Batch make_batch(const TokenShard& s, const std::vector<int64_t>& starts, int64_t T, Device device) {
  const int64_t B = (int64_t)starts.size();
  Tensor x = empty({B, T}, DType::i64), y = empty({B, T}, DType::i64);
  int64_t *xp = x.data<int64_t>(), *yp = y.data<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) xp[b * T + t] = s.tokens[starts[b] + t], yp[b * T + t] = s.tokens[starts[b] + t + 1];
  return {x.to(device), y.to(device)};
}

static std::vector<int64_t> random_starts(const TokenShard& s, int64_t B, int64_t T, Generator& gen) {
  NT_CHECK((int64_t)s.tokens.size() > T + 1, "data: the shard has {} tokens, too few for windows of {}", s.tokens.size(), T + 1);
  const uint64_t range = s.tokens.size() - (uint64_t)T - 1;
  const uint64_t off = gen.advance(philox::uniform_blocks((uint64_t)B));
  std::vector<int64_t> starts(B);
  for (int64_t b = 0; b < B; ++b)
    starts[b] = (int64_t)(((uint64_t)philox::block(gen.seed, off + b / 4).x[b % 4] * range) >> 32);
  return starts;
}

static std::vector<int64_t> sequential_starts(const TokenShard& s, int64_t first, int64_t B, int64_t T) {
  std::vector<int64_t> starts(B);
  for (int64_t b = 0; b < B; ++b) {
    starts[b] = (first + b) * T;
    NT_CHECK(starts[b] + T + 1 <= (int64_t)s.tokens.size(), "data: evaluation window {} runs past the {} tokens of the shard",
             first + b, s.tokens.size());
  }
  return starts;
}

Batch sample_batch(const TokenShard& s, int64_t B, int64_t T, Generator& gen, Device device) {
  return make_batch(s, random_starts(s, B, T, gen), T, device);
}

Batch sequential_batch(const TokenShard& s, int64_t first, int64_t B, int64_t T, Device device) {
  return make_batch(s, sequential_starts(s, first, B, T), T, device);
}

static PackedBatch make_packed(const TokenShard& s, const std::vector<int64_t>& starts, int64_t T, Device device) {
  const int64_t B = (int64_t)starts.size();
  NT_CHECK(B * T <= INT32_MAX, "data: a packed batch of {} x {} tokens overflows the int32 cu_seqlens", B, T);
  Batch b = make_batch(s, starts, T, kCPU);
  int64_t* yp = b.y.data<int64_t>();
  PackedBatch p;
  p.cu_seqlens.reserve(B + 1);
  const auto& d = s.doc_starts;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t s0 = starts[r];
    p.cu_seqlens.push_back((int32_t)(r * T));
    // Documents starting at s0 + 1 .. s0 + T: the target just before each start is the next document's first token.
    for (auto it = std::upper_bound(d.begin(), d.end(), s0); it != d.end() && *it <= s0 + T; ++it) {
      yp[r * T + (*it - s0 - 1)] = -100;
      if (*it < s0 + T) p.cu_seqlens.push_back((int32_t)(r * T + (*it - s0)));
    }
  }
  p.cu_seqlens.push_back((int32_t)(B * T));
  p.x = b.x.to(device), p.y = b.y.to(device);
  return p;
}

PackedBatch sample_packed_batch(const TokenShard& s, int64_t B, int64_t T, Generator& gen, Device device) {
  return make_packed(s, random_starts(s, B, T, gen), T, device);
}

PackedBatch sequential_packed_batch(const TokenShard& s, int64_t first, int64_t B, int64_t T, Device device) {
  return make_packed(s, sequential_starts(s, first, B, T), T, device);
}

}  // namespace nt::train
