#include "ops/moe.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
Tensor choices(const std::vector<double>& v, int64_t K, DType dt = DType::i64) {
  return from_vector(v, {(int64_t)v.size() / K, K}, dt);
}
}  // namespace

TEST_CASE("moe_dispatch: counts, offsets and a stable sort by expert") {
  for (DType dt : {DType::i64, DType::i32}) {
    // Tokens 0, 1, 2 choose (2, 0), (1, 2), (2, 1); expert 3 gets nothing.
    const ExpertDispatch d = moe_dispatch(choices({2, 0, 1, 2, 2, 1}, 2, dt), 4);
    CHECK(d.n_tokens == 3);
    CHECK(d.top_k == 2);
    CHECK(d.counts() == std::vector<int64_t>{1, 2, 3, 0});
    CHECK(d.offsets() == std::vector<int64_t>{0, 1, 3, 6, 6});
    CHECK(d.slot_row.dtype() == DType::i32);
    // Expert 2's rows 3, 4, 5 hold tokens 0, 1, 2 in that order.
    CHECK(d.slot_row.to_vector_as<int64_t>() == std::vector<int64_t>{3, 0, 1, 4, 5, 2});
    CHECK(d.max_count() == 3);
  }
  const ExpertDispatch none = moe_dispatch(empty({0, 3}, DType::i64), 5);
  CHECK(none.counts() == std::vector<int64_t>(5, 0));
  CHECK(none.offsets() == std::vector<int64_t>(6, 0));
  expect_error([] { moe_dispatch(choices({0, 4}, 2), 4); }, {"moe_dispatch", "expert 4", "0 to 3"});
  expect_error([] { moe_dispatch(choices({0, -1}, 2), 4); }, {"moe_dispatch", "expert -1"});
  expect_error([] { moe_dispatch(from_vector({0, 1}, {2}, DType::i64), 4); }, {"moe_dispatch", "indices"});
  expect_error([] { moe_dispatch(zeros({2, 2}), 4); }, {"moe_dispatch", "indices", "f32"});
  expect_error([] { moe_dispatch(choices({0, 1}, 2), 0); }, {"moe_dispatch", "n_experts", "0"});
}

TEST_CASE("moe_permute copies each token to its K rows; moe_unpermute adds them back with the gates") {
  const ExpertDispatch d = moe_dispatch(choices({2, 0, 1, 2, 2, 1}, 2), 4);
  const Tensor x = rnd({3, 5}, 1);
  const Tensor rows = moe_permute(x, d);
  REQUIRE(rows.shape() == Shape{6, 5});
  const std::vector<int64_t> sr = d.slot_row.to_vector_as<int64_t>();
  for (int64_t s = 0; s < 6; ++s) expect_close(rows.select(0, sr[s]), x.select(0, s / 2), 0);
  const Tensor r = rnd({6, 5}, 2), g = rnd({3, 2}, 3);
  const Tensor y = moe_unpermute(r, g, d);
  for (int64_t t = 0; t < 3; ++t) {
    const Tensor want = r.select(0, sr[2 * t]) * g.select(0, t).select(0, 0) + r.select(0, sr[2 * t + 1]) * g.select(0, t).select(0, 1);
    expect_close(y.select(0, t), want, 1e-15, 1e-15);
  }
  expect_error([&] { moe_permute(rnd({4, 5}, 1), d); }, {"moe_permute", "x", "[3, D]", "[4, 5]"});
  expect_error([&] { moe_unpermute(rnd({5, 5}, 1), g, d); }, {"moe_unpermute", "rows", "[6, D]"});
  expect_error([&] { moe_unpermute(r, rnd({3, 3}, 1), d); }, {"moe_unpermute", "gates", "[3, 2]", "[3, 3]"});
  expect_error([&] { moe_unpermute(r, g.to(DType::f32), d); }, {"moe_unpermute", "gates"});
  expect_error([&] { moe_permute(x, ExpertDispatch{}); }, {"moe_permute", "moe_dispatch"});
}

GRADCHECK_TEST("moe_permute") {
  const ExpertDispatch d = moe_dispatch(choices({3, 0, 1, 3, 3, 1, 0, 2}, 2), 5);  // expert 4 empty
  check_grad("moe_permute", [&](const std::vector<Tensor>& in) { return moe_permute(in[0], d); }, {rnd_grad({4, 3}, 4)});
}

GRADCHECK_TEST("moe_unpermute") {
  const ExpertDispatch d = moe_dispatch(choices({3, 0, 1, 1, 3, 2, 0, 2, 4}, 3), 5);
  check_grad("moe_unpermute", [&](const std::vector<Tensor>& in) { return moe_unpermute(in[0], in[1], d); },
             {rnd_grad({9, 4}, 5), rnd_grad({3, 3}, 6)});
}
