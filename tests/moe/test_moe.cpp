// DeepSeekMoE on the CPU in f64 against direct loops written here (affinities, top-k with topk's tie rule, gates,
// each expert's SwiGLU, the shared expert, the balance loss); finite-difference gradients of the whole layer with
// the routing held fixed by clear score gaps; empty and overloaded experts; the V3 bias; load statistics; errors;
// and, where a GPU is present, the layer on CUDA against the CPU.
#include <algorithm>
#include <cmath>

#include "cuda/memory.h"
#include "moe/moe_layer.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "train/adamw.h"

using namespace nt;
using namespace nt::test;

namespace {

moe::MoEConfig small_config(const std::string& affinity = "softmax", bool normalize = false, bool aux_free = false) {
  moe::MoEConfig c;
  c.dim = 6, c.n_routed = 5, c.top_k = 2, c.n_shared = 2, c.expert_hidden = 3;
  c.router.affinity = affinity, c.router.normalize_topk = normalize, c.router.aux_free = aux_free;
  c.router.aux_loss_coef = 0.01;
  return c;
}

struct Reference {
  std::vector<double> y;            // [N, dim]
  std::vector<std::vector<double>> scores, chooser;  // per token: s, and s (+ bias when aux_free)
  std::vector<std::vector<int64_t>> chosen;          // per token, best first
  std::vector<std::vector<double>> gates;
  std::vector<int64_t> load;
  double aux = 0;      // the expert-level loss (with aux_loss_coef; the caller decides whether it is on)
  double seq_aux = 0;  // V3's sequence-wise loss (with seq_aux_loss_coef)
};

double silu(double a) { return a / (1 + std::exp(-a)); }

// Everything the layer computes, by direct loops over tokens, experts and features.
Reference reference(const moe::DeepSeekMoE& m, const Tensor& x) {
  const moe::RouterConfig& rc = m.router->cfg;
  const int64_t D = m.cfg.dim, E = m.cfg.n_routed, K = m.cfg.top_k, H = m.cfg.expert_hidden;
  const int64_t N = x.numel() / D;
  const auto X = x.to_vector(), W = m.router->weight.to_vector(), W1 = m.experts->w1.to_vector(),
             W2 = m.experts->w2.to_vector(), W3 = m.experts->w3.to_vector();
  const auto& bias = m.router->bias();
  Reference r;
  r.y.assign(N * D, 0.0);
  r.load.assign(E, 0);
  for (int64_t t = 0; t < N; ++t) {
    const double* xt = &X[t * D];
    std::vector<double> logit(E), s(E), c(E);
    for (int64_t i = 0; i < E; ++i)
      for (int64_t d = 0; d < D; ++d) logit[i] += xt[d] * W[i * D + d];
    if (rc.affinity == "softmax") {
      const double mx = *std::max_element(logit.begin(), logit.end());
      double z = 0;
      for (int64_t i = 0; i < E; ++i) z += std::exp(logit[i] - mx);
      for (int64_t i = 0; i < E; ++i) s[i] = std::exp(logit[i] - mx) / z;
    } else {
      for (int64_t i = 0; i < E; ++i) s[i] = 1 / (1 + std::exp(-logit[i]));
    }
    for (int64_t i = 0; i < E; ++i) c[i] = s[i] + (rc.aux_free ? bias[i] : 0.0);
    // Top-k by repeated strict-max scans: among equal values the lower index wins (topk's rule).
    std::vector<int64_t> pick;
    std::vector<bool> taken(E, false);
    for (int64_t j = 0; j < K; ++j) {
      int64_t best = -1;
      for (int64_t i = 0; i < E; ++i)
        if (!taken[i] && (best < 0 || c[i] > c[best])) best = i;
      taken[best] = true, pick.push_back(best), ++r.load[best];
    }
    std::vector<double> g(K);
    double gsum = 0;
    for (int64_t j = 0; j < K; ++j) g[j] = s[pick[j]], gsum += g[j];
    if (rc.normalize_topk)
      for (double& v : g) v /= gsum;
    for (double& v : g) v *= rc.routed_scaling_factor;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t e = pick[j];
      std::vector<double> h(H);
      for (int64_t q = 0; q < H; ++q) {
        double a = 0, b = 0;
        for (int64_t d = 0; d < D; ++d) a += xt[d] * W1[(e * D + d) * H + q], b += xt[d] * W3[(e * D + d) * H + q];
        h[q] = silu(a) * b;
      }
      for (int64_t o = 0; o < D; ++o) {
        double acc = 0;
        for (int64_t q = 0; q < H; ++q) acc += h[q] * W2[(e * H + q) * D + o];
        r.y[t * D + o] += g[j] * acc;
      }
    }
    if (m.shared) {  // Linear weights are [out, in]
      const int64_t HS = m.cfg.n_shared * H;
      const auto S1 = m.shared->w1->weight.to_vector(), S2 = m.shared->w2->weight.to_vector(),
                 S3 = m.shared->w3->weight.to_vector();
      std::vector<double> h(HS);
      for (int64_t q = 0; q < HS; ++q) {
        double a = 0, b = 0;
        for (int64_t d = 0; d < D; ++d) a += S1[q * D + d] * xt[d], b += S3[q * D + d] * xt[d];
        h[q] = silu(a) * b;
      }
      for (int64_t o = 0; o < D; ++o)
        for (int64_t q = 0; q < HS; ++q) r.y[t * D + o] += S2[o * HS + q] * h[q];
    }
    r.scores.push_back(s), r.chooser.push_back(c), r.chosen.push_back(pick), r.gates.push_back(g);
  }
  // Balance loss: alpha * sum_i f_i P_i, f_i = E / (K N) * load_i, P_i = mean_t s'_ti with s' = s / sum(s).
  for (int64_t i = 0; i < E; ++i) {
    double P = 0;
    for (int64_t t = 0; t < N; ++t) {
      double z = 0;
      for (double v : r.scores[t]) z += v;
      P += r.scores[t][i] / z / (double)N;
    }
    r.aux += rc.aux_loss_coef * (double)E / (double)(K * N) * (double)r.load[i] * P;
  }
  // Sequence-wise: the same per sequence of x [B, T, dim], averaged over the sequences.
  const int64_t B = x.dim() == 3 ? x.size(0) : 1, T = N / B;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < E; ++i) {
      double P = 0, count = 0;
      for (int64_t t = b * T; t < (b + 1) * T; ++t) {
        double z = 0;
        for (double v : r.scores[t]) z += v;
        P += r.scores[t][i] / z / (double)T;
        for (int64_t e : r.chosen[t]) count += e == i;
      }
      r.seq_aux += rc.seq_aux_loss_coef * (double)E / (double)(K * T) * count * P / (double)B;
    }
  return r;
}

