// The main job: train a decoder-only transformer LM on a prepared token corpus (default: the Brown corpus as
// bytes, prepared by scripts/prepare_data.sh), on the GPU when there is one, else a small CPU configuration.
//
//   build/examples/train_lm [override ...] [--config-dir=DIR] [--print-config]
//     e.g. model=tiny training.steps=2000 model.dim=256 training.device=cpu
// Settings are the YAML configs under configs/ (train.yaml and its groups model/, training/, data/; see
// docs/training.md), with Hydra-style overrides; without a GPU, model=tiny training=cpu data=brown come before the
// user's.
// Prints a progress line per log interval, the validation loss and perplexity at each evaluation (next to the
// corpus's unigram entropy, the loss of a model that ignores context), writes the resolved config to
// <out>/config.yaml, appends metrics to <out>/metrics.jsonl, and writes <out>/model.safetensors (atomically) at the
// end, with a resumable checkpoint in <out>/ckpt (also every training.save_every steps).
// training.resume=<dir> continues a run exactly: same batches, same updates.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "cuda/allocator.h"
#include "cuda/memory.h"
#include "cuda/profiler.h"
#include "dist/fsdp.h"
#include "dist/launch.h"
#if NT_NCCL
#include "dist/nccl_communicator.h"
#endif
#include "nn/safetensors.h"
#include "nn/transformer.h"
#include "moe/moe_layer.h"
#include "moe/offload.h"
#include "train/lm_spec.h"
#include "nsa/nsa_layer.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/data.h"
#include "train/memory_budget.h"

using namespace nt;

namespace {
using Clock = std::chrono::steady_clock;

// Where the configs are: --config-dir=DIR, else $NT_CONFIG_DIR, else ./configs, else the source tree's (so a
// build runs from any directory).
std::string config_dir(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("NT_CONFIG_DIR"); env && *env) return env;
#ifdef NT_SOURCE_DIR
  if (!std::filesystem::is_directory("configs")) return NT_SOURCE_DIR "/configs";
#endif
  return "configs";
}

struct Settings {
  nn::LMConfig model;  // vocab comes from the data
  int64_t steps, batch, grad_accum, warmup, eval_every, eval_batches, log_every, save_every, seed;
  double lr, lr_floor, weight_decay, clip, peak_tflops;
  std::string data, out, resume, device, precision;
  bool packing = false;
  std::string attention;  // dense or nsa
  nsa::NsaConfig nsa;
  int64_t dense_warmup_steps = 0;
  int64_t profile_steps = 0;
  bool fully_shard = false, overlap_comm = true, activation_checkpointing = false;
  std::string mlp;  // dense or moe
  moe::MoEConfig moe;
  int64_t moe_first_dense = 0;
  bool moe_offload = false;
};

