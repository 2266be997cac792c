// CUDA-vs-CPU comparison: the same function runs on CPU f64 inputs (the reference) and on GPU inputs of the
// dtype under test (rounded the same way), forward and backward with one random upstream gradient.
#pragma once
#include "cuda/memory.h"
#include "test_util.h"

namespace nt::test {
inline const bool kNoGpu = !cuda::available();
#define CUDA_TEST(name) TEST_CASE(name * doctest::skip(::nt::test::kNoGpu))

struct Tol {
  double atol, rtol;
  bool nans_match = false;  // NaN where the reference has NaN passes (tests of NaN propagation)
};
inline Tol tol_for(DType t) {
  switch (t) {
    case DType::f64: return {1e-9, 1e-9};
    case DType::f32: return {1e-4, 1e-4};
    default: return {3e-2, 3e-2};  // bf16 storage: 8-bit mantissa
  }
}

// inputs: f64 CPU tensors; float ones with requires_grad get their gradients compared too. Integer inputs pass
// through unchanged (moved to the GPU).
inline void check_cuda(const char* what, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                       const std::vector<Tensor>& inputs, DType dt, Tol tol = {-1, -1}, uint64_t seed = 99) {
  if (tol.atol < 0) tol = Tol{tol_for(dt).atol, tol_for(dt).rtol, tol.nans_match};
  INFO(std::string(what) << " dtype " << dtype_name(dt));
  std::vector<Tensor> ref_in, dev_in;
  for (const Tensor& t : inputs) {
    const bool rg = t.requires_grad();
    if (is_floating(t.dtype())) {
      Tensor r = t.detach().to(dt).to(DType::f64);  // the reference sees the rounded inputs
      Tensor d = t.detach().to(dt).to(cuda_device(0));
      if (rg) r.requires_grad_(), d.requires_grad_();
      ref_in.push_back(r), dev_in.push_back(d);
    } else {
      ref_in.push_back(t), dev_in.push_back(t.to(cuda_device(0)));
    }
  }
  const Tensor ref = f(ref_in), out = f(dev_in);
  REQUIRE(out.device().is_cuda());
  CHECK(out.dtype() == (is_floating(ref.dtype()) ? (ref.dtype() == DType::f64 ? dt : ref.dtype()) : ref.dtype()));
  expect_close(out.to(kCPU).to(DType::f64), ref.to(DType::f64), tol.atol, tol.rtol, tol.nans_match);
  if (!ref.requires_grad()) return;
  const Tensor g = rnd(ref.shape(), seed).to(dt).to(DType::f64);
  ref.backward(g);
  out.backward(g.to(out.dtype()).to(cuda_device(0)));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!ref_in[i].requires_grad()) continue;
    INFO("gradient of input " << i);
    REQUIRE(dev_in[i].grad().defined());
    CHECK(dev_in[i].grad().device().is_cuda());
    expect_close(dev_in[i].grad().to(kCPU).to(DType::f64), ref_in[i].grad(), tol.atol * 4, tol.rtol * 4,
                 tol.nans_match);
  }
}
inline const DType kFloatTypes[] = {DType::f32, DType::bf16, DType::f64};
}  // namespace nt::test
