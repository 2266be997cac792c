// The thread communicator's collectives (1-4 ranks, f32 and f64, argument and cross-rank mismatches, a timeout
// naming the missing rank) and ShardedAdamW against single-process train::AdamW on the concatenated batch.
// doctest assertions are not thread-safe: ranks record results, the test thread checks them.
#include <chrono>

#include "dist/fsdp.h"
#include "moe/moe_layer.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "tiny_lm.h"
#include "train/data.h"

using namespace nt;
using namespace nt::test;
using dist::Communicator;
using dist::ReduceOp;

TEST_CASE("ThreadCommunicator: all_gather, reduce_scatter, all_reduce, broadcast, all_to_all on 1-4 ranks, f32 and f64") {
  for (DType dt : {DType::f32, DType::f64})
    for (int n = 1; n <= 4; ++n) {
      CAPTURE(n);
      const int64_t k = 5;  // per-rank elements; full buffers have n * 5, all_reduce/broadcast take 7 (odd sizes)
      std::vector<Tensor> gathered(n), scattered(n), reduced(n), bcast(n), exchanged(n), exchanged_inplace(n);
      auto value = [](int r, int64_t i) { return 0.25 * (r + 1) + 0.5 * (double)i; };  // exact in f32
      dist::run_ranks(n, [&](Communicator& c) {
        const int r = c.rank();
        std::vector<double> mine, full_in, seven;
        for (int64_t i = 0; i < k; ++i) mine.push_back(100.0 * r + (double)i);
        for (int64_t i = 0; i < n * k; ++i) full_in.push_back(value(r, i));
        for (int64_t i = 0; i < 7; ++i) seven.push_back(value(r, i));
        Tensor full = zeros({n * k}, dt);
        c.all_gather(from_vector(mine, {k}, dt), full);
        gathered[r] = full;
        Tensor shard = empty({k}, dt);
        c.reduce_scatter(from_vector(full_in, {n * k}, dt), shard, ReduceOp::sum);
        scattered[r] = shard;
        Tensor t = from_vector(seven, {7}, dt);
        c.all_reduce(t, ReduceOp::avg);
        reduced[r] = t;
        Tensor b = from_vector(seven, {7}, dt);
        c.broadcast(b, n - 1);
        bcast[r] = b;
        // In place: the shard is this rank's slice of the output.
        Tensor inplace = zeros({n * k}, dt);
        inplace.narrow(0, r * k, k).copy_(from_vector(mine, {k}, dt));
        c.all_gather(inplace.narrow(0, r * k, k), inplace);
        if (!(inplace.to_vector() == full.to_vector())) throw Error("in-place all_gather differs");
        // all_to_all: element i of chunk j on rank r is 1000 r + 10 j + i.
        std::vector<double> a2a;
        for (int j = 0; j < n; ++j)
          for (int64_t i = 0; i < k; ++i) a2a.push_back(1000.0 * r + 10.0 * j + (double)i);
        exchanged[r] = empty({n * k}, dt);
        c.all_to_all(from_vector(a2a, {n * k}, dt), exchanged[r]);
        exchanged_inplace[r] = from_vector(a2a, {n * k}, dt);
        c.all_to_all(exchanged_inplace[r], exchanged_inplace[r]);
        c.barrier();
      });
      std::vector<double> want_gather, want_avg, want_bcast;
      for (int r = 0; r < n; ++r)
        for (int64_t i = 0; i < k; ++i) want_gather.push_back(100.0 * r + (double)i);
      for (int64_t i = 0; i < 7; ++i) {
        double s = 0;
        for (int r = 0; r < n; ++r) s += value(r, i);
        want_avg.push_back(s / n), want_bcast.push_back(value(n - 1, i));
      }
      for (int r = 0; r < n; ++r) {
        CHECK(gathered[r].dtype() == dt);
        expect_values(gathered[r], want_gather, 0);
        std::vector<double> want_shard;
        for (int64_t i = 0; i < k; ++i) {
          double s = 0;
          for (int q = 0; q < n; ++q) s += value(q, r * k + i);
          want_shard.push_back(s);
        }
        expect_values(scattered[r], want_shard, 0);
        expect_values(reduced[r], want_avg, dt == DType::f32 ? 1e-6 : 1e-15);
        expect_values(bcast[r], want_bcast, 0);
        std::vector<double> want_a2a;  // chunk q comes from rank q: its chunk r
        for (int q = 0; q < n; ++q)
          for (int64_t i = 0; i < k; ++i) want_a2a.push_back(1000.0 * q + 10.0 * r + (double)i);
        expect_values(exchanged[r], want_a2a, 0);
        expect_values(exchanged_inplace[r], want_a2a, 0);
      }
    }
}