// Smallest margin between the k-th and (k+1)-th selection score over all tokens: how far routing is from a flip.
double min_gap(const Reference& r, int64_t K) {
  double gap = 1e30;
  for (auto c : r.chooser) {
    std::sort(c.begin(), c.end(), std::greater<>());
    gap = std::min(gap, c[K - 1] - c[K]);
  }
  return gap;
}

// After a forward of x, the layer's aux_loss() against the direct loops (the expert-level loss, or with seq the
// sequence-wise one: the other must be off), and its f64 gradient w.r.t. x and the router weight, routing held
// fixed (the top-k margin is asserted first).
void check_aux_loss(moe::DeepSeekMoE& m, const Tensor& x, bool seq, const char* what) {
  m.forward(x);
  const Reference r = reference(m, x);
  CHECK(m.aux_loss().item() == doctest::Approx(seq ? r.seq_aux : r.aux).epsilon(1e-12));
  REQUIRE(min_gap(r, m.cfg.top_k) > 1e-3);
  auto f = [&m](const std::vector<Tensor>& in) {
    m.router->weight = in[1];
    m.forward(in[0]);
    return m.aux_loss();
  };
  check_grad(what, f, {x.detach().clone().requires_grad_(), m.router->weight.detach().clone().requires_grad_()});
}

}  // namespace

