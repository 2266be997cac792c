// View ops (no data copied) and copies, as Tensor methods: forward, backward right below.
#include <algorithm>
#include <numeric>

#include "autograd/graph.h"
#include "ops/cpu/copy.h"
#include "ops/dispatch.h"
#include "ops/reduce.h"

namespace nt {

NT_REGISTER_OP(kReshape, "reshape", true);
NT_REGISTER_OP(kPermute, "permute", true);
NT_REGISTER_OP(kNarrow, "narrow", true);
NT_REGISTER_OP(kExpand, "expand", true);
NT_REGISTER_OP(kCopy, "copy", true);
NT_REGISTER_OP(kCast, "cast", true);
NT_REGISTER_OP(kToDevice, "to_device", true);

namespace {
Shape infer_shape(const char* op, Shape shape, int64_t numel, const Shape& from) {
  int64_t known = 1, infer = -1;
  for (int64_t i = 0; i < (int64_t)shape.size(); ++i) {
    if (shape[i] == -1) {
      NT_CHECK(infer < 0, "{}: only one dim can be -1, got {}", op, shape_str(shape));
      infer = i;
    } else {
      NT_CHECK(shape[i] >= 0, "{}: invalid size {} in shape {}", op, shape[i], shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    NT_CHECK(known != 0 && numel % known == 0, "{}: shape {} is invalid for a tensor of shape {} ({} elements)", op,
             shape_str(shape), shape_str(from), numel);
    shape[infer] = numel / known;
  }
  NT_CHECK(shape_numel(shape) == numel, "{}: shape {} is invalid for a tensor of shape {} ({} elements)", op,
           shape_str(shape), shape_str(from), numel);
  return shape;
}

// Strides that view `old` geometry as `shape` without a copy, or false (PyTorch's computeStride).
bool view_strides(const Shape& oldshape, const Shape& oldstride, const Shape& shape, Shape& out) {
  out.assign(shape.size(), 0);
  if (shape_numel(oldshape) == 0 || oldshape.empty()) {
    out = contiguous_strides(shape);
    return true;
  }
  int64_t view_d = (int64_t)shape.size() - 1;
  int64_t chunk_base_stride = oldstride.empty() ? 1 : oldstride.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = (int64_t)oldshape.size() - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= oldshape[tensor_d];
    if (tensor_d == 0 || (oldshape[tensor_d - 1] != 1 && oldstride[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (tensor_d > 0) {
        chunk_base_stride = oldstride[tensor_d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensor record_view(const OpKind& kind, const Tensor& in, Tensor out, autograd::BackwardFn fn) {
  if (autograd::needs_grad({&in})) autograd::record(kind, out, {in}, std::move(fn));
  return out;
}
}  // namespace

Tensor Tensor::view(Shape shape) const {
  shape = infer_shape("view", std::move(shape), numel(), this->shape());
  Shape st;
  NT_CHECK(view_strides(this->shape(), strides(), shape, st),
           "view: a tensor of shape {} and strides {} cannot be viewed as {} without a copy; use reshape",
           shape_str(this->shape()), shape_str(strides()), shape_str(shape));
  return record_view(kReshape, *this, make_view(*this, shape, st, offset()),
                     [in = this->shape()](const Tensor& g, auto&) { return std::vector<Tensor>{g.reshape(in)}; });
}

Tensor Tensor::reshape(Shape shape) const {
  shape = infer_shape("reshape", std::move(shape), numel(), this->shape());
  Shape st;
  if (view_strides(this->shape(), strides(), shape, st)) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  start = wrap_dim(start, dim(), "flatten"), end = wrap_dim(end, dim(), "flatten");
  NT_CHECK(start <= end, "flatten: start dim {} is after end dim {}", start, end);
  Shape s(shape().begin(), shape().begin() + start);
  int64_t m = 1;
  for (int64_t d = start; d <= end; ++d) m *= size(d);
  s.push_back(m);
  s.insert(s.end(), shape().begin() + end + 1, shape().end());
  return reshape(s);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (dim() == 0 || size(d) != 1) return view(shape());
  Shape s = shape();
  s.erase(s.begin() + d);
  return view(s);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape();
  s.insert(s.begin() + d, 1);
  return reshape(s);
}

Tensor Tensor::permute(std::vector<int64_t> dims) const {
  NT_CHECK((int64_t)dims.size() == dim(), "permute: got {} dims for a tensor of shape {}", dims.size(),
           shape_str(shape()));
  std::vector<int64_t> inverse(dims.size(), -1);
  Shape s(dims.size()), st(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    NT_CHECK(inverse[d] < 0, "permute: dim {} appears twice in {}", d, shape_str(dims));
    inverse[d] = (int64_t)i;
    s[i] = size(d), st[i] = stride(d);
  }
  return record_view(kPermute, *this, make_view(*this, s, st, offset()), [inverse](const Tensor& g, auto&) {
    return std::vector<Tensor>{g.permute(inverse)};
  });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> p(dim());
  std::iota(p.begin(), p.end(), 0);
  if (dim() == 0) return view(shape());
  std::swap(p[wrap_dim(d0, dim(), "transpose")], p[wrap_dim(d1, dim(), "transpose")]);
  return permute(p);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  if (start < 0) start += size(d);
  NT_CHECK(start >= 0 && length >= 0 && start + length <= size(d),
           "narrow: [{}, {}) is out of range for dim {} of size {}", start, start + length, d, size(d));
  Shape s = shape();
  s[d] = length;
  return record_view(kNarrow, *this, make_view(*this, s, strides(), offset() + start * stride(d)),
                     [d, start, length, in = shape(), dt = dtype()](const Tensor& g, auto&) {
                       Tensor dx = zeros(in, dt, g.device());
                       dx.narrow(d, start, length).copy_(g);
                       return std::vector<Tensor>{dx};
                     });
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  const int64_t n = size(d);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n), end = std::clamp<int64_t>(end, start, n);
  return narrow(d, start, end - start);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  if (index < 0) index += size(d);
  NT_CHECK(index >= 0 && index < size(d), "select: index {} is out of range for dim {} of size {}", index, d, size(d));
  return narrow(d, index, 1).squeeze(d);
}

Tensor Tensor::expand(Shape shape) const {
  NT_CHECK((int64_t)shape.size() >= dim(), "expand: shape {} has fewer dims than the tensor's {}", shape_str(shape),
           shape_str(this->shape()));
  const int64_t lead = (int64_t)shape.size() - dim();
  Shape st(shape.size(), 0);
  for (int64_t i = 0; i < (int64_t)shape.size(); ++i) {
    if (i < lead) {
      NT_CHECK(shape[i] >= 0, "expand: new leading dim {} cannot be -1 in {}", i, shape_str(shape));
      continue;
    }
    const int64_t cur = size(i - lead);
    if (shape[i] == -1) shape[i] = cur;
    NT_CHECK(cur == shape[i] || cur == 1, "expand: the tensor of shape {} cannot be expanded to {} (dim {}: {} vs {})",
             shape_str(this->shape()), shape_str(shape), i, cur, shape[i]);
    st[i] = cur == shape[i] ? stride(i - lead) : 0;
  }
  if (shape == this->shape()) return view(shape);
  return record_view(kExpand, *this, make_view(*this, shape, st, offset()), [in = this->shape()](const Tensor& g, auto&) {
    return std::vector<Tensor>{sum_to(g, in)};
  });
}

static Tensor copy_record(const Tensor& in, Tensor out) {
  return record_view(kCopy, in, std::move(out), [](const Tensor& g, auto&) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  {
    autograd::NoGradGuard no_grad;
    out.copy_(*this);
  }
  return copy_record(*this, out);
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = empty(shape(), dt, device());
  {
    autograd::NoGradGuard no_grad;
    out.copy_(*this);
  }
  if (is_floating(dt) && is_floating(dtype()))
    return record_view(kCast, *this, out, [from = dtype()](const Tensor& g, auto&) {
      return std::vector<Tensor>{g.to(from)};
    });
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = empty(shape(), dtype(), dev);
  {
    autograd::NoGradGuard no_grad;
    out.copy_(*this);
  }
  return record_view(kToDevice, *this, out, [from = device()](const Tensor& g, auto&) {
    return std::vector<Tensor>{g.to(from)};
  });
}

}  // namespace nt
