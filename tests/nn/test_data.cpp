// Document indexes (round trip, corrupt and truncated files), packed batches (cu_seqlens by hand and against the
// definition, the same windows and generator use as sample_batch, masked cross-document targets), documents files
// and the prepare step on a tiny corpus (train/prepare.h).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "test_util.h"
#include "train/data.h"
#include "train/prepare.h"
#include "train/tokenizer.h"

using namespace nt;
using namespace nt::test;
namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes; }

std::vector<int64_t> ints(const Tensor& t) {
  std::vector<int64_t> v;
  for (double d : t.to_vector()) v.push_back((int64_t)d);
  return v;
}

// cu_seqlens and targets from the definition, for a window starting at each of starts.
void check_packed(const train::TokenShard& s, const train::PackedBatch& p, const std::vector<int64_t>& starts, int64_t T) {
  const int64_t B = (int64_t)starts.size();
  const std::set<int64_t> docs(s.doc_starts.begin(), s.doc_starts.end());
  std::vector<int32_t> want;
  std::vector<int64_t> x, y;
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 0; t < T; ++t) {
      if (t == 0 || docs.count(starts[r] + t)) want.push_back((int32_t)(r * T + t));
      x.push_back(s.tokens[starts[r] + t]);
      y.push_back(docs.count(starts[r] + t + 1) ? -100 : s.tokens[starts[r] + t + 1]);
    }
  want.push_back((int32_t)(B * T));
  CHECK(p.cu_seqlens == want);
  CHECK(p.cu_seqlens.front() == 0);
  CHECK(p.cu_seqlens.back() == B * T);
  for (size_t i = 1; i < p.cu_seqlens.size(); ++i) CHECK(p.cu_seqlens[i] > p.cu_seqlens[i - 1]);
  CHECK(ints(p.x) == x);
  CHECK(ints(p.y) == y);
}

}  // namespace

TEST_CASE("data: document index: round trip, loaded beside its shard, corrupt and truncated files") {
  const fs::path dir = fresh_dir("nt_data_docidx");
  std::vector<uint16_t> toks(40);
  for (int i = 0; i < 40; ++i) toks[i] = (uint16_t)(i % 7);
  const std::vector<int64_t> starts = {0, 3, 4, 20, 39};
  train::save_shard((dir / "s.bin").string(), toks, 7);
  train::save_doc_index((dir / "s.docs").string(), starts, 40);
  CHECK(train::load_doc_index((dir / "s.docs").string(), 40) == starts);
  CHECK(train::doc_index_path("a/b.bin") == "a/b.docs");
  CHECK(train::doc_index_path("a/b") == "a/b.docs");
  const train::TokenShard s = train::load_shard((dir / "s.bin").string());
  CHECK(s.tokens == toks);
  CHECK(s.vocab == 7);
  CHECK(s.doc_starts == starts);
  train::save_shard((dir / "plain.bin").string(), toks, 7);
  CHECK(train::load_shard((dir / "plain.bin").string()).doc_starts.empty());  // no index: one stream

  const std::string f = (dir / "bad.docs").string(), good = slurp(dir / "s.docs");
  expect_error([&] { train::load_doc_index((dir / "nope.docs").string()); }, {"cannot open", "nope.docs"});
  spit(f, good.substr(0, good.size() - 3));
  expect_error([&] { train::load_doc_index(f); }, {"bad.docs", "truncated or corrupt", "header says 5 documents"});
  spit(f, good.substr(0, 10));
  expect_error([&] { train::load_doc_index(f); }, {"bad.docs", "truncated", "10 bytes"});
  std::string junk = good;
  junk[0] = 'X';
  spit(f, junk);
  expect_error([&] { train::load_doc_index(f); }, {"bad.docs", "bad magic"});
  expect_error([&] { train::load_doc_index((dir / "s.docs").string(), 41); }, {"s.docs", "40 tokens", "has 41"});
  auto raw = [&](std::vector<uint64_t> v, uint64_t total) {
    std::string b = "NTDOCIDX";
    const uint64_t n = v.size();
    b.append(reinterpret_cast<const char*>(&total), 8).append(reinterpret_cast<const char*>(&n), 8);
    b.append(reinterpret_cast<const char*>(v.data()), v.size() * 8);
    spit(f, b);
  };
  raw({0, 5, 5}, 40);
  expect_error([&] { train::load_doc_index(f); }, {"bad.docs", "start 2 (5) is not after start 1 (5)"});
  raw({1, 5}, 40);
  expect_error([&] { train::load_doc_index(f); }, {"bad.docs", "starts at 1, expected 0"});
  raw({0, 40}, 40);
  expect_error([&] { train::load_doc_index(f); }, {"bad.docs", "start 1 (40) is past the shard's 40 tokens"});
  // An index left from another prepare run is refused by load_shard.
  train::save_doc_index((dir / "plain.docs").string(), starts, 50);
  expect_error([&] { train::load_shard((dir / "plain.bin").string()); }, {"plain.docs", "50 tokens", "has 40"});
  expect_error([&] { train::save_doc_index(f, {0, 3, 2}, 40); }, {"bad.docs", "start 2 is 2"});
  expect_error([&] { train::save_shard(f, toks, 70000); }, {"bad.docs", "vocab 70000"});
  expect_error([&] { train::save_shard(f, toks, 5); }, {"bad.docs", "token 5 at position 5", "vocabulary of 5"});
  fs::remove_all(dir);
}

