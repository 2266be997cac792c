// The NSA layer's pieces on the CPU in f64: CompressionMLP against direct loops and its gradients through the
// composite; NativeSparseAttention's forward and backward, causality, and packed documents against each alone.
#include <cmath>

#include "cuda/memory.h"
#include "nn/transformer.h"
#include "nsa/nsa_attention.h"
#include "nsa/nsa_layer.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

nsa::NsaConfig small_config() {
  nsa::NsaConfig c;
  c.dim = 8, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
  c.block = 4, c.stride = 2, c.select_block = 8, c.n_select = 3, c.window = 5, c.cmp_hidden = 6;
  return c;
}
}  // namespace

TEST_CASE("CompressionMLP matches direct loops over the blocks of packed sequences") {
  Generator gen(3);
  const int64_t l = 4, d = 2, D = 3, hidden = 5, H = 2, T = 24;
  nsa::CompressionMLP m(l, d, D, hidden, {DType::f64, kCPU, &gen});
  // Nonzero pe and biases, so the test sees where each is added.
  m.pe = rnd({l, D}, 4).requires_grad_();
  m.w1->bias = rnd({hidden}, 5).requires_grad_();
  m.w2->bias = rnd({D}, 6).requires_grad_();
  const std::vector<int32_t> cu = {0, 9, 9, 11, 24};  // 3 + 0 + 0 + 5 blocks
  const Tensor k = rnd({T, H, D}, 7);
  const Tensor out = m.compress(k, cu);
  REQUIRE(out.shape() == Shape({8, H, D}));
  const auto K = k.to_vector(), pe = m.pe.to_vector(), W1 = m.w1->weight.to_vector(), W2 = m.w2->weight.to_vector(),
             b1 = m.w1->bias.to_vector(), b2 = m.w2->bias.to_vector();
  std::vector<double> want;
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int64_t c = 0; c < nsa_num_cmp_blocks(cu[b + 1] - cu[b], l, d); ++c)
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> flat(l * D), hid(hidden);
        for (int64_t i = 0; i < l; ++i)
          for (int64_t e = 0; e < D; ++e) flat[i * D + e] = K[((cu[b] + c * d + i) * H + h) * D + e] + pe[i * D + e];
        for (int64_t j = 0; j < hidden; ++j) {
          double a = b1[j];
          for (int64_t f = 0; f < l * D; ++f) a += W1[j * l * D + f] * flat[f];
          hid[j] = gelu_ref(a);
        }
        for (int64_t e = 0; e < D; ++e) {
          double a = b2[e];
          for (int64_t j = 0; j < hidden; ++j) a += W2[e * hidden + j] * hid[j];
          want.push_back(a);
        }
      }
  expect_close(out, from_vector(want, {8, H, D}, DType::f64), 1e-12, 1e-12);
  CHECK(m.compress(rnd({3, H, D}, 7), {}).shape() == Shape({0, H, D}));  // shorter than a block
  expect_error([&] { m.compress(k, {0, 9, 20}); }, {"cu_seqlens", "end at T = 24"});
  expect_error([&] { m.compress(rnd({T, H, 4}, 7), {}); }, {"k must be [T, H, 3]", "[24, 2, 4]"});
}

GRADCHECK_TEST("nsa_block_rows") {  // CompressionMLP's gradients through the composite (k, pe, both layers)
  // Up to l / d = 2 and 3 blocks hold a token (the backward's gathers); packed, with an empty sequence.
  struct Case {
    int64_t l, d;
    std::vector<int32_t> cu;
  };
  for (const Case& c : {Case{4, 2, {0, 7, 7, 12}}, Case{6, 2, {0, 11, 11, 12}}}) {
    const int64_t l = c.l, d = c.d;
    Generator gen(8);
    nsa::CompressionMLP m(l, d, 2, 3, {DType::f64, kCPU, &gen});
    const std::vector<int32_t> cu = c.cu;
    // The module's parameters become gradcheck's inputs by assigning them on every call.
    auto f = [&m, cu](const std::vector<Tensor>& x) {
      m.pe = x[1], m.w1->weight = x[2], m.w1->bias = x[3], m.w2->weight = x[4], m.w2->bias = x[5];
      return m.compress(x[0], cu);
    };
    check_grad("nsa_block_rows", f,
               {rnd_grad({12, 2, 2}, 9), rnd_grad({l, 2}, 10), rnd_grad({3, 2 * l}, 11), rnd_grad({3}, 12),
                rnd_grad({2, 3}, 13), rnd_grad({2}, 14)});
  }
}

