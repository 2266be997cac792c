#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("swiglu equals silu(gate) * up") {
  const Tensor g = rnd({3, 17}, 1), u = rnd({3, 17}, 2);
  expect_close(swiglu(g, u), silu(g) * u, 1e-14, 1e-14);
  expect_close(swiglu(g.to(DType::bf16), u.to(DType::bf16)).to(DType::f64), silu(g) * u, 3e-2, 2e-2);
  expect_error([&] { swiglu(g, rnd({3, 16}, 3)); }, {"swiglu", "[3, 17]", "[3, 16]"});
}

GRADCHECK_TEST("swiglu") {
  check_grad("swiglu", [](const std::vector<Tensor>& in) { return swiglu(in[0], in[1]); }, {rnd_grad({4, 5}, 4), rnd_grad({4, 5}, 5)});
  // The two halves of one fused projection.
  check_grad("swiglu", [](const std::vector<Tensor>& in) { return swiglu(in[0].narrow(1, 0, 3), in[0].narrow(1, 3, 3)); },
             {rnd_grad({4, 6}, 6)});
}
