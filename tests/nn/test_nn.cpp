// nn: parameter naming, layers against their formulas, attention against a direct loop (GQA, window), causality,
// rotary/YaRN frequencies, and a tiny LM that must overfit a batch.
#include "cuda/memory.h"
#include "nn/sampling.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "train/adamw.h"

using namespace nt;
using namespace nt::test;

namespace {
// Direct loops: o[b, t, h] = sum_s softmax_s(q.k / sqrt(D)) v over allowed s.
Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), Hkv = k.size(2), G = H / Hkv;
  const auto qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  std::vector<double> o(B * T * H * D, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(T, -INFINITY);
        double m = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          if (window > 0 && j <= t - window) continue;
          double d = 0;
          for (int64_t e = 0; e < D; ++e) d += qv[((b * T + t) * H + h) * D + e] * kv[((b * T + j) * Hkv + h / G) * D + e];
          s[j] = d / std::sqrt((double)D), m = std::max(m, s[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < T; ++j) z += s[j] == -INFINITY ? 0 : std::exp(s[j] - m);
        for (int64_t j = 0; j < T; ++j) {
          if (s[j] == -INFINITY) continue;
          const double p = std::exp(s[j] - m) / z;
          for (int64_t e = 0; e < D; ++e) o[((b * T + t) * H + h) * D + e] += p * vv[((b * T + j) * Hkv + h / G) * D + e];
        }
      }
  return from_vector(o, {B, T, H, D}, DType::f64);
}
nn::LMConfig tiny() {
  nn::LMConfig c;
  c.vocab = 37, c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.max_seq = 16, c.mlp_hidden = 48;
  return c;
}
}  // namespace

TEST_CASE("parameters are named as checkpoints expect") {
  nn::TransformerLM lm(tiny());
  std::vector<std::string> names;
  for (auto& [n, p] : lm.named_parameters()) names.push_back(n);
  const std::vector<std::string> expect_some = {"tok_emb.weight", "layers.0.attn_norm.weight", "layers.0.attn.wq.weight",
                                                "layers.0.attn.wk.weight", "layers.1.mlp.w2.weight", "norm.weight"};
  for (auto& e : expect_some) CHECK_MESSAGE(std::find(names.begin(), names.end(), e) != names.end(), e);
  // tok_emb + 2 x (2 norms + wq + wk + wv + wo + w1 + w2 + w3) + final norm, lm_head tied
  CHECK(names.size() == 1 + 2 * 9 + 1);
  const int64_t d = 32, kv = 2 * 8, hid = 48;
  CHECK(lm.num_parameters() == 37 * d + 2 * (2 * d + d * d + 2 * d * kv + d * d + 3 * d * hid) + d);
  nn::LMConfig untied = tiny();
  untied.tie_embeddings = false;
  CHECK(nn::TransformerLM(untied).named_parameters().back().first == "lm_head.weight");
  for (auto& [n, p] : lm.named_parameters()) CHECK(p.requires_grad());
}

TEST_CASE("Linear, RMSNorm and the SwiGLU MLP compute their formulas") {
  Generator g(1);
  nn::Linear lin(5, 3, true, {DType::f64, kCPU, &g});
  const Tensor x = rnd({2, 4, 5}, 2);
  expect_close(lin.forward(x), matmul(x, lin.weight.detach().mT()) + lin.bias.detach(), 1e-14);
  CHECK(lin.weight.shape() == Shape{3, 5});
  nn::SwiGLUMLP mlp(5, 7, {DType::f64, kCPU, &g});
  const Tensor w1 = mlp.w1->weight.detach(), w2 = mlp.w2->weight.detach(), w3 = mlp.w3->weight.detach();
  expect_close(mlp.forward(x), matmul(silu(matmul(x, w1.mT())) * matmul(x, w3.mT()), w2.mT()), 1e-12);
  expect_error([&] { lin.forward(rnd({2, 4}, 3)); }, {"Linear", "[2, 4]", "5 features"});
}

