// softmax, log_softmax, cross_entropy: values against direct formulas, ignore_index, reductions, errors, grads.
#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("softmax and log_softmax along any dim") {
  const Tensor x = rnd({3, 4, 5}, 1) * 3.0;
  const Tensor ref = exp(x) / sum(exp(x), {1}, true);
  expect_close(softmax(x, 1), ref, 1e-14, 1e-12);
  expect_close(log_softmax(x, 1), log(ref), 1e-12, 1e-12);
  expect_close(sum(softmax(x), {-1}), ones({3, 4}, DType::f64), 1e-14);
  // Large logits must not overflow.
  expect_values(softmax(from_vector({1000, 1000}, {2}, DType::f64)), {0.5, 0.5});
  expect_close(softmax(x.to(DType::bf16), 2).to(DType::f64), softmax(x, 2), 1e-2, 2e-2);
}

TEST_CASE("cross_entropy: mean over non-ignored rows, sum, none; extra leading dims") {
  const Tensor logits = rnd({2, 3, 5}, 2);
  const Tensor target = from_vector({1, 4, -100, 0, 2, 3}, {2, 3}, DType::i64);
  const Tensor lsm = log_softmax(logits, -1).reshape({6, 5});
  const auto lv = lsm.to_vector();
  const int t[6] = {1, 4, -1, 0, 2, 3};
  double total = 0;
  std::vector<double> rows;
  for (int r = 0; r < 6; ++r) {
    rows.push_back(t[r] < 0 ? 0 : -lv[r * 5 + t[r]]);
    total += rows.back();
  }
  CHECK(cross_entropy(logits, target).item() == doctest::Approx(total / 5).epsilon(1e-12));
  CHECK(cross_entropy(logits, target, -100, Reduction::sum).item() == doctest::Approx(total).epsilon(1e-12));
  expect_values(cross_entropy(logits, target, -100, Reduction::none).reshape({6}), rows, 1e-12);
  CHECK(std::isnan(cross_entropy(logits, full({2, 3}, -100, DType::i64)).item()));
  expect_error([&] { cross_entropy(logits, from_vector({5, 0, 0, 0, 0, 0}, {2, 3}, DType::i64)); },
               {"cross_entropy", "target 5", "5 classes"});
  expect_error([&] { cross_entropy(logits, zeros({6}, DType::i64)); }, {"cross_entropy", "[2, 3]", "[6]"});
  expect_error([&] { cross_entropy(logits, zeros({2, 3})); }, {"cross_entropy", "target", "f32"});
}

GRADCHECK_TEST("softmax") {
  check_grad("softmax", [](const std::vector<Tensor>& in) { return softmax(in[0], 1); }, {rnd_grad({3, 4, 2}, 3)});
}
GRADCHECK_TEST("log_softmax") {
  check_grad("log_softmax", [](const std::vector<Tensor>& in) { return log_softmax(in[0], 0); }, {rnd_grad({5, 3}, 4)});
}
GRADCHECK_TEST("cross_entropy") {
  const Tensor target = from_vector({2, -100, 0, 6, 1, 3, 3}, {7}, DType::i64);
  for (Reduction red : {Reduction::mean, Reduction::sum, Reduction::none})
    check_grad("cross_entropy", [&](const std::vector<Tensor>& in) { return cross_entropy(in[0], target, -100, red); },
               {rnd_grad({7, 9}, 5)});
  const Tensor t2 = from_vector({0, 2, 1, 1, 0, 2}, {2, 3}, DType::i32);
  check_grad("cross_entropy", [&](const std::vector<Tensor>& in) { return cross_entropy(in[0], t2); }, {rnd_grad({2, 3, 3}, 6)});
}
