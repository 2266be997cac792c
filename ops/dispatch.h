// Helpers shared by the op files: argument checks with uniform messages, and the error for an op whose CUDA
// kernel does not exist yet.
#pragma once
#include "tensor/tensor.h"

namespace nt {
// Both tensors on one device; the message names the op and both devices.
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
// Same dtype; the message names the op, the argument names and both dtypes.
void check_same_dtype(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name);
void check_floating(const char* op, const Tensor& t, const char* name);
void check_index(const char* op, const Tensor& t, const char* name);
void check_dim(const char* op, const Tensor& t, const char* name, int64_t expected_dim);
// The shape two shapes broadcast to; an error naming the op and both shapes if they do not.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
[[noreturn]] void no_cuda_kernel(const char* op);
}  // namespace nt

// ---- CUDA glue (only when CUDA is compiled in) ----
// NT_ON_CUDA("op", call): the call when CUDA is compiled in, else the no-kernel error naming the op.
#if NT_CUDA
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#define NT_ON_CUDA(opname, ...) __VA_ARGS__
namespace nt {
// t's geometry (at most cuda::kMaxDims dims; more is an error naming the op).
cuda::Strided layout_of(const Tensor& t, const char* op);
// t broadcast to `shape` (stride 0 on broadcast dims).
cuda::Strided broadcast_layout(const Tensor& t, const Shape& shape, const char* op);
// The current stream of t's device (and that device made current).
cudaStream_t stream_of(const Tensor& t);
// A flag a kernel sets on a bad index, checked without stalling the GPU (cuda/runtime.h): check(fmt, args...)
// after the launch defers the message to the device's next synchronization (or checks at once under
// NT_SYNC_CHECKS=1). A flag never checked is released at that synchronization without a message.
class DeviceFlag {
 public:
  explicit DeviceFlag(const Tensor& like);
  ~DeviceFlag();
  DeviceFlag(const DeviceFlag&) = delete;
  DeviceFlag& operator=(const DeviceFlag&) = delete;
  int* get() const { return ptr_; }
  template <class... A>
  void check(fmt::format_string<A...> f, A&&... a) {
    defer(fmt::format(f, std::forward<A>(a)...));
  }

 private:
  void defer(std::string message);
  int* ptr_ = nullptr;
  int device_ = 0;
  bool deferred_ = false;
};
}  // namespace nt
#else
#define NT_ON_CUDA(opname, ...) ::nt::no_cuda_kernel(opname)
#endif
