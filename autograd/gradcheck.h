// Finite-difference gradient checking in f64 (as torch.autograd.gradcheck).
//
// f maps the inputs to one tensor of any shape. The check compares, for every element of every input that
// requires grad, the gradient of L = sum(f(inputs) * w) (w fixed random weights) from backward with the central
// difference (L(x + eps) - L(x - eps)) / (2 eps). Inputs are converted to f64 first.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/graph.h"

namespace nt {

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;
  // The worst element: which input, which flat index, and both values.
  int input = -1;
  int64_t element = -1;
  double analytic = 0, numeric = 0;
  std::vector<const OpKind*> ops;  // ops seen in f's graph
  std::string message;             // a readable summary, naming the worst element
};

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 1234;
};

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                          const GradcheckOptions& opt = {});

}  // namespace nt
