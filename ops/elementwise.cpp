// Elementwise ops: forward, backward right below, one device switch each.
// Unary backward uses the dedicated gradient kernel (unary_grad); binary backward is written with other ops and
// then summed over the broadcast dims (sum_to).
#include "ops/elementwise.h"

#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "ops/reduce.h"

namespace nt {
namespace cpu {
void unary_forward(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1);
void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx, double p0,
                    double p1);
void binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void where_forward(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);
}  // namespace cpu

NT_REGISTER_OP(kNeg, "neg", true);
NT_REGISTER_OP(kExp, "exp", true);
NT_REGISTER_OP(kLog, "log", true);
NT_REGISTER_OP(kSqrt, "sqrt", true);
NT_REGISTER_OP(kRsqrt, "rsqrt", true);
NT_REGISTER_OP(kTanh, "tanh", true);
NT_REGISTER_OP(kSigmoid, "sigmoid", true);
NT_REGISTER_OP(kRelu, "relu", true);
NT_REGISTER_OP(kGeluTanh, "gelu_tanh", true);
NT_REGISTER_OP(kGeluErf, "gelu_erf", true);
NT_REGISTER_OP(kSilu, "silu", true);
NT_REGISTER_OP(kPowScalar, "pow_scalar", true);
NT_REGISTER_OP(kClamp, "clamp", true);
NT_REGISTER_OP(kAdd, "add", true);
NT_REGISTER_OP(kSub, "sub", true);
NT_REGISTER_OP(kMul, "mul", true);
NT_REGISTER_OP(kDiv, "div", true);
NT_REGISTER_OP(kPow, "pow", true);
NT_REGISTER_OP(kCompare, "compare", false);
NT_REGISTER_OP(kWhere, "where", true);
NT_REGISTER_OP(kMaskedFill, "masked_fill", true);

// ---------------------------------------------------------------- unary

Tensor unary_grad(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, double p0, double p1) {
  Tensor dx = empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::unary_backward(op, x, y, dy.to(x.dtype()), dx, p0, p1);
  } else {
    const Tensor xc = x.contiguous(), yc = y.contiguous(), gc = dy.to(x.dtype()).expand(x.shape()).contiguous();
    NT_ON_CUDA("unary_grad", cuda::unary_backward(op, x.dtype(), xc.data_ptr(), yc.data_ptr(), gc.data_ptr(),
                                                  dx.data_ptr(), dx.numel(), p0, p1, stream_of(dx)));
  }
  return dx;
}

static Tensor unary(const OpKind& kind, UnaryOp op, const Tensor& x, double p0 = 0, double p1 = 0) {
  check_floating(kind.name, x, "x");
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::unary_forward(op, x, y, p0, p1);
  } else {
    const Tensor xc = x.detach().contiguous();
    NT_ON_CUDA(kind.name, cuda::unary_forward(op, x.dtype(), xc.data_ptr(), y.data_ptr(), y.numel(), p0, p1, stream_of(y)));
  }
  if (autograd::needs_grad({&x})) {
    autograd::record(kind, y, {x}, [op, p0, p1, sx = autograd::Saved(x), sy = autograd::Saved(y)](const Tensor& g, auto&) {
      return std::vector<Tensor>{unary_grad(op, sx.get(), sy.get(), g, p0, p1)};
    });
  }
  return y;
}

