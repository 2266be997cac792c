// AdamW against hand-computed updates, the LR schedule, gradient clipping, safetensors round trips, corrupt and
// truncated files, atomic writes and parameter loading with every mismatch reported.
#include <filesystem>
#include <fstream>

#include "nn/safetensors.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/memory_budget.h"
#include "train/data.h"

using namespace nt;
using namespace nt::test;
namespace fs = std::filesystem;

TEST_CASE("AdamW: two steps match the formula; decay only on matrices") {
  Tensor w = from_vector({1.0, -2.0, 0.5, 3.0}, {2, 2}, DType::f64).requires_grad_();
  Tensor b = from_vector({0.5}, {1}, DType::f64).requires_grad_();
  train::AdamW opt({{"w", w}, {"b", b}}, {0.9, 0.99, 1e-8, 0.1});
  const double lr = 0.01;
  double pw = 1.0, pb = 0.5, m = 0, v = 0, mb = 0, vb = 0;
  for (int t = 1; t <= 2; ++t) {
    sum(w * w * 0.5 + b * 2.0).backward();  // grad w = w; grad b = 2 x 4 (b is broadcast over 4 elements)
    opt.step(lr);
    const double g = pw, gb = 8.0;
    pw -= lr * 0.1 * pw;
    m = 0.9 * m + 0.1 * g, v = 0.99 * v + 0.01 * g * g;
    pw -= lr * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.99, t))) + 1e-8);
    mb = 0.9 * mb + 0.1 * gb, vb = 0.99 * vb + 0.01 * gb * gb;
    pb -= lr * (mb / (1 - std::pow(0.9, t))) / (std::sqrt(vb / (1 - std::pow(0.99, t))) + 1e-8);
    opt.zero_grad();
  }
  CHECK(w.to_vector()[0] == doctest::Approx(pw).epsilon(1e-12));
  CHECK(b.to_vector()[0] == doctest::Approx(pb).epsilon(1e-12));
  CHECK(opt.steps() == 2);
  CHECK(opt.state().size() == 4);
  expect_error([] { train::AdamW({}, {1.0, 0.9, 1e-8, 0}); }, {"AdamW", "betas"});
}

TEST_CASE("adamw_update on the host: a large tensor (split over threads) equals its slices updated one by one") {
  // 3 M + 5 elements: above the threading threshold as a whole; each slice of 1 M - 1 is below it.
  const int64_t n = 3 * (1 << 20) + 5, part = (1 << 20) - 1;
  Tensor p = rnd({n}, 1).to(DType::f32), g = rnd({n}, 2).to(DType::f32);
  Tensor m = (rnd({n}, 3) * 0.1).to(DType::f32), v = (rnd({n}, 4) * rnd({n}, 4) * 0.01).to(DType::f32);
  Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
  train::adamw_update(p, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 5, 0.5);
  for (int64_t lo = 0; lo < n; lo += part) {
    const int64_t len = std::min(part, n - lo);
    Tensor ps = p2.narrow(0, lo, len), ms = m2.narrow(0, lo, len), vs = v2.narrow(0, lo, len);
    train::adamw_update(ps, g.narrow(0, lo, len), ms, vs, 1e-3, 0.9, 0.95, 1e-8, 0.1, 5, 0.5);
  }
  CHECK(p.to_vector() == p2.to_vector());
  CHECK(m.to_vector() == m2.to_vector());
  CHECK(v.to_vector() == v2.to_vector());
  CHECK(p.to_vector() != rnd({n}, 1).to(DType::f32).to_vector());  // it did update
}

TEST_CASE("learning-rate schedule: linear warmup, cosine to the floor") {
  CHECK(train::lr_at(0, 10, 100, 1.0, 0.1) == doctest::Approx(0.1));
  CHECK(train::lr_at(9, 10, 100, 1.0, 0.1) == doctest::Approx(1.0));
  CHECK(train::lr_at(10, 10, 100, 1.0, 0.1) == doctest::Approx(1.0));
  CHECK(train::lr_at(55, 10, 100, 1.0, 0.1) == doctest::Approx(0.55));
  CHECK(train::lr_at(100, 10, 100, 1.0, 0.1) == doctest::Approx(0.1));
  CHECK(train::lr_at(500, 10, 100, 1.0, 0.1) == doctest::Approx(0.1));
  CHECK(train::lr_at(5, 0, 10) < train::lr_at(0, 0, 10));
}

