// swiglu: forward, backward right below (one fused kernel each way).
#include "ops/swiglu.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {
namespace cpu {
void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, const Tensor& dup);
}  // namespace cpu

NT_REGISTER_OP(kSwiglu, "swiglu", true);

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_floating("swiglu", gate, "gate");
  check_same_dtype("swiglu", gate, "gate", up, "up");
  check_same_device("swiglu", gate, up);
  NT_CHECK(gate.shape() == up.shape(), "swiglu: gate has shape {} but up has shape {} (expected the same)",
           shape_str(gate.shape()), shape_str(up.shape()));
  const Tensor g = gate.detach().contiguous(), u = up.detach().contiguous();
  Tensor out = empty(gate.shape(), gate.dtype(), gate.device());
  if (out.device().is_cpu())
    cpu::swiglu_forward(g, u, out);
  else
    NT_ON_CUDA("swiglu", cuda::swiglu_forward(g.dtype(), g.data_ptr(), u.data_ptr(), out.data_ptr(), out.numel(),
                                              stream_of(out)));
  if (autograd::needs_grad({&gate, &up}))
    autograd::record(kSwiglu, out, {gate, up}, [sg = autograd::Saved(g), su = autograd::Saved(u)](const Tensor& dy, auto&) {
      const Tensor &g = sg.get(), &u = su.get(), d = dy.contiguous();
      Tensor dg = empty(g.shape(), g.dtype(), g.device()), du = empty(g.shape(), g.dtype(), g.device());
      if (g.device().is_cpu())
        cpu::swiglu_backward(g, u, d, dg, du);
      else
        NT_ON_CUDA("swiglu", cuda::swiglu_backward(g.dtype(), g.data_ptr(), u.data_ptr(), d.data_ptr(), dg.data_ptr(),
                                                   du.data_ptr(), g.numel(), stream_of(dg)));
      return std::vector<Tensor>{dg, du};
    });
  return out;
}

}  // namespace nt
