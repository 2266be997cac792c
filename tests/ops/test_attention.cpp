// flash_attention on the CPU: against the composite reference (nn::causal_attention, which materializes the
// scores), per-sequence runs for packed batches, gradients in f64, and argument errors.
#include "nn/attention.h"
#include "ops/attention.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

TEST_CASE("flash_attention matches the composite reference (GQA, windows)") {
  struct C {
    int64_t B, T, H, Hkv, D, window;
  };
  for (const C c : {C{2, 13, 4, 2, 6, 0}, C{1, 17, 4, 1, 8, 5}, C{2, 9, 3, 3, 5, 1}, C{1, 1, 2, 1, 4, 0}}) {
    INFO("B " << c.B << " T " << c.T << " H " << c.H << "/" << c.Hkv << " D " << c.D << " window " << c.window);
    const Tensor q = rnd({c.B, c.T, c.H, c.D}, 1), k = rnd({c.B, c.T, c.Hkv, c.D}, 2), v = rnd({c.B, c.T, c.Hkv, c.D}, 3);
    expect_close(flash_attention(q, k, v, {c.window}), nn::causal_attention(q, k, v, c.window), 1e-12, 1e-12);
    // f32 too, and an explicit scale.
    expect_close(flash_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), {c.window, 0.3}).to(DType::f64),
                 nn::causal_attention(q, k, v, c.window, 0.3), 1e-5, 1e-5);
  }
}

TEST_CASE("flash_attention on packed sequences equals each sequence on its own") {
  const std::vector<int32_t> cu = {0, 5, 5, 12, 20};  // an empty sequence too
  const int64_t N = 20, H = 4, Hkv = 2, D = 3;
  const Tensor q = rnd({N, H, D}, 4), k = rnd({N, Hkv, D}, 5), v = rnd({N, Hkv, D}, 6);
  for (int64_t window : {0, 3}) {
    const Tensor packed = flash_attention(q, k, v, {window, 0, cu});
    for (size_t b = 0; b + 1 < cu.size(); ++b) {
      const int64_t s = cu[b], n = cu[b + 1] - cu[b];
      if (n == 0) continue;
      const Tensor one = flash_attention(q.narrow(0, s, n), k.narrow(0, s, n), v.narrow(0, s, n), {window});
      expect_close(packed.narrow(0, s, n), one, 1e-12, 1e-12);
    }
  }
}

GRADCHECK_TEST("flash_attention") {
  auto f = [](int64_t window, std::vector<int32_t> cu) {
    return [=](const std::vector<Tensor>& in) { return flash_attention(in[0], in[1], in[2], {window, 0, cu}); };
  };
  check_grad("flash_attention", f(0, {}), {rnd_grad({2, 5, 4, 3}, 7), rnd_grad({2, 5, 2, 3}, 8), rnd_grad({2, 5, 2, 3}, 9)});
  check_grad("flash_attention", f(2, {}), {rnd_grad({1, 6, 2, 4}, 10), rnd_grad({1, 6, 1, 4}, 11), rnd_grad({1, 6, 1, 4}, 12)});
  check_grad("flash_attention", f(0, {0, 3, 7}), {rnd_grad({7, 2, 3}, 13), rnd_grad({7, 2, 3}, 14), rnd_grad({7, 2, 3}, 15)});
}

TEST_CASE("flash_attention argument errors name the argument") {
  const Tensor q = rnd({7, 4, 3}, 1), k = rnd({7, 2, 3}, 2);
  expect_error([&] { flash_attention(q, k, k, {0, 0, {0, 3, 6}}); }, {"cu_seqlens", "end at N = 7"});
  expect_error([&] { flash_attention(q, k, k, {0, 0, {0, 5, 3, 7}}); }, {"cu_seqlens", "decrease"});
  expect_error([&] { flash_attention(q, rnd({7, 3, 3}, 2), rnd({7, 3, 3}, 3)); }, {"4 query heads", "3 key/value heads"});
  expect_error([&] { flash_attention(q, k, rnd({7, 2, 4}, 3)); }, {"k [7, 2, 3]", "v [7, 2, 4]"});
  expect_error([&] { flash_attention(q, k, k, {-1}); }, {"window", "-1"});
  expect_error([&] { flash_attention(rnd({1, 7, 4, 3}, 1), rnd({1, 7, 2, 3}, 1), rnd({1, 7, 2, 3}, 1), {0, 0, {0, 7}}); },
               {"cu_seqlens", "packed"});
}
