// Sharded checkpoints of ShardedAdamW on thread ranks: resume on the same and on another number of ranks repeats
// the uninterrupted run, consolidation gives train::AdamW's checkpoint (which single-process training resumes),
// saving replaces an old checkpoint only when complete, and bad checkpoints are clear errors.
// doctest assertions are not thread-safe: ranks record results, the test thread checks them.
#include <filesystem>
#include <fstream>

#include "dist/fsdp.h"
#include "nn/safetensors.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "tiny_lm.h"
#include "train/checkpoint.h"
#include "train/data.h"

using namespace nt;
using namespace nt::test;
namespace fs = std::filesystem;

namespace {
double lr(int64_t s) { return train::lr_at(s, 2, 8, 1e-2, 1e-3); }

// Steps [from, to) of the global batch sample_batch(4, 8) (one seed, advanced by `from` batches), rank r of n
// taking rows [r * 4 / n, (r + 1) * 4 / n): n in {1, 2, 4}. Saves to save_dir after the last step when given;
// loads from load_dir before the first. Returns the global losses.
std::vector<double> run(int n, int64_t from, int64_t to, const std::string& load_dir, const std::string& save_dir,
                        std::vector<Tensor>* weights = nullptr) {
  const nn::LMConfig c = tiny_lm();
  const train::TokenShard d = random_tokens();
  std::vector<std::vector<double>> losses(n);
  std::vector<std::vector<Tensor>> w(n);
  dist::run_ranks(n, [&](dist::Communicator& comm) {
    const int r = comm.rank();
    Generator init(1), gen(5);
    for (int64_t s = 0; s < from; ++s) train::sample_batch(d, 4, 8, gen);  // the data position of step `from`
    nn::TransformerLM lm(c, {DType::f64, kCPU, &init});
    dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
    if (!load_dir.empty()) opt.load(load_dir);
    const int64_t b = 4 / n;
    for (int64_t s = from; s < to; ++s) {
      const train::Batch batch = train::sample_batch(d, 4, 8, gen);
      Tensor loss = lm.loss(batch.x.narrow(0, r * b, b).contiguous(), batch.y.narrow(0, r * b, b).contiguous());
      Tensor global = from_vector({loss.item()}, {1}, DType::f64);
      loss.backward();
      comm.all_reduce(global, dist::ReduceOp::avg);
      losses[r].push_back(global.item());
      opt.step(lr(s), 0.5);
      opt.zero_grad();
    }
    if (!save_dir.empty())
      opt.save(save_dir, {{"step", std::to_string(to)}, {"data_seed", std::to_string(gen.seed)},
                          {"data_offset", std::to_string(gen.offset)}});
    for (const Tensor& p : lm.parameters()) w[r].push_back(p.clone());
  });
  if (weights) *weights = w[0];
  return losses[0];
}

fs::path fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("nt_sharded_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}
}  // namespace

TEST_CASE("sharded checkpoint: resuming on 2 ranks repeats the uninterrupted run; on 1 or 4 ranks within rounding") {
  const fs::path dir = fresh_dir("resume");
  std::vector<Tensor> w_full;
  const std::vector<double> full = run(2, 0, 6, "", "", &w_full);
  const std::vector<double> first = run(2, 0, 3, "", dir.string());
  CHECK(fs::exists(dir / "manifest.txt"));
  CHECK(fs::exists(dir / "shard-0-of-2.safetensors"));
  CHECK(fs::exists(dir / "shard-1-of-2.safetensors"));
  CHECK(!fs::exists(dir.string() + ".tmp"));
  for (int n : {2, 1, 4}) {
    CAPTURE(n);
    std::vector<Tensor> w;
    const std::vector<double> rest = run(n, 3, 6, dir.string(), "", &w);
    REQUIRE(rest.size() == 3);
    for (int s = 0; s < 3; ++s) {
      CAPTURE(s);
      // Same ranks: bit for bit. Other rank counts sum the per-rank gradients in another order: f64 rounding.
      if (n == 2) CHECK(rest[s] == full[3 + s]);
      else CHECK(std::fabs(rest[s] - full[3 + s]) <= 1e-12 * std::fabs(full[3 + s]));
    }
    for (size_t i = 0; i < w.size(); ++i) expect_close(w[i], w_full[i], n == 2 ? 0.0 : 1e-11, 0);
  }
  CHECK(first.size() == 3);
  fs::remove_all(dir);
}

TEST_CASE("sharded checkpoint: consolidated, train::AdamW resumes it in one process") {
  const fs::path dir = fresh_dir("consolidate"), out = fresh_dir("consolidated");
  const std::vector<double> full = run(2, 0, 5, "", "");
  run(2, 0, 3, "", dir.string());
  dist::consolidate_checkpoint(dir.string(), out.string());
  // A single-process run from the consolidated checkpoint: train::AdamW on the whole batch.
  const nn::LMConfig c = tiny_lm();
  const train::TokenShard d = random_tokens();
  Generator init(7);
  nn::TransformerLM lm(c, {DType::f64, kCPU, &init});
  train::AdamW opt(lm.named_parameters());
  const train::TrainState st = train::load_checkpoint(out.string(), lm, opt);
  CHECK(st.step == 3);
  CHECK(opt.steps() == 3);
  Generator gen = st.data_gen;
  for (int64_t s = 3; s < 5; ++s) {
    const train::Batch batch = train::sample_batch(d, 4, 8, gen);
    Tensor loss = lm.loss(batch.x, batch.y);
    CHECK(std::fabs(loss.item() - full[s]) <= 1e-12 * full[s]);
    loss.backward();
    opt.clip_grad_norm(0.5);
    opt.step(lr(s));
    opt.zero_grad();
  }
  fs::remove_all(dir), fs::remove_all(out);
}

TEST_CASE("sharded checkpoint: a save replaces the old one only when complete; bad checkpoints are clear errors") {
  const fs::path dir = fresh_dir("errors");
  run(2, 0, 2, "", dir.string());
  run(2, 0, 3, "", dir.string());  // over the old one: swapped in, nothing left behind
  CHECK(!fs::exists(dir.string() + ".tmp"));
  CHECK(!fs::exists(dir.string() + ".old"));
  CHECK(nn::load_safetensors((dir / "shard-1-of-2.safetensors").string()).metadata.at("step") == "3");

  // Another model: every mismatch named.
  expect_error([&] {
    dist::run_ranks(2, [&](dist::Communicator& comm) {
      nn::LMConfig c = tiny_lm();
      c.dim = 24;
      Generator init(1);
      nn::TransformerLM lm(c, {DType::f64, kCPU, &init});
      dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
      opt.load(dir.string());
    });
  }, {"ShardedAdamW::load", "does not match this model", "tok_emb.weight", "[23, 16]", "[23, 24]"});

  // A missing shard.
  fs::remove(dir / "shard-1-of-2.safetensors");
  expect_error([&] { dist::consolidate_checkpoint(dir.string(), (dir / "out").string()); },
               {"shard-1-of-2.safetensors", "is missing", "2 ranks"});
  // No manifest; and a save interrupted while swapping directories (only <dir>.old complete).
  expect_error([&] { dist::consolidate_checkpoint((dir / "nowhere").string(), (dir / "out").string()); },
               {"manifest.txt", "not a sharded checkpoint"});
  const fs::path swapped = fresh_dir("swapped");
  run(2, 0, 1, "", (swapped.string() + ".old"));
  expect_error([&] { dist::consolidate_checkpoint(swapped.string(), (dir / "out").string()); },
               {".old", "interrupted", "rename it"});
  // A corrupt manifest.
  std::ofstream(dir / "manifest.txt") << "something else\n";
  expect_error([&] { dist::consolidate_checkpoint(dir.string(), (dir / "out").string()); },
               {"manifest.txt", "starts with 'something else'"});
  fs::remove_all(dir), fs::remove_all(swapped.string() + ".old");
}
