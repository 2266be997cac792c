#include "test_util.h"
#include "tensor/philox.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("dropout keeps elements whose Philox uniform is >= p and scales them") {
  Generator g(9);
  const Tensor x = uniform({1000}, 1, 1, 2);
  const Tensor y = dropout(x, 0.25, true, &g);
  const auto xv = x.to_vector(), yv = y.to_vector();
  int64_t kept = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    const bool keep = philox::uniform_at(9, 0, i) >= 0.25f;
    CHECK(yv[i] == doctest::Approx(keep ? xv[i] / 0.75 : 0.0).epsilon(1e-15));
    kept += keep;
  }
  CHECK(kept > 700);
  CHECK(kept < 800);
  CHECK(dropout(x, 0.5, false).same(x));
  expect_error([&] { dropout(x, 1.0); }, {"dropout", "[0, 1)"});
}

GRADCHECK_TEST("dropout") {
  // A fresh generator per call: the finite differences must see the same mask as backward.
  check_grad("dropout", [](const std::vector<Tensor>& in) { Generator g(3); return dropout(in[0], 0.4, true, &g); },
             {rnd_grad({4, 5}, 2)});
}
