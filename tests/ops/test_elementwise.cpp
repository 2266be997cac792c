// Elementwise family: values against the C library, broadcasting, bf16, errors, and gradient checks.
#include "test_util.h"

using namespace nt;
using namespace nt::test;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

namespace {
// Applies f elementwise on the host, as the expected result of a unary op.
Tensor map(const Tensor& x, double (*f)(double)) {
  auto v = x.to_vector();
  for (double& e : v) e = f(e);
  return from_vector(v, x.shape(), DType::f64);
}
double gelu_erf_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_ref(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
double sigmoid_ref(double x) { return 1 / (1 + std::exp(-x)); }
double silu_ref(double x) { return x / (1 + std::exp(-x)); }
double relu_ref(double x) { return x > 0 ? x : 0; }
double rsqrt_ref(double x) { return 1 / std::sqrt(x); }
double neg_ref(double x) { return -x; }
}  // namespace

TEST_CASE("unary ops match the C library (f64 exactly, f32 and bf16 within their precision)") {
  const Tensor x = rnd({5, 7}, 1), xp = uniform({5, 7}, 2, 0.1, 4.0);
  expect_close(neg(x), map(x, neg_ref), 0);
  expect_close(exp(x), map(x, [](double v) { return std::exp(v); }), 1e-14, 1e-14);
  expect_close(log(xp), map(xp, [](double v) { return std::log(v); }), 1e-14, 1e-14);
  expect_close(sqrt(xp), map(xp, [](double v) { return std::sqrt(v); }), 1e-14, 1e-14);
  expect_close(rsqrt(xp), map(xp, rsqrt_ref), 1e-14, 1e-14);
  expect_close(tanh(x), map(x, [](double v) { return std::tanh(v); }), 1e-14, 1e-14);
  expect_close(sigmoid(x), map(x, sigmoid_ref), 1e-14, 1e-14);
  expect_close(relu(x), map(x, relu_ref), 0);
  expect_close(gelu(x), map(x, gelu_erf_ref), 1e-14, 1e-14);
  expect_close(gelu(x, GeluApprox::tanh), map(x, gelu_tanh_ref), 1e-14, 1e-14);
  expect_close(silu(x), map(x, silu_ref), 1e-14, 1e-14);
  expect_close(pow(xp, 1.7), map(xp, [](double v) { return std::pow(v, 1.7); }), 1e-14, 1e-14);
  expect_close(clamp(x, -0.5, 0.25), map(x, [](double v) { return std::min(0.25, std::max(-0.5, v)); }), 0);
  expect_close(gelu(x.to(DType::f32)), map(x, gelu_erf_ref), 1e-6, 1e-5);
  expect_close(silu(x.to(DType::bf16)), map(x, silu_ref), 2e-2, 1e-2);
  CHECK(silu(x.to(DType::bf16)).dtype() == DType::bf16);
}

TEST_CASE("binary ops broadcast and compute in the tensor's dtype") {
  const Tensor a = rnd({3, 1, 4}, 3), b = rnd({2, 4}, 4);
  const Tensor s = add(a, b);
  CHECK(s.shape() == Shape{3, 2, 4});
  const auto av = a.to_vector(), bv = b.to_vector(), sv = s.to_vector(), pv = (a * b).to_vector(),
             dv = (a / b).to_vector(), mv = (a - b).to_vector();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 4; ++k) {
        const int o = (i * 2 + j) * 4 + k;
        CHECK(sv[o] == av[i * 4 + k] + bv[j * 4 + k]);
        CHECK(pv[o] == av[i * 4 + k] * bv[j * 4 + k]);
        CHECK(dv[o] == av[i * 4 + k] / bv[j * 4 + k]);
        CHECK(mv[o] == av[i * 4 + k] - bv[j * 4 + k]);
      }
  expect_values(pow(from_vector({2, 3}, {2}, DType::f64), from_vector({3, 0.5}, {2}, DType::f64)), {8, std::sqrt(3.0)});
  expect_values(2.0 - from_vector({1, 5}, {2}, DType::f64), {1, -3});
  expect_values(from_vector({3, 4}, {2}, DType::i64) * from_vector({2}, {1}, DType::i64), {6, 8});
  const Tensor c = lt(from_vector({1, 5, 3}, {3}), from_vector({3}, {1}));
  CHECK(c.dtype() == DType::boolean);
  expect_values(c, {1, 0, 0});
  expect_values(eq(arange(4), from_vector({2}, {}, DType::i64)), {0, 0, 1, 0});
  expect_values(ge(arange(4), from_vector({2}, {}, DType::i64)), {0, 0, 1, 1});
}

