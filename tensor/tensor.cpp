// Storage, tensor geometry, factories, element access and in-place writes.
#include "tensor/tensor.h"

#include <cstdlib>
#include <cstring>

#include "autograd/graph.h"
#include "cuda/memory.h"
#include "ops/cpu/copy.h"
#include "ops/dispatch.h"
#include "tensor/convert.h"

namespace nt {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f64: return "f64";
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f8e4m3: return "f8e4m3";
    case DType::f8e5m2: return "f8e5m2";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::boolean: return "bool";
  }
  return "?";
}
void throw_bad_dtype(const char* op, DType t, const char* expected) {
  throw Error(fmt::format("{}: dtype {} is not supported (expected {})", op, dtype_name(t), expected));
}
size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: return 2;
    case DType::f8e4m3: case DType::f8e5m2: case DType::boolean: return 1;
  }
  return 0;
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}
Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t d = (int64_t)s.size() - 1; d >= 0; --d) {
    st[d] = acc;
    acc *= std::max<int64_t>(s[d], 1);
  }
  return st;
}
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t n = std::max<int64_t>(ndim, 1);
  NT_CHECK(dim >= -n && dim < n, "{}: dim {} is out of range for a tensor of {} dims (expected {} to {})", op, dim,
           ndim, -n, n - 1);
  return dim < 0 ? dim + n : dim;
}

Storage::Storage(size_t n, Device dev, bool pin) : nbytes(n), device(dev), pinned(pin) {
  NT_CHECK(!pin || dev.is_cpu(), "pinned memory is host memory, not {}", dev.str());
  reallocate();
}
void Storage::reallocate() {
  if (data) return;
  const size_t n = nbytes;
  const Device dev = device;
  if (pinned) {
    data = cuda::host_malloc_pinned(n);
  } else if (dev.is_cpu()) {
    // 64-byte aligned so vectorized loops and BLAS get aligned rows; at least 64 bytes so empty tensors own memory.
    const size_t sz = std::max<size_t>(64, (n + 63) / 64 * 64);
    data = std::aligned_alloc(64, sz);
    NT_CHECK(data, "out of host memory: asked for {} bytes", n);
  } else {
    NT_CHECK(dev.index < cuda::device_count(), "no CUDA device {}: {} available", dev.str(), cuda::device_count());
    data = cuda::device_malloc(std::max<size_t>(n, 1), dev.index);
  }
}
Storage::~Storage() { release(); }
void Storage::release() {
  if (!data) return;
  if (pinned)
    cuda::host_free_pinned(data);
  else if (device.is_cpu())
    std::free(data);
  else
    cuda::device_free(data, device.index);
  data = nullptr;
}

int64_t Tensor::size(int64_t d) const { return impl_->shape[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return impl_->strides[wrap_dim(d, dim(), "stride")]; }
bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (impl_->shape[d] == 1) continue;
    if (impl_->strides[d] != expect) return false;
    expect *= impl_->shape[d];
  }
  return true;
}
void* Tensor::data_ptr() const {
  NT_CHECK(!impl_->storage->released(), "tensor of shape {}: its memory is released (a fully sharded parameter "
           "outside its unit's forward and backward; gather it first, e.g. ShardedAdamW::gather_params())",
           shape_str(shape()));
  return static_cast<char*>(impl_->storage->data) + impl_->offset * (int64_t)element_size();
}

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(impl);
}

Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) NT_CHECK(d >= 0, "empty: negative dimension in shape {}", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}
Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor empty_pinned(const Shape& shape, DType dtype) {
  NT_CHECK(cuda::available(), "pin_memory: page-locked memory needs a CUDA device (found none)");
  for (int64_t d : shape) NT_CHECK(d >= 0, "empty_pinned: negative dimension in shape {}", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), kCPU, /*pinned=*/true);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor Tensor::pin_memory() const {
  Tensor out = empty_pinned(shape(), dtype());
  autograd::NoGradGuard no_grad;
  out.copy_(*this);
  return out;
}

Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype(), t.device()); }
Tensor scalar_tensor(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  NT_CHECK((int64_t)values.size() == shape_numel(shape), "from_vector: {} values do not fill shape {} ({} elements)",
           values.size(), shape_str(shape), shape_numel(shape));
  Tensor host = empty(shape, DType::f64);
  if (!values.empty()) std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(double));
  return host.to(dtype).to(device);
}

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  NT_CHECK(step != 0, "arange: step must be non-zero");
  const int64_t n = std::max<int64_t>(0, (int64_t)std::ceil((end - start) / step));
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + (double)i * step;
  return from_vector(v, {n}, dtype, device);
}