TEST_CASE("ThreadCommunicator: mismatches name the argument or the rank; a skipped collective times out") {
  using namespace std::chrono_literals;
  expect_error([] { dist::run_ranks(2, [](Communicator& c) {
    Tensor full = zeros({5});
    c.all_gather(zeros({3}), full);
  }); }, {"all_gather", "full has 5 elements", "size (2) * shard's 3 = 6"});
  expect_error([] { dist::run_ranks(2, [](Communicator& c) {
    Tensor full = zeros({4}, DType::f64);
    c.all_gather(zeros({2}), full);
  }); }, {"all_gather", "full has dtype f64 but shard has f32"});
  expect_error([] { dist::run_ranks(2, [](Communicator& c) {
    Tensor t = zeros({3}, DType::i64);
    c.all_reduce(t, ReduceOp::sum);
  }); }, {"all_reduce", "t has dtype i64"});
  expect_error([] { dist::run_ranks(3, [](Communicator& c) {
    Tensor t = zeros({c.rank() == 1 ? 4 : 3});
    c.all_reduce(t, ReduceOp::sum);
  }); }, {"all_reduce", "rank 1 passed 4 elements"});
  expect_error([] { dist::run_ranks(2, [](Communicator& c) {
    Tensor t = zeros({3}, c.rank() == 0 ? DType::f32 : DType::f64);
    c.broadcast(t, 0);
  }); }, {"broadcast", "dtype"});
  expect_error([] { dist::run_ranks(2, [](Communicator& c) {
    Tensor t = zeros({3});
    if (c.rank() == 0) c.broadcast(t, 0);
    else c.all_reduce(t, ReduceOp::sum);
  }); }, {"at the same time"});

  // Rank 2 skips the all_reduce: the others give up after the timeout and say who is missing.
  const auto t0 = std::chrono::steady_clock::now();
  expect_error([] { dist::run_ranks(3, [](Communicator& c) {
    Tensor t = ones({4});
    if (c.rank() != 2) c.all_reduce(t, ReduceOp::sum);
  }, 200ms); }, {"all_reduce timed out after 200 ms", "rank(s) 2 did not arrive"});
  // A rank that throws wakes the waiting ones at once (the 60 s timeout is not waited for).
  expect_error([] { dist::run_ranks(3, [](Communicator& c) {
    if (c.rank() == 1) throw Error("rank one gives up");
    c.barrier();
  }); }, {"rank one gives up"});
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
}

TEST_CASE("units_by_module groups a TransformerLM by top-level module and block") {
  nn::LMConfig c;
  c.vocab = 11, c.dim = 8, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 4, c.mlp_hidden = 16;
  nn::TransformerLM lm(c);
  const auto units = dist::units_by_module(lm.named_parameters());
  std::vector<std::string> firsts;
  size_t total = 0;
  for (const auto& u : units) firsts.push_back(u[0].first), total += u.size();
  CHECK(total == lm.named_parameters().size());
  REQUIRE(units.size() == 4);  // tok_emb, layers.0, layers.1, norm (the head is tied)
  CHECK(firsts[0].rfind("tok_emb.", 0) == 0);
  CHECK(firsts[1].rfind("layers.0.", 0) == 0);
  CHECK(firsts[2].rfind("layers.1.", 0) == 0);
  CHECK(firsts[3].rfind("norm.", 0) == 0);
}