// Reads every value up front, so check_all_read() reports unknown keys before any work starts.
Settings read(const train::Config& c) {
  Settings s;
  s.model.dim = c.get_int("model.dim"), s.model.n_layers = c.get_int("model.layers"), s.model.n_heads = c.get_int("model.heads");
  s.model.n_kv_heads = c.get_int("model.kv_heads"), s.model.max_seq = c.get_int("model.seq");
  s.model.rope.theta = c.get_double("model.rope_theta");
  s.attention = c.get_string("model.attention", {"dense", "nsa"});
  s.nsa.block = c.get_int("model.nsa.block"), s.nsa.stride = c.get_int("model.nsa.stride");
  s.nsa.select_block = c.get_int("model.nsa.select_block"), s.nsa.n_select = c.get_int("model.nsa.n_select");
  s.nsa.window = c.get_int("model.nsa.window");
  s.dense_warmup_steps = c.get_int("training.dense_warmup_steps");
  s.profile_steps = c.get_int("training.profile_steps");
  s.fully_shard = c.get_bool("training.fully_shard"), s.overlap_comm = c.get_bool("training.overlap_comm");
  s.activation_checkpointing = c.get_bool("training.activation_checkpointing");
  s.mlp = c.get_string("model.mlp", {"dense", "moe"});
  s.moe.n_routed = c.get_int("model.moe.n_routed"), s.moe.top_k = c.get_int("model.moe.top_k");
  s.moe.n_shared = c.get_int("model.moe.n_shared"), s.moe.expert_hidden = c.get_int("model.moe.expert_hidden");
  s.moe_first_dense = c.get_int("model.moe.first_dense");
  s.moe_offload = c.get_bool("model.moe.offload");
  s.moe.router.affinity = c.get_string("model.moe.affinity", {"softmax", "sigmoid"});
  s.moe.router.normalize_topk = c.get_bool("model.moe.normalize_topk");
  s.moe.router.routed_scaling_factor = c.get_double("model.moe.routed_scaling_factor");
  s.moe.router.aux_loss_coef = c.get_double("model.moe.aux_loss_coef");
  s.moe.router.aux_free = c.get_bool("model.moe.aux_free");
  s.moe.router.bias_update_speed = c.get_double("model.moe.bias_update_speed");
  s.moe.router.seq_aux_loss_coef = c.get_double("model.moe.seq_aux_loss_coef");
  s.steps = c.get_int("training.steps"), s.batch = c.get_int("training.batch"), s.warmup = c.get_int("training.warmup");
  s.eval_every = c.get_int("training.eval_every"), s.eval_batches = c.get_int("training.eval_batches");
  s.log_every = c.get_int("training.log_every"), s.save_every = c.get_int("training.save_every"), s.seed = c.get_int("training.seed");
  s.lr = c.get_double("training.lr"), s.weight_decay = c.get_double("training.weight_decay"), s.clip = c.get_double("training.clip");
  // null: lr / 10, rounded to 6 digits as the key=value options did, so runs match (and resume) earlier ones bit for bit.
  s.lr_floor = c.is_null("training.lr_floor") ? std::stod(fmt::format("{:g}", s.lr / 10)) : c.get_double("training.lr_floor");
  s.resume = c.is_null("training.resume") ? "" : c.get_string("training.resume");
  s.out = c.get_string("training.out"), s.device = c.get_string("training.device", {"auto", "cpu", "cuda"});
  s.precision = c.get_string("training.precision", {"f32", "bf16"});
  s.grad_accum = c.get_int("training.grad_accum");
  s.peak_tflops = c.is_null("training.peak_tflops") ? 0.0 : c.get_double("training.peak_tflops");
  s.data = c.get_string("data.path");
  s.packing = c.get_bool("data.packing");
  c.check_all_read();
  NT_CHECK(s.clip > 0, "training.clip (the largest global gradient norm) must be > 0 (e.g. 1e9 for no clipping), got {}",
           s.clip);
  return s;
}

// Dense peak of the GPU for MFU when the config leaves training.peak_tflops null: H100/H200 SXM, 989 TFLOP/s in
// bf16 and 67 in f32 (CUDA cores; TF32 is off by default). 0 (unknown) prints no MFU.
double default_peak_tflops(Device dev, const std::string& precision) {
  if (!dev.is_cuda()) return 0;
  const std::string name = cuda::device_name(dev.index);
  if (name.find("H100") == std::string::npos && name.find("H200") == std::string::npos) return 0;
  return precision == "bf16" ? 989.0 : 67.0;
}

// The MoE routers' loss-free balancing biases (state, not parameters): saved with the checkpoint so a resumed run
// routes exactly as an uninterrupted one.
std::vector<std::pair<std::string, Tensor>> moe_biases(const nn::TransformerLM& lm) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < lm.layers.size(); ++i)
    if (auto* m = dynamic_cast<const moe::DeepSeekMoE*>(lm.layers[i]->mlp.get()); m && m->cfg.router.aux_free) {
      const std::vector<double>& b = m->router->bias();
      out.emplace_back(fmt::format("moe_bias.layers.{}", i), from_vector(b, {(int64_t)b.size()}, DType::f64));
    }
  return out;
}
std::vector<std::string> moe_bias_names(const nn::TransformerLM& lm) {
  std::vector<std::string> names;
  for (auto& [name, t] : moe_biases(lm)) names.push_back(name);
  return names;
}
void restore_moe_biases(nn::TransformerLM& lm, const std::vector<std::pair<std::string, Tensor>>& saved) {
  for (const auto& [name, t] : saved) {
    const size_t i = std::stoul(name.substr(name.rfind('.') + 1));
    auto* m = dynamic_cast<moe::DeepSeekMoE*>(lm.layers.at(i)->mlp.get());
    NT_CHECK(m, "train_lm: the checkpoint has '{}' but layer {} is not an MoE layer", name, i);
    m->router->set_bias(t.to_vector());
  }
}