Tensor neg(const Tensor& x) { return unary(kNeg, UnaryOp::neg, x); }
Tensor exp(const Tensor& x) { return unary(kExp, UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary(kLog, UnaryOp::log, x); }
Tensor sqrt(const Tensor& x) { return unary(kSqrt, UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(kRsqrt, UnaryOp::rsqrt, x); }
Tensor tanh(const Tensor& x) { return unary(kTanh, UnaryOp::tanh, x); }
Tensor sigmoid(const Tensor& x) { return unary(kSigmoid, UnaryOp::sigmoid, x); }
Tensor relu(const Tensor& x) { return unary(kRelu, UnaryOp::relu, x); }
Tensor gelu(const Tensor& x, GeluApprox approx) {
  return approx == GeluApprox::tanh ? unary(kGeluTanh, UnaryOp::gelu_tanh, x) : unary(kGeluErf, UnaryOp::gelu_erf, x);
}
Tensor silu(const Tensor& x) { return unary(kSilu, UnaryOp::silu, x); }
Tensor pow(const Tensor& x, double exponent) { return unary(kPowScalar, UnaryOp::pow_scalar, x, exponent); }
Tensor clamp(const Tensor& x, double lo, double hi) {
  NT_CHECK(lo <= hi, "clamp: lo ({}) must not exceed hi ({})", lo, hi);
  return unary(kClamp, UnaryOp::clamp, x, lo, hi);
}

// ---------------------------------------------------------------- binary

Tensor scalar_like(double v, const Tensor& like) { return scalar_tensor(v, like.dtype(), like.device()); }

static Tensor binary_raw(const OpKind& kind, BinaryOp op, const Tensor& a, const Tensor& b) {
  check_same_dtype(kind.name, a, "a", b, "b");
  check_same_device(kind.name, a, b);
  const Shape shape = broadcast_shapes(kind.name, a.shape(), b.shape());
  Tensor out = empty(shape, is_comparison(op) ? DType::boolean : a.dtype(), a.device());
  if (a.device().is_cpu())
    cpu::binary_forward(op, a, b, out);
  else
    NT_ON_CUDA(kind.name, cuda::binary_forward(op, a.dtype(), a.data_ptr(), broadcast_layout(a, shape, kind.name),
                                               b.data_ptr(), broadcast_layout(b, shape, kind.name), out.data_ptr(),
                                               out.numel(), stream_of(out)));
  return out;
}

// Records `out = a op b` with grads (da, db) computed by `grads` from the incoming gradient, then summed to the
// input shapes.
template <class F>
static Tensor binary(const OpKind& kind, BinaryOp op, const Tensor& a, const Tensor& b, F grads) {
  Tensor out = binary_raw(kind, op, a, b);
  if (autograd::needs_grad({&a, &b})) {
    check_floating(kind.name, a, "a");
    autograd::record(kind, out, {a, b},
                     [grads, sa = autograd::Saved(a), sb = autograd::Saved(b), sa_shape = a.shape(),
                      sb_shape = b.shape()](const Tensor& g, const std::vector<bool>& needs) {
                       auto [da, db] = grads(g, sa, sb, needs);
                       return std::vector<Tensor>{needs[0] ? sum_to(da, sa_shape) : Tensor(),
                                                  needs[1] ? sum_to(db, sb_shape) : Tensor()};
                     });
  }
  return out;
}

using autograd::Saved;
using Needs = std::vector<bool>;
using GradPair = std::pair<Tensor, Tensor>;

Tensor add(const Tensor& a, const Tensor& b) {
  return binary(kAdd, BinaryOp::add, a, b, [](const Tensor& g, const Saved&, const Saved&, const Needs&) {
    return GradPair{g, g};
  });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary(kSub, BinaryOp::sub, a, b, [](const Tensor& g, const Saved&, const Saved&, const Needs& n) {
    return GradPair{g, n[1] ? neg(g) : Tensor()};
  });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary(kMul, BinaryOp::mul, a, b, [](const Tensor& g, const Saved& a, const Saved& b, const Needs& n) {
    return GradPair{n[0] ? mul(g, b.get()) : Tensor(), n[1] ? mul(g, a.get()) : Tensor()};
  });
}
Tensor div(const Tensor& a, const Tensor& b) {
  return binary(kDiv, BinaryOp::div, a, b, [](const Tensor& g, const Saved& a, const Saved& b, const Needs& n) {
    const Tensor ga = div(g, b.get());
    return GradPair{n[0] ? ga : Tensor(), n[1] ? neg(mul(ga, div(a.get(), b.get()))) : Tensor()};
  });
}
Tensor pow(const Tensor& a, const Tensor& b) {
  return binary(kPow, BinaryOp::pow, a, b, [](const Tensor& g, const Saved& a, const Saved& b, const Needs& n) {
    const Tensor y = pow(a.get(), b.get());
    Tensor da, db;
    if (n[0]) da = mul(g, mul(b.get(), pow(a.get(), sub(b.get(), scalar_like(1, b.get())))));
    if (n[1]) db = mul(g, mul(y, log(a.get())));
    return GradPair{da, db};
  });
}

Tensor eq(const Tensor& a, const Tensor& b) { return binary_raw(kCompare, BinaryOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary_raw(kCompare, BinaryOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_raw(kCompare, BinaryOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_raw(kCompare, BinaryOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_raw(kCompare, BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_raw(kCompare, BinaryOp::ge, a, b); }

// ---------------------------------------------------------------- select

static Tensor where_raw(const Tensor& cond, const Tensor& a, const Tensor& b, const char* op) {
  NT_CHECK(cond.dtype() == DType::boolean, "{}: cond/mask has dtype {}, expected bool", op, dtype_name(cond.dtype()));
  check_same_dtype(op, a, "a", b, "b");
  check_same_device(op, a, b);
  check_same_device(op, cond, a);
  const Shape shape = broadcast_shapes(op, broadcast_shapes(op, cond.shape(), a.shape()), b.shape());
  Tensor out = empty(shape, a.dtype(), a.device());
  if (a.device().is_cpu())
    cpu::where_forward(cond, a, b, out);
  else
    NT_ON_CUDA(op, cuda::where_forward(a.dtype(), static_cast<const bool*>(cond.data_ptr()),
                                       broadcast_layout(cond, shape, op), a.data_ptr(), broadcast_layout(a, shape, op),
                                       b.data_ptr(), broadcast_layout(b, shape, op), out.data_ptr(), out.numel(),
                                       stream_of(out)));
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Tensor out = where_raw(cond, a, b, "where");
  if (autograd::needs_grad({&a, &b})) {
    autograd::record(kWhere, out, {a, b},
                     [c = Saved(cond), as = a.shape(), bs = b.shape()](const Tensor& g, const Needs& n) {
                       const Tensor zero = scalar_like(0, g);
                       return std::vector<Tensor>{n[0] ? sum_to(where_raw(c.get(), g, zero, "where"), as) : Tensor(),
                                                  n[1] ? sum_to(where_raw(c.get(), zero, g, "where"), bs) : Tensor()};
                     });
  }
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  NT_CHECK(broadcast_shapes("masked_fill", mask.shape(), x.shape()) == x.shape(),
           "masked_fill: mask of shape {} does not broadcast to x's shape {}", shape_str(mask.shape()),
           shape_str(x.shape()));
  Tensor out = where_raw(mask, scalar_like(value, x), x, "masked_fill");
  if (autograd::needs_grad({&x})) {
    autograd::record(kMaskedFill, out, {x}, [m = Saved(mask)](const Tensor& g, const Needs&) {
      return std::vector<Tensor>{where_raw(m.get(), scalar_like(0, g), g, "masked_fill")};
    });
  }
  return out;
}

}  // namespace nt