TEST_CASE("CompressionMLP's block gather: the gradient of k equals index_select's, in f64 and bf16") {
  // The same blocks through index_select (atomics-free reference on the CPU) and through compress.
  for (const auto& [l, d] : {std::pair<int64_t, int64_t>{4, 2}, {6, 2}, {4, 4}}) {
    for (DType dt : {DType::f64, DType::bf16}) {
      Generator gen(3);
      nsa::CompressionMLP m(l, d, 3, 5, {dt, kCPU, &gen});
      const std::vector<int32_t> cu = {0, 9, 9, 20};
      const Tensor k = rnd({20, 2, 3}, 21).to(dt).requires_grad_();
      const Tensor up = rnd({nsa_num_cmp_blocks(9, l, d) + nsa_num_cmp_blocks(11, l, d), 2, 3}, 22).to(dt);
      sum(m.compress(k, cu) * up).backward();
      // Reference: the blocks' rows by index_select, the rest of compress as written.
      std::vector<double> rows;
      for (size_t b = 0; b + 1 < cu.size(); ++b)
        for (int64_t c = 0; c < nsa_num_cmp_blocks(cu[b + 1] - cu[b], l, d); ++c)
          for (int64_t i = 0; i < l; ++i) rows.push_back((double)(cu[b] + c * d + i));
      const int64_t NC = (int64_t)rows.size() / l;
      const Tensor k2 = k.detach().clone().requires_grad_();
      const Tensor x = index_select(k2, 0, from_vector(rows, {NC * l}, DType::i64)).reshape({NC, l, 2, 3}) +
                       m.pe.reshape({1, l, 1, 3});
      const Tensor flat = x.permute({0, 2, 1, 3}).reshape({NC, 2, l * 3});
      sum(m.w2->forward(gelu(m.w1->forward(flat))) * up).backward();
      INFO("l " << l << " d " << d << " " << dtype_name(dt));
      expect_close(k.grad().to(DType::f64), k2.grad().to(DType::f64), dt == DType::f64 ? 1e-12 : 2e-2,
                   dt == DType::f64 ? 1e-12 : 2e-2);
    }
  }
}

TEST_CASE("CompressionMLP on CUDA (bf16) matches the f64 CPU, values and the gradient of k" *
          doctest::skip(!cuda::available())) {
  for (const auto& [l, d] : {std::pair<int64_t, int64_t>{32, 16}, {6, 2}}) {
    Generator gen(5);
    nsa::CompressionMLP m(l, d, 8, 16, {DType::f64, kCPU, &gen});
    const std::vector<int32_t> cu = {0, 70, 70, 151};  // packed, an empty sequence, lengths off the stride
    const Tensor k = rnd({151, 2, 8}, 31).requires_grad_();
    const Tensor y = m.compress(k, cu);
    const Tensor up = rnd(y.shape(), 32);
    sum(y * up).backward();
    m.to(DType::bf16);
    m.to(cuda_device(0));
    const Tensor kg = k.detach().to(DType::bf16).to(cuda_device(0)).requires_grad_();
    const Tensor yg = m.compress(kg, cu);
    sum(yg * up.to(DType::bf16).to(yg.device())).backward();
    INFO("l " << l << " d " << d);
    expect_close(yg.to(kCPU).to(DType::f64), y.detach(), 5e-2, 5e-2);
    expect_close(kg.grad().to(kCPU).to(DType::f64), k.grad(), 5e-2, 5e-2);
  }
}

TEST_CASE("NativeSparseAttention runs forward and backward, and every parameter gets a gradient") {
  Generator gen(21);
  const nsa::NsaConfig cfg = small_config();
  auto rotary = std::make_shared<const nn::Rotary>(cfg.head_dim, 64);
  nsa::NativeSparseAttention layer(cfg, rotary, {DType::f64, kCPU, &gen});
  const Tensor x = rnd({2, 19, cfg.dim}, 22);
  const Tensor y = layer.forward(x);
  REQUIRE(y.shape() == x.shape());
  sum(y * rnd(y.shape(), 23)).backward();
  for (auto& [name, p] : layer.named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    const auto g = p.grad().to_vector();
    double norm = 0;
    for (double v : g) norm += v * v;
    CHECK(std::isfinite(norm));
    CHECK(norm > 0);
  }
  expect_error([&] { layer.forward(rnd({2, 19, 7}, 1)); }, {"[B, T, 8]", "[2, 19, 7]"});
}

