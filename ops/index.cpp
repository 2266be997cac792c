// Indexing ops: forward, backward right below. Gathers scatter their gradient back; scatters gather it.
#include "ops/index.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {
namespace cpu {
void index_select_forward(const Tensor& x, int64_t dim, const Tensor& idx, const Tensor& out);
void gather_forward(const Tensor& x, int64_t dim, const Tensor& idx, const Tensor& out);
void scatter_add_forward(const Tensor& out, int64_t dim, const Tensor& idx, const Tensor& src);
void topk_forward(const Tensor& x, int64_t k, int64_t dim, bool largest, const Tensor& values, const Tensor& indices);
void cumsum_forward(const Tensor& x, int64_t dim, bool reverse, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kIndexSelect, "index_select", true);
NT_REGISTER_OP(kGather, "gather", true);
NT_REGISTER_OP(kScatterAdd, "scatter_add", true);
NT_REGISTER_OP(kTopk, "topk", true);
NT_REGISTER_OP(kCumsum, "cumsum", true);

using autograd::Saved;

static void check_indexed_shapes(const char* op, const Tensor& target, int64_t dim, const Tensor& idx) {
  NT_CHECK(idx.dim() == target.dim(), "{}: index has {} dims (shape {}) but the tensor has {} (shape {})", op,
           idx.dim(), shape_str(idx.shape()), target.dim(), shape_str(target.shape()));
  for (int64_t d = 0; d < idx.dim(); ++d)
    NT_CHECK(d == dim || idx.size(d) <= target.size(d),
             "{}: index shape {} exceeds the tensor's shape {} at dim {}", op, shape_str(idx.shape()),
             shape_str(target.shape()), d);
}

// out = self + scatter(src) without autograd.
static Tensor scatter_add_raw(const Tensor& self, int64_t dim, const Tensor& idx, const Tensor& src) {
  Tensor out = self.detach().contiguous().clone();
  if (out.device().is_cpu()) {
    cpu::scatter_add_forward(out, dim, idx, src.to(self.dtype()));
    return out;
  }
  // CUDA adds atomically in f32 or f64; a bf16 target accumulates in an f32 copy.
  Tensor acc = self.dtype() == DType::bf16 ? out.to(DType::f32) : out;
  const Tensor s = src.detach().to(acc.dtype()).contiguous(), ic = idx.contiguous();
  NT_ON_CUDA("scatter_add", {
    DeviceFlag bad(acc);
    cuda::Strided xl = layout_of(acc, "scatter_add");
    for (int64_t d = 0; d < ic.dim(); ++d) xl.size[d] = ic.size(d);
    cuda::scatter_add(acc.dtype(), acc.data_ptr(), xl, (int)dim, acc.size(dim), ic.dtype(), ic.data_ptr(),
                      layout_of(ic, "scatter_add"), s.data_ptr(), ic.numel(), bad.get(), stream_of(acc));
    bad.check("scatter_add: an index is out of range for dim {} of size {}", dim, acc.size(dim));
  });
  return acc.to(self.dtype());
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& idx) {
  check_index("index_select", idx, "idx");
  check_dim("index_select", idx, "idx", 1);
  check_same_device("index_select", x, idx);
  dim = wrap_dim(dim, x.dim(), "index_select");
  Shape shape = x.shape();
  shape[dim] = idx.numel();
  Tensor out = empty(shape, x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::index_select_forward(x, dim, idx, out);
  } else {
    const Tensor xc = x.detach().contiguous(), ic = idx.contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < x.dim(); ++d) (d < dim ? outer : inner) *= d == dim ? 1 : x.size(d);
    NT_ON_CUDA("index_select", {
      DeviceFlag bad(x);
      cuda::index_select(x.dtype(), xc.data_ptr(), ic.dtype(), ic.data_ptr(), out.data_ptr(), outer, x.size(dim),
                         ic.numel(), inner, bad.get(), stream_of(out));
      bad.check("index_select: an index is out of range for dim {} of size {}", dim, x.size(dim));
    });
  }
  if (autograd::needs_grad({&x}))
    autograd::record(kIndexSelect, out, {x}, [dim, xs = x.shape(), si = Saved(idx)](const Tensor& g, auto&) {
      Shape ishape(g.dim(), 1);
      ishape[dim] = g.size(dim);
      const Tensor full_idx = si.get().reshape(ishape).expand(g.shape()).contiguous();
      return std::vector<Tensor>{scatter_add_raw(zeros(xs, g.dtype(), g.device()), dim, full_idx, g)};
    });
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& idx) {
  check_index("gather", idx, "idx");
  check_same_device("gather", x, idx);
  dim = wrap_dim(dim, x.dim(), "gather");
  check_indexed_shapes("gather", x, dim, idx);
  Tensor out = empty(idx.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::gather_forward(x, dim, idx, out);
  } else {
    const Tensor ic = idx.contiguous();
    NT_ON_CUDA("gather", {
      DeviceFlag bad(x);
      cuda::Strided xl = layout_of(x, "gather");
      for (int64_t d = 0; d < ic.dim(); ++d) xl.size[d] = ic.size(d);
      cuda::gather(x.dtype(), x.data_ptr(), xl, (int)dim, x.size(dim), ic.dtype(), ic.data_ptr(), layout_of(ic, "gather"),
                   out.data_ptr(), ic.numel(), bad.get(), stream_of(out));
      bad.check("gather: an index is out of range for dim {} of size {}", dim, x.size(dim));
    });
  }
  if (autograd::needs_grad({&x}))
    autograd::record(kGather, out, {x}, [dim, xs = x.shape(), si = Saved(idx)](const Tensor& g, auto&) {
      return std::vector<Tensor>{scatter_add_raw(zeros(xs, g.dtype(), g.device()), dim, si.get(), g)};
    });
  return out;
}

Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& idx, const Tensor& src) {
  check_index("scatter_add", idx, "idx");
  check_floating("scatter_add", self, "self");
  check_same_dtype("scatter_add", self, "self", src, "src");
  check_same_device("scatter_add", self, idx);
  dim = wrap_dim(dim, self.dim(), "scatter_add");
  NT_CHECK(idx.shape() == src.shape(), "scatter_add: idx has shape {} but src has shape {} (expected the same)",
           shape_str(idx.shape()), shape_str(src.shape()));
  check_indexed_shapes("scatter_add", self, dim, idx);
  Tensor out = scatter_add_raw(self, dim, idx, src);
  if (autograd::needs_grad({&self, &src}))
    autograd::record(kScatterAdd, out, {self, src}, [dim, si = Saved(idx)](const Tensor& g, const std::vector<bool>& n) {
      return std::vector<Tensor>{n[0] ? g : Tensor(), n[1] ? gather(g, dim, si.get()) : Tensor()};
    });
  return out;
}

ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim, bool largest) {
  check_floating("topk", x, "x");
  dim = wrap_dim(dim, x.dim(), "topk");
  const int64_t n = x.dim() == 0 ? 1 : x.size(dim);
  NT_CHECK(k >= 0 && k <= n, "topk: k = {} is out of range for dim {} of size {} (expected 0 to {})", k, dim, n, n);
  const Tensor xv = x.dim() == 0 ? x.reshape({1}) : x;
  Shape shape = xv.shape();
  shape[dim] = k;
  ValuesIndices r{empty(shape, x.dtype(), x.device()), empty(shape, DType::i64, x.device())};
  if (x.device().is_cpu()) {
    cpu::topk_forward(xv, k, dim, largest, r.values, r.indices);
  } else {
    const Tensor xc = xv.detach().contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < xv.dim(); ++d) (d < dim ? outer : inner) *= d == dim ? 1 : xv.size(d);
    NT_ON_CUDA("topk", cuda::topk(x.dtype(), xc.data_ptr(), r.values.data_ptr(), r.indices.data<int64_t>(), outer,
                                  xv.size(dim), inner, k, largest, stream_of(xc)));
  }
  if (autograd::needs_grad({&x}))
    autograd::record(kTopk, r.values, {x}, [dim, xs = x.shape(), si = Saved(r.indices)](const Tensor& g, auto&) {
      Shape s = xs.empty() ? Shape{1} : xs;
      return std::vector<Tensor>{scatter_add_raw(zeros(s, g.dtype(), g.device()), dim, si.get(), g).reshape(xs)};
    });
  return r;
}

static Tensor cumsum_raw(const Tensor& x, int64_t dim, bool reverse) {
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::cumsum_forward(x, dim, reverse, out);
  } else {
    const Tensor xc = x.detach().contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < x.dim(); ++d) (d < dim ? outer : inner) *= d == dim ? 1 : x.size(d);
    NT_ON_CUDA("cumsum", cuda::cumsum(x.dtype(), xc.data_ptr(), out.data_ptr(), outer, x.size(dim), inner, reverse,
                                      stream_of(out)));
  }
  return out;
}

Tensor cumsum(const Tensor& x, int64_t dim) {
  check_floating("cumsum", x, "x");
  NT_CHECK(x.dim() > 0, "cumsum: x must have at least one dim");
  dim = wrap_dim(dim, x.dim(), "cumsum");
  Tensor out = cumsum_raw(x, dim, false);
  if (autograd::needs_grad({&x}))
    autograd::record(kCumsum, out, {x}, [dim](const Tensor& g, auto&) {
      return std::vector<Tensor>{cumsum_raw(g, dim, true)};  // d/dx_i of sum_j>=i: a suffix sum
    });
  return out;
}

}  // namespace nt
