// matmul: against a direct triple loop, batch broadcasting, 1-D operands, transposed views, bf16, errors, grads.
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
// Reference: a [M, K] @ b [K, N] with plain loops, in double.
Tensor naive(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const auto av = a.contiguous().to_vector(), bv = b.contiguous().to_vector();
  std::vector<double> c(M * N, 0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) c[i * N + j] += av[i * K + k] * bv[k * N + j];
  return from_vector(c, {M, N}, DType::f64);
}
}  // namespace

TEST_CASE("matmul matches a direct loop, with transposed and broadcast operands") {
  const Tensor a = rnd({7, 5}, 1), b = rnd({5, 3}, 2);
  expect_close(matmul(a, b), naive(a, b), 1e-12);
  const Tensor at = rnd({5, 7}, 3), bt = rnd({3, 5}, 4);
  expect_close(matmul(at.mT(), bt.mT()), naive(at.mT(), bt.mT()), 1e-12);     // both transposed views
  const Tensor sliced = rnd({7, 9}, 5).narrow(1, 2, 5);                        // non-unit row stride
  expect_close(matmul(sliced, b), naive(sliced, b), 1e-12);
  const Tensor ba = rnd({2, 1, 7, 5}, 6), bb = rnd({3, 5, 3}, 7);
  const Tensor c = matmul(ba, bb);
  CHECK(c.shape() == Shape{2, 3, 7, 3});
  expect_close(c.select(0, 1).select(0, 2), naive(ba.select(0, 1).select(0, 0), bb.select(0, 2)), 1e-12);
  expect_close(matmul(a.to(DType::f32), b.to(DType::f32)), naive(a, b), 1e-5, 1e-5);
  expect_close(matmul(a.to(DType::bf16), b.to(DType::bf16)), naive(a, b), 0.1, 0.02);
}

TEST_CASE("matmul with 1-D operands drops the vector dims") {
  const Tensor a = rnd({4, 3}, 8), v = rnd({3}, 9), u = rnd({4}, 10);
  CHECK(matmul(a, v).shape() == Shape{4});
  CHECK(matmul(u, a).shape() == Shape{3});
  CHECK(matmul(v, v).dim() == 0);
  expect_close(matmul(a, v), naive(a, v.reshape({3, 1})).reshape({4}), 1e-12);
  CHECK(matmul(v, v).item() == doctest::Approx(sum(v * v).item()));
  CHECK(matmul(zeros({2, 0}), zeros({0, 3})).to_vector() == std::vector<double>(6, 0.0));
}

TEST_CASE("matmul errors name both shapes") {
  expect_error([] { matmul(zeros({2, 3}), zeros({4, 2})); }, {"matmul", "[2, 3]", "[4, 2]"});
  expect_error([] { matmul(zeros({2, 2, 3}), zeros({3, 3, 2})); }, {"matmul", "broadcast"});
  expect_error([] { matmul(zeros({2, 2}), zeros({2, 2}, DType::f64)); }, {"matmul", "f32", "f64"});
}

GRADCHECK_TEST("matmul") {
  auto f = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  check_grad("matmul", f, {rnd_grad({2, 1, 3, 5}, 11), rnd_grad({4, 5, 2}, 12)});  // batch broadcast both ways
  check_grad("matmul", f, {rnd_grad({5}, 13), rnd_grad({3, 5, 2}, 14)});           // vector @ batch
  check_grad("matmul", f, {rnd_grad({3, 5}, 15), rnd_grad({5}, 16)});              // matrix @ vector
}

TEST_CASE("grouped_matmul: each group of rows times its own matrix, empty groups included") {
  const std::vector<int64_t> offsets{0, 3, 3, 7, 7, 9};  // groups of 3, 0, 4, 0, 2 rows
  const Tensor x = rnd({9, 5}, 17), w = rnd({5, 5, 4}, 18);
  const Tensor y = grouped_matmul(x, w, offsets);
  REQUIRE(y.shape() == Shape{9, 4});
  for (int64_t e = 0; e < 5; ++e) {
    const int64_t n = offsets[e + 1] - offsets[e];
    if (n > 0) expect_close(y.narrow(0, offsets[e], n), matmul(x.narrow(0, offsets[e], n), w.select(0, e)), 1e-14, 0);
  }
  // Every row in one group: one plain matmul.
  expect_close(grouped_matmul(x, w, {0, 0, 0, 9, 9, 9}), matmul(x, w.select(0, 2)), 1e-14, 0);
  // Empty groups' weights get zero gradient; the others x_e^T g_e.
  Tensor wg = w.detach().requires_grad_();
  sum(grouped_matmul(x, wg, offsets)).backward();
  expect_close(wg.grad().select(0, 1), zeros({5, 4}, DType::f64), 0, 0);
  expect_close(wg.grad().select(0, 0), matmul(x.narrow(0, 0, 3).mT(), ones({3, 4}, DType::f64)), 1e-14, 0);
}

TEST_CASE("grouped_matmul errors name the argument and the expected value") {
  const Tensor x = zeros({4, 3}), w = zeros({2, 3, 5});
  expect_error([&] { grouped_matmul(x, w, {0, 4}); }, {"offsets", "3"});
  expect_error([&] { grouped_matmul(x, w, {0, 2, 5}); }, {"offsets", "4 rows"});
  expect_error([&] { grouped_matmul(x, zeros({3, 3, 5}), {0, 3, 2, 4}); }, {"decrease"});
  expect_error([&] { grouped_matmul(x, zeros({2, 4, 5}), {0, 2, 4}); }, {"columns", "[2, 4, 5]"});
  expect_error([&] { grouped_matmul(x, zeros({3, 5}), {0, 2, 4}); }, {"[E, K, N]"});
  expect_error([&] { grouped_matmul(x, w.to(DType::f64), {0, 2, 4}); }, {"grouped_matmul", "f64"});
}

GRADCHECK_TEST("grouped_matmul") {
  auto f = [](const std::vector<Tensor>& in) { return grouped_matmul(in[0], in[1], {0, 2, 2, 5, 6}); };
  check_grad("grouped_matmul", f, {rnd_grad({6, 3}, 19), rnd_grad({4, 3, 2}, 20)});
}
