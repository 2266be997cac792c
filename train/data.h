// Token shards (written by scripts/prepare_brown.py and examples/prepare_data) and batch sampling.
// Shard: 8 bytes magic "NTTOKENS", u32 vocab size, u32 bytes per token (2), u64 token count, u16 tokens.
// Document index (<name>.docs beside <name>.bin; examples/prepare_data writes one): 8 bytes magic "NTDOCIDX", u64 token
// count of its shard, u64 document count N, then N u64 start offsets (in tokens; the first 0, strictly increasing,
// each below the token count). All little-endian.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace nt::train {

struct TokenShard {
  std::vector<uint16_t> tokens;
  int64_t vocab = 0;
  std::vector<int64_t> doc_starts;  // where each document starts, sorted; empty: no index (one stream)
};
// A missing, truncated or corrupt file is an error naming the file and what is wrong. When the document index
// (path with ".bin" replaced by ".docs", else path + ".docs") exists, it is loaded into doc_starts and must match.
TokenShard load_shard(const std::string& path);
// tokens >= 0: the token count of the shard the index must belong to (checked against the header and the starts).
std::vector<int64_t> load_doc_index(const std::string& path, int64_t tokens = -1);
std::string doc_index_path(const std::string& shard_path);
// Atomic (path + ".tmp", then renamed over path). vocab must fit u16 ids (<= 65535) and every token lie below it.
void save_shard(const std::string& path, const std::vector<uint16_t>& tokens, int64_t vocab);
void save_doc_index(const std::string& path, const std::vector<int64_t>& starts, int64_t tokens);

// B windows of T + 1 tokens from random offsets (drawn from gen): inputs x [B, T] and next-token targets y [B, T].
struct Batch {
  Tensor x, y;
};
Batch sample_batch(const TokenShard& shard, int64_t B, int64_t T, Generator& gen, Device device = kCPU);
// The windows [i * T, i * T + T + 1) for i in [first, first + B): a fixed, repeatable evaluation batch.
Batch sequential_batch(const TokenShard& shard, int64_t first, int64_t B, int64_t T, Device device = kCPU);

// Packed documents: the same windows as sample_batch / sequential_batch (the same draws from gen, so a run's data
// does not depend on which of the two it uses), plus cu_seqlens over the B * T flattened inputs for attention: 0,
// a boundary at every row start and at every document start inside a row (a document running into the row from
// before starts at the row start), then B * T; strictly increasing. Targets that would cross into the next document
// (the target of a document's last token, its eos, is the next document's first token, unpredictable from inside the
// document) are -100, the loss's ignore_index, so neither attention nor the loss crosses a boundary. Without a
// document index, x and y equal sample_batch's and cu_seqlens holds the row boundaries only.
struct PackedBatch {
  Tensor x, y;
  std::vector<int32_t> cu_seqlens;
};
PackedBatch sample_packed_batch(const TokenShard& shard, int64_t B, int64_t T, Generator& gen, Device device = kCPU);
PackedBatch sequential_packed_batch(const TokenShard& shard, int64_t first, int64_t B, int64_t T, Device device = kCPU);

}  // namespace nt::train
