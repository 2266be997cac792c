// Philox: the published known-answer vector, determinism by seed, the stream layout, and distribution sanity.
#include "test_util.h"
#include "tensor/philox.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("Philox4x32-10 known answer (Random123 kat_vectors: zero counter, zero key)") {
  const philox::U4 r = philox::block(0, 0);
  CHECK(r.x[0] == 0x6627e8d5u);
  CHECK(r.x[1] == 0xe169c58du);
  CHECK(r.x[2] == 0xbc57ac4cu);
  CHECK(r.x[3] == 0x9b00dbd8u);
}

TEST_CASE("same seed, same numbers; the generator offset advances per draw") {
  Generator a(42), b(42), c(43);
  const auto x = rand({100}, DType::f32, kCPU, &a).to_vector();
  CHECK(x == rand({100}, DType::f32, kCPU, &b).to_vector());
  CHECK(x != rand({100}, DType::f32, kCPU, &c).to_vector());
  CHECK(a.offset == 25);
  CHECK(x != rand({100}, DType::f32, kCPU, &a).to_vector());  // next draw continues the stream
  // Element i of a draw is lane i % 4 of block offset + i / 4.
  Generator d(7);
  d.offset = 10;
  const auto y = rand({9}, DType::f32, kCPU, &d).to_vector();
  CHECK(y[6] == philox::to_unit(philox::block(7, 11).x[2]));
  manual_seed(5);
  const auto m1 = randn({8}).to_vector();
  manual_seed(5);
  CHECK(m1 == randn({8}).to_vector());
}

TEST_CASE("uniform and normal draws have the right moments") {
  Generator g(1);
  const Tensor u = rand({200000}, DType::f64, kCPU, &g);
  CHECK(mean(u).item() == doctest::Approx(0.5).epsilon(0.01));
  CHECK(amax(u).item() < 1.0);
  CHECK(-amax(-u).item() >= 0.0);
  const Tensor n = randn({200000}, DType::f64, kCPU, &g);
  CHECK(std::fabs(mean(n).item()) < 0.01);
  CHECK(var(n).item() == doctest::Approx(1.0).epsilon(0.02));
  const Tensor r = randint(-3, 4, {10000}, DType::i64, kCPU, &g);
  const auto rv = r.to_vector();
  CHECK(*std::min_element(rv.begin(), rv.end()) == -3);
  CHECK(*std::max_element(rv.begin(), rv.end()) == 3);
}