TEST_CASE("data: packed batches: cu_seqlens at document and row starts, cross-document targets masked") {
  train::TokenShard s;
  s.vocab = 100;
  for (int i = 0; i < 64; ++i) s.tokens.push_back((uint16_t)i);
  // A document starting exactly at row 2's start (20), two starts one apart (13, 14), one at the row's last target.
  s.doc_starts = {0, 5, 13, 14, 20, 30, 47};
  const train::PackedBatch p = train::sequential_packed_batch(s, 0, 3, 10);
  CHECK(p.cu_seqlens == std::vector<int32_t>{0, 5, 10, 13, 14, 20, 30});
  CHECK(p.x.shape() == Shape{3, 10});
  // Targets that are a document's first token: positions 4 (-> 5), 12 (-> 13), 13 (-> 14), 19 (-> 20), 29 (-> 30).
  const std::vector<int64_t> y = ints(p.y);
  for (int64_t i = 0; i < 30; ++i) {
    const int64_t r = i / 10, t = i % 10, target = r * 10 + t + 1;
    const bool masked = i == 4 || i == 12 || i == 13 || i == 19 || i == 29;
    CHECK_MESSAGE(y[i] == (masked ? -100 : target), "position " << i);
  }
  check_packed(s, p, {0, 10, 20}, 10);
  check_packed(s, train::sequential_packed_batch(s, 2, 4, 10), {20, 30, 40, 50}, 10);

  // Without an index: the rows are the sequences, and x, y are sequential_batch's.
  train::TokenShard plain = s;
  plain.doc_starts.clear();
  const train::PackedBatch q = train::sequential_packed_batch(plain, 1, 2, 8);
  CHECK(q.cu_seqlens == std::vector<int32_t>{0, 8, 16});
  const train::Batch e = train::sequential_batch(plain, 1, 2, 8);
  CHECK(ints(q.x) == ints(e.x));
  CHECK(ints(q.y) == ints(e.y));
  expect_error([&] { train::sequential_packed_batch(s, 6, 1, 10); }, {"evaluation window 6", "64 tokens"});
}

TEST_CASE("data: packed batches: the same windows and generator use as sample_batch, deterministic by seed") {
  train::TokenShard s;
  s.vocab = 3000;
  for (int i = 0; i < 3000; ++i) s.tokens.push_back((uint16_t)i);  // token = position: a row's first token is its offset
  for (int64_t at = 0; at < 3000; at += 1 + (at * 7919) % 23) s.doc_starts.push_back(at);  // documents of 1..23 tokens
  const int64_t B = 6, T = 32;
  Generator ga(11), gb(11), gc(11);
  for (int step = 0; step < 5; ++step) {
    const train::Batch b = train::sample_batch(s, B, T, ga);
    const train::PackedBatch p = train::sample_packed_batch(s, B, T, gb);
    const train::PackedBatch p2 = train::sample_packed_batch(s, B, T, gc);
    CHECK(ga.offset == gb.offset);  // interchangeable mid-run: a resumed run draws the same windows
    CHECK(ints(p.x) == ints(b.x));
    const std::vector<int64_t> py = ints(p.y), by = ints(b.y), x = ints(b.x);
    for (size_t i = 0; i < py.size(); ++i) CHECK((py[i] == by[i] || py[i] == -100));
    CHECK(p.cu_seqlens == p2.cu_seqlens);
    CHECK(ints(p.y) == ints(p2.y));
    std::vector<int64_t> starts;
    for (int64_t r = 0; r < B; ++r) starts.push_back(x[r * T]);
    check_packed(s, p, starts, T);
    CHECK(p.cu_seqlens.size() > (size_t)B + 1);  // documents of at most 23 tokens: every row has a boundary inside
  }
}

