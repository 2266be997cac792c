// Tokenized corpora (examples/prepare_data): split documents in, BPE token shards with document indexes out.
//
// Documents file (<split>.docs.txt, written by scripts/prepare_brown.py): UTF-8 text, each document followed by a line
// holding only the ASCII record separator 0x1E ("doc\x1e\n"); a document itself never contains "\x1e\n".
//
// prepare_corpus writes into out: train.bin, val.bin (token shards, train/data.h), train.docs, val.docs (their
// document indexes), tokenizer.txt (when it trains one) and meta.json. Each document is encoded as plain text
// (special-token strings in it stay text) followed by the eos special token, so documents never merge.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nt::train {

std::vector<std::string> load_documents(const std::string& path);
void save_documents(const std::string& path, const std::vector<std::string>& docs);

struct PrepareOptions {
  std::string src;                // holds train.docs.txt and val.docs.txt
  std::string out;                // created if missing
  int64_t vocab = 8192;           // the BPE to train on the train split (default specials: bos, eos, pad, fill)
  std::string tokenizer;          // a saved tokenizer to use instead of training one
  std::string gpt2;               // a directory with GPT-2's encoder.json and vocab.bpe, instead of training
  std::string corpus = "brown";   // its name in meta.json
  int threads = 0;                // encoding threads; 0: one per core
  bool progress = false;          // lines on stderr during the long steps
};

// What meta.json records. unigram_entropy_nats: of the train split's token distribution (eos included), in nats per
// token, the loss of a model that ignores context; bytes_per_token: the train split's document bytes per token.
struct PrepareResult {
  std::string tokenizer;          // the tokenizer file (or GPT-2 directory) the shards were encoded with
  std::string kind;               // "bpe" or "gpt2"
  int64_t vocab = 0, eos = 0;
  int64_t train_docs = 0, val_docs = 0, train_bytes = 0, val_bytes = 0, train_tokens = 0, val_tokens = 0;
  double unigram_entropy_nats = 0, bytes_per_token = 0;
  double seconds_tokenizer = 0, seconds_encode = 0;
};
PrepareResult prepare_corpus(const PrepareOptions& opt);

}  // namespace nt::train