namespace {
struct Run {
  std::vector<double> losses, norms;
  std::vector<Tensor> weights;
};

// K steps on the global batch B = n * b (sample_batch with one seed), rank r taking rows [r b, r b + b).
// n == 0: the single-process reference with train::AdamW.
Run train_lm(int n, DType dt, double max_norm, std::vector<Run>* ranks = nullptr) {
  const nn::LMConfig c = tiny_lm(2);
  const train::TokenShard data = random_tokens();
  const int64_t b = 2, T = 8, K = 4;
  auto lr = [](int64_t s) { return train::lr_at(s, 2, 4, 1e-2, 1e-3); };
  if (n == 0) {
    Run out;
    Generator init(1), gen(5);
    nn::TransformerLM lm(c, {dt, kCPU, &init});
    train::AdamW opt(lm.named_parameters());
    const int64_t world = ranks ? (int64_t)ranks->size() : 1;
    for (int64_t s = 0; s < K; ++s) {
      const train::Batch batch = train::sample_batch(data, world * b, T, gen);
      Tensor loss = lm.loss(batch.x, batch.y);
      out.losses.push_back(loss.item());
      loss.backward();
      out.norms.push_back(opt.clip_grad_norm(max_norm));
      opt.step(lr(s));
      opt.zero_grad();
    }
    for (const Tensor& p : lm.parameters()) out.weights.push_back(p.clone());
    return out;
  }
  std::vector<Run> per(n);
  dist::run_ranks(n, [&](Communicator& comm) {
    const int r = comm.rank();
    Generator init(1 + r), gen(5);  // ranks start different: rank 0's weights (the reference's) must be broadcast
    nn::TransformerLM lm(c, {dt, kCPU, &init});
    dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
    for (int64_t s = 0; s < K; ++s) {
      const train::Batch batch = train::sample_batch(data, n * b, T, gen);
      Tensor loss = lm.loss(batch.x.narrow(0, r * b, b).contiguous(), batch.y.narrow(0, r * b, b).contiguous());
      Tensor global = from_vector({loss.item()}, {1}, DType::f64);
      loss.backward();
      comm.all_reduce(global, ReduceOp::avg);
      per[r].losses.push_back(global.item());
      per[r].norms.push_back(opt.step(lr(s), max_norm));
      opt.zero_grad();
    }
    for (const Tensor& p : lm.parameters()) per[r].weights.push_back(p.clone());
  });
  if (ranks) *ranks = per;
  return per[0];
}

void compare(int n, DType dt, double max_norm, double loss_tol, double w_atol) {
  CAPTURE(n);
  CAPTURE(max_norm);
  std::vector<Run> ranks(n);
  train_lm(n, dt, max_norm, &ranks);
  const Run ref = train_lm(0, dt, max_norm, &ranks);
  for (int r = 0; r < n; ++r) {
    REQUIRE(ranks[r].losses.size() == ref.losses.size());
    for (size_t s = 0; s < ref.losses.size(); ++s) {
      CHECK(std::fabs(ranks[r].losses[s] - ref.losses[s]) <= loss_tol * std::fabs(ref.losses[s]));
      CHECK(std::fabs(ranks[r].norms[s] - ref.norms[s]) <= 1e-5 * ref.norms[s]);  // the reference squares in f32
    }
    REQUIRE(ranks[r].weights.size() == ref.weights.size());
    for (size_t i = 0; i < ref.weights.size(); ++i) {
      expect_close(ranks[r].weights[i], ref.weights[i], w_atol, 0);
      expect_close(ranks[r].weights[i], ranks[0].weights[i], 0, 0);  // every rank holds the same weights
    }
  }
}
}  // namespace

TEST_CASE("ShardedAdamW on 2 and 3 ranks equals train::AdamW on the full batch (f64 TransformerLM, 4 steps)") {
  // Without clipping the only differences are summation orders (per-rank gradient sums, then the average): f64
  // rounding, measured at <= 1e-15 in losses and weights. With clipping the reference squares the gradients in f32
  // (train::AdamW::clip_grad_norm), so its clip scale differs by ~1e-8 relative; Adam's update is scale-invariant
  // only up to eps, which leaves loss and weight differences of ~1e-10 (measured <= 1.2e-10 and 9e-10).
  for (int n : {2, 3}) {
    compare(n, DType::f64, 1e9, 1e-14, 1e-13);
    compare(n, DType::f64, 0.5, 1e-9, 5e-9);
  }
}

