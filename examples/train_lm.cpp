// The main job: train a decoder-only transformer LM on a prepared token corpus (default: the Brown corpus as
// bytes, prepared by scripts/prepare_data.sh), on the GPU when there is one, else a small CPU configuration.
//
//   build/examples/train_lm [key=value ...]      e.g. steps=2000 dim=256 device=cpu
// Prints a progress line per log interval, the validation loss and perplexity at each evaluation (next to the
// corpus's unigram entropy, the loss of a model that ignores context), appends metrics to <out>/metrics.jsonl,
// and writes <out>/model.safetensors (atomically) at the end, with a resumable checkpoint in <out>/ckpt
// (also every save_every steps). resume=<dir> continues a run exactly: same batches, same updates.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "cuda/memory.h"
#include "nn/safetensors.h"
#include "nn/transformer.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/data.h"

using namespace nt;

namespace {
using Clock = std::chrono::steady_clock;

struct Options {
  std::map<std::string, std::string> v;
  std::string get(const std::string& k) const { return v.at(k); }
  int64_t i(const std::string& k) const {
    try {
      size_t used = 0;
      const int64_t r = std::stoll(v.at(k), &used);
      if (used == v.at(k).size()) return r;
    } catch (...) {
    }
    throw Error(fmt::format("train_lm: option '{}' needs an integer, got '{}'", k, v.at(k)));
  }
  double d(const std::string& k) const {
    try {
      size_t used = 0;
      const double r = std::stod(v.at(k), &used);
      if (used == v.at(k).size()) return r;
    } catch (...) {
    }
    throw Error(fmt::format("train_lm: option '{}' needs a number, got '{}'", k, v.at(k)));
  }
};

Options parse(int argc, char** argv, bool gpu) {
  Options o;
  // Defaults: a small model on the GPU; a tiny one on the CPU that learns visibly within minutes.
  o.v = {{"data", "data/brown"}, {"device", "auto"}, {"out", "runs/lm"}, {"seed", "1337"},
         {"steps", gpu ? "3000" : "400"}, {"batch", gpu ? "32" : "16"}, {"seq", gpu ? "256" : "128"},
         {"dim", gpu ? "384" : "128"}, {"layers", gpu ? "6" : "4"}, {"heads", gpu ? "6" : "4"},
         {"kv_heads", gpu ? "2" : "2"}, {"lr", gpu ? "6e-4" : "2e-3"}, {"lr_floor", ""}, {"warmup", gpu ? "200" : "40"},
         {"weight_decay", "0.1"}, {"clip", "1.0"}, {"eval_every", gpu ? "250" : "100"}, {"eval_batches", "8"},
         {"log_every", gpu ? "50" : "20"}, {"rope_theta", "10000"}, {"resume", ""}, {"save_every", "0"}};
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    const auto eq = arg.find('=');
    NT_CHECK(eq != std::string::npos, "train_lm: arguments are key=value, got '{}'", arg);
    const std::string k = arg.substr(0, eq);
    if (!o.v.count(k)) {
      std::string keys;
      for (auto& [name, val] : o.v) keys += (keys.empty() ? "" : ", ") + name;
      throw Error(fmt::format("train_lm: unknown option '{}'; valid options: {}", k, keys));
    }
    o.v[k] = arg.substr(eq + 1);
  }
  if (o.v["lr_floor"].empty()) o.v["lr_floor"] = fmt::format("{:g}", o.d("lr") / 10);
  return o;
}

