// Tokenizes a split corpus into BPE token shards with document indexes (train/prepare.h, docs/training.md "Data").
//   build/examples/prepare_data [src=data/brown] [vocab=8192] [out=SRC/bpe<vocab>] [progress=1] [threads=0]
//   build/examples/prepare_data gpt2=data/gpt2 [out=SRC/gpt2]       GPT-2's vocabulary instead of training one
//   build/examples/prepare_data tokenizer=FILE out=DIR               a saved tokenizer (examples/tokenize train)
// src holds train.docs.txt and val.docs.txt (scripts/prepare_data.sh writes them for the Brown corpus).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include <fmt/ranges.h>

#include "tensor/error.h"
#include "train/prepare.h"

using namespace nt;

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> valid = {"src", "out", "vocab", "tokenizer", "gpt2", "corpus", "threads", "progress"};
    std::map<std::string, std::string> o;
    for (int a = 1; a < argc; ++a) {
      const std::string arg = argv[a];
      const size_t eq = arg.find('=');
      NT_CHECK(eq != std::string::npos && std::count(valid.begin(), valid.end(), arg.substr(0, eq)),
               "prepare_data: unknown argument '{}'; valid keys: {}", arg, fmt::join(valid, ", "));
      o[arg.substr(0, eq)] = arg.substr(eq + 1);
    }
    auto integer = [&](const std::string& key, int64_t def) {
      if (!o.count(key)) return def;
      size_t used = 0;
      int64_t v = 0;
      try {
        v = std::stoll(o[key], &used);
      } catch (const std::exception&) {
        used = std::string::npos;
      }
      NT_CHECK(used == o[key].size(), "prepare_data: {} must be an integer, got '{}'", key, o[key]);
      return v;
    };
    train::PrepareOptions opt;
    opt.src = o.count("src") ? o["src"] : "data/brown";
    opt.vocab = integer("vocab", 8192);
    opt.tokenizer = o.count("tokenizer") ? o["tokenizer"] : "";
    opt.gpt2 = o.count("gpt2") ? o["gpt2"] : "";
    NT_CHECK(o.count("out") || opt.tokenizer.empty(), "prepare_data: tokenizer= needs out=DIR");
    opt.out = o.count("out") ? o["out"] : opt.src + (opt.gpt2.empty() ? fmt::format("/bpe{}", opt.vocab) : "/gpt2");
    opt.corpus = o.count("corpus") ? o["corpus"] : "brown";
    opt.threads = (int)integer("threads", 0);
    opt.progress = integer("progress", 1) != 0;

    const auto t0 = std::chrono::steady_clock::now();
    const train::PrepareResult r = train::prepare_corpus(opt);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("prepare_data: {} train / {} val documents, {} / {} bytes -> {} / {} tokens ({:.3f} bytes per token), "
               "vocabulary {} ({}: {}), unigram entropy {:.3f} nats/token; tokenizer {:.1f} s, encoding {:.1f} s, "
               "total {:.1f} s -> {}\n",
               r.train_docs, r.val_docs, r.train_bytes, r.val_bytes, r.train_tokens, r.val_tokens, r.bytes_per_token,
               r.vocab, r.kind, r.tokenizer, r.unigram_entropy_nats, r.seconds_tokenizer, r.seconds_encode, secs, opt.out);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // filesystem errors
    std::fprintf(stderr, "prepare_data: %s\n", e.what());
    return 1;
  }
  return 0;
}