TEST_CASE("ShardedAdamW in f32 on 2 ranks follows train::AdamW within f32 rounding") {
  // The reference's weight gradients are one GEMM over all 2b rows, the ranks' two GEMMs over b rows each and an
  // average: f32 summation orders differ (~1e-7 relative), and Adam's normalized step turns that into up to ~2e-5
  // in weights after 4 steps where a gradient is tiny (measured 1.8e-5 at element 35, 2026-11-23).
  compare(2, DType::f32, 0.5, 1e-5, 5e-5);
}

TEST_CASE("ShardedAdamW with bf16 parameters: the bf16 all-gather gives every rank bf16(master), and it learns") {
  nn::LMConfig c;
  c.vocab = 23, c.dim = 16, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 8, c.mlp_hidden = 32;
  train::TokenShard data;
  data.vocab = 23;
  for (int i = 0; i < 600; ++i) data.tokens.push_back((uint16_t)((i * 7) % 23));  // a learnable sequence
  std::vector<std::vector<Tensor>> params(2), masters(2);
  std::vector<std::vector<double>> losses(2);
  dist::run_ranks(2, [&](Communicator& comm) {
    const int r = comm.rank();
    Generator init(1 + r), gen(5 + r);
    nn::TransformerLM lm(c, {DType::bf16, kCPU, &init});
    dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
    for (int s = 0; s < 12; ++s) {
      const train::Batch b = train::sample_batch(data, 4, 8, gen);
      Tensor loss = lm.loss(b.x, b.y);
      losses[r].push_back(loss.item());
      loss.backward();
      opt.step(2e-2, 1.0);
      opt.zero_grad();
    }
    for (const Tensor& p : lm.parameters()) params[r].push_back(p.detach().clone());
    for (const auto& [name, w] : opt.full_weights()) masters[r].push_back(w);
  });
  for (int r = 0; r < 2; ++r) {
    REQUIRE(params[r].size() == masters[r].size());
    for (size_t i = 0; i < params[r].size(); ++i) {
      CHECK(masters[r][i].dtype() == DType::f32);
      expect_close(params[r][i].to(DType::f64), masters[r][i].to(DType::bf16).to(DType::f64), 0, 0);
      expect_close(params[r][i].to(DType::f64), params[0][i].to(DType::f64), 0, 0);
    }
    CHECK(losses[r].back() < 0.7 * losses[r].front());
  }
}

TEST_CASE("ShardedAdamW: padding (7 elements on 4 ranks) and decay only on matrices, against train::AdamW") {
  auto grads = [](int64_t step) {
    return std::pair{from_vector({0.5, -1.0, 0.25 * step, 2.0}, {2, 2}, DType::f64),
                     from_vector({-0.5, 1.5 * step, 0.125}, {3}, DType::f64)};
  };
  Tensor rw = from_vector({1.0, -2.0, 0.5, 3.0}, {2, 2}, DType::f64).requires_grad_();
  Tensor rb = from_vector({0.5, 0.25, -1.0}, {3}, DType::f64).requires_grad_();
  train::AdamW ref({{"w", rw}, {"b", rb}});
  for (int64_t s = 1; s <= 3; ++s) {
    auto [gw, gb] = grads(s);
    rw.set_grad(gw), rb.set_grad(gb);
    ref.step(0.1), ref.zero_grad();
  }
  std::vector<Tensor> ws(4), bs(4);
  dist::run_ranks(4, [&](Communicator& c) {
    Tensor w = from_vector({1.0, -2.0, 0.5, 3.0}, {2, 2}, DType::f64).requires_grad_();
    Tensor b = from_vector({0.5, 0.25, -1.0}, {3}, DType::f64).requires_grad_();
    dist::ShardedAdamW opt(c, {{{"w", w}, {"b", b}}});
    if (opt.master_shards()[0].numel() != 2) throw Error("expected shards of 2 elements");
    for (int64_t s = 1; s <= 3; ++s) {
      auto [gw, gb] = grads(s);
      // Each rank's gradient differs; their average is the reference's.
      w.set_grad(gw + (c.rank() - 1.5)), b.set_grad(gb - (c.rank() - 1.5));
      opt.step(0.1), opt.zero_grad();
    }
    ws[c.rank()] = w, bs[c.rank()] = b;
  });
  for (int r = 0; r < 4; ++r) expect_close(ws[r], rw, 1e-15, 0), expect_close(bs[r], rb, 1e-15, 0);
  // A clip limit that is not positive is an error on every rank, before the step counts.
  for (double bad : {0.0, -1.0})
    expect_error([&] { dist::run_ranks(2, [&](Communicator& c) {
      Tensor w = from_vector({1.0, -2.0}, {2}, DType::f64).requires_grad_();
      dist::ShardedAdamW opt(c, {{{"w", w}}});
      w.set_grad(from_vector({0.5, 0.5}, {2}, DType::f64));
      opt.step(0.1, bad);
    }); }, {"ShardedAdamW::step", "max_norm must be > 0", bad == 0.0 ? "got 0" : "got -1"});
}

