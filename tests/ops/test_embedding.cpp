#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("embedding picks rows; repeated indices sum their gradients") {
  const Tensor w = rnd({5, 3}, 1);
  const Tensor idx = from_vector({4, 0, 4, 2}, {2, 2}, DType::i32);
  const Tensor e = embedding(w, idx);
  CHECK(e.shape() == Shape{2, 2, 3});
  expect_close(e.select(0, 1).select(0, 0), w.select(0, 4), 0);
  Tensor wg = w.clone().requires_grad_();
  sum(embedding(wg, idx)).backward();
  expect_values(wg.grad().select(1, 0), {1, 0, 1, 0, 2});
  expect_error([&] { embedding(w, from_vector({5}, {1}, DType::i64)); }, {"embedding", "index 5", "5 rows"});
  expect_error([&] { embedding(w, zeros({2})); }, {"embedding", "idx", "f32"});
}

GRADCHECK_TEST("embedding") {
  const Tensor idx = from_vector({1, 3, 1, 0, 6, 6}, {3, 2}, DType::i64);
  check_grad("embedding", [idx](const std::vector<Tensor>& in) { return embedding(in[0], idx); }, {rnd_grad({7, 4}, 2)});
}