TEST_CASE("clip_grad_norm scales gradients to the global norm") {
  Tensor a = zeros({2}, DType::f64).requires_grad_(), b = zeros({1}, DType::f64).requires_grad_();
  a.set_grad(from_vector({3, 0}, {2}, DType::f64));
  b.set_grad(from_vector({4}, {1}, DType::f64));
  CHECK(train::clip_grad_norm({a, b}, 1.0) == doctest::Approx(5.0));
  CHECK(a.grad().to_vector()[0] == doctest::Approx(0.6).epsilon(1e-5));
  CHECK(b.grad().to_vector()[0] == doctest::Approx(0.8).epsilon(1e-5));
  CHECK(train::clip_grad_norm({a, b}, 10.0) == doctest::Approx(1.0).epsilon(1e-5));  // under the limit: unchanged
  CHECK_THROWS_WITH_AS(train::clip_grad_norm({a, b}, 0.0), doctest::Contains("max_norm must be > 0, got 0"), Error);
  CHECK(a.grad().to_vector()[0] == doctest::Approx(0.6).epsilon(1e-5));
}

TEST_CASE("safetensors: every dtype round-trips, with metadata") {
  const fs::path dir = fs::temp_directory_path() / "nt_st_test";
  fs::create_directories(dir);
  const std::string path = (dir / "a.safetensors").string();
  nn::NamedTensors ts;
  for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f8e4m3, DType::f8e5m2, DType::i32, DType::i64, DType::boolean})
    ts.emplace_back(fmt::format("t.{}", dtype_name(t)), from_vector({1, 0, 2, 3, 4, 1}, {2, 3}, t));
  ts.emplace_back("scalar", scalar_tensor(2.5, DType::f32));
  ts.emplace_back("empty", zeros({0, 4}));
  nn::save_safetensors(path, ts, {{"step", "7"}, {"note", "quote \" and \\"}});
  const nn::SafetensorsFile f = nn::load_safetensors(path);
  REQUIRE(f.tensors.size() == ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    CHECK(f.tensors[i].first == ts[i].first);
    CHECK(f.tensors[i].second.dtype() == ts[i].second.dtype());
    CHECK(f.tensors[i].second.shape() == ts[i].second.shape());
    expect_close(f.tensors[i].second.to(DType::f64), ts[i].second.to(DType::f64), 0);
  }
  CHECK(f.metadata.at("step") == "7");
  CHECK(f.metadata.at("note") == "quote \" and \\");
  // The header length is a multiple of 8 and the layout is the reference one: u64 length, JSON, data.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  CHECK(n % 8 == 0);
  fs::remove_all(dir);
}