double evaluate(nn::TransformerLM& lm, const train::TokenShard& val, int64_t batches, int64_t B, int64_t T, Device dev) {
  autograd::NoGradGuard no_grad;
  lm.train(false);
  const int64_t windows = ((int64_t)val.tokens.size() - 1) / T;
  const int64_t per = std::min<int64_t>(B, std::max<int64_t>(1, windows / std::max<int64_t>(batches, 1)));
  double total = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < batches && (i + 1) * per <= windows; ++i, ++n) {
    const train::Batch b = train::sequential_batch(val, i * per, per, T, dev);
    total += lm.loss(b.x, b.y).item();
  }
  lm.train(true);
  return n ? total / (double)n : NAN;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    const bool has_gpu = cuda::available();
    Options o = parse(argc, argv, has_gpu);
    const std::string dev_opt = o.get("device");
    NT_CHECK(dev_opt == "auto" || dev_opt == "cpu" || dev_opt == "cuda", "train_lm: device must be auto, cpu or cuda, got '{}'", dev_opt);
    NT_CHECK(dev_opt != "cuda" || has_gpu, "train_lm: device=cuda but no GPU is available");
    if (dev_opt == "cpu" && has_gpu && argc == 1) o = parse(argc, argv, false);
    const Device dev = (dev_opt == "cuda" || (dev_opt == "auto" && has_gpu)) ? cuda_device(0) : kCPU;

    const std::string data = o.get("data");
    const train::TokenShard tr = train::load_shard(data + "/train.bin"), va = train::load_shard(data + "/val.bin");
    double unigram = NAN;
    {
      std::ifstream meta(data + "/meta.json");
      std::string line;
      while (std::getline(meta, line))
        if (line.find("unigram_entropy_nats") != std::string::npos) unigram = std::stod(line.substr(line.find(':') + 1));
    }

    nn::LMConfig cfg;
    cfg.vocab = tr.vocab, cfg.dim = o.i("dim"), cfg.n_layers = o.i("layers"), cfg.n_heads = o.i("heads");
    cfg.n_kv_heads = o.i("kv_heads"), cfg.max_seq = o.i("seq"), cfg.rope.theta = o.d("rope_theta");
    const int64_t B = o.i("batch"), T = o.i("seq"), steps = o.i("steps"), warmup = o.i("warmup");
    NT_CHECK(B > 0 && T > 0 && steps > 0, "train_lm: batch, seq and steps must be positive");
    Generator gen((uint64_t)o.i("seed"));
    nn::TransformerLM lm(cfg, {DType::f32, kCPU, &gen});
    lm.to(dev);
    train::AdamW opt(lm.named_parameters(), {0.9, 0.95, 1e-8, o.d("weight_decay")});
    const double peak = o.d("lr"), floor = o.d("lr_floor"), clip = o.d("clip");
    const std::string out = o.get("out");
    std::filesystem::create_directories(out);
    std::ofstream metrics(out + "/metrics.jsonl", std::ios::app);
    int64_t first_step = 0;
    if (!o.get("resume").empty()) {
      const train::TrainState st = train::load_checkpoint(o.get("resume"), lm, opt);
      first_step = st.step, gen = st.data_gen;  // same batches and updates as an uninterrupted run
      fmt::print("resumed from {} at step {}\n", o.get("resume"), first_step);
    }
    const int64_t save_every = o.i("save_every");

    fmt::print("train_lm: {} | {} params | dim {} layers {} heads {}/{} | batch {} x seq {} | {} steps | lr {} -> {}\n",
               dev.str(), lm.num_parameters(), cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, B, T, steps, peak, floor);
    fmt::print("data: {} ({} train / {} val tokens, vocab {}); unigram entropy {:.3f} nats/token\n", data, tr.tokens.size(),
               va.tokens.size(), tr.vocab, unigram);
    const auto start = Clock::now();
    auto last = start;
    int64_t tokens_since = 0;
    for (int64_t step = first_step; step <= steps; ++step) {
      if (save_every > 0 && step > first_step && step % save_every == 0 && step < steps) {
        train::save_checkpoint(out + "/ckpt", lm, opt, {step, gen});
        fmt::print("step {:5d} | checkpoint {}/ckpt\n", step, out);
      }
      if (step % o.i("eval_every") == 0 || step == steps) {
        const double vl = evaluate(lm, va, o.i("eval_batches"), B, T, dev);
        fmt::print("step {:5d} | val loss {:.4f} | val ppl {:.2f}{}\n", step, vl, std::exp(vl),
                   std::isnan(unigram) ? "" : fmt::format(" | unigram entropy {:.3f}", unigram));
        metrics << fmt::format("{{\"step\":{},\"val_loss\":{:.6f},\"val_ppl\":{:.4f}}}\n", step, vl, std::exp(vl)) << std::flush;
      }
      if (step == steps) break;
      const double lr = train::lr_at(step, warmup, steps, peak, floor);
      const train::Batch b = train::sample_batch(tr, B, T, gen, dev);
      Tensor loss = lm.loss(b.x, b.y);
      loss.backward();
      const double gnorm = train::clip_grad_norm(lm.parameters(), clip);
      opt.step(lr);
      opt.zero_grad();
      tokens_since += B * T;
      if ((step + 1) % o.i("log_every") == 0) {
        const double l = loss.item();
        const auto now = Clock::now();
        const double dt = std::chrono::duration<double>(now - last).count(), elapsed = std::chrono::duration<double>(now - start).count();
        const double tps = tokens_since / dt, eta = elapsed / (double)(step + 1 - first_step) * (double)(steps - step - 1);
        fmt::print("step {:5d} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | elapsed {:.0f}s | ETA {:.0f}s\n",
                   step + 1, l, lr, gnorm, tps, elapsed, eta);
        metrics << fmt::format("{{\"step\":{},\"loss\":{:.6f},\"lr\":{:.3e},\"grad_norm\":{:.4f},\"tokens_per_s\":{:.1f}}}\n",
                               step + 1, l, lr, gnorm, tps) << std::flush;
        last = now, tokens_since = 0;
      }
    }
    // The model's shape goes into the metadata, so examples/generate can rebuild it from the file alone.
    nn::save_safetensors(out + "/model.safetensors", lm.named_parameters(),
                         {{"steps", std::to_string(steps)}, {"vocab", std::to_string(cfg.vocab)}, {"dim", std::to_string(cfg.dim)},
                          {"layers", std::to_string(cfg.n_layers)}, {"heads", std::to_string(cfg.n_heads)},
                          {"kv_heads", std::to_string(cfg.n_kv_heads)}, {"max_seq", std::to_string(cfg.max_seq)},
                          {"mlp_hidden", std::to_string(cfg.hidden())}, {"rope_theta", fmt::format("{}", cfg.rope.theta)}});
    train::save_checkpoint(out + "/ckpt", lm, opt, {steps, gen});
    fmt::print("saved {}/model.safetensors and the checkpoint {}/ckpt (resume={}/ckpt steps=N continues it)\n", out, out, out);
  } catch (const Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  return 0;
}
