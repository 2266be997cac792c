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