TEST_CASE("causal attention matches direct loops, with GQA and a sliding window") {
  const Tensor q = rnd({2, 7, 4, 6}, 3), k = rnd({2, 7, 2, 6}, 4), v = rnd({2, 7, 2, 6}, 5);
  expect_close(nn::causal_attention(q, k, v), naive_attention(q, k, v, 0), 1e-12);
  expect_close(nn::causal_attention(q, k, v, 3), naive_attention(q, k, v, 3), 1e-12);
  expect_error([&] { nn::causal_attention(q, rnd({2, 7, 3, 6}, 6), rnd({2, 7, 3, 6}, 7)); }, {"4 query heads", "3 key/value heads"});
}

TEST_CASE("the LM is causal: later tokens do not change earlier logits") {
  nn::TransformerLM lm(tiny());
  autograd::NoGradGuard ng;
  Tensor a = randint(0, 37, {1, 12}, DType::i64), b = a.clone();
  b.narrow(1, 8, 4).fill_(3);
  const Tensor la = lm.forward(a), lb = lm.forward(b);
  expect_close(la.narrow(1, 0, 8), lb.narrow(1, 0, 8), 1e-5, 1e-5);
  CHECK(sum(pow(la.narrow(1, 8, 4) - lb.narrow(1, 8, 4), 2.0)).item() > 1e-6);
  expect_error([&] { lm.forward(zeros({1, 17}, DType::i64)); }, {"sequence length 17", "max_seq 16"});
}

TEST_CASE("the LM's fused attention equals the reference; packed documents equal separate runs") {
  Generator g(3);
  nn::LMConfig c = tiny();
  nn::TransformerLM fused(c, {DType::f64, kCPU, &g});
  c.fused_attention = false;
  Generator g2(3);
  nn::TransformerLM ref(c, {DType::f64, kCPU, &g2});
  autograd::NoGradGuard ng;
  const Tensor x = randint(0, 37, {2, 13}, DType::i64);
  expect_close(fused.forward(x, {{0, 13, 26}}), ref.forward(x), 1e-10, 1e-10);  // one document per row: the fused op
  // Row 0 holds documents [0, 5) and [5, 13); row 1 is one document. Each document alone gives the same logits.
  const nn::ForwardContext ctx{{0, 5, 13, 26}};
  const Tensor packed = fused.forward(x, ctx);
  expect_close(packed.narrow(0, 0, 1).narrow(1, 0, 5), fused.forward(x.narrow(0, 0, 1).narrow(1, 0, 5)), 1e-10, 1e-10);
  expect_close(packed.narrow(0, 0, 1).narrow(1, 5, 8), fused.forward(x.narrow(0, 0, 1).narrow(1, 5, 8)), 1e-10, 1e-10);
  expect_close(packed.narrow(0, 1, 1), fused.forward(x.narrow(0, 1, 1)), 1e-10, 1e-10);
  CHECK(sum(pow(packed.narrow(0, 0, 1).narrow(1, 5, 8) - fused.forward(x).narrow(0, 0, 1).narrow(1, 5, 8), 2.0)).item() > 1e-6);
  expect_error([&] { fused.forward(x, {{0, 5, 20}}); }, {"cu_seqlens", "B * T = 26"});
}

TEST_CASE("checkpoint_blocks: the same loss and gradients with packed documents") {
  auto grads = [](bool checkpointed) {
    Generator g(3);
    nn::TransformerLM lm(tiny(), {DType::f64, kCPU, &g});
    if (checkpointed) lm.checkpoint_blocks();
    Generator d(4);
    const Tensor x = randint(0, 37, {2, 13}, DType::i64, kCPU, &d), y = randint(0, 37, {2, 13}, DType::i64, kCPU, &d);
    Tensor loss = lm.loss(x, y, -100, {{0, 5, 13, 26}});
    loss.backward();
    std::vector<Tensor> out{loss.detach()};
    for (const Tensor& p : lm.parameters()) out.push_back(p.grad());
    return out;
  };
  const auto plain = grads(false), ckpt = grads(true);
  REQUIRE(plain.size() == ckpt.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    REQUIRE(ckpt[i].defined());
    expect_close(ckpt[i], plain[i], 1e-12, 0);
  }
}