TEST_CASE("ShardedAdamW::fully_shard (ZeRO-3, with and without recomputation): the same training as ZeRO-2, block "
          "weights only while a block runs") {
  const nn::LMConfig c = tiny_lm(3);
  const train::TokenShard data = random_tokens();
  struct Result {
    std::vector<double> losses, evals;
    std::vector<Tensor> weights;
    bool released_between_steps = false, embedding_kept = false, released_before_backward = true;
    std::string error;
  };
  enum Mode { zero2, zero3, zero3_recompute };
  auto train = [&](Mode mode) {
    const bool zero3 = mode != zero2;
    std::vector<Result> res(2);
    dist::run_ranks(2, [&](Communicator& comm) {
      const int r = comm.rank();
      Generator init(1), gen(5);
      nn::TransformerLM lm(c, {DType::f64, kCPU, &init});
      dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
      if (zero3) opt.fully_shard(lm, mode == zero3_recompute);
      for (int s = 0; s < 4; ++s) {
        const train::Batch b = train::sample_batch(data, 4, 8, gen);
        Tensor loss = lm.loss(b.x.narrow(0, 2 * r, 2).contiguous(), b.y.narrow(0, 2 * r, 2).contiguous());
        // Between forward and backward every block's weights are freed, also those autograd saved.
        for (const auto& block : lm.layers)
          for (const Tensor& w : block->parameters())
            if (!w.impl()->storage->released()) res[r].released_before_backward = false;
        Tensor global = from_vector({loss.item()}, {1}, DType::f64);
        loss.backward();
        comm.all_reduce(global, ReduceOp::avg);
        res[r].losses.push_back(global.item());
        opt.step(train::lr_at(s, 1, 4, 1e-2, 1e-3), 0.5);
        opt.zero_grad();
      }
      {
        autograd::NoGradGuard ng;  // an evaluation pass (no recording) also gathers and frees
        const train::Batch b = train::sequential_batch(data, 0, 2, 8);
        res[r].evals.push_back(cross_entropy(lm.forward(b.x), b.y).item());
      }
      if (zero3) {
        try {
          lm.layers[1]->attn->parameters()[0].data_ptr();
        } catch (const Error& e) {
          res[r].released_between_steps = true, res[r].error = e.what();
        }
        res[r].embedding_kept = lm.tok_emb->weight.impl()->storage->data != nullptr;
      }
      for (const auto& [name, w] : opt.full_weights()) res[r].weights.push_back(w);
    });
    return res;
  };
  const std::vector<Result> z2 = train(zero2);
  CHECK(!z2[0].released_before_backward);
  for (Mode mode : {zero3, zero3_recompute}) {
    const std::vector<Result> z3 = train(mode);
    for (int r = 0; r < 2; ++r) {
      CAPTURE(mode);
      CAPTURE(r);
      REQUIRE(z3[r].losses.size() == z2[r].losses.size());
      for (size_t s = 0; s < z2[r].losses.size(); ++s) CHECK(z3[r].losses[s] == z2[r].losses[s]);
      CHECK(z3[r].evals == z2[r].evals);
      REQUIRE(z3[r].weights.size() == z2[r].weights.size());
      for (size_t i = 0; i < z2[r].weights.size(); ++i) expect_close(z3[r].weights[i], z2[r].weights[i], 0, 0);
      CHECK(z3[r].released_between_steps);
      CHECK(z3[r].error.find("released") != std::string::npos);
      CHECK(z3[r].embedding_kept);
      CHECK(z3[r].released_before_backward);
    }
  }
  CHECK(z2[0].losses.back() < z2[0].losses.front());
}

