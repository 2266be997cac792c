// A two-layer MLP trained with plain SGD on a synthetic 3-class spiral, on the CPU, to show the autograd and
// ops at work. Prints the falling loss and the final accuracy.
//
//   build/examples/tiny_mlp [steps=300] [hidden=64] [lr=0.5]
#include <cmath>
#include <cstdlib>

#include "ops/ops.h"

using namespace nt;

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  const int64_t hidden = argc > 2 ? std::atoll(argv[2]) : 64;
  const double lr = argc > 3 ? std::atof(argv[3]) : 0.5;
  NT_CHECK(steps > 0 && hidden > 0 && lr > 0, "usage: tiny_mlp [steps>0] [hidden>0] [lr>0]");

  // Data: 3 interleaved spirals of 200 points each.
  const int64_t per = 200, C = 3, N = per * C;
  std::vector<double> xs(N * 2), ys(N);
  Generator noise_gen(1);
  const auto noise = randn({N}, DType::f64, kCPU, &noise_gen).to_vector();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < per; ++i) {
      const double r = (double)i / per, t = c * 4.0 + r * 4.0 + noise[c * per + i] * 0.2;
      xs[(c * per + i) * 2] = r * std::sin(t), xs[(c * per + i) * 2 + 1] = r * std::cos(t);
      ys[c * per + i] = (double)c;
    }
  const Tensor x = from_vector(xs, {N, 2}), y = from_vector(ys, {N}, DType::i64);

  manual_seed(0);
  Tensor w1 = (randn({2, hidden}) * std::sqrt(2.0 / 2)).requires_grad_();
  Tensor b1 = zeros({hidden}).requires_grad_();
  Tensor w2 = (randn({hidden, C}) * std::sqrt(1.0 / hidden)).requires_grad_();
  Tensor b2 = zeros({C}).requires_grad_();
  std::vector<Tensor> params{w1, b1, w2, b2};

  for (int step = 0; step <= steps; ++step) {
    const Tensor logits = matmul(gelu(matmul(x, w1) + b1), w2) + b2;
    const Tensor loss = cross_entropy(logits, y);
    if (step % (steps / 10 > 0 ? steps / 10 : 1) == 0 || step == steps) {
      const double acc = mean(eq(argmax(logits, 1), y).to(DType::f32)).item();
      fmt::print("step {:4d}  loss {:.4f}  accuracy {:.1f}%\n", step, loss.item(), 100 * acc);
    }
    if (step == steps) break;
    loss.backward();
    autograd::NoGradGuard no_grad;
    for (Tensor& p : params) {
      p.copy_(p - p.grad() * lr);
      p.set_grad(Tensor());
    }
  }
  return 0;
}
