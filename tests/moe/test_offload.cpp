// Offloaded expert weights (moe/offload.h): argument errors everywhere; on a GPU, an LM whose experts live in pinned
// host memory computes the same loss and gradients as the resident one, trains the same through AdamW (host
// update), frees the experts' device memory, and reports host weights changed between forward and backward.
#include "cuda/allocator.h"
#include "cuda/memory.h"
#include "moe/moe_layer.h"
#include "moe/offload.h"
#include "nn/transformer.h"
#include "test_util.h"
#include "train/adamw.h"

using namespace nt;
using namespace nt::test;

namespace {

nn::LMConfig moe_lm_config() {
  nn::LMConfig lc;
  lc.vocab = 48, lc.dim = 64, lc.n_layers = 3, lc.n_heads = 4, lc.n_kv_heads = 2, lc.max_seq = 24;
  lc.make_mlp = [](int64_t layer, const nn::Init& init) -> std::shared_ptr<nn::Layer> {
    if (layer == 0) return std::make_shared<nn::SwiGLUMLP>(64, 96, init);  // the first layer stays dense
    moe::MoEConfig c;
    c.dim = 64, c.n_routed = 12, c.top_k = 3, c.n_shared = 1, c.expert_hidden = 40;
    return std::make_shared<moe::DeepSeekMoE>(c, init);
  };
  return lc;
}

int64_t expert_bytes(const nn::TransformerLM& lm) {
  int64_t b = 0;
  for (const auto& block : lm.layers)
    if (auto* m = dynamic_cast<const moe::DeepSeekMoE*>(block->mlp.get()))
      for (const Tensor* w : {&m->experts->w1, &m->experts->w2, &m->experts->w3}) b += w->numel() * w->element_size();
  return b;
}

}  // namespace

TEST_CASE("offloading expert weights: argument errors") {
  moe::RoutedExperts e(3, 4, 5);
  CHECK_THROWS_WITH_AS(e.offload(kCPU), doctest::Contains("must be a GPU, got cpu"), Error);
  CHECK(!e.offloaded());
  CHECK_THROWS_WITH_AS(moe::HostStagedWeights({zeros({2, 3})}, kCPU), doctest::Contains("must be a GPU"), Error);
  if (!cuda::available()) {
    CHECK_THROWS_WITH_AS(zeros({4}).pin_memory(), doctest::Contains("needs a CUDA device"), Error);
    return;
  }
  CHECK_THROWS_WITH_AS(moe::HostStagedWeights({zeros({2, 3}, DType::f32, cuda_device(0))}, cuda_device(0)),
                       doctest::Contains("must be contiguous CPU tensors"), Error);
  CHECK_THROWS_WITH_AS(moe::HostStagedWeights({zeros({2, 3}).transpose(0, 1)}, cuda_device(0)),
                       doctest::Contains("not contiguous"), Error);
  // An LM still on the host: offload_experts asks for lm.to(device) first.
  nn::LMConfig lc = moe_lm_config();
  Generator gen(3);
  nn::TransformerLM lm(lc, {DType::f32, kCPU, &gen});
  CHECK_THROWS_WITH_AS(moe::offload_experts(lm), doctest::Contains("must be on the GPU first"), Error);
}

GRADCHECK_TEST("upload_staged") {
  // The upload of host weights staged on the GPU: its backward brings the gradient back into pinned memory.
  if (!cuda::available()) {
    MESSAGE("no GPU: the upload_staged gradient needs one");
    return;
  }
  const Tensor b = rnd({4, 3}, 12).to(cuda_device(0));
  check_grad("upload_staged", [&](const std::vector<Tensor>& in) {
    moe::HostStagedWeights staged({in[0]}, cuda_device(0));  // gradcheck's inputs are pageable: uploads still work
    staged.ready();
    return (staged.device_tensors()[0] * b).to(kCPU);
  }, {rnd_grad({4, 3}, 11)});
}

TEST_CASE("pin_memory and mixed-device gradient norms" * doctest::skip(!cuda::available())) {
  const Tensor x = rnd({3, 5}, 7);
  const Tensor p = x.transpose(0, 1).pin_memory();
  CHECK(p.is_pinned());
  CHECK(!x.is_pinned());
  CHECK(p.device().is_cpu());
  CHECK(p.is_contiguous());
  CHECK(p.to_vector() == x.transpose(0, 1).contiguous().to_vector());
  // Freed pinned blocks are cached and served again (pinning costs tens of ms per GiB).
  void* first;
  {
    Tensor a = empty_pinned({1000, 3000}, DType::bf16);
    CHECK(a.is_pinned());
    first = a.data_ptr();
  }
  const size_t cached = cuda::host_pinned_cached_bytes();
  CHECK(cached >= (size_t)1000 * 3000 * 2);
  {
    Tensor b = empty_pinned({3000, 1000}, DType::bf16);
    CHECK(b.data_ptr() == first);
    CHECK(cuda::host_pinned_cached_bytes() == cached - (size_t)6 * 1024 * 1024);  // 6e6 B rounded to 2 MiB
  }
  // sum_of_squares over tensors on the host and on the GPU (offloaded experts' gradients are on the host).
  const Tensor a = rnd({7}, 8), b = rnd({4, 3}, 9);
  const double expect = sum(a * a).item() + sum(b * b).item();
  CHECK(train::sum_of_squares({a, b.to(cuda_device(0))}).item() == doctest::Approx(expect).epsilon(1e-12));
}