double evaluate(nn::TransformerLM& lm, const train::TokenShard& val, int64_t batches, int64_t B, int64_t T, Device dev,
                bool packing) {
  autograd::NoGradGuard no_grad;
  lm.train(false);
  const int64_t windows = ((int64_t)val.tokens.size() - 1) / T;
  const int64_t per = std::min<int64_t>(B, std::max<int64_t>(1, windows / std::max<int64_t>(batches, 1)));
  double total = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < batches && (i + 1) * per <= windows; ++i, ++n) {
    if (packing) {
      const train::PackedBatch b = train::sequential_packed_batch(val, i * per, per, T, dev);
      total += cross_entropy(lm.forward(b.x, {b.cu_seqlens}), b.y).item();  // without auxiliary losses
    } else {
      const train::Batch b = train::sequential_batch(val, i * per, per, T, dev);
      total += cross_entropy(lm.forward(b.x), b.y).item();
    }
  }
  lm.train(true);
  return n ? total / (double)n : NAN;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    const bool has_gpu = cuda::available();
    std::string dir_flag;
    bool print_only = false;
    std::vector<std::string> overrides;
    // The defaults list holds the GPU's choices; on a CPU they would take hours, so the CPU's go first (the user's
    // own group choices come later and win).
    if (!has_gpu) overrides = {"model=tiny", "training=cpu", "data=brown"};
    for (int a = 1; a < argc; ++a) {
      const std::string arg = argv[a];
      if (arg.starts_with("--config-dir=")) {
        dir_flag = arg.substr(13);
      } else if (arg == "--print-config") {
        print_only = true;
      } else {
        NT_CHECK(!arg.starts_with("--"), "train_lm: unknown flag '{}'; flags: --config-dir=DIR, --print-config", arg);
        overrides.push_back(arg);
      }
    }
    const std::string dir = config_dir(dir_flag);
    NT_CHECK(std::filesystem::is_directory(dir),
             "train_lm: no config directory '{}' (run from the repository root, pass --config-dir=DIR or set NT_CONFIG_DIR)", dir);
    const train::Config config = train::Config::compose(dir, "train", overrides);
    const Settings s = read(config);
    if (print_only) {
      fmt::print("{}", config.dump());
      return 0;
    }
    NT_CHECK(s.device != "cuda" || has_gpu, "train_lm: training.device=cuda but no GPU is available");
    // Several processes (torchrun / srun / mpirun set the rank variables): one GPU each, NCCL, the optimizer
    // state sharded over the ranks (dist::ShardedAdamW), each rank on its own batches (seed + rank).
    const dist::ProcessInfo proc = dist::process_info();
    const bool distributed = proc.world_size > 1, main_rank = proc.rank == 0;
    std::unique_ptr<dist::Communicator> comm;
    if (distributed) {
      NT_CHECK(has_gpu && s.device != "cpu", "train_lm: {} ranks (WORLD_SIZE) need one GPU each; training.device={}{}",
               proc.world_size, s.device, has_gpu ? "" : " and no GPU is available");
#if NT_NCCL
      comm = std::make_unique<dist::NcclCommunicator>(proc, 120);
#else
      throw Error(fmt::format("train_lm: WORLD_SIZE={} but this build has no NCCL", proc.world_size));
#endif
    }
    NT_CHECK(s.mlp == "dense" || !s.activation_checkpointing, "train_lm: training.activation_checkpointing=true does "
             "not support model.mlp=moe (the recomputed blocks' balance loss would get no gradient)");
    NT_CHECK(!s.fully_shard || distributed, "train_lm: training.fully_shard=true shards the model over several ranks; "
             "this is a single process (WORLD_SIZE unset or 1)");
    const Device dev = distributed ? cuda_device(proc.local_rank)
                                   : (s.device == "cuda" || (s.device == "auto" && has_gpu)) ? cuda_device(0) : kCPU;
    auto say = [&](std::string_view f, auto&&... a) {
      if (main_rank) fmt::print(fmt::runtime(f), std::forward<decltype(a)>(a)...);
    };
    NT_CHECK(s.profile_steps >= 0 && (s.profile_steps == 0 || dev.is_cuda()),
             "train_lm: training.profile_steps profiles GPU kernels: it needs a GPU run and a count >= 0, got {} on {}",
             s.profile_steps, dev.is_cuda() ? "cuda" : "cpu");

    const std::string& data = s.data;
    const train::TokenShard tr = train::load_shard(data + "/train.bin"), va = train::load_shard(data + "/val.bin");
    NT_CHECK(!s.packing || (!tr.doc_starts.empty() && !va.doc_starts.empty()),
             "train_lm: data.packing=true needs document indexes ({0}/train.docs, {0}/val.docs; scripts/prepare_bpe.sh "
             "writes them for data=brown_bpe)", data);
    double unigram = NAN;
    {
      std::ifstream meta(data + "/meta.json");
      std::string line;
      while (std::getline(meta, line))
        if (line.find("unigram_entropy_nats") != std::string::npos) unigram = std::stod(line.substr(line.find(':') + 1));
    }

    // The model: its shape, attention and feed-forward choices (also written into model.safetensors' metadata).
    train::LMSpec spec;
    spec.model = s.model, spec.attention = s.attention, spec.nsa = s.nsa, spec.mlp = s.mlp, spec.moe = s.moe;
    spec.moe_first_dense = s.moe_first_dense;
    spec.model.vocab = tr.vocab;
    nn::LMConfig cfg = spec.config();
    const int64_t B = s.batch, T = cfg.max_seq, steps = s.steps, warmup = s.warmup, save_every = s.save_every;
    NT_CHECK(B > 0 && T > 0 && steps > 0 && s.eval_every > 0 && s.log_every > 0 && s.grad_accum > 0,
             "train_lm: training.batch, model.seq, training.steps, training.eval_every, training.log_every and "
             "training.grad_accum must be positive, got {}, {}, {}, {}, {} and {}", B, T, steps, s.eval_every, s.log_every,
             s.grad_accum);
    {
      const bool bf16 = s.precision == "bf16";
      const train::MemoryEstimate need = train::estimate_training_memory(cfg, B, T, bf16, dev.is_cpu());
      const double avail = dev.is_cuda() ? (double)cuda::free_memory(dev.index)
                                         : (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
      train::check_fits(need, avail, dev.is_cuda() ? "the GPU" : "host memory", B, T);
    }
    Generator gen((uint64_t)s.seed);
    nn::TransformerLM lm(cfg, {DType::f32, kCPU, &gen});
    if (distributed) gen = Generator((uint64_t)s.seed + 1000003ull * (uint64_t)proc.rank);  // each rank its own batches
    lm.to(dev);
    // bf16: the model computes in bf16 and AdamW keeps f32 master weights (train/adamw.h).
    if (s.precision == "bf16") lm.to(DType::bf16);
    if (s.mlp == "moe" && s.moe_offload) {
      NT_CHECK(dev.is_cuda() && !distributed, "train_lm: model.moe.offload=true needs one GPU (device {}, {} processes)",
               dev.str(), distributed ? "several" : "one");
      const int64_t n = moe::offload_experts(lm);
      std::printf("offloaded the routed experts of %lld MoE layers to pinned host memory (AdamW updates them on the "
                  "host)\n", (long long)n);
    }
    const double peak_tflops = s.peak_tflops > 0 ? s.peak_tflops : default_peak_tflops(dev, s.precision);
    // Training FLOPs per token: 6 per parameter (forward + backward matmuls; the tied embedding counts once, as the
    // output projection) plus causal attention's 6 * layers * T * dim (q.k and p.v over T / 2 keys on average).
    const double flops_per_token = 6.0 * (double)lm.num_parameters() + 6.0 * (double)(cfg.n_layers * T * cfg.dim);
    const train::AdamWConfig opt_cfg{0.9, 0.95, 1e-8, s.weight_decay};
    std::optional<train::AdamW> single;
    std::optional<dist::ShardedAdamW> sharded;
    if (distributed) {
      sharded.emplace(*comm, dist::units_by_module(lm.named_parameters()), opt_cfg);
      // ZeRO-3: block weights only while the block runs (recomputed in the backward with activation checkpointing)
      if (s.fully_shard) sharded->fully_shard(lm, s.activation_checkpointing);
      sharded->overlap = s.overlap_comm;
    } else {
      single.emplace(lm.named_parameters(), opt_cfg);
    }
    if (s.activation_checkpointing && !s.fully_shard) lm.checkpoint_blocks();
    const double peak = s.lr, floor = s.lr_floor, clip = s.clip;
    const std::string& out = s.out;
    std::filesystem::create_directories(out);
    if (main_rank) std::ofstream(out + "/config.yaml") << config.dump();  // what this run used, to rerun or compare it
    std::ofstream metrics(main_rank ? out + "/metrics.jsonl" : "/dev/null", std::ios::app);
    int64_t first_step = 0;
    if (!s.resume.empty() && distributed) {
      // A sharded checkpoint (written by any number of ranks; st_tool consolidate makes a single-process one).
      const auto meta = sharded->load(s.resume);
      auto num = [&](const char* key) -> uint64_t {
        auto it = meta.find(key);
        NT_CHECK(it != meta.end(), "train_lm: the sharded checkpoint '{}' has no '{}' (not written by train_lm?)", s.resume, key);
        return std::stoull(it->second);
      };
      first_step = (int64_t)num("step");
      std::vector<std::pair<std::string, Tensor>> biases;
      for (const std::string& name : moe_bias_names(lm)) {
        auto it = meta.find(name);
        NT_CHECK(it != meta.end(), "train_lm: the sharded checkpoint '{}' has no '{}' (saved without aux_free MoE?)",
                 s.resume, name);
        std::vector<double> b;
        std::stringstream ss(it->second);
        for (std::string x; std::getline(ss, x, ',');) b.push_back(std::stod(x));
        biases.emplace_back(name, from_vector(b, {(int64_t)b.size()}, DType::f64));
      }
      restore_moe_biases(lm, biases);
      // The same rank count continues each rank's batches exactly; another count keeps the per-rank seeds.
      if (!meta.count("resharded_from")) gen.seed = num("data_seed"), gen.offset = num("data_offset");
      say("resumed from the sharded checkpoint {} at step {}{}\n", s.resume, first_step,
          meta.count("resharded_from") ? fmt::format(" (written by {} ranks)", meta.at("resharded_from")) : "");
    } else if (!s.resume.empty()) {
      const train::TrainState st = train::load_checkpoint(s.resume, lm, *single, moe_bias_names(lm));
      restore_moe_biases(lm, st.extra);
      first_step = st.step, gen = st.data_gen;  // same batches and updates as an uninterrupted run
      say("resumed from {} at step {}\n", s.resume, first_step);
    }

    say("train_lm: {} {} | {} params | {} attention, {} MLP | dim {} layers {} heads {}/{} | batch {} x {} micro-batches x seq {} | {} steps | lr {} -> {}\n",
               dev.str(), s.precision, lm.num_parameters(), s.attention, s.mlp, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, B, s.grad_accum,
               T, steps, peak, floor);
    say("data: {} ({} train / {} val tokens, vocab {}{}); unigram entropy {:.3f} nats/token\n", data, tr.tokens.size(),
               va.tokens.size(), tr.vocab, s.packing ? fmt::format(", {} documents packed", tr.doc_starts.size()) : "", unigram);
    // A rank's state for its shard of a checkpoint: the next step and its data generator.
    // The MoE balancing biases (equal on every rank: their loads are all-reduced) go along as text.
    auto shard_meta = [&](int64_t step) {
      std::map<std::string, std::string> m{{"step", std::to_string(step)}, {"data_seed", std::to_string(gen.seed)},
                                           {"data_offset", std::to_string(gen.offset)}};
      for (const auto& [name, t] : moe_biases(lm)) {
        std::string v;
        for (double x : t.to_vector()) v += fmt::format("{}{:.17g}", v.empty() ? "" : ",", x);
        m[name] = v;
      }
      return m;
    };
    const auto start = Clock::now();
    auto last = start;
    int64_t tokens_since = 0;
    // NSA's full-attention warm-up: dense attention for the first training.dense_warmup_steps steps.
    auto set_dense = [&](bool dense) {
      for (auto& block : lm.layers)
        if (auto* a = dynamic_cast<nsa::NativeSparseAttention*>(block->attn.get())) a->dense = dense;
    };
    // training.profile_steps=N: a kernel profile of N steps after a few warm-up steps (allocator, cuBLAS plans).
    cuda::Profiler profiler;
    const int64_t profile_from = std::min(first_step + 3, std::max(first_step, steps - s.profile_steps));
    for (int64_t step = first_step; step <= steps; ++step) {
      if (s.profile_steps > 0 && step == profile_from + s.profile_steps)
        say("profile of steps {}..{} (optimizer included):\n{}", profile_from, step - 1, profiler.stop());
      if (s.attention == "nsa") {
        const bool dense = step < s.dense_warmup_steps;
        if (step == first_step || step == s.dense_warmup_steps)
          say("step {:5d} | attention: {}\n", step, dense ? "dense (warm-up)" : "native sparse");
        set_dense(dense);
      }
      if (save_every > 0 && step > first_step && step % save_every == 0 && step < steps) {
        if (distributed) sharded->save(out + "/ckpt", shard_meta(step));
        else train::save_checkpoint(out + "/ckpt", lm, *single, {step, gen, moe_biases(lm)});
        say("step {:5d} | checkpoint {}/ckpt\n", step, out);
      }
      if (step % s.eval_every == 0 || step == steps) {
        const double vl = evaluate(lm, va, s.eval_batches, B, T, dev, s.packing);
        say("step {:5d} | val loss {:.4f} | val ppl {:.2f}{}\n", step, vl, std::exp(vl),
                   std::isnan(unigram) ? "" : fmt::format(" | unigram entropy {:.3f}", unigram));
        metrics << fmt::format("{{\"step\":{},\"val_loss\":{:.6f},\"val_ppl\":{:.4f}}}\n", step, vl, std::exp(vl)) << std::flush;
      }
      if (step == steps) break;
      if (s.profile_steps > 0 && step == profile_from) profiler.start();
      const double lr = train::lr_at(step, warmup, steps, peak, floor);
      // grad_accum micro-batches of B sequences: their gradients sum in f32 (AdamW::accumulate), each loss is
      // scaled by 1 / grad_accum so the update equals one batch of B * grad_accum sequences.
      double l = 0;
      for (int64_t micro = 0; micro < s.grad_accum; ++micro) {
        // Packing: attention stays inside each document (cu_seqlens), and no target crosses into the next one.
        Tensor loss;
        if (s.packing) {
          const train::PackedBatch b = train::sample_packed_batch(tr, B, T, gen, dev);
          loss = lm.loss(b.x, b.y, -100, {b.cu_seqlens});
        } else {
          const train::Batch b = train::sample_batch(tr, B, T, gen, dev);
          loss = lm.loss(b.x, b.y);
        }
        if (s.grad_accum > 1) loss = loss * (1.0 / (double)s.grad_accum);
        loss.backward();
        if (s.grad_accum > 1 && micro + 1 < s.grad_accum) {  // the last micro-batch's gradients go to step()
          if (distributed) sharded->accumulate();
          else single->accumulate();
        }
        if ((step + 1) % s.log_every == 0) {  // reading the loss synchronizes: only when logging
          Tensor lv = loss.detach().to(DType::f32).reshape({1}).clone();
          if (distributed) comm->all_reduce(lv, dist::ReduceOp::avg);
          l += lv.item();
        }
      }
      double gnorm = 0;
      Tensor gnorm_async;  // single process: read only when logged (reading waits for the backward to finish)
      if (distributed) {
        gnorm = sharded->step(lr, clip);
        sharded->zero_grad();
      } else {
        gnorm_async = single->clip_grad_norm_async(clip);
        single->step(lr);
        single->zero_grad();
      }
      for (auto& block : lm.layers)  // DeepSeek-V3's auxiliary-loss-free balancing (a no-op otherwise)
        if (auto* m = dynamic_cast<moe::DeepSeekMoE*>(block->mlp.get())) {
          if (distributed) m->update_bias([&](std::vector<int64_t>& load) { dist::all_reduce_counts(*comm, load, dev); });
          else m->update_bias();
        }
      tokens_since += B * T * s.grad_accum * proc.world_size;
      if (step == first_step && dev.is_cuda())  // what stays between steps: weights, masters, moments (1/N each sharded)
        say("GPU memory held between steps (allocator, this rank): {:.3f} GiB\n",
            (double)cuda::allocator_stats(dev.index).allocated / (1 << 30));
      if ((step + 1) % s.log_every == 0) {
        if (gnorm_async.defined()) gnorm = gnorm_async.item();
        const auto now = Clock::now();
        const double dt = std::chrono::duration<double>(now - last).count(), elapsed = std::chrono::duration<double>(now - start).count();
        const double tps = tokens_since / dt, eta = elapsed / (double)(step + 1 - first_step) * (double)(steps - step - 1);
        const double mfu = peak_tflops > 0 ? tps * flops_per_token / (peak_tflops * 1e12 * proc.world_size) : NAN;
        // Expert load of the last micro-batch: the worst layer's max/mean tokens per expert (1 is perfect balance).
        double moe_max = NAN, moe_cv = NAN;
        for (auto& block : lm.layers)
          if (auto* m = dynamic_cast<moe::DeepSeekMoE*>(block->mlp.get())) {
            const auto st = m->stats();
            moe_max = std::isnan(moe_max) ? st.max_over_mean : std::max(moe_max, st.max_over_mean);
            moe_cv = std::isnan(moe_cv) ? st.cv : std::max(moe_cv, st.cv);
          }
        const std::string moe_text = std::isnan(moe_max) ? "" : fmt::format(" | expert load max/mean {:.2f} cv {:.2f}", moe_max, moe_cv);
        const std::string moe_json = std::isnan(moe_max) ? "" : fmt::format(",\"moe_max_over_mean\":{:.4f},\"moe_cv\":{:.4f}", moe_max, moe_cv);
        say("step {:5d} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s{}{} | elapsed {:.0f}s | ETA {:.0f}s\n",
                   step + 1, l, lr, gnorm, tps, std::isnan(mfu) ? "" : fmt::format(" | MFU {:.1f}%", 100 * mfu), moe_text,
                   elapsed, eta);
        metrics << fmt::format("{{\"step\":{},\"loss\":{:.6f},\"lr\":{:.3e},\"grad_norm\":{:.4f},\"tokens_per_s\":{:.1f}{}{}}}\n",
                               step + 1, l, lr, gnorm, tps, std::isnan(mfu) ? "" : fmt::format(",\"mfu\":{:.4f}", mfu), moe_json)
                << std::flush;
        last = now, tokens_since = 0;
      }
    }
    // The model's shape goes into the metadata, so examples/generate can rebuild it from the file alone.
    std::map<std::string, std::string> meta = spec.metadata(&lm);
    meta["steps"] = std::to_string(steps);
    // BPE data directories hold their tokenizer (scripts/prepare_bpe.sh): generate decodes with it.
    if (std::filesystem::exists(data + "/tokenizer.txt")) meta["tokenizer"] = data + "/tokenizer.txt";
    if (dev.is_cuda())
      say("peak GPU memory (allocator, this rank): {:.2f} GiB\n", (double)cuda::allocator_stats(dev.index).peak_allocated / (1 << 30));
    if (distributed) {
      const auto weights = sharded->full_weights();  // a collective: every rank takes part
      if (main_rank) nn::save_safetensors(out + "/model.safetensors", weights, meta);
      sharded->save(out + "/ckpt", shard_meta(steps));
      say("saved {0}/model.safetensors (f32 weights gathered from {1} ranks) and the sharded checkpoint {0}/ckpt "
          "(training.resume={0}/ckpt continues it on any number of GPUs; st_tool consolidate {0}/ckpt DIR makes a "
          "single-process one)\n", out, proc.world_size);
    } else {
      nn::save_safetensors(out + "/model.safetensors", single->f32_weights(), meta);
      train::save_checkpoint(out + "/ckpt", lm, *single, {steps, gen, moe_biases(lm)});
      say("saved {}/model.safetensors and the checkpoint {}/ckpt (training.resume={}/ckpt training.steps=N continues it)\n", out, out, out);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  return 0;
}
