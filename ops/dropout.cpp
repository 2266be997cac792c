// dropout: forward, backward right below (the same masked scaling applied to the gradient).
#include "ops/dropout.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "tensor/philox.h"

namespace nt {
namespace cpu {
void dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kDropout, "dropout", true);

static Tensor dropout_raw(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  const Tensor xc = x.detach().contiguous();
  if (x.device().is_cpu())
    cpu::dropout_forward(xc, p, seed, offset, out);
  else
    NT_ON_CUDA("dropout", cuda::dropout_forward(x.dtype(), xc.data_ptr(), out.data_ptr(), out.numel(), p, seed, offset,
                                                stream_of(out)));
  return out;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  check_floating("dropout", x, "x");
  NT_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got {}", p);
  if (!training || p == 0) return x;
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed, offset = g.advance(philox::uniform_blocks((uint64_t)x.numel()));
  Tensor out = dropout_raw(x, p, seed, offset);
  if (autograd::needs_grad({&x}))
    autograd::record(kDropout, out, {x}, [p, seed, offset](const Tensor& g, auto&) {
      return std::vector<Tensor>{dropout_raw(g, p, seed, offset)};
    });
  return out;
}

}  // namespace nt
