// Tensor geometry, views sharing storage, copies, factories, element access, printing and bad-input errors.
#include <random>

#include "cuda/fast_div.h"
#include "cuda/memory.h"
#include "ops/device_tables.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("factories and geometry") {
  Tensor z = zeros({2, 3, 4});
  CHECK(z.shape() == Shape{2, 3, 4});
  CHECK(z.strides() == Shape{12, 4, 1});
  CHECK(z.numel() == 24);
  CHECK(z.is_contiguous());
  CHECK(sum(z).item() == 0);
  CHECK(sum(ones({3, 5}, DType::bf16).to(DType::f32)).item() == 15);
  expect_values(full({2}, 2.5, DType::f64), {2.5, 2.5});
  expect_values(arange(5), {0, 1, 2, 3, 4});
  expect_values(arange(1.0, 2.0, 0.25, DType::f32), {1, 1.25, 1.5, 1.75});
  CHECK(arange(5).dtype() == DType::i64);
  CHECK(scalar_tensor(3.5).dim() == 0);
  CHECK(scalar_tensor(3.5).item() == 3.5);
  Tensor e = empty({0, 3});
  CHECK(e.numel() == 0);
  CHECK(sum(e).item() == 0);
}

TEST_CASE("views share storage; copies do not") {
  Tensor x = arange(12, DType::f32).reshape({3, 4});
  Tensor v = x.narrow(1, 1, 2);
  CHECK(v.shape() == Shape{3, 2});
  CHECK(!v.is_contiguous());
  expect_values(v, {1, 2, 5, 6, 9, 10});
  v.fill_(-1);
  expect_values(x.select(0, 0), {0, -1, -1, 3});
  Tensor c = x.clone();
  c.fill_(7);
  CHECK(x.select(0, 0).to_vector()[0] == 0);
  Tensor t = x.transpose(0, 1);
  CHECK(t.shape() == Shape{4, 3});
  CHECK(t.strides() == Shape{1, 4});
  expect_values(t.select(0, 0), {0, 4, 8});
  expect_values(t.contiguous().reshape({12}).slice(0, 0, 4), {0, 4, 8, -1});
  CHECK(x.reshape({2, 6}).impl()->storage == x.impl()->storage);          // a view
  CHECK(t.reshape({12}).impl()->storage != x.impl()->storage);            // needs a copy
  expect_error([&] { t.view({12}); }, {"view", "without a copy", "[4, 3]"});
}

TEST_CASE("expand, squeeze, unsqueeze, permute, flatten, slice with negatives") {
  Tensor x = arange(3, DType::f64).reshape({3, 1});
  Tensor e = x.expand({2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  expect_values(e.select(0, 1).select(1, 3), {0, 1, 2});
  expect_error([&] { x.expand({2, 2}); }, {"expand", "[3, 1]", "[2, 2]"});
  CHECK(x.squeeze(1).shape() == Shape{3});
  CHECK(x.squeeze(0).shape() == Shape{3, 1});
  CHECK(x.unsqueeze(0).shape() == Shape{1, 3, 1});
  CHECK(x.unsqueeze(-1).shape() == Shape{3, 1, 1});
  Tensor p = arange(24, DType::f32).reshape({2, 3, 4}).permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.contiguous().to_vector()[1] == 4);
  CHECK(p.flatten(1).shape() == Shape{4, 6});
  expect_values(arange(10, DType::f64).slice(0, -3, 100), {7, 8, 9});
  expect_error([&] { p.permute({0, 0, 1}); }, {"permute", "twice"});
  expect_error([&] { x.narrow(0, 2, 2); }, {"narrow", "out of range", "size 3"});
  expect_error([&] { x.reshape({4, -1}); }, {"reshape", "[4, -1]", "3 elements"});
  expect_error([&] { x.size(2); }, {"dim 2", "out of range"});
}

TEST_CASE("copy_ broadcasts and converts; fill_ on strided views") {
  Tensor dst = zeros({2, 3}, DType::f64);
  dst.copy_(from_vector({1, 2, 3}, {3}, DType::f32));
  expect_values(dst, {1, 2, 3, 1, 2, 3});
  expect_error([&] { dst.copy_(ones({2})); }, {"copy_", "[2]", "[2, 3]"});
  dst.transpose(0, 1).narrow(0, 1, 1).fill_(9);
  expect_values(dst, {1, 9, 3, 1, 9, 3});
  const uint64_t v0 = dst.impl()->storage->version;
  dst.zero_();
  CHECK(dst.impl()->storage->version > v0);
}

TEST_CASE("item, to_vector and bad factories") {
  CHECK(from_vector({4}, {1, 1}).item() == 4);
  expect_error([] { zeros({2}).item(); }, {"item", "2 elements"});
  expect_error([] { from_vector({1, 2, 3}, {2, 2}); }, {"from_vector", "3 values", "[2, 2]"});
  expect_error([] { empty({2, -1}); }, {"negative"});
  CHECK(from_vector({1, 2}, {2}, DType::i32).to_vector_as<int32_t>() == std::vector<int32_t>{1, 2});
}

TEST_CASE("fast_div, the CUDA strided kernels' 32-bit division, equals '/' for dividends below 2^31") {
  std::mt19937_64 rng(7);
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 3000; ++d) divisors.push_back(d);
  for (int s = 1; s < 31; ++s)
    for (int64_t dd : {-1, 0, 1}) divisors.push_back((uint32_t)((int64_t{1} << s) + dd));
  divisors.push_back((1u << 31) - 1);
  for (int i = 0; i < 2000; ++i) divisors.push_back(1 + (uint32_t)(rng() % ((1u << 31) - 1)));
  int64_t wrong = 0, checked = 0;
  for (uint32_t d : divisors) {
    const cuda::FastDiv f = cuda::fast_div_for(d);
    std::vector<uint32_t> ns = {0, 1, d - 1, d, d + 1, (1u << 31) - 1, (1u << 31) - 2};
    const uint32_t top = ((1u << 31) - 1) / d;  // the largest quotient
    for (uint32_t q : {top, top - 1, top / 2})
      for (int64_t r : {-1, 0, 1}) ns.push_back((uint32_t)((int64_t)q * d + r));
    for (int i = 0; i < 64; ++i) ns.push_back((uint32_t)(rng() % (1u << 31)));
    for (uint32_t n : ns) {
      if (n >= 1u << 31) continue;
      ++checked;
      if (cuda::fast_div(n, f) != n / d && wrong++ == 0) FAIL_CHECK(n << " / " << d << " gave " << cuda::fast_div(n, f));
    }
  }
  CHECK(wrong == 0);
  CHECK(checked > 300000);
}

