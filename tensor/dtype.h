// Element types and their conversions. Everything here is usable from host and device code
// (NT_HD), so the CPU reference and the CUDA kernels round bf16 and fp8 identically.
//
// bf16: float truncated to 16 bits with round-to-nearest-even, NaN kept NaN.
// fp8 (OCP FP8 spec, v1.0): e4m3 (bias 7, no infinities, max 448, NaN = S.1111.111) and e5m2 (bias 15,
// IEEE-like, max 57344). Conversion from wider types rounds to nearest even and saturates: any finite value or
// infinity beyond the largest finite value becomes +-max (the spec's "saturating" mode); NaN stays NaN.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__CUDACC__)
#define NT_HD __host__ __device__ __forceinline__
#else
#define NT_HD inline
#endif

namespace nt {

enum class DType : uint8_t { f64, f32, bf16, f8e4m3, f8e5m2, i32, i64, boolean };
inline constexpr int kNumDTypes = 8;

std::string_view dtype_name(DType t);
// Throws nt::Error "<op>: dtype <t> is not supported (expected <expected>)". Declared here, free of fmt, so the
// dispatch macros below serve .cpp and .cu files alike.
[[noreturn]] void throw_bad_dtype(const char* op, DType t, const char* expected);
size_t dtype_size(DType t);
inline bool is_floating(DType t) { return t <= DType::f8e5m2; }
inline bool is_integral(DType t) { return t == DType::i32 || t == DType::i64; }

namespace detail {
NT_HD uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
NT_HD float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
// Encode |x| (finite, >= 0) into an fp8 code with E exponent bits and M mantissa bits, rounding to nearest even.
// Codes are monotone in the value, so a mantissa carry naturally rolls into the exponent field.
template <int M, int Bias>
NT_HD uint32_t fp8_encode_magnitude(double a) {
  const double min_normal = std::ldexp(1.0, 1 - Bias);
  if (a < min_normal) return (uint32_t)std::rint(std::ldexp(a, Bias - 1 + M));  // subnormal: units of 2^(1-Bias-M)
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): unbiased exponent e - 1
  const uint32_t q = (uint32_t)std::rint(std::ldexp(a, M - (e - 1)));  // in [2^M, 2^(M+1)]
  return ((uint32_t)(e - 1 + Bias) << M) + (q - (1u << M));
}
template <int M, int Bias>
NT_HD float fp8_decode(uint8_t code, bool e4m3) {
  const float sign = (code & 0x80) ? -1.f : 1.f;
  const uint32_t exp = (code & 0x7f) >> M, man = code & ((1u << M) - 1);
  if (e4m3 && (code & 0x7f) == 0x7f) return NAN;
  if (!e4m3 && exp == 31) return man == 0 ? sign * INFINITY : NAN;
  if (exp == 0) return sign * std::ldexp((float)man, 1 - Bias - M);
  return sign * std::ldexp(1.f + (float)man / (1u << M), (int)exp - Bias);
}
}  // namespace detail

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  NT_HD static bf16 from_bits(uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }
  NT_HD bf16(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // One hardware conversion (round to nearest even) instead of the bit arithmetic below, which cost the
    // bf16-writing kernels about six instructions per element. NaN becomes the canonical 0x7fff here.
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(f));
#else
    uint32_t u = detail::f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = (uint16_t)((u >> 16) | 0x40);  // quiet NaN, sign kept
      return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = (uint16_t)(u >> 16);
#endif
  }
  NT_HD explicit bf16(double d) : bf16((float)d) {}
  NT_HD operator float() const { return detail::bits_f32((uint32_t)bits << 16); }
};

struct f8e4m3 {
  uint8_t bits = 0;
  f8e4m3() = default;
  NT_HD static f8e4m3 from_bits(uint8_t b) {
    f8e4m3 r;
    r.bits = b;
    return r;
  }
  NT_HD f8e4m3(float f) : f8e4m3((double)f) {}
  NT_HD explicit f8e4m3(double d) {
    const uint32_t sign = std::signbit(d) ? 0x80u : 0u;
    if (std::isnan(d)) { bits = (uint8_t)(sign | 0x7f); return; }
    const double a = std::fabs(d);
    uint32_t code = a >= 448.0 ? 0x7eu : detail::fp8_encode_magnitude<3, 7>(a);
    if (code > 0x7eu) code = 0x7eu;
    bits = (uint8_t)(sign | code);
  }
  NT_HD operator float() const { return detail::fp8_decode<3, 7>(bits, true); }
};

