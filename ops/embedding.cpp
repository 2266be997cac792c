// embedding: forward, backward right below.
#include "ops/embedding.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {
namespace cpu {
void embedding_forward(const Tensor& weight, const Tensor& idx, const Tensor& out);
void embedding_backward(const Tensor& dout, const Tensor& idx, const Tensor& dweight);
}  // namespace cpu

NT_REGISTER_OP(kEmbedding, "embedding", true);

Tensor embedding(const Tensor& weight, const Tensor& idx) {
  check_floating("embedding", weight, "weight");
  check_dim("embedding", weight, "weight", 2);
  check_index("embedding", idx, "idx");
  check_same_device("embedding", weight, idx);
  const int64_t V = weight.size(0), C = weight.size(1), N = idx.numel();
  Shape shape = idx.shape();
  shape.push_back(C);
  Tensor out = empty(shape, weight.dtype(), weight.device());
  const Tensor w = weight.detach().contiguous(), i1 = idx.contiguous().reshape({N});
  if (weight.device().is_cpu()) {
    cpu::embedding_forward(w, i1, out.reshape({N, C}));
  } else {
    NT_ON_CUDA("embedding", {
      DeviceFlag bad(w);
      cuda::embedding_forward(w.dtype(), w.data_ptr(), i1.dtype(), i1.data_ptr(), out.data_ptr(), N, V, C, bad.get(),
                              stream_of(out));
      bad.check("embedding: an index is out of range for {} rows (expected 0 to {})", V, V - 1);
    });
  }
  if (autograd::needs_grad({&weight}))
    autograd::record(kEmbedding, out, {weight}, [V, C, N, si = autograd::Saved(i1)](const Tensor& g, auto&) {
      const Tensor gc = g.contiguous().reshape({N, C}),& idx = si.get();
      Tensor dw;
      if (g.device().is_cpu()) {
        dw = zeros({V, C}, DType::f64);
        cpu::embedding_backward(gc, idx, dw);
      } else {
        dw = empty({V, C}, g.dtype() == DType::f64 ? DType::f64 : DType::f32, g.device());
        NT_ON_CUDA("embedding", cuda::embedding_backward(gc.dtype(), gc.data_ptr(), idx.dtype(), idx.data_ptr(),
                                                         dw.data_ptr(), N, V, C, stream_of(dw)));
      }
      return std::vector<Tensor>{dw.to(g.dtype())};
    });
  return out;
}

}  // namespace nt
