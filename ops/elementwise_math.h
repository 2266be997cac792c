// The math of every elementwise op, written once for the CPU loops and the CUDA kernels (ggml/flashinfer style).
// A = the accumulation type (float for f32/bf16, double for f64, int64 for integers).
// unary_fwd computes y from x; unary_bwd computes dx from (x, y, dy); p0/p1 are the op's scalar parameters
// (pow: exponent; clamp: lo, hi).
#pragma once
#include <cmath>
#include <type_traits>
#include <utility>

#include "tensor/dtype.h"

namespace nt {

enum class UnaryOp : unsigned char { neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, gelu_tanh, gelu_erf, silu, pow_scalar, clamp };
enum class BinaryOp : unsigned char { add, sub, mul, div, pow, eq, ne, lt, le, gt, ge };

inline bool is_comparison(BinaryOp op) { return op >= BinaryOp::eq; }

template <> struct acc_type<int32_t> { using type = int64_t; };
template <> struct acc_type<int64_t> { using type = int64_t; };
template <> struct acc_type<bool> { using type = int64_t; };

namespace math {
template <class A> NT_HD A sigmoid(A x) { return A(1) / (A(1) + std::exp(-x)); }
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCoef = 0.044715;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
}  // namespace math

template <UnaryOp OP, class A> NT_HD A unary_fwd(A x, A p0, A p1) {
  using namespace math;
  if constexpr (OP == UnaryOp::neg) return -x;
  else if constexpr (OP == UnaryOp::exp) return std::exp(x);
  else if constexpr (OP == UnaryOp::log) return std::log(x);
  else if constexpr (OP == UnaryOp::sqrt) return std::sqrt(x);
  else if constexpr (OP == UnaryOp::rsqrt) return A(1) / std::sqrt(x);
  else if constexpr (OP == UnaryOp::tanh) return std::tanh(x);
  else if constexpr (OP == UnaryOp::sigmoid) return math::sigmoid(x);
  else if constexpr (OP == UnaryOp::relu) return x > A(0) ? x : A(0);
  else if constexpr (OP == UnaryOp::gelu_tanh) return A(0.5) * x * (A(1) + std::tanh(A(kSqrt2OverPi) * (x + A(kGeluCoef) * x * x * x)));
  else if constexpr (OP == UnaryOp::gelu_erf) return A(0.5) * x * (A(1) + std::erf(x * A(kInvSqrt2)));
  else if constexpr (OP == UnaryOp::silu) return x * math::sigmoid(x);
  else if constexpr (OP == UnaryOp::pow_scalar) return std::pow(x, p0);
  else if constexpr (OP == UnaryOp::clamp) return x < p0 ? p0 : (x > p1 ? p1 : x);
}

template <UnaryOp OP, class A> NT_HD A unary_bwd(A x, A y, A dy, A p0, A p1) {
  using namespace math;
  if constexpr (OP == UnaryOp::neg) return -dy;
  else if constexpr (OP == UnaryOp::exp) return dy * y;
  else if constexpr (OP == UnaryOp::log) return dy / x;
  else if constexpr (OP == UnaryOp::sqrt) return dy / (A(2) * y);
  else if constexpr (OP == UnaryOp::rsqrt) return A(-0.5) * dy * y * y * y;
  else if constexpr (OP == UnaryOp::tanh) return dy * (A(1) - y * y);
  else if constexpr (OP == UnaryOp::sigmoid) return dy * y * (A(1) - y);
  else if constexpr (OP == UnaryOp::relu) return x > A(0) ? dy : A(0);
  else if constexpr (OP == UnaryOp::gelu_tanh) {
    const A inner = A(kSqrt2OverPi) * (x + A(kGeluCoef) * x * x * x);
    const A t = std::tanh(inner);
    const A dinner = A(kSqrt2OverPi) * (A(1) + A(3 * kGeluCoef) * x * x);
    return dy * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * dinner);
  } else if constexpr (OP == UnaryOp::gelu_erf) {
    return dy * (A(0.5) * (A(1) + std::erf(x * A(kInvSqrt2))) + x * std::exp(A(-0.5) * x * x) * A(kInvSqrt2Pi));
  } else if constexpr (OP == UnaryOp::silu) {
    const A s = math::sigmoid(x);
    return dy * s * (A(1) + x * (A(1) - s));
  } else if constexpr (OP == UnaryOp::pow_scalar) return dy * p0 * std::pow(x, p0 - A(1));
  else if constexpr (OP == UnaryOp::clamp) return (x >= p0 && x <= p1) ? dy : A(0);
}

template <BinaryOp OP, class A> NT_HD A binary_fwd(A a, A b) {
  if constexpr (OP == BinaryOp::add) return a + b;
  else if constexpr (OP == BinaryOp::sub) return a - b;
  else if constexpr (OP == BinaryOp::mul) return a * b;
  else if constexpr (OP == BinaryOp::div) return a / b;
  else if constexpr (OP == BinaryOp::pow) {
    if constexpr (std::is_integral_v<A>) return (A)std::pow((double)a, (double)b);
    else return std::pow(a, b);
  } else if constexpr (OP == BinaryOp::eq) return A(a == b);
  else if constexpr (OP == BinaryOp::ne) return A(a != b);
  else if constexpr (OP == BinaryOp::lt) return A(a < b);
  else if constexpr (OP == BinaryOp::le) return A(a <= b);
  else if constexpr (OP == BinaryOp::gt) return A(a > b);
  else if constexpr (OP == BinaryOp::ge) return A(a >= b);
}

// Calls f(std::integral_constant<UnaryOp, op>{}) so a runtime op selects a compile-time instantiation.
template <class F> void dispatch_unary(UnaryOp op, F&& f) {
#define NT_U(o) case UnaryOp::o: f(std::integral_constant<UnaryOp, UnaryOp::o>{}); break;
  switch (op) { NT_U(neg) NT_U(exp) NT_U(log) NT_U(sqrt) NT_U(rsqrt) NT_U(tanh) NT_U(sigmoid) NT_U(relu)
                NT_U(gelu_tanh) NT_U(gelu_erf) NT_U(silu) NT_U(pow_scalar) NT_U(clamp) }
#undef NT_U
}
template <class F> void dispatch_binary(BinaryOp op, F&& f) {
#define NT_B(o) case BinaryOp::o: f(std::integral_constant<BinaryOp, BinaryOp::o>{}); break;
  switch (op) { NT_B(add) NT_B(sub) NT_B(mul) NT_B(div) NT_B(pow) NT_B(eq) NT_B(ne) NT_B(lt) NT_B(le) NT_B(gt) NT_B(ge) }
#undef NT_B
}

}  // namespace nt
