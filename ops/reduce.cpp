// Reductions: forward, backward right below. Backward formulas broadcast the gradient back over the reduced dims.
#include "ops/reduce.h"

#include <algorithm>

#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/index.h"

namespace nt {
namespace cpu {
void reduce_forward(int op, const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out, int64_t correction);
void max_dim_forward(const Tensor& x, int64_t dim, const Tensor& values, const Tensor& indices);
}  // namespace cpu

NT_REGISTER_OP(kSum, "sum", true);
NT_REGISTER_OP(kMean, "mean", true);
NT_REGISTER_OP(kAmax, "amax", true);
NT_REGISTER_OP(kLogsumexp, "logsumexp", true);
NT_REGISTER_OP(kVar, "var", true);
NT_REGISTER_OP(kMax, "max", true);
NT_REGISTER_OP(kArgmax, "argmax", false);

using autograd::Saved;
enum class ReduceOp { sum, mean, amax, logsumexp, var };  // same order as ops/cpu/reduce.cpp

namespace {
struct Plan {
  std::vector<int64_t> dims;  // sorted, unique
  Shape kept;                 // shape with reduced dims set to 1
  Shape out;                  // result shape (kept, or kept without the reduced dims)
  int64_t count = 1;          // elements reduced into each output
};
Plan plan_reduce(const char* op, const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  Plan p;
  if (dims.empty())
    for (int64_t d = 0; d < x.dim(); ++d) dims.push_back(d);
  for (int64_t& d : dims) d = wrap_dim(d, x.dim(), op);
  std::sort(dims.begin(), dims.end());
  NT_CHECK(std::adjacent_find(dims.begin(), dims.end()) == dims.end(), "{}: a dim is repeated in the dims list", op);
  if (x.dim() == 0) dims.clear();
  p.dims = dims;
  p.kept = x.shape();
  for (int64_t d : dims) p.count *= x.size(d), p.kept[d] = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (keepdim || !std::binary_search(dims.begin(), dims.end(), d)) p.out.push_back(p.kept[d]);
  return p;
}

Tensor reduce_raw(const char* name, ReduceOp op, const Tensor& x, const Plan& p, int64_t correction = 0) {
  check_floating(name, x, "x");
  Tensor out = empty(p.out, x.dtype(), x.device());
  if (p.dims.empty()) {  // 0-dim input: nothing to reduce
    out.copy_(x);
    if (op == ReduceOp::var) out.fill_(correction >= 1 ? NAN : 0.0);
    return out;
  }
  if (x.device().is_cpu()) {
    cpu::reduce_forward((int)op, x, p.dims, out, correction);
  } else {
#if NT_CUDA
    // Sum/mean over a run of consecutive dims of a contiguous x with many short columns after it (a broadcast's
    // backward, e.g. [N, k, D] over k): read in place, coalesced along the columns.
    const int64_t first = p.dims.front(), last = p.dims.back();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < first; ++d) outer *= x.size(d);
    for (int64_t d = last + 1; d < x.dim(); ++d) inner *= x.size(d);
    if ((op == ReduceOp::sum || op == ReduceOp::mean) && x.is_contiguous() && last - first + 1 == (int64_t)p.dims.size() &&
        p.count <= 256 && inner >= 32 && outer * inner >= 65536) {
      cuda::reduce_middle(x.dtype(), x.data_ptr(), out.data_ptr(), outer, p.count, inner, op == ReduceOp::mean,
                          stream_of(out));
      return out;
    }
#endif
    // Reduced dims last and contiguous: each output is one row.
    std::vector<int64_t> order;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (!std::binary_search(p.dims.begin(), p.dims.end(), d)) order.push_back(d);
    order.insert(order.end(), p.dims.begin(), p.dims.end());
    const Tensor xc = x.detach().permute(order).contiguous();
#if NT_CUDA
    const size_t ws_bytes = cuda::reduce_rows_workspace((int)op, x.dtype(), out.numel(), p.count);
    const Tensor ws = ws_bytes ? empty({(int64_t)(ws_bytes + 7) / 8}, DType::f64, x.device()) : Tensor();
    cuda::reduce_rows((int)op, x.dtype(), xc.data_ptr(), out.data_ptr(), out.numel(), p.count, correction,
                      ws_bytes ? ws.data_ptr() : nullptr, stream_of(out));
#else
    no_cuda_kernel(name);
#endif
  }
  return out;
}
// g (of the result's shape) viewed with the reduced dims as size 1, broadcastable against x.
Tensor keep(const Tensor& g, const Plan& p) { return g.reshape(p.kept); }
}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const Plan p = plan_reduce("sum", x, std::move(dims), keepdim);
  Tensor out = reduce_raw("sum", ReduceOp::sum, x, p);
  if (autograd::needs_grad({&x}))
    autograd::record(kSum, out, {x}, [p, xs = x.shape()](const Tensor& g, auto&) {
      return std::vector<Tensor>{keep(g, p).expand(xs)};
    });
  return out;
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const Plan p = plan_reduce("mean", x, std::move(dims), keepdim);
  Tensor out = reduce_raw("mean", ReduceOp::mean, x, p);
  if (autograd::needs_grad({&x}))
    autograd::record(kMean, out, {x}, [p, xs = x.shape()](const Tensor& g, auto&) {
      return std::vector<Tensor>{(keep(g, p) / (double)p.count).expand(xs)};
    });
  return out;
}