Tensor& Tensor::copy_(const Tensor& src) {
  NT_CHECK(!(autograd::grad_enabled() && requires_grad()), "copy_: in-place write to a tensor that requires grad; "
           "do it under a no-grad scope");
  // src must broadcast to this tensor's shape.
  NT_CHECK(src.dim() <= dim(), "copy_: source of shape {} does not broadcast to {}", shape_str(src.shape()),
           shape_str(shape()));
  for (int64_t d = 0; d < src.dim(); ++d) {
    const int64_t sd = src.size(d), td = size(dim() - src.dim() + d);
    NT_CHECK(sd == td || sd == 1, "copy_: source of shape {} does not broadcast to {}", shape_str(src.shape()),
             shape_str(shape()));
  }
  if (device().is_cpu() && src.device().is_cpu()) {
    cpu::copy(*this, src);
  } else if (device().is_cpu()) {
    // CUDA -> CPU: bring the span of elements the view covers, then copy (and convert) on the host.
    int64_t span = 1;
    for (int64_t d = 0; d < src.dim(); ++d) span += (src.size(d) - 1) * src.stride(d);
    if (src.numel() == 0) span = 0;
    Tensor h = empty({span}, src.dtype());
    if (span) cuda::copy_d2h(h.data_ptr(), src.data_ptr(), span * src.element_size(), src.device().index);
    cpu::copy(*this, make_view(h, src.shape(), src.strides(), 0));
  } else if (src.device() == device()) {
    NT_ON_CUDA("copy_", cuda::copy(dtype(), data_ptr(), layout_of(*this, "copy_"), src.dtype(), src.data_ptr(),
                                   broadcast_layout(src, shape(), "copy_"), numel(), stream_of(*this)));
  } else {
    // From the host (or another GPU, through the host): upload contiguously in the source dtype, then let the
    // device copy convert and scatter into this view.
    const Tensor h = src.device().is_cpu() ? src : src.to(kCPU);
    Tensor hc = empty(h.shape(), h.dtype());
    cpu::copy(hc, h);
    if (hc.dtype() == dtype() && hc.shape() == shape() && is_contiguous()) {
      cuda::copy_h2d(data_ptr(), hc.data_ptr(), numel() * element_size(), device().index);
    } else {
      Tensor staged = empty(hc.shape(), hc.dtype(), device());
      cuda::copy_h2d(staged.data_ptr(), hc.data_ptr(), hc.numel() * hc.element_size(), device().index);
      copy_(staged);
    }
  }
  impl_->storage->version++;
  return *this;
}

Tensor& Tensor::fill_(double value) {
  NT_CHECK(!(autograd::grad_enabled() && requires_grad()), "fill_: in-place write to a tensor that requires grad; "
           "do it under a no-grad scope");
  if (device().is_cpu())
    cpu::fill(*this, value);
  else
    NT_ON_CUDA("fill_", cuda::fill(dtype(), data_ptr(), layout_of(*this, "fill_"), numel(), value, stream_of(*this)));
  impl_->storage->version++;
  return *this;
}

std::vector<double> Tensor::to_vector() const {
  Tensor h = to(kCPU).to(DType::f64).contiguous();
  const double* p = static_cast<const double*>(h.data_ptr());
  return std::vector<double>(p, p + h.numel());
}
template <class T> std::vector<T> Tensor::to_vector_as() const {
  Tensor h = to(kCPU).to(dtype_of<T>()).contiguous();
  const T* p = static_cast<const T*>(h.data_ptr());
  return std::vector<T>(p, p + h.numel());
}
template std::vector<float> Tensor::to_vector_as<float>() const;
template std::vector<double> Tensor::to_vector_as<double>() const;
template std::vector<int32_t> Tensor::to_vector_as<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector_as<int64_t>() const;

double Tensor::item() const {
  NT_CHECK(numel() == 1, "item: tensor has {} elements (shape {}), expected exactly one", numel(), shape_str(shape()));
  return to_vector()[0];
}

}  // namespace nt