TEST_CASE("decoding with a KV cache gives the full forward's logits (GQA, sliding window)") {
  for (int64_t window : {0, 4}) {
    Generator g(5);
    nn::LMConfig c = tiny();
    c.window = window;
    nn::TransformerLM lm(c, {DType::f64, kCPU, &g});
    autograd::NoGradGuard ng;
    const Tensor x = randint(0, 37, {2, 11}, DType::i64);
    const Tensor full = lm.forward(x);
    auto cache = lm.new_cache(2);
    std::vector<Tensor> parts = {lm.forward_cached(x.narrow(1, 0, 5), cache)};  // prefill, then one token at a time
    for (int64_t t = 5; t < 11; ++t) parts.push_back(lm.forward_cached(x.narrow(1, t, 1), cache));
    CHECK(cache[0].length == 11);
    expect_close(cat(parts, 1), full, 1e-10, 1e-10);
    expect_error([&] { lm.forward_cached(zeros({2, 6}, DType::i64), cache); }, {"KV cache holds 16 positions", "11 + 6"});
    expect_error([&] { lm.forward_cached(zeros({3, 1}, DType::i64), cache); }, {"holds 2 sequences", "input 3"});
  }
}

TEST_CASE("rotary frequencies and YaRN") {
  nn::RopeConfig c;
  c.theta = 1e6;
  const auto f = nn::rope_frequencies(8, c);
  CHECK(f[1] == doctest::Approx(std::pow(1e6, -2.0 / 8)));
  nn::RopeConfig y = c;
  y.yarn_scale = 4, y.yarn_original_context = 1024;
  const auto fy = nn::rope_frequencies(8, y);
  CHECK(fy[0] == doctest::Approx(f[0]));      // 1024 / wavelength 6.3 > beta: kept
  CHECK(fy[3] == doctest::Approx(f[3] / 4));  // wavelength 2e5 >> 1024: interpolated
  nn::Rotary r(8, 10, y);
  CHECK(r.cos.to_vector()[0] == doctest::Approx(0.1 * std::log(4.0) + 1.0));  // mscale at position 0
  expect_error([&] { r.apply(zeros({11, 2, 8})); }, {"Rotary", "10 positions"});
}

TEST_CASE("Rotary::apply_packed restarts positions at each sequence, equal to apply() per sequence") {
  nn::RopeConfig y;
  y.yarn_scale = 2, y.yarn_original_context = 8;
  for (bool interleaved : {false, true}) {
    y.interleaved = interleaved;
    const nn::Rotary r(8, 20, y);
    const std::vector<int32_t> cu = {0, 7, 7, 20, 30};  // an empty sequence, one as long as the table allows
    const Tensor x = rnd({30, 3, 8}, 43).requires_grad_();
    const Tensor got = r.apply_packed(x, cu);
    std::vector<Tensor> parts;
    for (size_t b = 0; b + 1 < cu.size(); ++b)
      if (cu[b + 1] > cu[b]) parts.push_back(r.apply(x.narrow(0, cu[b], cu[b + 1] - cu[b])));
    expect_close(got, cat(parts, 0), 1e-12, 1e-12);
    const Tensor up = rnd({30, 3, 8}, 44);
    sum(got * up).backward();
    const Tensor g1 = x.grad().clone();
    x.set_grad(Tensor());
    sum(cat(parts, 0) * up).backward();
    expect_close(g1, x.grad(), 1e-12, 1e-12);
  }
  const nn::Rotary r(8, 10);
  expect_error([&] { r.apply_packed(zeros({12, 2, 8}), {0, 1, 12}); }, {"Rotary", "sequence 1", "10 positions"});
  expect_error([&] { r.apply_packed(zeros({12, 2, 8}), {0, 5}); }, {"Rotary", "cu_seqlens", "N = 12"});
}