TEST_CASE("DeepSeekMoE matches direct loops: softmax/sigmoid, normalized or not, V3 bias or not, V3's routed scaling "
          "factor or not, the grouped experts") {
  for (const char* aff : {"softmax", "sigmoid"})
    for (bool norm : {false, true})
      for (bool aux_free : {false, true})
        for (double scale : {1.0, 2.5}) {
          INFO(aff << " normalize " << norm << " aux_free " << aux_free << " routed_scaling_factor " << scale);
          Generator gen(11);
          moe::MoEConfig cfg = small_config(aff, norm, aux_free);
          cfg.router.routed_scaling_factor = scale;
          cfg.router.seq_aux_loss_coef = scale == 1.0 ? 0.0 : 0.03;  // V3's sequence-wise loss in half the cases
          moe::DeepSeekMoE m(cfg, {DType::f64, kCPU, &gen});
          m.router->set_bias({0.05, -0.1, 0.0, 0.2, -0.03});  // ignored unless aux_free
          const Tensor x = rnd({2, 7, 6}, 12);
          const Tensor y = m.forward(x);
          REQUIRE(y.shape() == x.shape());
          const Reference r = reference(m, x);
          expect_close(y, from_vector(r.y, x.shape(), DType::f64), 1e-12, 1e-12);
          CHECK(m.last_load() == r.load);
          const moe::RouterOutput ro = m.router->forward(x.reshape({14, 6}));
          const auto idx = ro.indices.to_vector_as<int64_t>();
          const auto gates = ro.gates.to_vector();
          for (int64_t t = 0; t < 14; ++t)
            for (int64_t j = 0; j < 2; ++j) {
              CHECK(idx[t * 2 + j] == r.chosen[t][j]);
              CHECK(gates[t * 2 + j] == doctest::Approx(r.gates[t][j]).epsilon(1e-12));
            }
          const bool seq = cfg.router.seq_aux_loss_coef > 0;
          if (aux_free && !seq) CHECK_FALSE(m.aux_loss().defined());
          else CHECK(m.aux_loss().item() == doctest::Approx((aux_free ? 0 : r.aux) + r.seq_aux).epsilon(1e-12));
          if (seq) CHECK(r.seq_aux > 0);
        }
}

TEST_CASE("DeepSeekMoE: the V3 bias changes which experts are chosen, never the gate values") {
  Generator gen(13);
  moe::DeepSeekMoE m(small_config("sigmoid", false, true), {DType::f64, kCPU, &gen});
  const Tensor x = rnd({1, 9, 6}, 14), xf = x.reshape({9, 6});
  const moe::RouterOutput plain = m.router->forward(xf);
  m.router->set_bias({0, 0, 0, 0, 10.0});  // expert 4 wins every token's first place
  const moe::RouterOutput biased = m.router->forward(xf);
  const auto pi = plain.indices.to_vector_as<int64_t>(), bi = biased.indices.to_vector_as<int64_t>();
  const auto s = plain.scores.to_vector(), bg = biased.gates.to_vector();
  bool changed = false;
  for (int64_t t = 0; t < 9; ++t) {
    CHECK(bi[t * 2] == 4);
    changed |= pi[t * 2] != 4 && pi[t * 2 + 1] != 4;
    for (int64_t j = 0; j < 2; ++j) CHECK(bg[t * 2 + j] == doctest::Approx(s[t * 5 + bi[t * 2 + j]]).epsilon(1e-14));
  }
  CHECK(changed);  // some token did not pick expert 4 without the bias
  expect_close(biased.scores, plain.scores, 0, 0);
  const Reference r = reference(m, x);
  expect_close(m.forward(x), from_vector(r.y, x.shape(), DType::f64), 1e-12, 1e-12);
  // Without aux_free the same bias is ignored.
  Generator gen2(13);
  moe::DeepSeekMoE m2(small_config("sigmoid", false, false), {DType::f64, kCPU, &gen2});
  m2.router->set_bias({0, 0, 0, 0, 10.0});
  expect_close(m2.router->forward(xf).indices.to(DType::f64), plain.indices.to(DType::f64), 0, 0);
}

