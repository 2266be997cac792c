// Samples text from a model trained by train_lm: byte-level, or BPE through the tokenizer its data used.
//   build/examples/generate [model=runs/lm/model.safetensors] [prompt="The jury"] [tokens=300] [temperature=0.8]
//                           [top_k=40] [top_p=0.95] [seed=1] [device=auto|cpu|cuda] [tokenizer=PATH]
//                           [offload_experts=0|1]
// The model (shape, dense or NSA attention, dense or DeepSeekMoE feed-forward, the MoE balancing biases) comes from
// the file's metadata, which train_lm writes (train/lm_spec.h); so does the tokenizer's path (tokenizer= overrides
// it). Both attentions decode with a cache (NSA's keeps its branches' keys and values and the compressed blocks).
// offload_experts=1 keeps MoE experts in pinned host memory and uploads them per layer (GPU; moe/offload.h).
#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>

#include "cuda/memory.h"
#include "nn/safetensors.h"
#include "nn/sampling.h"
#include "moe/offload.h"
#include "nn/transformer.h"
#include "train/lm_spec.h"
#include "train/tokenizer.h"

using namespace nt;

int main(int argc, char** argv) {
  try {
    std::map<std::string, std::string> o = {{"model", "runs/lm/model.safetensors"}, {"prompt", "The jury"}, {"tokens", "300"},
                                            {"temperature", "0.8"}, {"top_k", "40"}, {"top_p", "0.95"}, {"seed", "1"},
                                            {"device", "auto"}, {"tokenizer", ""}, {"offload_experts", "0"}};
    for (int a = 1; a < argc; ++a) {
      const std::string arg = argv[a];
      const auto eq = arg.find('=');
      NT_CHECK(eq != std::string::npos && o.count(arg.substr(0, eq)),
               "generate: unknown argument '{}'; valid keys: model, prompt, tokens, temperature, top_k, top_p, seed, device, "
               "tokenizer, offload_experts", arg);
      o[arg.substr(0, eq)] = arg.substr(eq + 1);
    }
    const nn::SafetensorsFile f = nn::load_safetensors(o["model"]);
    const train::LMSpec spec = train::LMSpec::from_metadata(f.metadata, o["model"]);
    const nn::LMConfig c = spec.config();
    const Device dev = (o["device"] == "cuda" || (o["device"] == "auto" && cuda::available())) ? cuda_device(0) : kCPU;
    nn::TransformerLM lm(c);
    lm.to(dev);
    nn::load_parameters(lm, f);
    train::restore_moe_biases(lm, f.metadata, o["model"]);
    if (o["offload_experts"] == "1") {
      NT_CHECK(dev.is_cuda(), "generate: offload_experts=1 needs a GPU (device {})", dev.str());
      std::fprintf(stderr, "offloaded the experts of %lld MoE layers to pinned host memory\n",
                   (long long)moe::offload_experts(lm));
    }
    // Tokens: bytes for a 256-token vocabulary, else the BPE the model was trained with.
    std::string tok_path = o["tokenizer"];
    if (tok_path.empty() && f.metadata.count("tokenizer")) tok_path = f.metadata.at("tokenizer");
    NT_CHECK(c.vocab == 256 || !tok_path.empty(), "generate: '{}' has a {}-token vocabulary and names no tokenizer; "
             "pass tokenizer=PATH (the tokenizer.txt of its data directory)", o["model"], c.vocab);
    std::optional<train::Tokenizer> tok;
    if (c.vocab != 256) tok = train::Tokenizer::load(tok_path);
    lm.train(false);
    const nn::SamplingConfig sc{std::stod(o["temperature"]), std::stoll(o["top_k"]), std::stod(o["top_p"])};
    Generator gen((uint64_t)std::stoull(o["seed"]));
    std::vector<int64_t> toks;
    if (tok)
      for (int32_t id : tok->encode(o["prompt"], false)) toks.push_back(id);
    else
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
      if (tok) std::fputs(tok->decode({(int32_t)next}).c_str(), stdout);
      else std::fputc((int)next, stdout);
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