TEST_CASE("binary op errors name the op and both shapes or dtypes") {
  expect_error([] { add(zeros({2, 3}), zeros({4})); }, {"add", "[2, 3]", "[4]", "broadcast"});
  expect_error([] { mul(zeros({2}), zeros({2}, DType::f64)); }, {"mul", "f32", "f64"});
  expect_error([] { exp(zeros({2}, DType::i64)); }, {"exp", "i64"});
  expect_error([] { clamp(zeros({2}), 1, 0); }, {"clamp", "lo"});
}

TEST_CASE("where and masked_fill") {
  const Tensor cond = from_vector({1, 0, 1}, {3}).to(DType::boolean);
  expect_values(where(cond, from_vector({1, 2, 3}, {3}), from_vector({-1}, {1})), {1, -1, 3});
  expect_values(masked_fill(from_vector({1, 2, 3, 4, 5, 6}, {2, 3}), cond, -9), {-9, 2, -9, -9, 5, -9});
  expect_error([&] { where(zeros({3}), zeros({3}), zeros({3})); }, {"where", "bool"});
  expect_error([&] { masked_fill(zeros({3}), zeros({2, 3}).to(DType::boolean), 1); }, {"masked_fill", "[2, 3]"});
}

#define UNARY_GRADCHECK(name, expr, input)                                                        \
  GRADCHECK_TEST(name) {                                                                         \
    check_grad(name, [](const std::vector<Tensor>& in) { const Tensor& x = in[0]; return expr; }, {input}); \
  }
UNARY_GRADCHECK("neg", neg(x), rnd_grad({3, 4}, 10))
UNARY_GRADCHECK("exp", exp(x), rnd_grad({3, 4}, 11))
UNARY_GRADCHECK("log", log(x), uniform({3, 4}, 12, 0.2, 3).requires_grad_())
UNARY_GRADCHECK("sqrt", sqrt(x), uniform({3, 4}, 13, 0.2, 3).requires_grad_())
UNARY_GRADCHECK("rsqrt", rsqrt(x), uniform({3, 4}, 14, 0.2, 3).requires_grad_())
UNARY_GRADCHECK("tanh", tanh(x), rnd_grad({3, 4}, 15))
UNARY_GRADCHECK("sigmoid", sigmoid(x), rnd_grad({3, 4}, 16))
UNARY_GRADCHECK("relu", relu(x), rnd_grad({3, 4}, 17))
UNARY_GRADCHECK("gelu_tanh", gelu(x, GeluApprox::tanh), rnd_grad({3, 4}, 18))
UNARY_GRADCHECK("gelu_erf", gelu(x), rnd_grad({3, 4}, 19))
UNARY_GRADCHECK("silu", silu(x), rnd_grad({3, 4}, 20))
UNARY_GRADCHECK("pow_scalar", pow(x, 2.5), uniform({3, 4}, 21, 0.2, 3).requires_grad_())
UNARY_GRADCHECK("clamp", clamp(x, -0.5, 0.7), rnd_grad({3, 4}, 22))

#define BINARY_GRADCHECK(name, expr, in_a, in_b)                                                            \
  GRADCHECK_TEST(name) {                                                                                   \
    check_grad(name, [](const std::vector<Tensor>& in) { const Tensor &a = in[0], &b = in[1]; return expr; }, {in_a, in_b}); \
  }
// Broadcast in both directions: [3,1,4] against [2,4].
BINARY_GRADCHECK("add", add(a, b), rnd_grad({3, 1, 4}, 23), rnd_grad({2, 4}, 24))
BINARY_GRADCHECK("sub", sub(a, b), rnd_grad({3, 1, 4}, 25), rnd_grad({2, 4}, 26))
BINARY_GRADCHECK("mul", mul(a, b), rnd_grad({3, 1, 4}, 27), rnd_grad({2, 4}, 28))
BINARY_GRADCHECK("div", div(a, b), rnd_grad({3, 1, 4}, 29), uniform({2, 4}, 30, 0.5, 2).requires_grad_())
BINARY_GRADCHECK("pow", pow(a, b), uniform({3, 1, 4}, 31, 0.5, 2).requires_grad_(), rnd_grad({2, 4}, 32))

GRADCHECK_TEST("where") {
  const Tensor cond = gt(rnd({2, 3}, 33), scalar_tensor(0, DType::f64));
  check_grad("where", [cond](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); },
             {rnd_grad({2, 3}, 34), rnd_grad({3}, 35)});
}
GRADCHECK_TEST("masked_fill") {
  const Tensor mask = gt(rnd({3}, 36), scalar_tensor(0, DType::f64));
  check_grad("masked_fill", [mask](const std::vector<Tensor>& in) { return masked_fill(in[0], mask, 2.0); },
             {rnd_grad({2, 3}, 37)});
}