TEST_CASE("DeepSeekMoE: equal affinities choose the lowest expert indices (topk's tie rule)") {
  Generator gen(15);
  moe::DeepSeekMoE m(small_config(), {DType::f64, kCPU, &gen});
  m.router->weight = zeros({5, 6}, DType::f64).requires_grad_();
  const Tensor x = rnd({2, 3, 6}, 16);
  const moe::RouterOutput ro = m.router->forward(x.reshape({6, 6}));
  expect_values(ro.indices.to(DType::f64), {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, 0);
  expect_values(ro.gates, std::vector<double>(12, 0.2), 1e-15);
  expect_close(m.forward(x), from_vector(reference(m, x).y, x.shape(), DType::f64), 1e-12, 1e-12);
  CHECK(m.last_load() == std::vector<int64_t>{6, 6, 0, 0, 0});
}

TEST_CASE("DeepSeekMoE gradients w.r.t. x and every parameter, routing held fixed") {
  for (const char* aff : {"softmax", "sigmoid"})
    {
      INFO(aff);
      Generator gen(17);
      moe::MoEConfig cfg = small_config(aff, std::string(aff) == "sigmoid", false);
      if (std::string(aff) == "sigmoid") cfg.router.routed_scaling_factor = 2.5;  // V3's combination
      moe::DeepSeekMoE m(cfg, {DType::f64, kCPU, &gen});
      const Tensor x = rnd({2, 4, 6}, 18);
      // A 1e-6 perturbation moves a score by well under 1e-4; a smaller gap could flip the top-k mid-check.
      const double gap = min_gap(reference(m, x), 2);
      INFO("gap " << gap);
      REQUIRE(gap > 1e-3);
      auto f = [&m](const std::vector<Tensor>& in) {
        m.router->weight = in[1], m.experts->w1 = in[2], m.experts->w2 = in[3], m.experts->w3 = in[4];
        m.shared->w1->weight = in[5], m.shared->w2->weight = in[6], m.shared->w3->weight = in[7];
        return m.forward(in[0]);
      };
      std::vector<Tensor> inputs = {x.detach().clone().requires_grad_()};
      for (auto& [name, p] : m.named_parameters()) inputs.push_back(p.detach().clone().requires_grad_());
      REQUIRE(inputs.size() == 8);  // router, experts w1 w2 w3, shared w1 w2 w3 (registration order)
      check_grad("moe_unpermute", f, inputs);
    }
}

TEST_CASE("DeepSeekMoE: experts without tokens are skipped, their weight slices get zero gradient, AdamW steps") {
  {
    moe::MoEConfig c = small_config("softmax", false, true);
    c.top_k = 1;
    Generator gen(19);
    moe::DeepSeekMoE m(c, {DType::f64, kCPU, &gen});
    m.router->set_bias({0, 0, 0, 1.0, 0});  // softmax scores are < 1 apart: every token goes to expert 3
    const Tensor x = rnd({2, 5, 6}, 20);
    const Tensor y = m.forward(x);
    CHECK(m.last_load() == std::vector<int64_t>{0, 0, 0, 10, 0});
    expect_close(y, from_vector(reference(m, x).y, x.shape(), DType::f64), 1e-12, 1e-12);
    sum(y * rnd(y.shape(), 21)).backward();
    for (const Tensor* w : {&m.experts->w1, &m.experts->w2, &m.experts->w3}) {
      REQUIRE(w->grad().defined());
      for (int64_t e = 0; e < 5; ++e) {
        const Tensor g = w->grad().select(0, e);
        const double norm = sum(g * g).item();
        if (e == 3) CHECK(norm > 0);
        else CHECK(norm == 0);
      }
    }
    train::AdamW opt(m.named_parameters());
    const Tensor before = m.experts->w1.detach().clone();
    opt.step(1e-2);
    const Tensor moved = m.experts->w1.detach() - before;
    CHECK(sum(moved.select(0, 3) * moved.select(0, 3)).item() > 0);
  }

  // Forcing through the router weight instead: one dominant row sends every token to that expert.
  moe::MoEConfig c2 = small_config();
  c2.n_shared = 0;
  Generator gen2(22);
  moe::DeepSeekMoE m2(c2, {DType::f64, kCPU, &gen2});
  CHECK_FALSE(m2.shared);
  Tensor w = zeros({5, 6}, DType::f64);
  w.select(0, 1).fill_(50.0);
  m2.router->weight = w.requires_grad_();
  const Tensor xp = uniform({1, 6, 6}, 23, 0.5, 1.0);  // positive rows: x . w_1 = 50 sum(x) dominates
  const Tensor y2 = m2.forward(xp);
  CHECK(m2.last_load()[1] == 6);
  expect_close(y2, from_vector(reference(m2, xp).y, xp.shape(), DType::f64), 1e-12, 1e-12);
}

TEST_CASE("DeepSeekMoE aux loss: a hand-computed value, the formula, and its gradient w.r.t. the router") {
  moe::MoEConfig c = small_config();
  c.n_routed = 4;
  Generator gen(25);
  moe::DeepSeekMoE m(c, {DType::f64, kCPU, &gen});
  // Uniform scores: s = 1/4, every token picks experts 0 and 1, f = 4 / (2 N) * (N, N, 0, 0) = (2, 2, 0, 0),
  // P = 1/4 each: L = 0.01 * (2/4 + 2/4) = 0.01.
  m.router->weight = zeros({4, 6}, DType::f64).requires_grad_();
  m.forward(rnd({2, 3, 6}, 26));
  CHECK(m.aux_loss().item() == doctest::Approx(0.01).epsilon(1e-14));

  for (const char* aff : {"softmax", "sigmoid"}) {
    INFO(aff);
    Generator g2(27);
    moe::DeepSeekMoE m2(small_config(aff), {DType::f64, kCPU, &g2});
    check_aux_loss(m2, rnd({2, 5, 6}, 28), false, aff);
  }

  moe::MoEConfig off = small_config();
  off.router.aux_loss_coef = 0;
  moe::DeepSeekMoE m3(off, {DType::f64, kCPU});
  m3.forward(rnd({1, 2, 6}, 29));
  CHECK_FALSE(m3.aux_loss().defined());
}

TEST_CASE("DeepSeekMoE: V3's sequence-wise balance loss, a hand-computed value, per sequence, its gradient") {
  // Uniform scores (zero router weight): every token of every sequence picks experts 0 and 1, f_b = 4 / (2 T) *
  // (T, T, 0, 0) = (2, 2, 0, 0), P_b = 1/4 each: L = 0.02 * (2/4 + 2/4) = 0.02 whatever B and T.
  moe::MoEConfig c = small_config();
  c.n_routed = 4, c.router.aux_loss_coef = 0, c.router.seq_aux_loss_coef = 0.02;
  Generator gen(31);
  moe::DeepSeekMoE m(c, {DType::f64, kCPU, &gen});
  m.router->weight = zeros({4, 6}, DType::f64).requires_grad_();
  m.forward(rnd({3, 2, 6}, 32));
  CHECK(m.aux_loss().item() == doctest::Approx(0.02).epsilon(1e-14));

  // Per sequence, not over the batch: sequence 0's tokens all go to experts {0, 1}, sequence 1's to {2, 3} (router
  // rows 0, 1 read feature 0, rows 2, 3 feature 1; the sequences differ in their sign). The batch is balanced
  // (the batch-level formula gives ~1 x coef) but each sequence is not: ~1.9 x coef. V3's setting: sigmoid,
  // normalized, aux_free (the expert-level loss is off, the sequence-wise one stays).
  moe::MoEConfig v3 = small_config("sigmoid", true, true);
  v3.n_routed = 4, v3.router.seq_aux_loss_coef = 0.02;
  moe::DeepSeekMoE m2(v3, {DType::f64, kCPU, &gen});
  m2.router->weight = from_vector({3, 0, 0, 0, 0, 0, 2.9, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 2.9, 0, 0, 0, 0}, {4, 6},
                                  DType::f64);
  std::vector<double> xv;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t)
      for (double v : {b == 0 ? 1.0 : -1.0, b == 0 ? -1.0 : 1.0, 0.1 * t, -0.2, 0.3, 0.05 * t}) xv.push_back(v);
  const Tensor x = from_vector(xv, {2, 5, 6}, DType::f64);
  m2.forward(x);
  CHECK(m2.last_load() == std::vector<int64_t>{5, 5, 5, 5});
  const Reference r = reference(m2, x);
  for (int t = 0; t < 10; ++t) CHECK(r.chosen[t] == (t < 5 ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{2, 3}));
  CHECK(m2.aux_loss().item() == doctest::Approx(r.seq_aux).epsilon(1e-12));
  CHECK(r.seq_aux > 1.8 * 0.02);

  // Its gradient w.r.t. x and the router weight (routing held fixed), both affinities.
  for (const char* aff : {"softmax", "sigmoid"}) {
    INFO(aff);
    moe::MoEConfig cs = small_config(aff);
    cs.router.aux_loss_coef = 0, cs.router.seq_aux_loss_coef = 0.05;
    Generator g2(34);
    moe::DeepSeekMoE m3(cs, {DType::f64, kCPU, &g2});
    check_aux_loss(m3, rnd({2, 5, 6}, 35), true, aff);
  }
  moe::MoEConfig bad = small_config();
  bad.router.seq_aux_loss_coef = -1;
  expect_error([&] { moe::DeepSeekMoE(bad, {DType::f64}); }, {"seq_aux_loss_coef", ">= 0", "-1"});
}

