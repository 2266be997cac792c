// Tensor: a strided view (shape, strides, offset in elements) over a shared, refcounted Storage.
// Copying a Tensor aliases it, as in PyTorch; clone() copies the data. View methods (reshape, permute, narrow, ...)
// are differentiable and live in ops/view.cpp; the rest of the ops are free functions in ops/*.h.
#pragma once
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"

namespace nt {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);
// Wraps a possibly negative dim into [0, ndim); the error names `op`.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  bool pinned = false;  // CPU storage in page-locked memory (Tensor::pin_memory)
  // Bumped by every in-place write; saved tensors compare it to detect modification before backward.
  std::atomic<uint64_t> version{0};
  Storage(size_t nbytes, Device device, bool pinned = false);
  ~Storage();
  // Fully sharded training (dist/fsdp.h) frees a parameter's memory between uses and allocates it again before the
  // next one; every tensor sharing the storage sees the same memory. Reading released memory is an error.
  void release();
  void reallocate();  // no-op when allocated
  bool released() const { return data == nullptr && nbytes > 0; }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

namespace autograd {
struct Node;
}

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t dim() const { return (int64_t)impl_->shape.size(); }
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t offset() const { return impl_->offset; }
  int64_t numel() const { return shape_numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  size_t element_size() const { return dtype_size(impl_->dtype); }
  bool is_contiguous() const;
  // Address of element 0 of this view.
  void* data_ptr() const;
  // Typed pointer; throws if T does not match the dtype.
  template <class T> T* data() const {
    NT_CHECK(dtype_of<T>() == dtype(), "data<{}>(): tensor has dtype {}", dtype_name(dtype_of<T>()),
             dtype_name(dtype()));
    return static_cast<T*>(data_ptr());
  }

  // ---- views and copies (differentiable; ops/view.cpp) ----
  Tensor reshape(Shape shape) const;  // a view when the strides allow, else a copy
  Tensor view(Shape shape) const;     // a view, or an error when the strides do not allow one
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor permute(std::vector<int64_t> dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor mT() const { return transpose(-2, -1); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor select(int64_t dim, int64_t index) const;  // narrow to one and drop the dim
  Tensor expand(Shape shape) const;                 // -1 keeps a dim; new leading dims allowed
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  // A contiguous copy in page-locked host memory (as PyTorch's pin_memory; not recorded by autograd), from which
  // uploads to a GPU run asynchronously (cuda::Upload). Needs a CUDA device.
  Tensor pin_memory() const;
  bool is_pinned() const { return impl_->storage->pinned; }

  // ---- element access ----
  double item() const;  // one-element tensors only
  std::vector<double> to_vector() const;
  template <class T> std::vector<T> to_vector_as() const;

  // ---- in-place writes (not recorded by autograd; bump the storage version) ----
  Tensor& copy_(const Tensor& src);  // broadcasting, dtype-converting, cross-device
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }

  // ---- autograd ----
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  Tensor grad() const { return impl_->grad ? Tensor(impl_->grad) : Tensor(); }
  void set_grad(const Tensor& g) const { impl_->grad = g.impl_; }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl_->grad_fn; }
  // Same storage, no history, requires_grad off.
  Tensor detach() const;
  // Reverse-mode gradient of this tensor into the .grad of every leaf that requires grad.
  // grad defaults to 1 for a one-element tensor; retain_graph keeps the saved tensors for another backward.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// A new tensor viewing `base`'s storage with the given geometry (no autograd history; used by view ops).
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset);

// ---- factories ----
Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = kCPU);
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::i64, Device device = kCPU);
inline Tensor arange(int64_t n, DType dtype = DType::i64, Device device = kCPU) {
  return arange(0.0, (double)n, 1.0, dtype, device);
}
Tensor empty_like(const Tensor& t);
// Uninitialized CPU tensor in page-locked memory (see Tensor::pin_memory). Needs a CUDA device.
Tensor empty_pinned(const Shape& shape, DType dtype = DType::f32);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
// A tensor holding `values` (converted to dtype) with the given shape.
Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype = DType::f32,
                   Device device = kCPU);
// Zero-dimensional tensor.
Tensor scalar_tensor(double value, DType dtype = DType::f32, Device device = kCPU);

// ---- random numbers (tensor/random.cpp) ----
// Counter-based: a draw of n values consumes a fixed number of Philox blocks starting at `offset`, so the same
// (seed, offset) gives the same numbers on every device.
struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;
  explicit Generator(uint64_t s = 0) : seed(s) {}
  // Reserves `blocks` Philox blocks and returns the first one.
  uint64_t advance(uint64_t blocks) {
    const uint64_t o = offset;
    offset += blocks;
    return o;
  }
};
Generator& default_generator();
void manual_seed(uint64_t seed);
Tensor rand(const Shape& shape, DType dtype = DType::f32, Device device = kCPU, Generator* gen = nullptr);
Tensor randn(const Shape& shape, DType dtype = DType::f32, Device device = kCPU, Generator* gen = nullptr);
// Uniform integers in [low, high).
Tensor randint(int64_t low, int64_t high, const Shape& shape, DType dtype = DType::i64, Device device = kCPU,
               Generator* gen = nullptr);

// ---- printing (tensor/format.cpp) ----
std::string to_string(const Tensor& t);

}  // namespace nt

template <> struct fmt::formatter<nt::Tensor> : fmt::formatter<std::string> {
  template <class Ctx> auto format(const nt::Tensor& t, Ctx& ctx) const {
    return fmt::formatter<std::string>::format(nt::to_string(t), ctx);
  }
};
