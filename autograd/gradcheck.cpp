#include "autograd/gradcheck.h"

#include <cmath>

#include "ops/elementwise.h"
#include "ops/reduce.h"

namespace nt {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                          const GradcheckOptions& opt) {
  GradcheckResult r;
  // Fresh f64 leaves: the caller's tensors are not touched.
  for (Tensor& t : inputs) {
    const bool rg = t.requires_grad();
    t = is_floating(t.dtype()) ? t.detach().to(DType::f64).contiguous().clone().detach() : t.detach();
    if (rg) t.requires_grad_(true);
  }
  Tensor y = f(inputs);
  NT_CHECK(y.requires_grad(), "gradcheck: the function's output does not require grad (no input requires grad?)");
  Generator gen(opt.seed);
  const Tensor w = randn(y.shape(), DType::f64, kCPU, &gen);
  r.ops = autograd::graph_ops(y);
  Tensor loss = sum(y.to(DType::f64) * w);
  loss.backward();

  auto eval = [&]() {
    autograd::NoGradGuard no_grad;
    return sum(f(inputs).to(DType::f64) * w).item();
  };
  for (int i = 0; i < (int)inputs.size(); ++i) {
    Tensor& x = inputs[i];
    if (!x.requires_grad()) continue;
    const Tensor g = x.grad().defined() ? x.grad().to(DType::f64).contiguous() : zeros(x.shape(), DType::f64);
    const std::vector<double> analytic = g.to_vector();
    double* p = x.data<double>();
    for (int64_t e = 0; e < x.numel(); ++e) {
      const double orig = p[e];
      p[e] = orig + opt.eps;
      const double lp = eval();
      p[e] = orig - opt.eps;
      const double lm = eval();
      p[e] = orig;
      const double numeric = (lp - lm) / (2 * opt.eps);
      const double err = std::fabs(numeric - analytic[e]);
      const bool bad = !(err <= opt.atol + opt.rtol * std::fabs(numeric));
      if (bad) r.ok = false;
      if (err > r.max_abs_err || (bad && r.input < 0) || std::isnan(err)) {
        r.max_abs_err = std::isnan(err) ? INFINITY : err;
        r.input = i, r.element = e, r.analytic = analytic[e], r.numeric = numeric;
      }
    }
  }
  r.message = fmt::format("gradcheck {}: max abs error {:.3g} at input {} element {} (analytic {:.10g}, numeric {:.10g})",
                          r.ok ? "passed" : "FAILED", r.max_abs_err, r.input, r.element, r.analytic, r.numeric);
  return r;
}

}  // namespace nt