TEST_CASE("ShardedAdamW::accumulate: two micro-batches of half the rows equal one batch (2 ranks, also with ZeRO-3)") {
  const nn::LMConfig c = tiny_lm(2);
  const train::TokenShard data = random_tokens();
  // micro = 1: each rank's 4 rows at once; micro = 2: rows [0, 2) then [2, 4), each loss scaled by 1/2.
  bool grads_freed = true;  // accumulate() moves the gradients into the shard and frees them
  auto train = [&](int micro, bool zero3) {
    std::vector<std::vector<Tensor>> w(2);
    dist::run_ranks(2, [&](Communicator& comm) {
      const int r = comm.rank();
      Generator init(1), gen(5);
      nn::TransformerLM lm(c, {DType::f64, kCPU, &init});
      dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
      if (zero3) opt.fully_shard(lm);
      for (int s = 0; s < 3; ++s) {
        const train::Batch b = train::sample_batch(data, 8, 8, gen);
        const int64_t rows = 4 / micro;
        for (int m = 0; m < micro; ++m) {
          const int64_t at = 4 * r + m * rows;
          Tensor loss = lm.loss(b.x.narrow(0, at, rows).contiguous(), b.y.narrow(0, at, rows).contiguous());
          if (micro > 1) loss = loss * (1.0 / micro);
          loss.backward();
          if (m + 1 < micro) {
            opt.accumulate();
            if (lm.tok_emb->weight.grad().defined() || lm.norm->weight.grad().defined()) grads_freed = false;
          }
        }
        opt.step(1e-2, 0.5);
        opt.zero_grad();
      }
      for (const auto& [name, t] : opt.full_weights()) w[r].push_back(t);
    });
    return w[0];
  };
  const auto one = train(1, false), two = train(2, false), two_z3 = train(2, true);
  CHECK(grads_freed);
  REQUIRE(one.size() == two.size());
  for (size_t i = 0; i < one.size(); ++i) {
    expect_close(two[i], one[i], 1e-12, 0);  // f64: the micro-batch sums round differently, nothing else
    expect_close(two_z3[i], two[i], 1e-12, 0);
  }
}

