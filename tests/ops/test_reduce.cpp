// Reductions: values against direct loops, keepdim and multi-dim forms, ties, errors, gradient checks.
#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("sum, mean, amax, logsumexp and var over several dims") {
  const Tensor x = rnd({3, 4, 5}, 1);
  const auto v = x.to_vector();
  auto at = [&](int i, int j, int k) { return v[(i * 4 + j) * 5 + k]; };
  // Reduce dims 0 and 2, keep dim 1.
  std::vector<double> s(4, 0), m(4, -INFINITY), l(4, 0), va(4, 0);
  for (int j = 0; j < 4; ++j) {
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 5; ++k) s[j] += at(i, j, k), m[j] = std::max(m[j], at(i, j, k));
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 5; ++k) l[j] += std::exp(at(i, j, k)), va[j] += std::pow(at(i, j, k) - s[j] / 15, 2);
    l[j] = std::log(l[j]);
    va[j] /= 14;
  }
  expect_values(sum(x, {0, 2}), s, 1e-12);
  expect_values(mean(x, {0, -1}), {s[0] / 15, s[1] / 15, s[2] / 15, s[3] / 15}, 1e-12);
  expect_values(amax(x, {2, 0}), m, 0);
  expect_values(logsumexp(x, {0, 2}), l, 1e-12);
  expect_values(var(x, {0, 2}), va, 1e-12);
  CHECK(sum(x, {0, 2}, true).shape() == Shape{1, 4, 1});
  CHECK(sum(x).dim() == 0);
  CHECK(sum(x).item() == doctest::Approx(s[0] + s[1] + s[2] + s[3]));
  CHECK(var(x, {1}, 0).shape() == Shape{3, 5});
  expect_close(sum(x.to(DType::bf16), {1}).to(DType::f64), sum(x, {1}), 0.1, 0.02);
  expect_error([&] { sum(x, {3}); }, {"sum", "dim 3", "out of range"});
  expect_error([&] { sum(x, {1, 1}); }, {"sum", "repeated"});
}

TEST_CASE("max along a dim returns the first maximum and its index; argmax agrees") {
  const Tensor x = from_vector({1, 3, 3, -1, 7, 2}, {2, 3});
  const ValuesIndices r = max(x, 1);
  expect_values(r.values, {3, 7});
  expect_values(r.indices, {1, 1});
  CHECK(r.indices.dtype() == DType::i64);
  expect_values(argmax(x, 0), {0, 1, 0});
  CHECK(max(x, 0, true).values.shape() == Shape{1, 3});
}

TEST_CASE("amax splits the gradient among ties, max sends it to the first") {
  Tensor x = from_vector({1, 3, 3}, {3}, DType::f64).requires_grad_();
  amax(x).backward();
  expect_values(x.grad(), {0, 0.5, 0.5});
  Tensor y = from_vector({1, 3, 3}, {3}, DType::f64).requires_grad_();
  max(y, 0).values.backward();
  expect_values(y.grad(), {0, 1, 0});
}

GRADCHECK_TEST("sum") {
  check_grad("sum", [](const std::vector<Tensor>& in) { return sum(in[0], {0, 2}); }, {rnd_grad({3, 4, 5}, 2)});
}
GRADCHECK_TEST("mean") {
  check_grad("mean", [](const std::vector<Tensor>& in) { return mean(in[0], {1}, true); }, {rnd_grad({3, 4, 5}, 3)});
}
GRADCHECK_TEST("amax") {
  check_grad("amax", [](const std::vector<Tensor>& in) { return amax(in[0], {-1}); }, {rnd_grad({3, 7}, 4)});
}
GRADCHECK_TEST("logsumexp") {
  check_grad("logsumexp", [](const std::vector<Tensor>& in) { return logsumexp(in[0], {0, 1}); }, {rnd_grad({3, 4, 2}, 5)});
}
GRADCHECK_TEST("var") {
  check_grad("var", [](const std::vector<Tensor>& in) { return var(in[0], {1}); }, {rnd_grad({3, 6}, 6)});
  check_grad("var", [](const std::vector<Tensor>& in) { return var(in[0], {}, 0); }, {rnd_grad({2, 5}, 7)});
}
GRADCHECK_TEST("max") {
  check_grad("max", [](const std::vector<Tensor>& in) { return max(in[0], 1).values; }, {rnd_grad({4, 5, 3}, 8)});
}