// The tables stay where they were built (a model moved with Module::to leaves them there); apply() on another
// device uses a copy made there once.
TEST_CASE("Rotary tables built on the host apply on CUDA, equal to the CPU" * doctest::skip(!cuda::available())) {
  nn::RopeConfig y;
  y.yarn_scale = 4, y.yarn_original_context = 8;
  const nn::Rotary r(8, 20, y);
  const Tensor x = rnd({7, 3, 8}, 41).to(DType::f32);
  for (int64_t start : {0, 5, 13}) {
    INFO("start " << start);
    expect_close(r.apply(x.to(cuda_device(0)), start).to(kCPU), r.apply(x, start), 1e-5, 1e-5);
  }
  const std::vector<int32_t> cu = {0, 3, 3, 7};  // packed, with an empty sequence
  expect_close(r.apply_packed(x.to(cuda_device(0)), cu).to(kCPU), r.apply_packed(x, cu), 1e-5, 1e-5);
  CHECK(r.cos.device() == kCPU);
  expect_error([&] { r.apply(x.to(cuda_device(0)), 14); }, {"Rotary", "20 positions"});
}

TEST_CASE("a tiny LM overfits one batch with AdamW") {
  Generator g(5);
  nn::TransformerLM lm(tiny(), {DType::f32, kCPU, &g});
  train::AdamW opt(lm.named_parameters(), {0.9, 0.95, 1e-8, 0.0});
  const Tensor tokens = randint(0, 37, {4, 13}, DType::i64, kCPU, &g);
  const Tensor x = tokens.narrow(1, 0, 12).contiguous(), y = tokens.narrow(1, 1, 12).contiguous();
  double first = 0, last = 0;
  for (int step = 0; step < 80; ++step) {
    Tensor loss = lm.loss(x, y);
    if (step == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    train::clip_grad_norm(lm.parameters(), 1.0);
    opt.step(3e-3);
    opt.zero_grad();
  }
  CHECK(first == doctest::Approx(std::log(37.0)).epsilon(0.05));  // near-uniform at init
  CHECK(last < 0.5);
}

TEST_CASE("sampling: greedy, temperature, top-k and top-p, reproducible by seed") {
  const Tensor logits = from_vector({1.0, 3.0, 2.0, 0.0}, {4}, DType::f32);
  auto p = nn::sampling_distribution(logits, {0.0, 0, 1.0});
  CHECK(p == std::vector<double>{0, 1, 0, 0});
  p = nn::sampling_distribution(logits, {1.0, 0, 1.0});
  const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
  CHECK(p[1] == doctest::Approx(std::exp(3.0) / z));
  p = nn::sampling_distribution(logits, {1.0, 2, 1.0});  // top-2: tokens 1 and 2
  CHECK(p[0] == 0);
  CHECK(p[3] == 0);
  CHECK(p[1] == doctest::Approx(std::exp(3.0) / (std::exp(3.0) + std::exp(2.0))));
  // top-p 0.7: token 1 alone has 0.64 of the mass, so token 2 (0.24) joins; 0 and 3 are dropped.
  p = nn::sampling_distribution(logits, {1.0, 0, 0.7});
  CHECK(p[0] == 0);
  CHECK(p[2] > 0);
  CHECK(p[1] + p[2] == doctest::Approx(1.0));
  p = nn::sampling_distribution(logits, {100.0, 0, 1.0});  // high temperature: nearly uniform
  CHECK(p[3] > 0.24);
  Generator a(3), b(3);
  std::vector<int64_t> sa, sb;
  for (int i = 0; i < 50; ++i) sa.push_back(nn::sample_token(logits, {1.0, 0, 1.0}, a)), sb.push_back(nn::sample_token(logits, {1.0, 0, 1.0}, b));
  CHECK(sa == sb);
  CHECK(std::count(sa.begin(), sa.end(), 1) > 20);  // the most likely token dominates
  expect_error([&] { nn::sampling_distribution(logits, {1.0, 0, 0.0}); }, {"top_p", "(0, 1]"});
  expect_error([&] { nn::sampling_distribution(zeros({2, 4}), {}); }, {"sampling", "[2, 4]"});
}
