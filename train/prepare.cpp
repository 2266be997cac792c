#include "train/prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/ranges.h>

#include "tensor/error.h"
#include "train/data.h"
#include "train/tokenizer.h"

namespace nt::train {
namespace fs = std::filesystem;

static constexpr std::string_view kSep = "\x1e\n";

std::vector<std::string> load_documents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  NT_CHECK(in.good(), "prepare: cannot open documents file '{}' (scripts/prepare_data.sh writes data/brown/*.docs.txt)", path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> docs;
  size_t at = 0;
  for (size_t end; (end = text.find(kSep, at)) != std::string::npos; at = end + kSep.size()) docs.emplace_back(text, at, end - at);
  // Anything after the last separator is a document cut short (a truncated copy, or not a documents file at all).
  NT_CHECK(at == text.size(),
           "prepare: '{}' is truncated or not a documents file: {} bytes after the last record separator (0x1E line; {} "
           "documents before it)", path, text.size() - at, docs.size());
  return docs;
}

void save_documents(const std::string& path, const std::vector<std::string>& docs) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  NT_CHECK(out.good(), "prepare: cannot write documents file '{}'", path);
  for (size_t i = 0; i < docs.size(); ++i) {
    NT_CHECK(docs[i].find(kSep) == std::string::npos, "prepare: document {} of '{}' contains the separator \"\\x1e\\n\"", i, path);
    out << docs[i] << kSep;
  }
  NT_CHECK(out.good(), "prepare: writing '{}' failed", path);
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if ((unsigned char)c < 0x20) o += fmt::format("\\u{:04x}", (int)c);
    else o += c;
  }
  return o + "\"";
}

struct Encoded {
  std::vector<uint16_t> tokens;
  std::vector<int64_t> starts;
  int64_t bytes = 0;
};