TEST_CASE("safetensors: truncated and corrupt files are clear errors; writes are atomic") {
  const fs::path dir = fs::temp_directory_path() / "nt_st_bad";
  fs::create_directories(dir);
  const std::string path = (dir / "m.safetensors").string();
  nn::save_safetensors(path, {{"w", rnd({64, 64}, 1).to(DType::f32)}});
  const auto full = fs::file_size(path);
  fs::copy_file(path, dir / "t.safetensors");
  fs::resize_file(dir / "t.safetensors", full - 100);
  expect_error([&] { nn::load_safetensors((dir / "t.safetensors").string()); }, {"truncated", "'w'"});
  fs::resize_file(dir / "t.safetensors", 5);
  expect_error([&] { nn::load_safetensors((dir / "t.safetensors").string()); }, {"truncated", "8-byte"});
  {
    std::fstream f(dir / "c.safetensors", std::ios::out | std::ios::binary);
    const uint64_t n = 16;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write("{\"w\": {\"dtype\":[", 16);
  }
  expect_error([&] { nn::load_safetensors((dir / "c.safetensors").string()); }, {"corrupt header"});
  expect_error([&] { nn::load_safetensors((dir / "missing.safetensors").string()); }, {"cannot open"});
  // A failed save (the target is a directory: the final rename fails) leaves the target and no temp file behind.
  fs::create_directories(dir / "target");
  expect_error([&] { nn::save_safetensors((dir / "target").string(), {{"w", zeros({2})}}); }, {"renaming"});
  CHECK(fs::is_directory(dir / "target"));
  int leftovers = 0;
  for (auto& e : fs::directory_iterator(dir)) leftovers += e.path().string().find(".tmp.") != std::string::npos;
  CHECK(leftovers == 0);
  // The earlier file is intact.
  CHECK(nn::load_safetensors(path).tensors.size() == 1);
  fs::remove_all(dir);
}

TEST_CASE("load_parameters reports every mismatch, then loads when names, shapes and dtypes agree") {
  nn::LMConfig c;
  c.vocab = 11, c.dim = 16, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 8, c.mlp_hidden = 32;
  nn::TransformerLM a(c), b(c);
  const fs::path p = fs::temp_directory_path() / "nt_lm.safetensors";
  nn::save_safetensors(p.string(), a.named_parameters());
  nn::load_parameters(b, nn::load_safetensors(p.string()));
  for (size_t i = 0; i < a.parameters().size(); ++i) expect_close(b.parameters()[i], a.parameters()[i], 0);
  auto ps = a.named_parameters();
  ps.erase(ps.begin());                                   // missing tok_emb.weight
  ps[0].second = zeros({3});                              // wrong shape
  ps[1].second = ps[1].second.detach().to(DType::f64);    // wrong dtype
  ps.emplace_back("extra.weight", zeros({1}));            // unexpected
  nn::save_safetensors(p.string(), ps);
  expect_error([&] { nn::load_parameters(b, nn::load_safetensors(p.string())); },
               {"4 mismatch", "missing 'tok_emb.weight'", "shape [3] in the file", "dtype f64 in the file", "unexpected 'extra.weight'"});
  fs::remove(p);
}

TEST_CASE("token shards: batches, and missing, truncated or corrupt files") {
  const fs::path dir = fs::temp_directory_path() / "nt_shards";
  fs::create_directories(dir);
  auto write_shard = [&](const fs::path& p, const std::vector<uint16_t>& toks, uint32_t vocab, uint64_t claimed) {
    std::ofstream f(p, std::ios::binary);
    const uint32_t width = 2;
    f.write("NTTOKENS", 8);
    f.write(reinterpret_cast<const char*>(&vocab), 4);
    f.write(reinterpret_cast<const char*>(&width), 4);
    f.write(reinterpret_cast<const char*>(&claimed), 8);
    f.write(reinterpret_cast<const char*>(toks.data()), (std::streamsize)(toks.size() * 2));
  };
  std::vector<uint16_t> toks(100);
  for (int i = 0; i < 100; ++i) toks[i] = (uint16_t)(i % 50);
  write_shard(dir / "ok.bin", toks, 50, 100);
  const train::TokenShard s = train::load_shard((dir / "ok.bin").string());
  CHECK(s.vocab == 50);
  Generator g(1);
  const train::Batch b = train::sample_batch(s, 3, 10, g);
  CHECK(b.x.shape() == Shape{3, 10});
  const auto xv = b.x.to_vector(), yv = b.y.to_vector();
  for (int i = 0; i < 3; ++i)
    for (int t = 0; t < 10; ++t) CHECK(yv[i * 10 + t] == std::fmod(xv[i * 10 + t] + 1, 50));  // y is x shifted by one
  const train::Batch e = train::sequential_batch(s, 1, 2, 10);
  expect_values(e.x.select(0, 0).narrow(0, 0, 3), {10, 11, 12});
  expect_error([&] { train::load_shard((dir / "nope.bin").string()); }, {"cannot open", "prepare_data"});
  write_shard(dir / "short.bin", toks, 50, 200);
  expect_error([&] { train::load_shard((dir / "short.bin").string()); }, {"truncated or corrupt", "200 tokens"});
  write_shard(dir / "vocab.bin", toks, 40, 100);
  expect_error([&] { train::load_shard((dir / "vocab.bin").string()); }, {"outside the vocabulary of 40"});
  { std::ofstream f(dir / "junk.bin"); f << "this is not a token shard at all"; }
  expect_error([&] { train::load_shard((dir / "junk.bin").string()); }, {"bad magic"});
  fs::remove_all(dir);
}

