// Multi-GPU check of the NCCL communicator, one process per GPU: every collective on known data, then sharded
// training (dist::ShardedAdamW over NCCL, each rank on its slice of the batch) against single-process AdamW on the
// whole batch, step by step (losses and weights within f32 rounding); then the same with ZeRO-3 (prefetch and
// reduce-scatter overlapped with compute, and without), gradient accumulation and a sharded save/resume.
//   bash scripts/dist_check.sh 2        (starts 2 processes with RANK/WORLD_SIZE/LOCAL_RANK set; or use torchrun)
// Prints one line per rank and exits non-zero on the first mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "dist/launch.h"
#if NT_NCCL
#include "dist/nccl_communicator.h"
#endif
#include "dist/fsdp.h"
#include "nn/transformer.h"
#include "ops/ops.h"
#include "train/data.h"

using namespace nt;

int main() {
  try {
#if NT_NCCL
    const dist::ProcessInfo p = dist::process_info();
    dist::NcclCommunicator comm(p, 60);
    const int r = comm.rank(), n = comm.size();
    const Device dev = cuda_device(p.local_rank);
    auto check = [&](const char* what, const Tensor& got, const std::vector<double>& want) {
      const std::vector<double> g = got.to(kCPU).to(DType::f64).to_vector();
      NT_CHECK(g == want, "dist_check: rank {}: {} differs", r, what);
    };
    const int64_t m = 1003;  // not a multiple of anything
    for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
      Tensor shard = full({m}, (double)(r + 1), dt, dev), all = empty({m * n}, dt, dev);
      comm.all_gather(shard, all);
      std::vector<double> want;
      for (int k = 0; k < n; ++k) want.insert(want.end(), m, (double)(k + 1));
      check("all_gather", all, want);
      Tensor fullv = full({m * n}, (double)(r + 1), dt, dev), part = empty({m}, dt, dev);
      comm.reduce_scatter(fullv, part, dist::ReduceOp::sum);
      check("reduce_scatter sum", part, std::vector<double>(m, n * (n + 1) / 2.0));
      Tensor t = full({m}, (double)(r + 1), dt, dev);
      comm.all_reduce(t, dist::ReduceOp::avg);
      check("all_reduce avg", t, std::vector<double>(m, (n + 1) / 2.0));
      Tensor b = full({m}, (double)(r + 7), dt, dev);
      comm.broadcast(b, n - 1);
      check("broadcast", b, std::vector<double>(m, (double)(n - 1 + 7)));
      // all_to_all: chunk j of rank r holds 10 r + j; rank r receives 10 q + r from each rank q.
      std::vector<double> mine, want_a2a;
      for (int j = 0; j < n; ++j) mine.insert(mine.end(), m, 10.0 * r + j), want_a2a.insert(want_a2a.end(), m, 10.0 * j + r);
      Tensor a2a = from_vector(mine, {m * n}, dt, dev), got = empty({m * n}, dt, dev);
      comm.all_to_all(a2a, got);
      check("all_to_all", got, want_a2a);
      comm.all_to_all(a2a, a2a);
      check("all_to_all in place", a2a, want_a2a);
    }
    comm.barrier();
    std::printf("dist_check: rank %d of %d (%s, GPU %d): all collectives correct\n", r, n, p.launcher.c_str(), p.local_rank);

    // Sharded training: a small LM in f32 on this rank's GPU, 4 steps with clipping.
    nn::LMConfig c;
    c.vocab = 23, c.dim = 32, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 16, c.mlp_hidden = 64;
    train::TokenShard data;
    data.vocab = 23;
    for (int i = 0; i < 4000; ++i) data.tokens.push_back((uint16_t)((i * 7 + i / 23) % 23));
    const int64_t b = 2, T = 16, steps = 4;
    auto lr = [](int64_t s) { return train::lr_at(s, 1, 4, 1e-2, 1e-3); };
    std::vector<double> ref_losses, losses;
    std::vector<Tensor> ref_weights;
    {
      Generator init(1), gen(5);
      nn::TransformerLM lm(c, {DType::f32, dev, &init});
      train::AdamW opt(lm.named_parameters());
      for (int64_t s = 0; s < steps; ++s) {
        const train::Batch batch = train::sample_batch(data, n * b, T, gen, dev);
        Tensor loss = lm.loss(batch.x, batch.y);
        ref_losses.push_back(loss.item());
        loss.backward();
        opt.clip_grad_norm(0.5);
        opt.step(lr(s));
        opt.zero_grad();
      }
      for (const Tensor& w : lm.parameters()) ref_weights.push_back(w.detach().to(kCPU).to(DType::f64));
    }
    Generator init(1 + r), gen(5);  // ranks start different: rank 0's weights must be broadcast
    nn::TransformerLM lm(c, {DType::f32, dev, &init});
    dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
    for (int64_t s = 0; s < steps; ++s) {
      const train::Batch batch = train::sample_batch(data, n * b, T, gen, dev);
      Tensor loss = lm.loss(batch.x.narrow(0, r * b, b).contiguous(), batch.y.narrow(0, r * b, b).contiguous());
      Tensor global = loss.detach().reshape({1}).clone();
      loss.backward();
      comm.all_reduce(global, dist::ReduceOp::avg);
      losses.push_back(global.item());
      opt.step(lr(s), 0.5);
      opt.zero_grad();
    }
    auto worst = [&](const std::vector<double>& got_losses, const std::vector<Tensor>& got_w) {
      double wl = 0, ww = 0;
      for (int64_t s = 0; s < steps; ++s) wl = std::max(wl, std::fabs(got_losses[s] - ref_losses[s]) / ref_losses[s]);
      for (size_t i = 0; i < got_w.size(); ++i) {
        const auto a = got_w[i].to(kCPU).to(DType::f64).to_vector(), w = ref_weights[i].to_vector();
        for (size_t j = 0; j < a.size(); ++j) ww = std::max(ww, std::fabs(a[j] - w[j]));
      }
      return std::pair{wl, ww};
    };
    std::vector<Tensor> got;
    for (const Tensor& w : lm.parameters()) got.push_back(w.detach());
    auto [worst_loss, worst_w] = worst(losses, got);
    NT_CHECK(worst_loss <= 1e-5 && worst_w <= 1e-4,
             "dist_check: rank {}: sharded training differs from single-process AdamW: loss rel {:.3g}, weight {:.3g}",
             r, worst_loss, worst_w);
    std::printf("dist_check: rank %d: ShardedAdamW over NCCL = single-process AdamW for %d steps (loss rel %.2g, "
                "weights %.2g)\n", r, (int)steps, worst_loss, worst_w);

    // The same run with ZeRO-3 (fully_shard: weights prefetched and gradients reduce-scattered on NCCL's stream
    // while blocks compute), in 2 micro-batches per step (accumulate), and saved after step 2 to a sharded
    // checkpoint that a fresh model and optimizer load and continue from.
    const std::string dir = "/tmp/nt_dist_check_" + std::to_string(p.master_port);
    for (bool overlap : {true, false}) {
      std::vector<double> l3;
      auto fresh = [&](uint64_t seed) {
        Generator g(seed);
        auto m = std::make_unique<nn::TransformerLM>(c, nn::Init{DType::f32, dev, &g});
        auto o = std::make_unique<dist::ShardedAdamW>(comm, dist::units_by_module(m->named_parameters()));
        o->fully_shard(*m), o->overlap = overlap;
        return std::pair{std::move(m), std::move(o)};
      };
      auto [m3, o3] = fresh(1 + r);
      Generator gen3(5);
      for (int64_t s = 0; s < steps; ++s) {
        if (s == 2) {
          o3->save(dir);
          auto [m, o] = fresh(100 + r);  // other weights: the checkpoint must supply them
          o->load(dir);
          o3 = std::move(o), m3 = std::move(m);
        }
        const train::Batch batch = train::sample_batch(data, n * b, T, gen3, dev);
        double total = 0;
        for (int64_t micro = 0; micro < 2; ++micro) {
          const int64_t at = r * b + micro * (b / 2);
          Tensor loss = m3->loss(batch.x.narrow(0, at, b / 2).contiguous(), batch.y.narrow(0, at, b / 2).contiguous()) * 0.5;
          Tensor global = loss.detach().reshape({1}).clone();
          loss.backward();
          comm.all_reduce(global, dist::ReduceOp::avg);
          total += global.item();
          if (micro == 0) o3->accumulate();
        }
        l3.push_back(total);
        o3->step(lr(s), 0.5);
        o3->zero_grad();
      }
      std::vector<Tensor> w3;
      for (const auto& [name, w] : o3->full_weights()) w3.push_back(w);
      auto [wl3, ww3] = worst(l3, w3);
      NT_CHECK(wl3 <= 1e-5 && ww3 <= 1e-4,
               "dist_check: rank {}: ZeRO-3 (overlap {}) with accumulation and a resume differs from single-process AdamW: "
               "loss rel {:.3g}, weight {:.3g}", r, overlap, wl3, ww3);
      std::printf("dist_check: rank %d: ZeRO-3 over NCCL (overlap %s), 2 micro-batches per step, saved and resumed at "
                  "step 2 = single-process AdamW (loss rel %.2g, weights %.2g)\n", r, overlap ? "on" : "off", wl3, ww3);
    }
    comm.barrier();
    if (r == 0) std::filesystem::remove_all(dir);
#else
    std::fprintf(stderr, "dist_check: built without NCCL\n");
    return 2;
#endif
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