TEST_CASE("an LM with offloaded experts computes, trains and saves memory like the resident one" *
          doctest::skip(!cuda::available())) {
  const Device dev = cuda_device(0);
  nn::LMConfig lc = moe_lm_config();
  Generator g1(21), g2(21);
  nn::TransformerLM ref(lc, {DType::f32, kCPU, &g1}), off(lc, {DType::f32, kCPU, &g2});
  ref.to(dev);
  const size_t before = cuda::allocator_stats(0).allocated;
  off.to(dev);
  const size_t resident = cuda::allocator_stats(0).allocated - before;
  REQUIRE(moe::offload_experts(off) == 2);
  const size_t offloaded = cuda::allocator_stats(0).allocated - before;
  INFO("resident " << resident << " B, offloaded " << offloaded << " B, experts " << expert_bytes(ref) << " B");
  CHECK(resident - offloaded >= (size_t)expert_bytes(ref));
  for (const auto& [name, p] : off.named_parameters()) {
    const bool expert = name.find(".experts.") != std::string::npos;
    INFO(name);
    CHECK(p.device().is_cpu() == expert);
    CHECK(p.is_pinned() == expert);
    CHECK(p.requires_grad());
  }

  train::AdamW opt_ref(ref.named_parameters(), {}), opt_off(off.named_parameters(), {});
  Generator data(5);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    const Tensor idx = randint(0, lc.vocab, {2, 24}, DType::i64, kCPU, &data).to(dev);
    const Tensor tgt = randint(0, lc.vocab, {2, 24}, DType::i64, kCPU, &data).to(dev);
    const Tensor lr = ref.loss(idx, tgt), lo = off.loss(idx, tgt);
    // Same weights, same kernels: the same loss (after a host AdamW step, the weights may differ in the last bit).
    if (step == 0)
      CHECK(lo.item() == lr.item());
    else
      CHECK(lo.item() == doctest::Approx(lr.item()).epsilon(1e-5));
    lr.backward(), lo.backward();
    const auto pr = ref.named_parameters(), po = off.named_parameters();
    for (size_t i = 0; i < pr.size(); ++i) {
      INFO(pr[i].first);
      REQUIRE(po[i].second.grad().defined());
      CHECK(po[i].second.grad().device() == po[i].second.device());
      expect_close(po[i].second.grad().to(kCPU), pr[i].second.grad().to(kCPU), step == 0 ? 0.0 : 1e-6,
                   step == 0 ? 0.0 : 1e-4);  // step 0: the same weights, bit for bit
    }
    CHECK(opt_off.clip_grad_norm(1.0) == doctest::Approx(opt_ref.clip_grad_norm(1.0)).epsilon(1e-5));
    opt_ref.step(1e-2), opt_off.step(1e-2);
    opt_ref.zero_grad(), opt_off.zero_grad();
  }
  const auto pr = ref.named_parameters(), po = off.named_parameters();
  for (size_t i = 0; i < pr.size(); ++i) {
    INFO(pr[i].first);
    expect_close(po[i].second.to(kCPU), pr[i].second.to(kCPU), 1e-6, 1e-5);
  }

  // Inference: only the running layer's experts (and the next one's, prefetched) are on the GPU at a time.
  {
    autograd::NoGradGuard ng;
    const Tensor idx = randint(0, lc.vocab, {2, 24}, DType::i64, kCPU, &data).to(dev);
    const Tensor a = ref.forward(idx), b = off.forward(idx);
    expect_close(b.to(kCPU), a.to(kCPU), 1e-5, 1e-4);
  }

  // Host weights changed between the forward and the backward: an error, not a gradient of other weights.
  {
    const Tensor idx = randint(0, lc.vocab, {1, 8}, DType::i64, kCPU, &data).to(dev);
    const Tensor l = off.loss(idx, idx);
    auto* m = dynamic_cast<moe::DeepSeekMoE*>(off.layers[1]->mlp.get());
    {
      autograd::NoGradGuard ng;
      Tensor(m->experts->w2).fill_(0.01);
    }
    CHECK_THROWS_WITH_AS(l.backward(), doctest::Contains("modified"), Error);
  }
}
