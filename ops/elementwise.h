// Elementwise ops with broadcasting. Binary ops need both tensors to have one dtype (a scalar takes the tensor's).
#pragma once
#include "ops/elementwise_math.h"
#include "tensor/tensor.h"

namespace nt {
// unary
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
enum class GeluApprox { none, tanh };
Tensor gelu(const Tensor& x, GeluApprox approx = GeluApprox::none);
Tensor silu(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor clamp(const Tensor& x, double lo, double hi);
// binary
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
// comparisons (bool result, not differentiable)
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
// select: cond ? a : b (cond is bool, all three broadcast)
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// x with `value` wherever mask (bool, broadcast to x) is true
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

// The scalar is converted to the tensor's dtype and device.
Tensor scalar_like(double v, const Tensor& like);
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, scalar_like(b, a)); }
inline Tensor operator-(const Tensor& a, double b) { return sub(a, scalar_like(b, a)); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, scalar_like(b, a)); }
inline Tensor operator/(const Tensor& a, double b) { return div(a, scalar_like(b, a)); }
inline Tensor operator+(double a, const Tensor& b) { return add(scalar_like(a, b), b); }
inline Tensor operator-(double a, const Tensor& b) { return sub(scalar_like(a, b), b); }
inline Tensor operator*(double a, const Tensor& b) { return mul(scalar_like(a, b), b); }
inline Tensor operator/(double a, const Tensor& b) { return div(scalar_like(a, b), b); }

// Gradient kernel of a unary op: dx from (x, y, dy). Not differentiable itself.
Tensor unary_grad(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, double p0 = 0, double p1 = 0);
}  // namespace nt