Tensor amax(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const Plan p = plan_reduce("amax", x, std::move(dims), keepdim);
  Tensor out = reduce_raw("amax", ReduceOp::amax, x, p);
  if (autograd::needs_grad({&x}))
    autograd::record(kAmax, out, {x}, [p, sx = Saved(x), so = Saved(out)](const Tensor& g, auto&) {
      const Tensor mask = eq(sx.get(), keep(so.get(), p)).to(g.dtype());
      const Tensor count = sum(mask, p.dims, true);
      return std::vector<Tensor>{mask * (keep(g, p) / count)};
    });
  return out;
}

Tensor logsumexp(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const Plan p = plan_reduce("logsumexp", x, std::move(dims), keepdim);
  Tensor out = reduce_raw("logsumexp", ReduceOp::logsumexp, x, p);
  if (autograd::needs_grad({&x}))
    autograd::record(kLogsumexp, out, {x}, [p, sx = Saved(x), so = Saved(out)](const Tensor& g, auto&) {
      return std::vector<Tensor>{keep(g, p) * exp(sx.get() - keep(so.get(), p))};
    });
  return out;
}

Tensor var(const Tensor& x, std::vector<int64_t> dims, int64_t correction, bool keepdim) {
  NT_CHECK(correction >= 0, "var: correction must be >= 0, got {}", correction);
  const Plan p = plan_reduce("var", x, std::move(dims), keepdim);
  Tensor out = reduce_raw("var", ReduceOp::var, x, p, correction);
  if (autograd::needs_grad({&x}))
    autograd::record(kVar, out, {x}, [p, correction, sx = Saved(x)](const Tensor& g, auto&) {
      const Tensor& x = sx.get();
      const Tensor centered = x - mean(x, p.dims, true);
      const double scale = 2.0 / (double)std::max<int64_t>(p.count - correction, 0);
      return std::vector<Tensor>{centered * (keep(g, p) * scale)};
    });
  return out;
}

static ValuesIndices max_raw(const char* name, const Tensor& x, int64_t dim, bool keepdim) {
  check_floating(name, x, "x");
  dim = wrap_dim(dim, x.dim(), name);
  NT_CHECK(x.dim() == 0 || x.size(dim) > 0, "{}: dim {} of shape {} is empty", name, dim, shape_str(x.shape()));
  const Plan p = plan_reduce(name, x, {dim}, keepdim);
  ValuesIndices r{empty(p.out, x.dtype(), x.device()), empty(p.out, DType::i64, x.device())};
  if (x.dim() == 0) {
    r.values.copy_(x);
    r.indices.fill_(0);
  } else if (x.device().is_cpu()) {
    cpu::max_dim_forward(x, dim, r.values, r.indices);
  } else {
    const Tensor xc = x.detach().contiguous();
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < x.dim(); ++d) (d < dim ? outer : inner) *= d == dim ? 1 : x.size(d);
    NT_ON_CUDA(name, cuda::max_dim(x.dtype(), xc.data_ptr(), r.values.data_ptr(), r.indices.data<int64_t>(), outer,
                                   x.size(dim), inner, stream_of(xc)));
  }
  return r;
}

ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) {
  ValuesIndices r = max_raw("max", x, dim, keepdim);
  if (autograd::needs_grad({&x})) {
    const int64_t d = x.dim() == 0 ? 0 : wrap_dim(dim, x.dim(), "max");
    const Plan p = plan_reduce("max", x, {d}, keepdim);
    autograd::record(kMax, r.values, {x}, [p, d, xs = x.shape(), xd = x.dtype(), idx = Saved(r.indices)](const Tensor& g, auto&) {
      if (xs.empty()) return std::vector<Tensor>{g.clone()};
      return std::vector<Tensor>{scatter_add(zeros(xs, xd, g.device()), d, keep(idx.get(), p), keep(g, p))};
    });
  }
  return r;
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) { return max_raw("argmax", x, dim, keepdim).indices; }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int64_t lead = g.dim() - (int64_t)shape.size();
  NT_CHECK(lead >= 0, "sum_to: gradient of shape {} has fewer dims than {}", shape_str(g.shape()), shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < lead; ++d) dims.push_back(d);
  for (int64_t i = 0; i < (int64_t)shape.size(); ++i)
    if (shape[i] == 1 && g.size(lead + i) != 1) dims.push_back(lead + i);
  if (dims.empty()) return g.reshape(shape);
  return sum(g, dims, true).reshape(shape);
}

}  // namespace nt
