#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("index_select, gather and scatter_add") {
  const Tensor x = arange(12, DType::f64).reshape({3, 4});
  expect_values(index_select(x, 1, from_vector({3, 0, 3}, {3}, DType::i64)), {3, 0, 3, 7, 4, 7, 11, 8, 11});
  expect_values(index_select(x, 0, from_vector({2}, {1}, DType::i32)), {8, 9, 10, 11});
  const Tensor gi = from_vector({1, 0, 3, 3, 2, 1}, {3, 2}, DType::i64);
  expect_values(gather(x, 1, gi), {1, 0, 7, 7, 10, 9});
  const Tensor sc = scatter_add(zeros({3, 4}, DType::f64), 1, gi, ones({3, 2}, DType::f64));
  expect_values(sc, {1, 1, 0, 0, 0, 0, 0, 2, 0, 1, 1, 0});
  expect_error([&] { index_select(x, 0, from_vector({3}, {1}, DType::i64)); }, {"index_select", "index 3", "size 3"});
  expect_error([&] { gather(x, 1, from_vector({4}, {1, 1}, DType::i64)); }, {"gather", "index 4"});
  expect_error([&] { gather(x, 1, zeros({3}, DType::i64)); }, {"gather", "1 dims", "[3, 4]"});
  expect_error([&] { scatter_add(x, 0, gi, ones({2, 2}, DType::f64)); }, {"scatter_add", "[3, 2]", "[2, 2]"});
}

TEST_CASE("topk sorts, breaks ties toward the lower index, and supports smallest") {
  const Tensor x = from_vector({3, 1, 3, 5, 2, 5, 0, 1}, {2, 4});
  const ValuesIndices r = topk(x, 2, 1);
  expect_values(r.values, {5, 3, 5, 2});
  expect_values(r.indices, {3, 0, 1, 0});
  const ValuesIndices s = topk(x, 3, 1, false);
  expect_values(s.values, {1, 3, 3, 0, 1, 2});
  expect_values(s.indices, {1, 0, 2, 2, 3, 0});  // the tied 3s keep index order
  expect_values(topk(x, 1, 0).indices, {0, 1, 0, 0});
  expect_error([&] { topk(x, 5, 1); }, {"topk", "k = 5", "size 4"});
}

TEST_CASE("cumsum along a dim") {
  expect_values(cumsum(arange(6, DType::f64).reshape({2, 3}), 1), {0, 1, 3, 3, 7, 12});
  expect_values(cumsum(arange(6, DType::f64).reshape({2, 3}), 0), {0, 1, 2, 3, 5, 7});
}

GRADCHECK_TEST("index_select") {
  const Tensor idx = from_vector({2, 0, 2, 1}, {4}, DType::i64);
  check_grad("index_select", [idx](const std::vector<Tensor>& in) { return index_select(in[0], 1, idx); }, {rnd_grad({2, 3, 2}, 1)});
}
GRADCHECK_TEST("gather") {
  const Tensor idx = from_vector({0, 2, 2, 1, 0, 0}, {2, 3}, DType::i64);
  check_grad("gather", [idx](const std::vector<Tensor>& in) { return gather(in[0], 1, idx); }, {rnd_grad({3, 4}, 2)});
}
GRADCHECK_TEST("scatter_add") {
  const Tensor idx = from_vector({0, 2, 2, 1, 0, 0}, {2, 3}, DType::i64);
  check_grad("scatter_add", [idx](const std::vector<Tensor>& in) { return scatter_add(in[0], 1, idx, in[1]); },
             {rnd_grad({3, 4}, 3), rnd_grad({2, 3}, 4)});
}
GRADCHECK_TEST("topk") {
  check_grad("topk", [](const std::vector<Tensor>& in) { return topk(in[0], 3, 0).values; }, {rnd_grad({5, 3}, 5)});
  check_grad("topk", [](const std::vector<Tensor>& in) { return topk(in[0], 2, -1, false).values; }, {rnd_grad({2, 4}, 6)});
}
GRADCHECK_TEST("cumsum") {
  check_grad("cumsum", [](const std::vector<Tensor>& in) { return cumsum(in[0], 1); }, {rnd_grad({2, 5, 3}, 7)});
}
