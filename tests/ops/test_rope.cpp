#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("rope rotates pairs in the half and interleaved layouts and preserves norms") {
  const int64_t T = 5, H = 2, D = 6;
  const Tensor x = rnd({2, T, H, D}, 1);
  auto [c, s] = rope_tables(T, D, 10000.0);
  const auto xv = x.to_vector(), cv = c.to_vector(), sv = s.to_vector();
  for (bool inter : {false, true}) {
    const auto yv = rope(x, c, s, inter).to_vector();
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < D / 2; ++i) {
            const int64_t base = ((n * T + t) * H + h) * D;
            const int64_t ia = inter ? 2 * i : i, ib = inter ? 2 * i + 1 : i + D / 2;
            const double angle = (double)t * std::pow(10000.0, -2.0 * i / D);
            CHECK(cv[t * 3 + i] == doctest::Approx(std::cos(angle)).epsilon(1e-6));
            const double a = xv[base + ia], b = xv[base + ib];
            CHECK(yv[base + ia] == doctest::Approx(a * cv[t * 3 + i] - b * sv[t * 3 + i]).epsilon(1e-12));
            CHECK(yv[base + ib] == doctest::Approx(a * sv[t * 3 + i] + b * cv[t * 3 + i]).epsilon(1e-12));
          }
    expect_close(sum(rope(x, c, s, inter) * rope(x, c, s, inter), {-1}), sum(x * x, {-1}), 1e-6, 1e-6);
  }
  expect_error([&] { rope(rnd({4, 2, 5}, 2), c, s); }, {"rope", "even"});
  expect_error([&] { rope(rnd({4, 2, 6}, 2), c, s); }, {"rope", "cos", "[4, 3]", "[5, 3]"});
}

GRADCHECK_TEST("rope") {
  auto [c, s] = rope_tables(3, 4, 100.0, 2);
  for (bool inter : {false, true})
    check_grad("rope", [&](const std::vector<Tensor>& in) { return rope(in[0], c, s, inter); }, {rnd_grad({2, 3, 2, 4}, 3)});
}