TEST_CASE("DeepSeekMoE update_bias: under-loaded experts up, over-loaded down, balanced ones stay") {
  moe::RouterConfig rc;
  rc.n_routed = 4, rc.top_k = 1, rc.aux_free = true, rc.bias_update_speed = 0.01;
  moe::Router router(3, rc, {DType::f64});
  router.update_bias({5, 1, 3, 3});  // mean 3
  CHECK(router.bias() == std::vector<double>{-0.01, 0.01, 0.0, 0.0});

  Generator gen(31);
  moe::MoEConfig c = small_config("sigmoid", true, true);
  c.router.bias_update_speed = 0.05;
  moe::DeepSeekMoE m(c, {DType::f64, kCPU, &gen});
  const Tensor x = rnd({4, 8, 6}, 32);
  m.forward(x);
  const std::vector<int64_t> load = m.last_load();
  m.forward(x);  // two micro-batches before one step: both count, the signs are the same
  m.update_bias();
  const double mean = 32.0 * 2 / 5;
  for (int64_t i = 0; i < 5; ++i) {
    INFO("expert " << i << " load " << load[i]);
    const double want = load[i] < mean ? 0.05 : load[i] > mean ? -0.05 : 0.0;
    CHECK(m.router->bias()[i] == doctest::Approx(want).epsilon(1e-15));
  }
  expect_error([&] { m.update_bias(); }, {"update_bias", "no training-mode forward"});
  m.train(false);
  m.forward(x);  // evaluation forwards do not count
  expect_error([&] { m.update_bias(); }, {"no training-mode forward"});
  m.train(true);

  // Repeated steps even out a skewed start (the bias sends every token to expert 0 first).
  const Tensor xs = rnd({4, 16, 6}, 33);
  m.router->set_bias({0.5, 0, 0, 0, 0});
  m.forward(xs);
  const double cv0 = m.stats().cv;
  for (int i = 0; i < 20; ++i) m.update_bias(), m.forward(xs);
  CHECK(m.stats().cv < 0.5 * cv0);
  CHECK(m.router->bias()[0] < 0.5);

  moe::DeepSeekMoE plain(small_config(), {DType::f64});  // not aux_free: a no-op
  plain.forward(x);
  plain.update_bias();
  CHECK(plain.router->bias() == std::vector<double>(5, 0.0));
}