TEST_CASE("data: documents files: round trip, a truncated file is refused naming it") {
  const fs::path dir = fresh_dir("nt_data_documents");
  const std::vector<std::string> docs = {"One.\nTwo lines.\n", "", "x\x1ey \x1e", "Last <|eos|> stays text.\n"};
  const std::string f = (dir / "d.docs.txt").string();
  train::save_documents(f, docs);
  CHECK(train::load_documents(f) == docs);
  CHECK(slurp(f) == "One.\nTwo lines.\n\x1e\n\x1e\nx\x1ey \x1e\x1e\nLast <|eos|> stays text.\n\x1e\n");
  const std::string good = slurp(f);
  spit(f, good.substr(0, good.size() - 1));
  expect_error([&] { train::load_documents(f); }, {"d.docs.txt", "truncated", "3 documents before it"});
  expect_error([&] { train::load_documents((dir / "missing.docs.txt").string()); }, {"cannot open", "missing.docs.txt"});
  expect_error([&] { train::save_documents(f, {"a\x1e\nb"}); }, {"document 0", "d.docs.txt", "separator"});
  fs::remove_all(dir);
}

TEST_CASE("data: prepare: a tiny corpus into BPE shards with document indexes and meta.json") {
  const fs::path dir = fresh_dir("nt_data_prepare");
  std::vector<std::string> train_docs, val_docs;
  const char* words[] = {"the", "jury", "said", "county", "election", "was", "conducted", "and", "of", "in"};
  for (int d = 0; d < 12; ++d) {
    std::string doc;
    for (int w = 0; w < 30 + d * 5; ++w) doc += std::string(words[(d * 3 + w * w) % 10]) + (w % 9 == 8 ? ".\n" : " ");
    (d % 4 == 3 ? val_docs : train_docs).push_back(doc + "\n");
  }
  train_docs.push_back("A <|eos|> in the text is text.\n");
  train::save_documents((dir / "train.docs.txt").string(), train_docs);
  train::save_documents((dir / "val.docs.txt").string(), val_docs);

  train::PrepareOptions opt;
  opt.src = dir.string(), opt.out = (dir / "bpe300").string(), opt.vocab = 300, opt.threads = 2;
  const train::PrepareResult r = train::prepare_corpus(opt);
  CHECK(r.vocab == 300);
  CHECK(r.kind == "bpe");
  CHECK(r.train_docs == (int64_t)train_docs.size());
  CHECK(r.val_docs == (int64_t)val_docs.size());
  const train::Tokenizer tk = train::Tokenizer::load(r.tokenizer);
  CHECK(r.eos == tk.special("eos"));
  for (const auto& [split, docs] : {std::pair{"train", train_docs}, std::pair{"val", val_docs}}) {
    const train::TokenShard s = train::load_shard((fs::path(opt.out) / (std::string(split) + ".bin")).string());
    CHECK(s.vocab == 300);
    REQUIRE(s.doc_starts.size() == docs.size());
    int64_t bytes = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      const int64_t a = s.doc_starts[d], b = d + 1 < docs.size() ? s.doc_starts[d + 1] : (int64_t)s.tokens.size();
      CHECK(s.tokens[b - 1] == r.eos);  // each document ends with eos, and nothing else is eos
      const std::vector<int32_t> ids(s.tokens.begin() + a, s.tokens.begin() + b - 1);
      CHECK(std::count(ids.begin(), ids.end(), r.eos) == 0);
      CHECK(tk.decode(ids) == docs[d]);
      bytes += (int64_t)docs[d].size();
    }
    CHECK(bytes == (std::string(split) == "train" ? r.train_bytes : r.val_bytes));
    CHECK((int64_t)s.tokens.size() == (std::string(split) == "train" ? r.train_tokens : r.val_tokens));
  }
  CHECK(r.bytes_per_token > 1.5);
  CHECK(r.unigram_entropy_nats > 0);
  CHECK(r.unigram_entropy_nats < std::log(300.0));
  const std::string meta = slurp(fs::path(opt.out) / "meta.json");
  for (const std::string key : {"\"corpus\": \"brown\"", "\"vocab\": 300", "\"tokenizer\": ", "\"train_tokens\": ",
                                "\"val_tokens\": ", "\"bytes_per_token\": ", "\"unigram_entropy_nats\": "})
    CHECK_MESSAGE(meta.find(key) != std::string::npos, "meta.json lacks " << key << ":\n" << meta);

  // The thread count does not change the shards, and a saved tokenizer gives the same ones as training it again.
  train::PrepareOptions one = opt;
  one.out = (dir / "one").string(), one.threads = 1, one.tokenizer = r.tokenizer;
  train::prepare_corpus(one);
  for (const char* f : {"train.bin", "train.docs", "val.bin", "val.docs"})
    CHECK_MESSAGE(slurp(fs::path(opt.out) / f) == slurp(fs::path(one.out) / f), f);

  train::PrepareOptions bad = opt;
  bad.vocab = 70000;
  expect_error([&] { train::prepare_corpus(bad); }, {"vocab", "65535", "70000"});
  bad = opt, bad.src = (dir / "nowhere").string();
  expect_error([&] { train::prepare_corpus(bad); }, {"cannot open", "nowhere", "train.docs.txt"});
  fs::remove_all(dir);
}
