// Helpers shared by the test suites: closeness checks with readable failures, random inputs and the
// gradient-check registration that tests/test_coverage.cpp audits.
#pragma once
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "autograd/gradcheck.h"
#include "ops/ops.h"

namespace nt::test {

// Random f64 tensor (normal), deterministic per seed.
inline Tensor rnd(const Shape& shape, uint64_t seed, DType dtype = DType::f64) {
  Generator g(seed);
  return randn(shape, dtype, kCPU, &g);
}
// Random tensor requiring grad.
inline Tensor rnd_grad(const Shape& shape, uint64_t seed) { return rnd(shape, seed).requires_grad_(true); }
// Uniform in [lo, hi).
inline Tensor uniform(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype = DType::f64) {
  Generator g(seed);
  return (rand(shape, DType::f64, kCPU, &g) * (hi - lo) + lo).to(dtype);
}

// CHECKs that a and b have one shape and |a - b| <= atol + rtol |b| everywhere; reports the worst element.
// A NaN matches nothing, not even a NaN (two kernels that both left a poisoned output untouched must not pass),
// unless nans_match (a test of NaN propagation); infinities match themselves.
inline void expect_close(const Tensor& a, const Tensor& b, double atol = 1e-6, double rtol = 1e-5,
                         bool nans_match = false) {
  REQUIRE_MESSAGE(a.shape() == b.shape(), "shapes differ: " << shape_str(a.shape()) << " vs " << shape_str(b.shape()));
  const auto va = a.to_vector(), vb = b.to_vector();
  int64_t worst = -1;
  double werr = 0;
  bool ok = true;
  for (size_t i = 0; i < va.size(); ++i) {
    const double err = std::fabs(va[i] - vb[i]);
    const bool bad = !(err <= atol + rtol * std::fabs(vb[i])) && !(va[i] == vb[i]) &&
                     !(nans_match && std::isnan(va[i]) && std::isnan(vb[i]));
    if (bad) ok = false;
    if (bad && (worst < 0 || err > werr || std::isnan(err))) worst = (int64_t)i, werr = err;
  }
  CHECK_MESSAGE(ok, "worst element " << worst << ": " << (worst >= 0 ? va[worst] : 0) << " vs "
                                     << (worst >= 0 ? vb[worst] : 0) << " (abs err " << werr << ")");
}
inline void expect_values(const Tensor& a, const std::vector<double>& v, double atol = 1e-6) {
  expect_close(a, from_vector(v, a.shape(), DType::f64), atol, 0);
}

// CHECKs that fn throws nt::Error whose message contains every one of `parts`.
template <class F> void expect_error(F&& fn, std::initializer_list<const char*> parts) {
  try {
    fn();
    FAIL_CHECK("expected an nt::Error, nothing was thrown");
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* p : parts) CHECK_MESSAGE(msg.find(p) != std::string::npos, "message '" << msg << "' lacks '" << p << "'");
  }
}

// Which ops have a registered gradient check (filled at static-initialization time).
inline std::set<std::string>& gradchecked_ops() {
  static std::set<std::string> s;
  return s;
}
inline bool register_gradcheck(const char* op) {
  gradchecked_ops().insert(op);
  return true;
}

// Runs gradcheck and CHECKs that it passes and that `op` really is in the checked graph.
inline void check_grad(const char* op, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                       std::vector<Tensor> inputs, GradcheckOptions opt = {}) {
  const GradcheckResult r = gradcheck(f, std::move(inputs), opt);
  CHECK_MESSAGE(r.ok, op << ": " << r.message);
  bool seen = false;
  for (const OpKind* k : r.ops) seen |= std::string(k->name) == op;
  CHECK_MESSAGE(seen, "gradient check registered for '" << op << "' but that op is not in the checked graph");
}

}  // namespace nt::test

#define NT_CAT2(a, b) a##b
#define NT_CAT(a, b) NT_CAT2(a, b)
// GRADCHECK_TEST("op") { body }: a test case that gradient-checks `op`, counted by the coverage test.
#define GRADCHECK_TEST(op)                                                                         \
  static const bool NT_CAT(nt_gc_reg_, __LINE__) = ::nt::test::register_gradcheck(op);            \
  TEST_CASE("gradcheck " op)
