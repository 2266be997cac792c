// Element type conversions: bf16 and fp8 rounding, saturation and NaN, against hand-derived encodings.
#include "test_util.h"
#include "tensor/convert.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("bf16 rounds to nearest even and keeps NaN") {
  CHECK(bf16(1.0f).bits == 0x3F80);
  CHECK(bf16(1.0f + 0x1p-8f).bits == 0x3F80);        // halfway, to even (down)
  CHECK(bf16(1.0f + 3 * 0x1p-8f).bits == 0x3F82);    // halfway, to even (up)
  CHECK(bf16(1.0f + 0x1p-8f + 0x1p-20f).bits == 0x3F81);  // above halfway
  CHECK(bf16(-2.0f).bits == 0xC000);
  CHECK(bf16(INFINITY).bits == 0x7F80);
  CHECK(std::isnan((float)bf16(NAN)));
  CHECK((float)bf16::from_bits(0x3FC0) == 1.5f);
}

TEST_CASE("fp8 e4m3 encodings, rounding and saturation (OCP FP8)") {
  auto enc = [](double v) { return (int)f8e4m3(v).bits; };
  CHECK(enc(1.0) == 0x38);
  CHECK(enc(-1.0) == 0xB8);
  CHECK(enc(448.0) == 0x7E);
  CHECK(enc(464.0) == 0x7E);  // would round to 480: saturates
  CHECK(enc(1e6) == 0x7E);
  CHECK(enc(-1e6) == 0xFE);
  CHECK(enc(INFINITY) == 0x7E);
  CHECK(enc(0x1p-9) == 0x01);        // smallest subnormal
  CHECK(enc(0x1p-10) == 0x00);       // halfway to 0: even
  CHECK(enc(3 * 0x1p-10) == 0x02);   // halfway between 1 and 2 units: even
  CHECK(enc(15 * 0x1p-10) == 0x08);  // halfway between max subnormal and min normal: even (min normal)
  CHECK(enc(1.0625) == 0x38);        // halfway between 1 and 1.125: even
  CHECK(enc(1.1875) == 0x3A);        // halfway between 1.125 and 1.25: even
  CHECK(std::isnan((float)f8e4m3(NAN)));
  CHECK(std::isnan((float)f8e4m3::from_bits(0x7F)));
  CHECK((float)f8e4m3::from_bits(0x7E) == 448.0f);
  CHECK((float)f8e4m3::from_bits(0x01) == 0x1p-9f);
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    const float v = f8e4m3::from_bits((uint8_t)c);
    CHECK_MESSAGE(enc(v) == c, "code " << c << " value " << v);
  }
}

TEST_CASE("fp8 e5m2 encodings, rounding and saturation (OCP FP8)") {
  auto enc = [](double v) { return (int)f8e5m2(v).bits; };
  CHECK(enc(1.0) == 0x3C);
  CHECK(enc(57344.0) == 0x7B);
  CHECK(enc(1e9) == 0x7B);
  CHECK(enc(-INFINITY) == 0xFB);
  CHECK(enc(0x1p-16) == 0x01);
  CHECK(enc(1.125) == 0x3C);  // halfway between 1 and 1.25: even
  CHECK(enc(1.375) == 0x3E);  // halfway between 1.25 and 1.5: even
  CHECK(std::isinf((float)f8e5m2::from_bits(0x7C)));
  CHECK(std::isnan((float)f8e5m2::from_bits(0x7D)));
  CHECK(std::isnan((float)f8e5m2(NAN)));
  for (int c = 0; c < 256; ++c) {
    const float v = f8e5m2::from_bits((uint8_t)c);
    if (std::isnan(v)) continue;
    const int expect = std::isinf(v) ? (c & 0x80) | 0x7B : c;  // infinities saturate
    CHECK_MESSAGE(enc(v) == expect, "code " << c << " value " << v);
  }
}

TEST_CASE("tensor casts between every pair of dtypes") {
  const std::vector<double> vals{0, 1, -2, 3, 96, -7};  // exact in every dtype
  const DType all[] = {DType::f64, DType::f32, DType::bf16, DType::f8e4m3, DType::f8e5m2, DType::i32, DType::i64};
  for (DType a : all)
    for (DType b : all) {
      const Tensor t = from_vector(vals, {2, 3}, a).to(b);
      CHECK(t.dtype() == b);
      expect_values(t.to(DType::f64), vals);
    }
  expect_values(from_vector({0, 2, -1}, {3}, DType::f32).to(DType::boolean).to(DType::f32), {0, 1, 1});
  expect_values(from_vector({1.7, -1.7}, {2}, DType::f64).to(DType::i64), {1, -1});  // truncation, as C++
  expect_values(from_vector({300.0, 1.0 + 1.0 / 32}, {2}, DType::f64).to(DType::f8e4m3), {288, 1.0});
}