TEST_CASE("printing") {
  const std::string s = fmt::format("{}", from_vector({1, 2.5, -3, 4}, {2, 2}));
  CHECK(s.find("[[1, 2.5],") != std::string::npos);
  CHECK(s.find("dtype=f32") != std::string::npos);
  const std::string big = to_string(zeros({3000}));
  CHECK(big.find("...") != std::string::npos);
  CHECK(big.size() < 200);
  CHECK(to_string(arange(3)).find("[0, 1, 2]") != std::string::npos);
}

TEST_CASE("CUDA tensors are refused clearly when no GPU is present") {
  if (cuda::available()) return;
  expect_error([] { zeros({2}, DType::f32, cuda_device(0)); }, {"CUDA"});
}

TEST_CASE("cached_table: one build per (kind, key, dtype, device), the most recent kept, the oldest evicted") {
  int made = 0;
  auto make = [&made](double v) {
    return [&made, v] {
      ++made;
      return std::vector<double>{v, v + 1, v + 2};
    };
  };
  const Tensor a = cached_table("test a", {1, 2}, DType::i32, kCPU, make(10));
  const Tensor a2 = cached_table("test a", {1, 2}, DType::i32, kCPU, make(99));  // a hit: make is not called
  CHECK(made == 1);
  CHECK(a2.data_ptr() == a.data_ptr());
  expect_values(a2, {10, 11, 12});
  CHECK(a2.dtype() == DType::i32);
  // Any difference in kind, key (value or length) or dtype is another table.
  expect_values(cached_table("test b", {1, 2}, DType::i32, kCPU, make(20)), {20, 21, 22});
  expect_values(cached_table("test a", {1, 3}, DType::i32, kCPU, make(30)), {30, 31, 32});
  expect_values(cached_table("test a", {1, 2, 0}, DType::i32, kCPU, make(40)), {40, 41, 42});
  expect_values(cached_table("test a", {1, 2}, DType::i64, kCPU, make(50)), {50, 51, 52});
  CHECK(made == 5);
  // Recently used entries stay: touch a, fill the rest of the cache, a is still there.
  (void)cached_table("test a", {1, 2}, DType::i32, kCPU, make(0));
  for (int64_t i = 0; i < kTableCacheSize - 1; ++i) (void)cached_table("test fill", {i}, DType::i32, kCPU, make(0));
  CHECK(made == 5 + kTableCacheSize - 1);
  CHECK(cached_table("test a", {1, 2}, DType::i32, kCPU, make(0)).data_ptr() == a.data_ptr());
  // The oldest fill entry went out when the cache was full; asking again rebuilds it.
  const int before = made;
  (void)cached_table("test fill", {kTableCacheSize}, DType::i32, kCPU, make(0));  // evicts the oldest
  (void)cached_table("test fill", {0}, DType::i32, kCPU, make(0));
  CHECK(made == before + 2);
}