TEST_CASE("load statistics") {
  const moe::LoadStats s = moe::load_stats({4, 0, 2, 2});
  CHECK(s.load == std::vector<int64_t>{4, 0, 2, 2});
  CHECK(s.max_over_mean == doctest::Approx(2.0));
  CHECK(s.cv == doctest::Approx(std::sqrt(2.0) / 2));
  CHECK(moe::load_stats({3, 3, 3}).max_over_mean == doctest::Approx(1.0));
  CHECK(moe::load_stats({3, 3, 3}).cv == 0);
  CHECK(moe::load_stats({0, 0}).max_over_mean == 0);

  Generator gen(35);
  moe::DeepSeekMoE m(small_config(), {DType::f64, kCPU, &gen});
  m.forward(rnd({3, 5, 6}, 36));
  const auto& load = m.last_load();
  int64_t total = 0;
  for (int64_t l : load) total += l;
  CHECK(total == 15 * 2);
  const auto st = m.stats();
  CHECK(st.load == load);
  CHECK(st.max_over_mean == doctest::Approx((double)*std::max_element(load.begin(), load.end()) / 6.0));
}

TEST_CASE("DeepSeekMoE argument errors") {
  auto build = [](auto edit) {
    moe::MoEConfig c = small_config();
    edit(c);
    moe::DeepSeekMoE m(c, {DType::f64});
  };
  expect_error([&] { build([](moe::MoEConfig& c) { c.top_k = 6; }); }, {"top_k", "[1, n_routed = 5]", "6"});
  expect_error([&] { build([](moe::MoEConfig& c) { c.top_k = 0; }); }, {"top_k", "got 0"});
  expect_error([&] { build([](moe::MoEConfig& c) { c.router.affinity = "relu"; }); },
               {"affinity", "\"softmax\" or \"sigmoid\"", "\"relu\""});
  expect_error([&] { build([](moe::MoEConfig& c) { c.router.n_routed = 7; }); },
               {"router.n_routed (7)", "n_routed (5)"});
  expect_error([&] { build([](moe::MoEConfig& c) { c.expert_hidden = 0; }); }, {"expert_hidden (0)"});
  expect_error([&] { build([](moe::MoEConfig& c) { c.router.aux_loss_coef = -1; }); }, {"aux_loss_coef", ">= 0"});
  expect_error([&] { build([](moe::MoEConfig& c) { c.router.routed_scaling_factor = 0; }); },
               {"routed_scaling_factor", "positive", "got 0"});
  moe::DeepSeekMoE m(small_config(), {DType::f64});
  expect_error([&] { m.forward(rnd({4, 6}, 1)); }, {"DeepSeekMoE", "[B, T, 6]", "[4, 6]"});
  expect_error([&] { m.forward(rnd({2, 3, 5}, 1)); }, {"[B, T, 6]", "[2, 3, 5]"});
  expect_error([&] { m.router->forward(rnd({3, 4}, 1)); }, {"Router", "[N, 6]", "[3, 4]"});
  expect_error([&] { m.router->set_bias({1, 2}); }, {"set_bias", "expected 5", "got 2"});
  CHECK(m.forward(rnd({2, 0, 6}, 1)).shape() == Shape({2, 0, 6}));  // no tokens: nothing routed
  CHECK(m.last_load() == std::vector<int64_t>(5, 0));
}

