// Gradients through views, copies and casts.
#include "test_util.h"
#include "cuda/memory.h"

using namespace nt;
using namespace nt::test;

GRADCHECK_TEST("reshape") {
  check_grad("reshape", [](const std::vector<Tensor>& in) { return in[0].reshape({3, 4}).unsqueeze(0).squeeze(0) * in[0].reshape({3, 4}); },
             {rnd_grad({2, 6}, 1)});
}
GRADCHECK_TEST("permute") {
  check_grad("permute", [](const std::vector<Tensor>& in) { return in[0].permute({2, 0, 1}) * 2.0; }, {rnd_grad({2, 3, 4}, 2)});
}
GRADCHECK_TEST("narrow") {
  check_grad("narrow", [](const std::vector<Tensor>& in) { return in[0].narrow(1, 1, 2) * in[0].slice(1, 0, 2); },
             {rnd_grad({3, 4}, 3)});
}
GRADCHECK_TEST("expand") {
  check_grad("expand", [](const std::vector<Tensor>& in) { return in[0].expand({2, 3, 4}) * in[1]; },
             {rnd_grad({3, 1}, 4), rnd_grad({2, 3, 4}, 5)});
}
GRADCHECK_TEST("copy") {
  check_grad("copy", [](const std::vector<Tensor>& in) { return in[0].mT().contiguous() * 1.5; }, {rnd_grad({3, 4}, 6)});
}
GRADCHECK_TEST("cast") {
  // f64 -> f32 -> f64 loses precision, so the tolerance follows f32.
  GradcheckOptions opt;
  opt.eps = 1e-3, opt.atol = 1e-4, opt.rtol = 1e-3;
  check_grad("cast", [](const std::vector<Tensor>& in) { return in[0].to(DType::f32).to(DType::f64) * 2.0; },
             {rnd_grad({5}, 7)}, opt);
}
GRADCHECK_TEST("to_device") {
  // Same-device moves are no-ops; this checks the op's backward on the CPU<->CPU-staged path only when a GPU exists.
  if (!cuda::available()) {
    MESSAGE("no GPU: to_device gradient is checked by the CUDA suite");
    return;
  }
  check_grad("to_device", [](const std::vector<Tensor>& in) { return in[0].to(cuda_device(0)).to(kCPU) * 2.0; },
             {rnd_grad({5}, 8)});
}