// Documents are independent, so they are encoded on all cores and joined in order: the result does not depend on
// the thread count.
Encoded encode_split(const Tokenizer& tk, const std::vector<std::string>& docs, int32_t eos, int threads,
                     const std::string& name, bool progress) {
  std::vector<std::vector<int32_t>> enc(docs.size());
  std::atomic<size_t> next{0}, done{0};
  const auto t0 = Clock::now();
  std::mutex mu;
  double printed = 0;
  auto work = [&] {
    for (size_t i; (i = next++) < docs.size();) {
      enc[i] = tk.encode(docs[i], /*allow_specials=*/false);
      const size_t d = ++done;
      if (!progress) continue;
      std::lock_guard lock(mu);
      if (const double t = since(t0); d == docs.size() || t >= printed + 2)
        printed = t, fmt::print(stderr, "prepare: encoding {}: {}/{} documents, {:.1f} s\n", name, d, docs.size(), t);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();

  Encoded e;
  size_t total = 0;
  for (const auto& v : enc) total += v.size() + 1;
  e.tokens.reserve(total);
  for (size_t i = 0; i < docs.size(); ++i) {
    e.starts.push_back((int64_t)e.tokens.size());
    e.bytes += (int64_t)docs[i].size();
    for (int32_t id : enc[i]) e.tokens.push_back((uint16_t)id);
    e.tokens.push_back((uint16_t)eos);
  }
  return e;
}

}  // namespace

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  NT_CHECK(opt.tokenizer.empty() || opt.gpt2.empty(), "prepare: give at most one of tokenizer= ('{}') and gpt2= ('{}')",
           opt.tokenizer, opt.gpt2);
  const std::vector<std::string> train_docs = load_documents((fs::path(opt.src) / "train.docs.txt").string());
  const std::vector<std::string> val_docs = load_documents((fs::path(opt.src) / "val.docs.txt").string());
  NT_CHECK(!train_docs.empty(), "prepare: '{}' holds no documents", (fs::path(opt.src) / "train.docs.txt").string());
  fs::create_directories(opt.out);
  const bool progress = opt.progress;
  PrepareResult r;

  auto t0 = Clock::now();
  std::optional<Tokenizer> tk;
  if (!opt.gpt2.empty()) {
    tk = Tokenizer::load_gpt2((fs::path(opt.gpt2) / "encoder.json").string(), (fs::path(opt.gpt2) / "vocab.bpe").string());
    r.tokenizer = opt.gpt2, r.kind = "gpt2";
  } else if (!opt.tokenizer.empty()) {
    tk = Tokenizer::load(opt.tokenizer);
    r.tokenizer = opt.tokenizer, r.kind = "bpe";
  } else {
    NT_CHECK(opt.vocab > 256 && opt.vocab <= 65535, "prepare: vocab must be in 257..65535 (u16 token ids), got {}", opt.vocab);
    if (progress) fmt::print(stderr, "prepare: training a BPE of {} tokens on {} train documents\n", opt.vocab, train_docs.size());
    tk = Tokenizer::train(train_docs, opt.vocab, {"<|bos|>", "<|eos|>", "<|pad|>", "<|fill|>"}, progress);
    r.tokenizer = (fs::path(opt.out) / "tokenizer.txt").string(), r.kind = "bpe";
    tk->save(r.tokenizer);
  }
  r.seconds_tokenizer = since(t0);
  r.vocab = tk->vocab_size();
  NT_CHECK(r.vocab <= 65535, "prepare: tokenizer '{}' has {} tokens; the shards' u16 ids allow at most 65535", r.tokenizer, r.vocab);
  // GPT-2 calls its document separator <|endoftext|>.
  const std::optional<int32_t> eos = tk->find_special("eos") ? tk->find_special("eos") : tk->find_special("endoftext");
  NT_CHECK(eos.has_value(), "prepare: tokenizer '{}' has no eos special token (<|eos|> or <|endoftext|>); its specials: {}",
           r.tokenizer, fmt::join(tk->specials(), ", "));
  r.eos = *eos;

  t0 = Clock::now();
  const int threads = opt.threads > 0 ? opt.threads : std::max(1, (int)std::thread::hardware_concurrency());
  const Encoded tr = encode_split(*tk, train_docs, *eos, threads, "train", progress);
  const Encoded va = encode_split(*tk, val_docs, *eos, threads, "val", progress);
  r.seconds_encode = since(t0);

  const fs::path out(opt.out);
  save_shard((out / "train.bin").string(), tr.tokens, r.vocab);
  save_doc_index((out / "train.docs").string(), tr.starts, (int64_t)tr.tokens.size());
  save_shard((out / "val.bin").string(), va.tokens, r.vocab);
  save_doc_index((out / "val.docs").string(), va.starts, (int64_t)va.tokens.size());

  r.train_docs = (int64_t)train_docs.size(), r.val_docs = (int64_t)val_docs.size();
  r.train_bytes = tr.bytes, r.val_bytes = va.bytes;
  r.train_tokens = (int64_t)tr.tokens.size(), r.val_tokens = (int64_t)va.tokens.size();
  std::vector<int64_t> counts(r.vocab, 0);
  for (uint16_t t : tr.tokens) ++counts[t];
  for (int64_t c : counts)
    if (c > 0) r.unigram_entropy_nats -= (double)c / r.train_tokens * std::log((double)c / r.train_tokens);
  r.bytes_per_token = (double)r.train_bytes / r.train_tokens;

  // One key per line: examples/train_lm reads unigram_entropy_nats line by line.
  const std::string meta = fmt::format(
      "{{\n \"corpus\": {},\n \"tokenizer\": {},\n \"tokenizer_kind\": \"{}\",\n \"vocab\": {},\n \"eos\": {},\n"
      " \"train_docs\": {},\n \"val_docs\": {},\n \"train_bytes\": {},\n \"val_bytes\": {},\n \"train_tokens\": {},\n"
      " \"val_tokens\": {},\n \"bytes_per_token\": {:.6f},\n \"unigram_entropy_nats\": {:.17g}\n}}\n",
      json_string(opt.corpus), json_string(r.tokenizer), r.kind, r.vocab, r.eos, r.train_docs, r.val_docs, r.train_bytes,
      r.val_bytes, r.train_tokens, r.val_tokens, r.bytes_per_token, r.unigram_entropy_nats);
  const std::string meta_path = (out / "meta.json").string();
  {
    std::ofstream f(meta_path + ".tmp", std::ios::binary | std::ios::trunc);
    f << meta;
    NT_CHECK(f.good(), "prepare: cannot write '{}.tmp'", meta_path);
  }
  fs::rename(meta_path + ".tmp", meta_path);  // last: its presence means the directory is complete
  return r;
}

}  // namespace nt::train
