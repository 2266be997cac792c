#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("cat, stack, split and chunk") {
  const Tensor a = arange(6, DType::f64).reshape({2, 3}), b = arange(4, DType::f64).reshape({2, 2});
  const Tensor c = cat({a, b}, 1);
  CHECK(c.shape() == Shape{2, 5});
  expect_values(c, {0, 1, 2, 0, 1, 3, 4, 5, 2, 3});
  const Tensor s = stack({a, a * 2.0}, 1);
  CHECK(s.shape() == Shape{2, 2, 3});
  expect_values(s.select(1, 1).select(0, 1), {6, 8, 10});
  const auto parts = split(c, {3, 2}, -1);
  expect_close(parts[0], a, 0);
  expect_close(parts[1], b, 0);
  const auto ch = chunk(arange(7, DType::f64), 3);
  REQUIRE(ch.size() == 3);
  CHECK(ch[2].numel() == 1);
  expect_error([&] { cat({a, b}, 0); }, {"cat", "[2, 2]", "[2, 3]"});
  expect_error([&] { split(c, {3, 3}, 1); }, {"split", "add up to 6", "size 5"});
  expect_error([&] { stack({a, b}); }, {"stack", "shape"});
}

GRADCHECK_TEST("cat") {
  check_grad("cat", [](const std::vector<Tensor>& in) { return cat({in[0], in[1], in[0]}, 1); },
             {rnd_grad({2, 3, 2}, 1), rnd_grad({2, 1, 2}, 2)});
  check_grad("cat", [](const std::vector<Tensor>& in) { return stack({in[0], in[1]}, 0); }, {rnd_grad({3}, 3), rnd_grad({3}, 4)});
}
