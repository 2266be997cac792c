// Trains, applies and inverts byte-level BPE tokenizers (train/tokenizer.h).
//   build/examples/tokenize train CORPUS... vocab=8192 out=tok.txt [progress=1]
//       CORPUS: text files, or directories whose regular files (recursively, in name order) are read
//   build/examples/tokenize encode tok=tok.txt text="Hello there"   (or file=PATH; prints ids, comma-separated)
//   build/examples/tokenize decode tok=tok.txt ids=15496,612
// gpt2=DIR instead of tok=FILE uses GPT-2's vocabulary (DIR/encoder.json + DIR/vocab.bpe; scripts/fetch_gpt2_vocab.sh
// puts them in data/gpt2).
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/ranges.h>

#include "tensor/error.h"
#include "train/tokenizer.h"

using namespace nt;
namespace fs = std::filesystem;

static std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  NT_CHECK(in.good(), "tokenize: cannot open '{}'", p.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

static std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  for (size_t b = 0; b < s.size();) {
    const size_t e = std::min(s.find(',', b), s.size());
    std::string_view item(s.data() + b, e - b);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    int32_t v = 0;
    const auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    NT_CHECK(ec == std::errc() && p == item.data() + item.size() && !item.empty(),
             "tokenize: ids: '{}' is not a token id (expected ids=1,2,3)", item);
    ids.push_back(v);
    b = e + 1;
  }
  return ids;
}

int main(int argc, char** argv) {
  try {
    const std::string usage =
        "usage: tokenize train CORPUS... vocab=N out=FILE [progress=1] | encode tok=FILE|gpt2=DIR text=\"...\"|file=PATH"
        " | decode tok=FILE|gpt2=DIR ids=1,2,3";
    NT_CHECK(argc >= 2, "{}", usage);
    const std::string cmd = argv[1];
    const std::map<std::string, std::vector<std::string>> keys = {
        {"train", {"vocab", "out", "progress"}}, {"encode", {"tok", "gpt2", "text", "file"}}, {"decode", {"tok", "gpt2", "ids"}}};
    NT_CHECK(keys.count(cmd), "tokenize: unknown command '{}'; {}", cmd, usage);
    std::map<std::string, std::string> o;
    std::vector<std::string> inputs;
    for (int a = 2; a < argc; ++a) {
      const std::string arg = argv[a];
      const size_t eq = arg.find('=');
      if (eq == std::string::npos && cmd == "train") {
        inputs.push_back(arg);
        continue;
      }
      const auto& valid = keys.at(cmd);
      NT_CHECK(eq != std::string::npos && std::count(valid.begin(), valid.end(), arg.substr(0, eq)),
               "tokenize {}: unknown argument '{}'; valid keys: {}", cmd, arg, fmt::join(valid, ", "));
      o[arg.substr(0, eq)] = arg.substr(eq + 1);
    }

    if (cmd == "train") {
      NT_CHECK(!inputs.empty(), "tokenize train: no corpus given; {}", usage);
      std::vector<fs::path> files;
      for (const std::string& in : inputs) {
        NT_CHECK(fs::exists(in), "tokenize train: '{}' does not exist", in);
        if (!fs::is_directory(in)) {
          files.push_back(in);
          continue;
        }
        std::vector<fs::path> found;
        for (const auto& e : fs::recursive_directory_iterator(in))
          if (e.is_regular_file()) found.push_back(e.path());
        std::sort(found.begin(), found.end());
        files.insert(files.end(), found.begin(), found.end());
      }
      std::vector<std::string> texts;
      size_t bytes = 0;
      for (const auto& f : files) texts.push_back(read_text(f)), bytes += texts.back().size();
      const int64_t vocab = o.count("vocab") ? std::stoll(o["vocab"]) : 8192;
      const std::string out = o.count("out") ? o["out"] : "tokenizer.txt";
      const auto t0 = std::chrono::steady_clock::now();
      const train::Tokenizer tk = train::Tokenizer::train(texts, vocab, {"<|bos|>", "<|eos|>", "<|pad|>", "<|fill|>"},
                                                          o.count("progress") ? o["progress"] != "0" : true);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tk.save(out);
      size_t tokens = 0;
      for (const auto& t : texts) tokens += tk.encode(t, false).size();
      fmt::print("tokenize: {} files, {} bytes -> vocabulary of {} in {:.2f} s; the corpus is {} tokens ({:.2f} bytes each) -> {}\n",
                 files.size(), bytes, tk.vocab_size(), secs, tokens, tokens ? (double)bytes / tokens : 0.0, out);
      return 0;
    }

    NT_CHECK(o.count("tok") + o.count("gpt2") == 1, "tokenize {}: give exactly one of tok=FILE or gpt2=DIR", cmd);
    const train::Tokenizer tk = o.count("tok") ? train::Tokenizer::load(o["tok"])
                                               : train::Tokenizer::load_gpt2(o["gpt2"] + "/encoder.json", o["gpt2"] + "/vocab.bpe");
    if (cmd == "encode") {
      NT_CHECK(o.count("text") + o.count("file") == 1, "tokenize encode: give exactly one of text=\"...\" or file=PATH");
      const std::string text = o.count("text") ? o["text"] : read_text(o["file"]);
      fmt::print("{}\n", fmt::join(tk.encode(text), ","));
    } else {
      NT_CHECK(o.count("ids"), "tokenize decode: give ids=1,2,3");
      const std::string text = tk.decode(parse_ids(o["ids"]));
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // std::stoll on a bad number
    std::fprintf(stderr, "tokenize: %s\n", e.what());
    return 1;
  }
  return 0;
}
