// rms_norm and layer_norm: values against composite formulas, optional weight/bias, errors, grads.
#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("rms_norm and layer_norm match their formulas") {
  const Tensor x = rnd({2, 3, 7}, 1), w = rnd({7}, 2), b = rnd({7}, 3);
  expect_close(rms_norm(x, w, 1e-5), x * rsqrt(mean(x * x, {-1}, true) + 1e-5) * w, 1e-12, 1e-12);
  expect_close(rms_norm(x, Tensor()), x * rsqrt(mean(x * x, {-1}, true) + 1e-6), 1e-12, 1e-12);
  const Tensor mu = mean(x, {-1}, true), v = var(x, {-1}, 0, true);
  expect_close(layer_norm(x, w, b, 1e-5), (x - mu) * rsqrt(v + 1e-5) * w + b, 1e-12, 1e-12);
  expect_close(layer_norm(x, Tensor(), Tensor()), (x - mu) * rsqrt(v + 1e-5), 1e-12, 1e-12);
  expect_close(rms_norm(x.to(DType::bf16), w.to(DType::bf16)).to(DType::f64), rms_norm(x, w), 5e-2, 2e-2);
  expect_error([&] { rms_norm(x, rnd({6}, 4)); }, {"rms_norm", "weight", "[7]", "[6]"});
  expect_error([&] { layer_norm(x, w, zeros({7})); }, {"layer_norm", "f64", "f32"});
}

GRADCHECK_TEST("rms_norm") {
  check_grad("rms_norm", [](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 1e-5); },
             {rnd_grad({3, 2, 5}, 5), rnd_grad({5}, 6)});
  check_grad("rms_norm", [](const std::vector<Tensor>& in) { return rms_norm(in[0], Tensor()); }, {rnd_grad({4, 3}, 7)});
}
GRADCHECK_TEST("layer_norm") {
  check_grad("layer_norm", [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2]); },
             {rnd_grad({3, 2, 5}, 8), rnd_grad({5}, 9), rnd_grad({5}, 10)});
  check_grad("layer_norm", [](const std::vector<Tensor>& in) { return layer_norm(in[0], Tensor(), Tensor()); },
             {rnd_grad({4, 3}, 11)});
}