TEST_CASE("DeepSeekMoE parameter names and shapes") {
  moe::DeepSeekMoE m(small_config(), {DType::f64});
  std::vector<std::string> names;
  for (auto& [n, p] : m.named_parameters()) names.push_back(n + shape_str(p.shape()));
  CHECK(names == std::vector<std::string>{"router.weight[5, 6]", "experts.w1[5, 6, 3]", "experts.w2[5, 3, 6]",
                                          "experts.w3[5, 6, 3]", "shared.w1.weight[6, 6]", "shared.w2.weight[6, 6]",
                                          "shared.w3.weight[6, 6]"});
}

TEST_CASE("DeepSeekMoE plugs into TransformerLM (make_mlp): the LM loss adds every layer's balance loss") {
  nn::LMConfig lc;
  lc.vocab = 32, lc.dim = 16, lc.n_layers = 2, lc.n_heads = 2, lc.n_kv_heads = 2, lc.max_seq = 16;
  std::vector<std::shared_ptr<moe::DeepSeekMoE>> moes;
  lc.make_mlp = [&](int64_t, const nn::Init& init) {
    moe::MoEConfig c;
    c.dim = 16, c.n_routed = 4, c.top_k = 2, c.n_shared = 1, c.expert_hidden = 8;
    moes.push_back(std::make_shared<moe::DeepSeekMoE>(c, init));
    return moes.back();
  };
  Generator gen(51);
  nn::TransformerLM lm(lc, {DType::f64, kCPU, &gen});
  REQUIRE(moes.size() == 2);
  const Tensor idx = randint(0, 32, {2, 9}, DType::i64, kCPU, &gen), tgt = randint(0, 32, {2, 9}, DType::i64, kCPU, &gen);
  const Tensor loss = lm.loss(idx, tgt);
  const double aux = moes[0]->aux_loss().item() + moes[1]->aux_loss().item();
  CHECK(aux > 0);
  CHECK(loss.item() == doctest::Approx(cross_entropy(lm.forward(idx), tgt).item() + aux).epsilon(1e-12));
  loss.backward();
  for (const auto& m : moes) {
    REQUIRE(m->router->weight.grad().defined());
    CHECK(sum(m->router->weight.grad() * m->router->weight.grad()).item() > 0);
  }
}

