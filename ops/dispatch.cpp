#include "ops/dispatch.h"

namespace nt {
void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  NT_CHECK(a.device() == b.device(), "{}: tensors are on different devices ({} and {})", op, a.device().str(),
           b.device().str());
}
void check_same_dtype(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name) {
  NT_CHECK(a.dtype() == b.dtype(), "{}: {} has dtype {} but {} has dtype {} (expected the same dtype)", op, a_name,
           dtype_name(a.dtype()), b_name, dtype_name(b.dtype()));
}
void check_floating(const char* op, const Tensor& t, const char* name) {
  NT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64 || t.dtype() == DType::bf16,
           "{}: {} has dtype {}, expected f32, f64 or bf16", op, name, dtype_name(t.dtype()));
}
void check_index(const char* op, const Tensor& t, const char* name) {
  NT_CHECK(is_integral(t.dtype()), "{}: {} has dtype {}, expected i32 or i64", op, name, dtype_name(t.dtype()));
}
void check_dim(const char* op, const Tensor& t, const char* name, int64_t expected_dim) {
  NT_CHECK(t.dim() == expected_dim, "{}: {} must have {} dims, got shape {}", op, name, expected_dim,
           shape_str(t.shape()));
}
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    NT_CHECK(da == db || da == 1 || db == 1, "{}: shapes {} and {} cannot be broadcast together (dim {}: {} vs {})",
             op, shape_str(a), shape_str(b), i, da, db);
    out[i] = da == 1 ? db : da;
  }
  return out;
}
void no_cuda_kernel(const char* op) {
  throw Error(fmt::format("{}: no CUDA kernel yet for this op (move the tensors to the CPU)", op));
}
}  // namespace nt

#if NT_CUDA
#include <cuda_runtime.h>

#include "cuda/allocator.h"
#include "cuda/check.h"

namespace nt {
cuda::Strided layout_of(const Tensor& t, const char* op) { return broadcast_layout(t, t.shape(), op); }
cuda::Strided broadcast_layout(const Tensor& t, const Shape& shape, const char* op) {
  NT_CHECK((int)shape.size() <= cuda::kMaxDims, "{}: CUDA kernels take at most {} dims, got shape {}", op,
           cuda::kMaxDims, shape_str(shape));
  cuda::Strided l;
  l.nd = (int)shape.size();
  const int64_t lead = (int64_t)shape.size() - t.dim();
  for (int64_t d = 0; d < (int64_t)shape.size(); ++d) {
    l.size[d] = shape[d];
    l.stride[d] = d < lead || t.size(d - lead) == 1 ? 0 : t.stride(d - lead);
  }
  return l;
}
cudaStream_t stream_of(const Tensor& t) {
  NT_CUDA_CHECK(cudaSetDevice(t.device().index));
  return cuda::current_stream(t.device().index);
}
DeviceFlag::DeviceFlag(const Tensor& like) : device_(like.device().index) { ptr_ = cuda::acquire_check_flag(device_); }
DeviceFlag::~DeviceFlag() {
  if (!deferred_) try {
      cuda::defer_check(device_, ptr_, {});  // a kernel may still hold it: back to the pool at the next sync
    } catch (...) {
    }
}
void DeviceFlag::defer(std::string message) {
  NT_CHECK(!deferred_, "DeviceFlag::check: called twice");
  deferred_ = true;
  cuda::defer_check(device_, ptr_, std::move(message));
}
}  // namespace nt
#endif