TEST_CASE("MoE with loss-free balancing on 2 ranks: loads all-reduced, so biases and losses follow one process") {
  const nn::LMConfig c = tiny_lm();  // its MLPs come from make_mlp below
  const train::TokenShard data = random_tokens();
  struct Out {
    std::vector<double> losses, bias;
  };
  auto train = [&](int n) {
    std::vector<Out> out(n);
    dist::run_ranks(n, [&](Communicator& comm) {
      const int r = comm.rank();
      std::vector<std::shared_ptr<moe::DeepSeekMoE>> moes;
      nn::LMConfig lc = c;
      lc.make_mlp = [&](int64_t, const nn::Init& init) {
        moe::MoEConfig mc;
        mc.dim = 16, mc.n_routed = 4, mc.top_k = 2, mc.n_shared = 1, mc.expert_hidden = 8;
        mc.router.aux_free = true, mc.router.aux_loss_coef = 0, mc.router.bias_update_speed = 0.05;
        moes.push_back(std::make_shared<moe::DeepSeekMoE>(mc, init));
        return moes.back();
      };
      Generator init(1), gen(5);
      nn::TransformerLM lm(lc, {DType::f64, kCPU, &init});
      dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
      const int64_t rows = 4 / n;
      for (int s = 0; s < 4; ++s) {
        const train::Batch b = train::sample_batch(data, 4, 8, gen);
        Tensor loss = lm.loss(b.x.narrow(0, r * rows, rows).contiguous(), b.y.narrow(0, r * rows, rows).contiguous());
        Tensor global = from_vector({loss.item()}, {1}, DType::f64);
        loss.backward();
        comm.all_reduce(global, ReduceOp::avg);
        out[r].losses.push_back(global.item());
        opt.step(1e-2, 1.0);
        opt.zero_grad();
        for (auto& m : moes) m->update_bias([&](std::vector<int64_t>& load) { dist::all_reduce_counts(comm, load); });
      }
      for (auto& m : moes) out[r].bias.insert(out[r].bias.end(), m->router->bias().begin(), m->router->bias().end());
    });
    return out;
  };
  const std::vector<Out> one = train(1), two = train(2);
  bool moved = false;
  for (double b : one[0].bias) moved |= b != 0;
  CHECK(moved);  // the bias did move, so equal biases mean equal (global) loads
  for (int r = 0; r < 2; ++r) {
    CHECK(two[r].bias == one[0].bias);
    REQUIRE(two[r].losses.size() == one[0].losses.size());
    for (size_t s = 0; s < one[0].losses.size(); ++s)
      CHECK(std::fabs(two[r].losses[s] - one[0].losses[s]) <= 1e-12 * one[0].losses[s]);
  }
}

TEST_CASE("MoE with the balance loss under ZeRO-3 (no recomputation): the same training as ZeRO-2 on 2 ranks") {
  const nn::LMConfig c = tiny_lm();
  const train::TokenShard data = random_tokens();
  const auto moe_mlp = [](int64_t, const nn::Init& init) {
    moe::MoEConfig mc;
    mc.dim = 16, mc.n_routed = 4, mc.top_k = 2, mc.n_shared = 1, mc.expert_hidden = 8;
    mc.router.aux_loss_coef = 0.1;  // its gradient reaches the routers through the blocks' recorded graph
    return std::make_shared<moe::DeepSeekMoE>(mc, init);
  };
  auto train = [&](bool zero3) {
    std::vector<std::vector<Tensor>> w(2);
    std::vector<std::vector<double>> losses(2);
    dist::run_ranks(2, [&](Communicator& comm) {
      const int r = comm.rank();
      nn::LMConfig lc = c;
      lc.make_mlp = moe_mlp;
      Generator init(1), gen(5);
      nn::TransformerLM lm(lc, {DType::f64, kCPU, &init});
      dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
      if (zero3) opt.fully_shard(lm);
      for (int s = 0; s < 3; ++s) {
        const train::Batch b = train::sample_batch(data, 4, 8, gen);
        Tensor loss = lm.loss(b.x.narrow(0, 2 * r, 2).contiguous(), b.y.narrow(0, 2 * r, 2).contiguous());
        losses[r].push_back(loss.item());
        loss.backward();
        opt.step(1e-2, 1.0);
        opt.zero_grad();
      }
      for (const auto& [name, t] : opt.full_weights()) w[r].push_back(t);
    });
    return std::pair{w[0], losses};
  };
  const auto [w2, l2] = train(false);
  const auto [w3, l3] = train(true);
  // With recomputation the balance loss would get no gradient: refused.
  dist::run_ranks(1, [&](Communicator& comm) {
    nn::LMConfig lc = c;
    lc.make_mlp = moe_mlp;
    nn::TransformerLM lm(lc, {DType::f64, kCPU});
    dist::ShardedAdamW opt(comm, dist::units_by_module(lm.named_parameters()));
    opt.fully_shard(lm, true);
    Generator gen(3);
    const train::Batch b = train::sample_batch(data, 1, 8, gen);
    CHECK_THROWS_WITH_AS(lm.loss(b.x, b.y), doctest::Contains("auxiliary loss"), Error);
  });
  CHECK(l3 == l2);
  REQUIRE(w3.size() == w2.size());
  for (size_t i = 0; i < w2.size(); ++i) expect_close(w3[i], w2[i], 0, 0);
}
