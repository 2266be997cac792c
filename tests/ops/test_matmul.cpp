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