TEST_CASE("resume: 3 steps + checkpoint + 3 steps equals 6 uninterrupted steps, exactly") {
  nn::LMConfig c;
  c.vocab = 23, c.dim = 16, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 8, c.mlp_hidden = 32;
  train::TokenShard shard;
  shard.vocab = 23;
  Generator tg(9);
  for (double v : randint(0, 23, {500}, DType::i64, kCPU, &tg).to_vector()) shard.tokens.push_back((uint16_t)v);
  auto run = [&](nn::TransformerLM& lm, train::AdamW& opt, Generator& data, int64_t from, int64_t to, std::vector<double>& losses) {
    for (int64_t step = from; step < to; ++step) {
      const train::Batch b = train::sample_batch(shard, 4, 8, data);
      Tensor loss = lm.loss(b.x, b.y);
      losses.push_back(loss.item());
      loss.backward();
      train::clip_grad_norm(lm.parameters(), 1.0);
      opt.step(train::lr_at(step, 2, 6, 1e-2, 1e-3));
      opt.zero_grad();
    }
  };
  Generator init(1);
  nn::TransformerLM a(c, {DType::f32, kCPU, &init});
  train::AdamW oa(a.named_parameters());
  Generator da(5);
  std::vector<double> straight;
  run(a, oa, da, 0, 6, straight);

  Generator init2(1);
  nn::TransformerLM b(c, {DType::f32, kCPU, &init2});
  train::AdamW ob(b.named_parameters());
  Generator db(5);
  std::vector<double> resumed;
  run(b, ob, db, 0, 3, resumed);
  const fs::path dir = fs::temp_directory_path() / "nt_resume";
  train::save_checkpoint(dir.string(), b, ob, {3, db});

  Generator other(77);  // a differently initialized model: everything must come from the checkpoint
  nn::TransformerLM r(c, {DType::f32, kCPU, &other});
  train::AdamW orr(r.named_parameters());
  train::TrainState st = train::load_checkpoint(dir.string(), r, orr);
  CHECK(st.step == 3);
  CHECK(orr.steps() == 3);
  run(r, orr, st.data_gen, 3, 6, resumed);
  REQUIRE(resumed.size() == straight.size());
  for (size_t i = 0; i < straight.size(); ++i) CHECK_MESSAGE(resumed[i] == straight[i], "step " << i);
  for (size_t i = 0; i < a.parameters().size(); ++i) expect_close(r.parameters()[i], a.parameters()[i], 0, 0);

  // Extra state (e.g. MoE balancing biases) round-trips by name; asking for a missing one is an error.
  train::save_checkpoint(dir.string(), b, ob, {3, db, {{"moe_bias.layers.1", from_vector({0.5, -0.25}, {2}, DType::f64)}}});
  const train::TrainState ex = train::load_checkpoint(dir.string(), r, orr, {"moe_bias.layers.1"});
  REQUIRE(ex.extra.size() == 1);
  expect_values(ex.extra[0].second, {0.5, -0.25}, 0);
  expect_error([&] { train::load_checkpoint(dir.string(), r, orr, {"moe_bias.layers.2"}); }, {"moe_bias.layers.2"});

  // An interrupted save (files from different steps) and a model that does not fit are refused.
  train::save_checkpoint(dir.string(), b, ob, {4, db});
  nn::save_safetensors((dir / "optim.safetensors").string(), ob.state(), {{"step", "3"}, {"optimizer_steps", "3"}});
  expect_error([&] { train::load_checkpoint(dir.string(), r, orr); }, {"interrupted"});
  fs::remove_all(dir);
}

