// cat/stack/split/chunk. cat copies each input into a slice of the output (the copy kernel does the work) and
// its backward narrows the gradient; split and chunk are narrow views, differentiable through narrow.
#include "ops/shape.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {

NT_REGISTER_OP(kCat, "cat", true);

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  NT_CHECK(!tensors.empty(), "cat: expected at least one tensor");
  const Tensor& first = tensors[0];
  dim = wrap_dim(dim, first.dim(), "cat");
  NT_CHECK(first.dim() > 0, "cat: zero-dimensional tensors cannot be concatenated (use stack)");
  Shape shape = first.shape();
  shape[dim] = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    NT_CHECK(t.dim() == first.dim(), "cat: tensor {} has {} dims (shape {}), tensor 0 has {} (shape {})", i, t.dim(),
             shape_str(t.shape()), first.dim(), shape_str(first.shape()));
    for (int64_t d = 0; d < t.dim(); ++d)
      NT_CHECK(d == dim || t.size(d) == first.size(d),
               "cat: tensor {} has shape {} but tensor 0 has shape {}: they must match except in dim {}", i,
               shape_str(t.shape()), shape_str(first.shape()), dim);
    check_same_dtype("cat", first, "tensor 0", t, "another tensor");
    check_same_device("cat", first, t);
    sizes.push_back(t.size(dim));
    shape[dim] += t.size(dim);
  }
  Tensor out = empty(shape, first.dtype(), first.device());
  {
    autograd::NoGradGuard no_grad;
    int64_t at = 0;
    for (const Tensor& t : tensors) {
      out.narrow(dim, at, t.size(dim)).copy_(t);
      at += t.size(dim);
    }
  }
  if (autograd::needs_grad(tensors))
    autograd::record(kCat, out, tensors, [dim, sizes](const Tensor& g, const std::vector<bool>& n) {
      std::vector<Tensor> grads(sizes.size());
      int64_t at = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (n[i]) grads[i] = g.narrow(dim, at, sizes[i]);
        at += sizes[i];
      }
      return grads;
    });
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  NT_CHECK(!tensors.empty(), "stack: expected at least one tensor");
  dim = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  for (size_t i = 0; i < tensors.size(); ++i) {
    NT_CHECK(tensors[i].shape() == tensors[0].shape(), "stack: tensor {} has shape {} but tensor 0 has shape {}", i,
             shape_str(tensors[i].shape()), shape_str(tensors[0].shape()));
    parts.push_back(tensors[i].unsqueeze(dim));
  }
  return cat(parts, dim);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    NT_CHECK(s >= 0, "split: sizes must be >= 0, got {}", shape_str(sizes));
    total += s;
  }
  NT_CHECK(total == x.size(dim), "split: sizes {} add up to {} but dim {} has size {}", shape_str(sizes), total, dim,
           x.size(dim));
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) out.push_back(x.narrow(dim, at, s)), at += s;
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t n, int64_t dim) {
  NT_CHECK(n > 0, "chunk: n must be positive, got {}", n);
  dim = wrap_dim(dim, x.dim(), "chunk");
  const int64_t size = x.size(dim), each = (size + n - 1) / n;
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < size; at += each) sizes.push_back(std::min(each, size - at));
  if (sizes.empty()) sizes.push_back(0);
  return split(x, sizes, dim);
}

}  // namespace nt
