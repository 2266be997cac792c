// The engine: chains, shared subexpressions, accumulation, no-grad, detach, freed graphs, in-place detection,
// activation checkpointing.
#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("chain rule through a small graph, with a shared subexpression") {
  Tensor x = from_vector({1, 2, 3}, {3}, DType::f64).requires_grad_();
  Tensor y = x * x;         // used twice below
  Tensor z = sum(y * y + y);  // sum(x^4 + x^2): dz/dx = 4x^3 + 2x
  z.backward();
  expect_values(x.grad(), {6, 36, 114});
  CHECK(x.is_leaf());
  CHECK(!y.is_leaf());
  CHECK(std::string(z.grad_fn()->op->name) == "sum");
}

TEST_CASE("gradients accumulate across backward calls until reset") {
  Tensor w = from_vector({2}, {1}, DType::f64).requires_grad_();
  sum(w * 3.0).backward();
  sum(w * 3.0).backward();
  expect_values(w.grad(), {6});
  w.set_grad(Tensor());
  sum(w * w).backward();
  expect_values(w.grad(), {4});
}

TEST_CASE("no-grad scope and detach record nothing") {
  Tensor x = rnd_grad({3}, 1);
  {
    autograd::NoGradGuard ng;
    Tensor y = x * 2.0;
    CHECK(!y.requires_grad());
    CHECK(!autograd::grad_enabled());
  }
  CHECK(autograd::grad_enabled());
  Tensor d = x.detach();
  CHECK(!d.requires_grad());
  CHECK(d.impl()->storage == x.impl()->storage);
  CHECK(!(d * 2.0).requires_grad());
}

TEST_CASE("backward through a freed graph is an error; retain_graph allows it") {
  Tensor x = rnd_grad({4}, 2);
  Tensor y = sum(exp(x));
  y.backward(Tensor(), true);
  y.backward();
  expect_close(x.grad(), exp(x.detach()) * 2.0);
  expect_error([&] { y.backward(); }, {"already freed", "retain_graph"});
}

TEST_CASE("backward on a non-scalar needs a grad; one of the wrong shape is an error") {
  Tensor x = rnd_grad({2, 3}, 3);
  Tensor y = x * 2.0;
  expect_error([&] { y.backward(); }, {"one-element", "[2, 3]"});
  expect_error([&] { y.backward(ones({3}, DType::f64)); }, {"grad has shape [3]", "[2, 3]"});
  y.backward(ones({2, 3}, DType::f64));
  expect_values(x.grad(), {2, 2, 2, 2, 2, 2});
  expect_error([] { zeros({2}).backward(); }, {"does not require grad"});
}

TEST_CASE("in-place change of a saved tensor is detected") {
  Tensor x = rnd_grad({3}, 4);
  Tensor a = rnd({3}, 5);
  Tensor y = sum(x * a);  // saves a
  a.fill_(1.0);
  expect_error([&] { y.backward(); }, {"modified in place", "[3]"});
  expect_error([&] { x.fill_(0); }, {"fill_", "requires grad"});
  expect_error([] { zeros({2}, DType::i64).requires_grad_(); }, {"floating"});
}

TEST_CASE("activation checkpointing gives the same gradients, parameters inside included") {
  Tensor w = rnd_grad({4, 4}, 6);
  Tensor x = rnd_grad({3, 4}, 7);
  auto block = [&](const std::vector<Tensor>& in) { return tanh(matmul(in[0], w)) * dropout(in[0], 0.3); };
  manual_seed(11);
  sum(block({x})).backward();
  const Tensor gx = x.grad().clone(), gw = w.grad().clone();
  x.set_grad(Tensor()), w.set_grad(Tensor());
  manual_seed(11);
  Tensor y = autograd::checkpoint(block, {x});
  CHECK(std::string(y.grad_fn()->op->name) == "checkpoint");
  sum(y).backward();
  expect_close(x.grad(), gx, 1e-12);
  expect_close(w.grad(), gw, 1e-12);
}

GRADCHECK_TEST("checkpoint") {
  Tensor w = rnd({3, 2}, 8);
  check_grad("checkpoint", [&](const std::vector<Tensor>& in) {
    return autograd::checkpoint([](const std::vector<Tensor>& v) { return sigmoid(matmul(v[0], v[1])); }, in);
  }, {rnd_grad({2, 3}, 9), w.requires_grad_()});
}

TEST_CASE("on_backward: the hook runs once, before the nodes recorded earlier and after those recorded later") {
  Tensor x = rnd_grad({3}, 12);
  std::vector<std::string> order;
  Tensor a = autograd::on_backward(x, [&] { order.push_back("input hook"); });
  Tensor b = autograd::on_backward(a * 2.0, [&] { order.push_back("output hook, x.grad " + std::to_string(x.grad().defined())); });
  sum(b * b).backward();
  CHECK(order == std::vector<std::string>{"output hook, x.grad 0", "input hook"});
  expect_close(x.grad(), x * 8.0, 1e-15);
  autograd::NoGradGuard ng;
  CHECK(!autograd::on_backward(x.detach(), [] {}).grad_fn());  // nothing recorded without grad recording
}

GRADCHECK_TEST("on_backward") {
  int calls = 0;
  check_grad("on_backward", [&](const std::vector<Tensor>& in) { return autograd::on_backward(in[0] * in[0], [&] { ++calls; }); },
             {rnd_grad({4}, 13)});
  CHECK(calls > 0);
}

TEST_CASE("gradcheck reports a wrong gradient") {
  // A deliberately wrong backward: the checker must notice and name the element.
  static const OpKind& bad = register_op("test_bad_square", false);
  auto f = [](const std::vector<Tensor>& in) {
    Tensor y = in[0].detach() * in[0].detach();
    autograd::record(bad, y, {in[0]}, [x = autograd::Saved(in[0])](const Tensor& g, auto&) {
      return std::vector<Tensor>{g * x.get() * 3.0};  // should be 2x
    });
    return y;
  };
  const GradcheckResult r = gradcheck(f, {rnd_grad({5}, 10)});
  CHECK(!r.ok);
  CHECK(r.message.find("FAILED") != std::string::npos);
  CHECK(r.element >= 0);
}