TEST_CASE("AdamW mixed precision: bf16 parameters follow an f32 master copy") {
  // The same gradients into an f32 parameter and a bf16 one: the bf16 optimizer's master tracks the f32 parameter
  // exactly, and the bf16 parameter is the master rounded.
  Tensor w32 = rnd({5, 7}, 1, DType::f32).requires_grad_(), w16 = w32.detach().to(DType::bf16).requires_grad_();
  Tensor ref = w16.detach().to(DType::f32).requires_grad_();  // the master starts from the bf16 value
  train::AdamW o16({{"w", w16}}), oref({{"w", ref}});
  for (int step = 0; step < 4; ++step) {
    const Tensor g = rnd({5, 7}, 10 + step, DType::f32);
    w16.set_grad(g.to(DType::bf16)), ref.set_grad(g.to(DType::bf16).to(DType::f32));
    o16.step(1e-3), oref.step(1e-3);
  }
  const auto st = o16.state();
  REQUIRE(st.size() == 3);
  CHECK(st[2].first == "w.master");
  expect_close(st[2].second, ref.detach(), 0, 0);
  expect_close(w16.detach().to(DType::f64), ref.detach().to(DType::bf16).to(DType::f64), 0, 0);
  // An update far below bf16's resolution still moves the master.
  const Tensor before = st[2].second.clone();
  w16.set_grad(full({5, 7}, 1.0, DType::bf16));
  o16.step(1e-7);
  CHECK(sum(pow(o16.state()[2].second - before, 2.0)).item() > 0);
}

TEST_CASE("AdamW gradient accumulation sums micro-batches in f32; clipping sees the sum") {
  Tensor a = rnd({3, 4}, 1, DType::f32).requires_grad_(), b = a.detach().clone().requires_grad_();
  train::AdamW oa({{"w", a}}), ob({{"w", b}});
  const Tensor g1 = rnd({3, 4}, 2, DType::f32), g2 = rnd({3, 4}, 3, DType::f32);
  a.set_grad(g1), oa.accumulate();
  CHECK(!a.grad().defined());
  a.set_grad(g2);
  b.set_grad(g1 + g2);
  const double na = oa.clip_grad_norm(0.5), nb = train::clip_grad_norm({b}, 0.5);
  CHECK(na == doctest::Approx(nb).epsilon(1e-6));
  oa.step(1e-2), ob.step(1e-2);
  expect_close(a.detach(), b.detach(), 1e-7, 1e-6);
  a.set_grad(g1), oa.accumulate(), oa.zero_grad();  // zero_grad drops the buffer too
  CHECK(oa.clip_grad_norm(1e9) == 0.0);
  CHECK_THROWS_WITH(oa.clip_grad_norm(0.0), doctest::Contains("max_norm must be > 0, got 0"));
}

TEST_CASE("AdamW::clip_grad_norm_async on the CPU: the norm as a tensor, and the same clipped step") {
  Tensor a = rnd({5, 3}, 4, DType::f32).requires_grad_(), b = a.detach().clone().requires_grad_();
  train::AdamW oa({{"w", a}}), ob({{"w", b}});
  const Tensor g = rnd({5, 3}, 5, DType::f32) * 3.0;
  a.set_grad(g), b.set_grad(g);
  const Tensor na = oa.clip_grad_norm_async(0.5);
  const double nb = ob.clip_grad_norm(0.5);
  CHECK(na.shape() == Shape{1});
  CHECK(na.item() == doctest::Approx(nb).epsilon(1e-12));
  CHECK(nb > 0.5);
  CHECK_THROWS_WITH(oa.accumulate(), doctest::Contains("called after clip_grad_norm"));
  oa.step(1e-2), ob.step(1e-2);
  expect_close(a.detach(), b.detach(), 0, 0);
  oa.zero_grad();
  CHECK(oa.clip_grad_norm_async(1.0).item() == 0.0);  // no gradient
}

