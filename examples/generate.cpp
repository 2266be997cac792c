// Samples text from a model trained by train_lm (byte-level vocabulary).
//   build/examples/generate [model=runs/lm/model.safetensors] [prompt="The jury"] [tokens=300] [temperature=0.8]
//                           [top_k=40] [top_p=0.95] [seed=1] [device=auto|cpu|cuda]
// The model's shape comes from the file's metadata, which train_lm writes.
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
    for (int64_t i = 0; i < n; ++i) {
      // No KV cache yet: the window of the last max_seq tokens is run again for each new token.
      const int64_t start = std::max<int64_t>(0, (int64_t)toks.size() - c.max_seq), T = (int64_t)toks.size() - start;
      std::vector<double> window(toks.begin() + start, toks.end());
      const Tensor logits = lm.forward(from_vector(window, {1, T}, DType::i64, dev));
      const int64_t next = nn::sample_token(logits.select(0, 0).select(0, T - 1), sc, gen);
      toks.push_back(next);
      std::fputc((int)next, stdout);
      std::fflush(stdout);
    }
    std::fputc('\n', stdout);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
