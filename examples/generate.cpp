// Samples text from a model trained by train_lm (byte-level vocabulary).
//   build/examples/generate [model=runs/lm/model.safetensors] [prompt="The jury"] [tokens=300] [temperature=0.8]
//                           [top_k=40] [top_p=0.95] [seed=1] [device=auto|cpu|cuda]
// The model's shape comes from the file's metadata, which train_lm writes.
#include <algorithm>
#include <cstdio>
#include <map>

#include "cuda/memory.h"
#include "nn/safetensors.h"
#include "nn/sampling.h"
#include "nn/transformer.h"

using namespace nt;

int main(int argc, char** argv) {
  try {
    std::map<std::string, std::string> o = {{"model", "runs/lm/model.safetensors"}, {"prompt", "The jury"}, {"tokens", "300"},
                                            {"temperature", "0.8"}, {"top_k", "40"}, {"top_p", "0.95"}, {"seed", "1"},
                                            {"device", "auto"}};
    for (int a = 1; a < argc; ++a) {
      const std::string arg = argv[a];
      const auto eq = arg.find('=');
      NT_CHECK(eq != std::string::npos && o.count(arg.substr(0, eq)),
               "generate: unknown argument '{}'; valid keys: model, prompt, tokens, temperature, top_k, top_p, seed, device", arg);
      o[arg.substr(0, eq)] = arg.substr(eq + 1);
    }
    const nn::SafetensorsFile f = nn::load_safetensors(o["model"]);
    auto meta = [&](const char* k) {
      auto it = f.metadata.find(k);
      NT_CHECK(it != f.metadata.end(), "generate: '{}' has no '{}' in its metadata (write it with train_lm)", o["model"], k);
      return std::stod(it->second);
    };
    nn::LMConfig c;
    c.vocab = (int64_t)meta("vocab"), c.dim = (int64_t)meta("dim"), c.n_layers = (int64_t)meta("layers");
    c.n_heads = (int64_t)meta("heads"), c.n_kv_heads = (int64_t)meta("kv_heads"), c.max_seq = (int64_t)meta("max_seq");
    c.mlp_hidden = (int64_t)meta("mlp_hidden"), c.rope.theta = meta("rope_theta");
    if (auto it = f.metadata.find("attention"); it != f.metadata.end() && it->second != "dense")
      throw Error(fmt::format("generate: '{}' has {} attention; decoding supports dense attention only so far", o["model"], it->second));
    if (auto it = f.metadata.find("mlp"); it != f.metadata.end() && it->second != "dense")
      throw Error(fmt::format("generate: '{}' has a {} feed-forward; decoding supports dense models only so far", o["model"], it->second));
    const Device dev = (o["device"] == "cuda" || (o["device"] == "auto" && cuda::available())) ? cuda_device(0) : kCPU;
    nn::TransformerLM lm(c);
    lm.to(dev);
    nn::load_parameters(lm, f);
    lm.train(false);
    const nn::SamplingConfig sc{std::stod(o["temperature"]), std::stoll(o["top_k"]), std::stod(o["top_p"])};
    Generator gen((uint64_t)std::stoull(o["seed"]));
    std::vector<int64_t> toks;
    for (unsigned char ch : o["prompt"]) toks.push_back(ch);
    NT_CHECK(!toks.empty(), "generate: the prompt must not be empty");
    std::fputs(o["prompt"].c_str(), stdout);
    autograd::NoGradGuard no_grad;
    const int64_t n = std::stoll(o["tokens"]);
    // KV cache: the prompt runs once, then each step runs one token. When the cache is full, the last half of the
    // context is run again into a fresh cache (positions restart, as they did when the model was trained).
    auto cache = lm.new_cache(1);
    Tensor logits;
    auto prefill = [&] {
      const int64_t keep = std::min<int64_t>((int64_t)toks.size(), std::max<int64_t>(1, c.max_seq / 2));
      std::vector<double> window(toks.end() - keep, toks.end());
      cache = lm.new_cache(1);
      logits = lm.forward_cached(from_vector(window, {1, keep}, DType::i64, dev), cache);
    };
    if ((int64_t)toks.size() > c.max_seq) toks.erase(toks.begin(), toks.end() - c.max_seq);
    {
      std::vector<double> p(toks.begin(), toks.end());
      logits = lm.forward_cached(from_vector(p, {1, (int64_t)p.size()}, DType::i64, dev), cache);
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t next = nn::sample_token(logits.select(0, 0).select(0, logits.size(1) - 1), sc, gen);
      toks.push_back(next);
      std::fputc((int)next, stdout);
      std::fflush(stdout);
      if (i + 1 == n) break;
      if (cache[0].length == c.max_seq) prefill();
      else logits = lm.forward_cached(from_vector({(double)next}, {1, 1}, DType::i64, dev), cache);
    }
    std::fputc('\n', stdout);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