TEST_CASE("DeepSeekMoE on CUDA matches the CPU, forward and every gradient" * doctest::skip(!cuda::available())) {
  for (const char* aff : {"softmax", "sigmoid"})
    for (DType dt : {DType::f32, DType::bf16})
      {
        INFO(aff << " " << dtype_name(dt));
        const double tol = dt == DType::f32 ? 1e-4 : 6e-2;
        moe::MoEConfig c = small_config(aff, std::string(aff) == "sigmoid", std::string(aff) == "sigmoid");
        c.n_routed = 8, c.top_k = 3, c.dim = 16, c.expert_hidden = 12;
        if (std::string(aff) == "sigmoid")  // V3: its scaling factor and sequence-wise loss along with aux_free
          c.router.routed_scaling_factor = 2.5, c.router.seq_aux_loss_coef = 0.01;
        Generator g1(41), g2(41);
        moe::DeepSeekMoE cpu(c, {dt, kCPU, &g1}), gpu(c, {dt, cuda_device(0), &g2});
        cpu.to(DType::f64);  // the reference sees the rounded weights
        const std::vector<double> bias = {0.01, -0.02, 0.03, 0, 0, 0.02, -0.01, 0};
        cpu.router->set_bias(bias), gpu.router->set_bias(bias);
        const Tensor xr = rnd({3, 37, 16}, 42).to(dt);
        const Tensor xc = xr.to(DType::f64).requires_grad_(), xg = xr.to(cuda_device(0)).requires_grad_();
        const Reference r = reference(cpu, xc.detach());
        REQUIRE(min_gap(r, 3) > 1e-4);  // the GPU router's f32 rounding cannot flip the choice
        const Tensor yc = cpu.forward(xc), yg = gpu.forward(xg);
        REQUIRE(yg.device().is_cuda());
        CHECK(yg.dtype() == dt);
        CHECK(gpu.last_load() == cpu.last_load());
        expect_close(yg.to(kCPU).to(DType::f64), yc, tol, tol);
        const Tensor up = rnd(yc.shape(), 43).to(DType::f32);
        Tensor lc = sum(yc * up.to(DType::f64)), lg = sum(yg.to(DType::f32) * up.to(cuda_device(0)));
        REQUIRE(cpu.aux_loss().defined() == gpu.aux_loss().defined());
        if (cpu.aux_loss().defined()) {
          CHECK(gpu.aux_loss().item() == doctest::Approx(cpu.aux_loss().item()).epsilon(1e-4));
          lc = lc + cpu.aux_loss() * 100.0, lg = lg + gpu.aux_loss().to(DType::f32) * 100.0;
        }
        lc.backward(), lg.backward();
        expect_close(xg.grad().to(kCPU).to(DType::f64), xc.grad(), tol, tol);
        const auto pc = cpu.named_parameters(), pg = gpu.named_parameters();
        for (size_t i = 0; i < pc.size(); ++i) {
          INFO(pc[i].first);
          expect_close(pg[i].second.grad().to(kCPU).to(DType::f64), pc[i].second.grad(), tol, tol);
        }
      }
}