TEST_CASE("bf16 training with master weights and 2 micro-batches: learns, and resumes exactly") {
  nn::LMConfig c;
  c.vocab = 23, c.dim = 16, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 8, c.mlp_hidden = 32;
  train::TokenShard shard;
  shard.vocab = 23;
  for (int i = 0; i < 600; ++i) shard.tokens.push_back((uint16_t)((i * 7) % 23));  // a learnable sequence
  auto run = [&](nn::TransformerLM& lm, train::AdamW& opt, Generator& data, int64_t from, int64_t to, std::vector<double>& losses) {
    for (int64_t step = from; step < to; ++step) {
      double total = 0;
      for (int micro = 0; micro < 2; ++micro) {
        const train::Batch b = train::sample_batch(shard, 4, 8, data);
        Tensor loss = lm.loss(b.x, b.y) * 0.5;
        total += loss.item();
        loss.backward();
        opt.accumulate();
      }
      losses.push_back(total);
      opt.clip_grad_norm(1.0);
      opt.step(train::lr_at(step, 2, 30, 3e-2, 3e-3));
      opt.zero_grad();
    }
  };
  auto make = [&](uint64_t seed) {
    Generator init(seed);
    auto lm = std::make_unique<nn::TransformerLM>(c, nn::Init{DType::f32, kCPU, &init});
    lm->to(DType::bf16);
    return lm;
  };
  auto a = make(1);
  REQUIRE(a->parameters()[0].dtype() == DType::bf16);
  train::AdamW oa(a->named_parameters());
  Generator da(5);
  std::vector<double> straight;
  run(*a, oa, da, 0, 30, straight);
  CHECK(straight.back() < 0.5 * straight.front());

  auto b = make(1);
  train::AdamW ob(b->named_parameters());
  Generator db(5);
  std::vector<double> resumed;
  run(*b, ob, db, 0, 20, resumed);
  const fs::path dir = fs::temp_directory_path() / "nt_resume_bf16";
  train::save_checkpoint(dir.string(), *b, ob, {20, db});
  auto r = make(77);
  train::AdamW orr(r->named_parameters());
  train::TrainState st = train::load_checkpoint(dir.string(), *r, orr);
  run(*r, orr, st.data_gen, 20, 30, resumed);
  REQUIRE(resumed.size() == straight.size());
  for (size_t i = 0; i < straight.size(); ++i) CHECK_MESSAGE(resumed[i] == straight[i], "step " << i);
  fs::remove_all(dir);
}

TEST_CASE("memory budget: the estimate grows as it should and a config that cannot fit is a clear error") {
  nn::LMConfig c;
  c.vocab = 50257, c.dim = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12, c.max_seq = 2048;
  const train::MemoryEstimate f32 = train::estimate_training_memory(c, 8, 2048, false, false);
  const train::MemoryEstimate bf = train::estimate_training_memory(c, 8, 2048, true, false);
  // GPT-2 small (about 124M parameters with tied embeddings... plus the SwiGLU MLP): 16 bytes each in f32.
  CHECK(f32.weights / 16 > 1.2e8);
  CHECK(f32.weights / 16 < 1.8e8);
  CHECK(bf.activations == doctest::Approx(f32.activations / 2));
  CHECK(train::estimate_training_memory(c, 16, 2048, false, false).activations == doctest::Approx(2 * f32.activations));
  CHECK(train::estimate_training_memory(c, 8, 2048, false, true).activations > 2 * f32.activations);  // T x T scores
  train::check_fits(f32, 80.0 * (1ull << 30), "the GPU", 8, 2048);
  expect_error([&] { train::check_fits(f32, 8.0 * (1ull << 30), "the GPU", 8, 2048); },
               {"needs about", "training.batch=8", "model.seq=2048", "the GPU has 8.0 GiB"});
}