struct f8e5m2 {
  uint8_t bits = 0;
  f8e5m2() = default;
  NT_HD static f8e5m2 from_bits(uint8_t b) {
    f8e5m2 r;
    r.bits = b;
    return r;
  }
  NT_HD f8e5m2(float f) : f8e5m2((double)f) {}
  NT_HD explicit f8e5m2(double d) {
    const uint32_t sign = std::signbit(d) ? 0x80u : 0u;
    if (std::isnan(d)) { bits = (uint8_t)(sign | 0x7f); return; }
    const double a = std::fabs(d);
    uint32_t code = a >= 57344.0 ? 0x7bu : detail::fp8_encode_magnitude<2, 15>(a);
    if (code > 0x7bu) code = 0x7bu;
    bits = (uint8_t)(sign | code);
  }
  NT_HD operator float() const { return detail::fp8_decode<2, 15>(bits, false); }
};

// The C++ type of each dtype, and the type arithmetic on it is done in (acc_t).
template <DType D> struct dtype_traits;
template <> struct dtype_traits<DType::f64> { using type = double; };
template <> struct dtype_traits<DType::f32> { using type = float; };
template <> struct dtype_traits<DType::bf16> { using type = bf16; };
template <> struct dtype_traits<DType::f8e4m3> { using type = f8e4m3; };
template <> struct dtype_traits<DType::f8e5m2> { using type = f8e5m2; };
template <> struct dtype_traits<DType::i32> { using type = int32_t; };
template <> struct dtype_traits<DType::i64> { using type = int64_t; };
template <> struct dtype_traits<DType::boolean> { using type = bool; };

template <class T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <class T> using acc_t = typename acc_type<T>::type;

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<f8e4m3>() { return DType::f8e4m3; }
template <> constexpr DType dtype_of<f8e5m2>() { return DType::f8e5m2; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }

}  // namespace nt

// Dispatch helpers: run a generic lambda body with `scalar_t` bound to the C++ type of a runtime dtype.
#define NT_DTYPE_CASE(D, ...)                  \
  case D: {                                    \
    using scalar_t = nt::dtype_traits<D>::type; \
    __VA_ARGS__();                             \
    break;                                     \
  }
// f32, f64 and bf16: the types ops compute in.
#define NT_DISPATCH_FLOAT(dtype, opname, ...)                            \
  switch (dtype) {                                                       \
    NT_DTYPE_CASE(nt::DType::f64, __VA_ARGS__)                           \
    NT_DTYPE_CASE(nt::DType::f32, __VA_ARGS__)                           \
    NT_DTYPE_CASE(nt::DType::bf16, __VA_ARGS__)                          \
    default: ::nt::throw_bad_dtype(opname, dtype, "f64, f32 or bf16");   \
  }
#define NT_DISPATCH_INDEX(dtype, opname, ...)                      \
  switch (dtype) {                                                 \
    NT_DTYPE_CASE(nt::DType::i32, __VA_ARGS__)                     \
    NT_DTYPE_CASE(nt::DType::i64, __VA_ARGS__)                     \
    default: ::nt::throw_bad_dtype(opname, dtype, "i32 or i64");   \
  }
// The types arithmetic and comparisons take: floats, integers and bool.
#define NT_DISPATCH_ARITH(dtype, opname, ...)                                          \
  switch (dtype) {                                                                     \
    NT_DTYPE_CASE(nt::DType::f64, __VA_ARGS__)                                         \
    NT_DTYPE_CASE(nt::DType::f32, __VA_ARGS__)                                         \
    NT_DTYPE_CASE(nt::DType::bf16, __VA_ARGS__)                                        \
    NT_DTYPE_CASE(nt::DType::i32, __VA_ARGS__)                                         \
    NT_DTYPE_CASE(nt::DType::i64, __VA_ARGS__)                                         \
    NT_DTYPE_CASE(nt::DType::boolean, __VA_ARGS__)                                     \
    default: ::nt::throw_bad_dtype(opname, dtype, "f64, f32, bf16, i32, i64 or bool"); \
  }
#define NT_DISPATCH_ALL(dtype, opname, ...)                         \
  switch (dtype) {                                                  \
    NT_DTYPE_CASE(nt::DType::f64, __VA_ARGS__)                      \
    NT_DTYPE_CASE(nt::DType::f32, __VA_ARGS__)                      \
    NT_DTYPE_CASE(nt::DType::bf16, __VA_ARGS__)                     \
    NT_DTYPE_CASE(nt::DType::f8e4m3, __VA_ARGS__)                   \
    NT_DTYPE_CASE(nt::DType::f8e5m2, __VA_ARGS__)                   \
    NT_DTYPE_CASE(nt::DType::i32, __VA_ARGS__)                      \
    NT_DTYPE_CASE(nt::DType::i64, __VA_ARGS__)                      \
    NT_DTYPE_CASE(nt::DType::boolean, __VA_ARGS__)                  \
    default: ::nt::throw_bad_dtype(opname, dtype, "a known dtype"); \
  }