TEST_CASE("NativeSparseAttention is causal: later tokens do not change earlier outputs") {
  Generator gen(31);
  const nsa::NsaConfig cfg = small_config();
  nsa::NativeSparseAttention layer(cfg, std::make_shared<const nn::Rotary>(cfg.head_dim, 64), {DType::f64, kCPU, &gen});
  const int64_t T = 27, cut = 13;
  const Tensor x = rnd({2, T, cfg.dim}, 32);
  Tensor x2 = x.clone();
  x2.narrow(1, cut, T - cut).copy_(rnd({2, T - cut, cfg.dim}, 33));
  const Tensor y = layer.forward(x), y2 = layer.forward(x2);
  expect_close(y2.narrow(1, 0, cut), y.narrow(1, 0, cut), 0, 0);
  const Tensor diff = y2.narrow(1, cut, T - cut) - y.narrow(1, cut, T - cut);
  CHECK(sum(diff * diff).item() > 1e-6);  // and the later ones do change
}

TEST_CASE("NativeSparseAttention on packed documents equals each document alone") {
  Generator gen(41);
  const nsa::NsaConfig cfg = small_config();
  nsa::NativeSparseAttention layer(cfg, std::make_shared<const nn::Rotary>(cfg.head_dim, 64), {DType::f64, kCPU, &gen});
  const int64_t B = 2, T = 19;
  const std::vector<int32_t> cu = {0, 7, 19, 22, 38};  // row boundary at 19
  const Tensor x = rnd({B, T, cfg.dim}, 42);
  const Tensor y = layer.forward(x, {cu}).reshape({B * T, cfg.dim});
  const Tensor xf = x.reshape({B * T, cfg.dim});
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t s = cu[b], n = cu[b + 1] - cu[b];
    INFO("document " << b);
    expect_close(y.narrow(0, s, n), layer.forward(xf.narrow(0, s, n).unsqueeze(0)).squeeze(0), 1e-12, 1e-12);
  }
}

TEST_CASE("NSA decoding with a cache gives the full forward's logits (selection, compressed blocks, window)") {
  // Small blocks so that a 30-token sequence has many compressed blocks and more candidates than n_select.
  for (int64_t window : {0, 5}) {
    INFO("window " << window);
    nn::LMConfig c;
    c.vocab = 29, c.dim = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.max_seq = 40;
    nsa::NsaConfig nc;
    nc.dim = 16, nc.n_heads = 4, nc.n_kv_heads = 2, nc.head_dim = 4;
    nc.block = 4, nc.stride = 2, nc.select_block = 4, nc.n_select = 5, nc.window = window;
    c.make_attention = [nc](int64_t, std::shared_ptr<const nn::Rotary> r, const nn::Init& init) {
      return std::make_shared<nsa::NativeSparseAttention>(nc, std::move(r), init);
    };
    Generator g(8);
    nn::TransformerLM lm(c, {DType::f64, kCPU, &g});
    autograd::NoGradGuard ng;
    const Tensor x = randint(0, 29, {2, 30}, DType::i64, kCPU, &g);
    const Tensor full = lm.forward(x);
    auto cache = lm.new_cache(2);
    std::vector<Tensor> parts = {lm.forward_cached(x.narrow(1, 0, 6), cache)};  // prefill, then one token at a time
    for (int64_t t = 6; t < 27; ++t) parts.push_back(lm.forward_cached(x.narrow(1, t, 1), cache));
    parts.push_back(lm.forward_cached(x.narrow(1, 27, 3), cache));  // several at once again
    CHECK(cache[0].length == 30);
    expect_close(cat(parts, 1), full, 1e-10, 1e-10);
    expect_error([&] { lm.forward_cached(zeros({2, 11}, DType::i64), cache); }, {"holds 40 positions", "30 + 11"});
  }
}
