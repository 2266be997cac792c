// MoE benchmark (GPU): the expert GEMMs as grouped GEMMs against one dense cuBLAS GEMM of the same total shape, and
// the whole DeepSeekMoE layer (router, dispatch, experts, shared experts, gated sum) forward + backward against a
// dense SwiGLU MLP with the same active FLOPs, in the same run; and, when python3 has torch, PyTorch's usual
// loop-over-experts layer and torch._grouped_mm (scripts/bench_moe_torch.py).
// With offload_layers=L (default 4; 0 skips it), a stack of L MoE layers with the experts resident on the GPU against
// the same stack with them offloaded to pinned host memory (moe/offload.h): time and peak GPU memory of a forward
// and of a forward + backward, against the time the uploads alone take.
//   build/examples/bench_moe [tokens=8192] [dim=2048] [experts=64] [top_k=6] [hidden=1408] [shared=2] [offload_layers=4]
//                            [layer=1]
// layer=0: the expert GEMM table only (no layer, PyTorch, profile or offload tables: quick, and no CUPTI, so it runs
// under Nsight Compute).
// Routing for the GEMM table: each token's top_k distinct experts drawn uniformly ("balanced") or with expert e
// drawn in proportion to 1 / (e + 1) ("skewed": the busiest expert gets about 8x the mean load at 64 experts).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <functional>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <string>

#include "cuda/blas.h"
#include "bench_timing.h"
#include "cuda/check.h"
#include "cuda/profiler.h"
#include "cuda/memory.h"
#include "cuda/runtime.h"
#include "cuda/allocator.h"
#include "moe/moe_layer.h"
#include "moe/offload.h"
#include "ops/ops.h"

using namespace nt;

namespace {
const Device kGpu = cuda_device(0);

using bench::time_ms;

// Host time to queue fn (median of 20, the GPU drained before each): when it approaches the GPU time, launches
// are what limit.
double host_ms(const std::function<void()>& fn) {
  std::vector<double> t;
  for (int i = 0; i < 20; ++i) {
    NT_CUDA_CHECK(cudaDeviceSynchronize());
    const auto a = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  NT_CUDA_CHECK(cudaDeviceSynchronize());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Group offsets of tokens * top_k rows over E experts.
std::vector<int64_t> route(int64_t tokens, int64_t top_k, int64_t E, bool skewed, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> p(E);
  for (int64_t e = 0; e < E; ++e) p[e] = skewed ? 1.0 / (double)(e + 1) : 1.0;
  std::vector<int64_t> counts(E, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> w = p;
    for (int64_t j = 0; j < top_k; ++j) {  // without replacement
      std::discrete_distribution<int64_t> d(w.begin(), w.end());
      const int64_t e = d(rng);
      ++counts[e], w[e] = 0;
    }
  }
  std::vector<int64_t> off(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) off[e + 1] = off[e] + counts[e];
  return off;
}

// L MoE layers in a row, resident vs offloaded experts: GPU memory held, peak and time of a forward (inference, no
// autograd) and of a forward + backward; the uploads' own time (one layer's experts through cuda::Upload) is the
// floor for the offloaded runs, which move every layer's experts once per forward and twice per forward + backward
// (plus the weight gradients back to the host).
void offload_table(const moe::MoEConfig& mc, int64_t T, int64_t L) {
  const double GiB = 1024.0 * 1024.0 * 1024.0;
  auto allocated = [] { return (double)cuda::allocator_stats(0).allocated; };
  auto peak = [] { return (double)cuda::allocator_stats(0).peak_allocated; };
  std::printf("\n%lld MoE layers (bf16, %lld tokens), experts resident vs offloaded to pinned host memory\n",
              (long long)L, (long long)T);
  std::printf("%-28s %10s %11s %11s %11s %11s\n", "", "held GiB", "fwd ms", "fwd peak", "fwd+bwd ms", "f+b peak");
  Generator gen(11);
  const Tensor x0 = (randn({1, T, mc.dim}, DType::f32, kGpu, &gen) * 0.5).to(DType::bf16).requires_grad_();
  double expert_bytes = 0;
  for (bool offloaded : {false, true}) {
    NT_CUDA_CHECK(cudaDeviceSynchronize());
    const double base = allocated();
    std::vector<std::shared_ptr<moe::DeepSeekMoE>> layers;
    Generator init(3);
    for (int64_t i = 0; i < L; ++i) layers.push_back(std::make_shared<moe::DeepSeekMoE>(mc, nn::Init{DType::bf16, kGpu, &init}));
    expert_bytes = 3.0 * (double)layers[0]->experts->w1.numel() * 2.0;
    if (offloaded) {  // as offload_experts links an LM's layers
      for (int64_t i = 0; i < L; ++i) layers[i]->experts->offload(kGpu);
      for (int64_t i = 0; i + 1 < L; ++i)
        layers[i]->experts->next_offloaded = layers[i + 1]->experts.get(),
        layers[i + 1]->experts->prev_offloaded = layers[i]->experts.get();
    }
    NT_CUDA_CHECK(cudaDeviceSynchronize());
    const double held = allocated() - base;
    auto forward = [&] {
      Tensor y = x0;
      for (auto& l : layers) y = y + l->forward(y);
      return y;
    };
    double fwd_ms, fwd_peak, fb_ms, fb_peak;
    {
      autograd::NoGradGuard ng;
      fwd_ms = time_ms([&] { forward(); }, 5);
      NT_CUDA_CHECK(cudaDeviceSynchronize());
      cuda::reset_peak_stats(0);
      forward();
      NT_CUDA_CHECK(cudaDeviceSynchronize());
      fwd_peak = peak() - base;
    }
    auto train_step = [&] {
      Tensor loss = sum(forward().to(DType::f32));
      loss.backward();
      for (auto& l : layers)
        for (Tensor p : l->parameters()) p.set_grad(Tensor());
      x0.set_grad(Tensor());
    };
    fb_ms = time_ms(train_step, 5);
    NT_CUDA_CHECK(cudaDeviceSynchronize());
    cuda::reset_peak_stats(0);
    train_step();
    NT_CUDA_CHECK(cudaDeviceSynchronize());
    fb_peak = peak() - base;
    std::printf("%-28s %10.2f %11.2f %11.2f %11.2f %11.2f\n", offloaded ? "offloaded experts" : "resident experts",
                held / GiB, fwd_ms, fwd_peak / GiB, fb_ms, fb_peak / GiB);
  }
  // The uploads alone: one layer's experts from pinned memory, as the offloaded layers do them.
  const int64_t n = (int64_t)(expert_bytes / 2);
  Tensor host = empty({n}, DType::bf16).pin_memory(), dst = empty({n}, DType::bf16, kGpu);
  const double up_ms = time_ms([&] { cuda::Upload({{dst.data_ptr(), host.data_ptr(), (size_t)expert_bytes}}, 0).wait(); }, 5);
  std::printf("upload of one layer's experts (%.2f GiB, pinned): %.2f ms = %.1f GB/s; %lld layers: %.1f ms per forward\n",
              expert_bytes / GiB, up_ms, expert_bytes / up_ms / 1e6, (long long)L, up_ms * (double)L);
}
}  // namespace

int main(int argc, char** argv) {
  try {
    std::map<std::string, int64_t> a{{"tokens", 8192}, {"dim", 2048}, {"experts", 64}, {"top_k", 6}, {"hidden", 1408},
                                     {"shared", 2}, {"offload_layers", 4}, {"layer", 1}};
    for (int i = 1; i < argc; ++i) {
      const std::string s = argv[i];
      const size_t eq = s.find('=');
      NT_CHECK(eq != std::string::npos && a.count(s.substr(0, eq)),
               "bench_moe: unknown argument '{}'; use tokens=, dim=, experts=, top_k=, hidden=, shared=, "
               "offload_layers=, layer=",
               s);
      a[s.substr(0, eq)] = std::stoll(s.substr(eq + 1));
    }
    NT_CHECK(cuda::available(), "bench_moe: needs a GPU");
    const int64_t T = a["tokens"], D = a["dim"], E = a["experts"], K = a["top_k"], H = a["hidden"], S = a["shared"];
    const int64_t M = T * K;
    cudaDeviceProp prop;
    NT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("bench_moe on %s: %lld tokens, dim %lld, %lld experts top-%lld, expert hidden %lld, %lld shared\n",
                prop.name, (long long)T, (long long)D, (long long)E, (long long)K, (long long)H, (long long)S);
    Generator gen(1);
    auto rnd = [&](const Shape& s) { return (randn(s, DType::f32, kGpu, &gen) * 0.02).to(DType::bf16); };

    // Expert GEMMs: the three products of the forward (w1 / w3: [M, D] x [D, H], w2: [M, H] x [H, D]) and the
    // backward's weight gradients ([D, M] x [M, H]), grouped vs one dense GEMM of the same total size.
    std::printf("\n%-44s %9s %9s %11s %9s %8s\n", "expert GEMM bf16 (f32 accumulate)", "max/mean", "ms", "TFLOP/s",
                "dense ms", "ratio");
    const Tensor xs = rnd({M, D}), hs = rnd({M, H}), w13 = rnd({E, D, H}), w2 = rnd({E, H, D});
    const Tensor dense13 = rnd({D, H}), dense2 = rnd({H, D});
    for (bool skewed : {false, true}) {
      const std::vector<int64_t> off = route(T, K, E, skewed, 7);
      int64_t most = 0;
      for (int64_t e = 0; e < E; ++e) most = std::max(most, off[e + 1] - off[e]);
      const double imbalance = (double)most / ((double)M / (double)E);
      const double flops13 = 2.0 * M * D * H;
      struct Row {
        const char* name;
        std::function<void()> grouped, dense;
      };
      autograd::NoGradGuard ng;
      Tensor out13 = empty({M, H}, DType::bf16, kGpu);
      auto lt_loop = [&] {  // the alternative: one cuBLASLt GEMM per expert
        for (int64_t e = 0; e < E; ++e)
          cuda::gemm(DType::bf16, 1, off[e + 1] - off[e], H, D, static_cast<const char*>(xs.data_ptr()) + off[e] * D * 2,
                     false, D, 0, static_cast<const char*>(w13.data_ptr()) + e * D * H * 2, false, H, 0,
                     static_cast<char*>(out13.data_ptr()) + off[e] * H * 2, H, 0, 0, cuda::current_stream(0));
      };
      auto with = [](cuda::GroupedBackend b, const std::function<void()>& f) {
        return [b, f] {
          cuda::set_grouped_gemm_backend(b);
          f();
          cuda::set_grouped_gemm_backend(cuda::GroupedBackend::automatic);
        };
      };
      using B = cuda::GroupedBackend;
      const bool sm90 = cuda::sm90a_available(0);
      const std::vector<Row> rows = {
          {sm90 ? "x @ w1 (grouped, our Hopper kernel)" : "x @ w1 (grouped, no sm_90: cuBLASLt)",
           with(B::kernel, [&] { grouped_matmul(xs, w13, off); }), [&] { matmul(xs, dense13); }},
          {"x @ w1 (cuBLASLt per expert, 4 streams)", with(B::per_group, [&] { grouped_matmul(xs, w13, off); }),
           [&] { matmul(xs, dense13); }},
          {"x @ w1 (one cuBLAS grouped call)", with(B::cublas_grouped, [&] { grouped_matmul(xs, w13, off); }),
           [&] { matmul(xs, dense13); }},
          {"x @ w1 (cuBLASLt per expert, one stream)", lt_loop, [&] { matmul(xs, dense13); }},
          {"h @ w2 (grouped, our kernel)", with(B::kernel, [&] { grouped_matmul(hs, w2, off); }),
           [&] { matmul(hs, dense2); }},
          {"h @ w2 (cuBLASLt per expert, 4 streams)", with(B::per_group, [&] { grouped_matmul(hs, w2, off); }),
           [&] { matmul(hs, dense2); }},
      };
      for (const Row& r : rows) {
        const double g = time_ms(r.grouped), d = time_ms(r.dense);
        std::printf("%-44s %9.2f %9.3f %11.1f %9.3f %7.0f%%  %s  (host %.3f ms)\n", r.name, imbalance, g,
                    flops13 / g / 1e9, d, 100 * d / g, skewed ? "skewed" : "balanced", host_ms(r.grouped));
      }
      if (sm90) {  // the backward's two products alone on our kernel: dx = g @ w1[e]^T and dw[e] = x_e^T g_e
        const Tensor offd = from_vector(std::vector<double>(off.begin(), off.end()), {E + 1}, DType::i32, kGpu);
        const auto* o = static_cast<const int32_t*>(offd.data_ptr());
        const Tensor g = rnd({M, H}), dx = empty({M, D}, DType::bf16, kGpu), dw = empty({E, D, H}, DType::bf16, kGpu);
        const cudaStream_t st = cuda::current_stream(0);
        const double tdx = time_ms([&] {
          cuda::grouped_gemm_rows_bf16(g.data_ptr(), w13.data_ptr(), true, dx.data_ptr(), o, E, M, D, H, 0, st);
        });
        const double tdw = time_ms([&] {
          cuda::grouped_gemm_wgrad_bf16(xs.data_ptr(), g.data_ptr(), dw.data_ptr(), o, E, M, D, H, 0, st);
        });
        const double ddx = time_ms([&] { matmul(g, dense13.mT()); }), ddw = time_ms([&] { matmul(xs.mT(), g); });
        std::printf("%-44s %9.2f %9.3f %11.1f %9.3f %7.0f%%  %s\n", "dx = g @ w1^T alone (grouped, our kernel)",
                    imbalance, tdx, flops13 / tdx / 1e9, ddx, 100 * ddx / tdx, skewed ? "skewed" : "balanced");
        std::printf("%-44s %9.2f %9.3f %11.1f %9.3f %7.0f%%  %s\n", "dw = x^T g alone (grouped, our kernel)",
                    imbalance, tdw, flops13 / tdw / 1e9, ddw, 100 * ddw / tdw, skewed ? "skewed" : "balanced");
      }
      // Backward of x @ w1: dx (grouped with w^T) and dw (per-expert x_e^T g_e), via autograd.
      Tensor xg = xs.detach().requires_grad_(), wg = w13.detach().requires_grad_();
      Tensor xd = xs.detach().requires_grad_(), wd = dense13.detach().requires_grad_();
      const Tensor up = rnd({M, H});
      autograd::EnableGradGuard eg;
      auto fwd_bwd = [&] {
        grouped_matmul(xg, wg, off).backward(up);
        xg.set_grad(Tensor()), wg.set_grad(Tensor());
      };
      const double db = time_ms([&] {
        matmul(xd, wd).backward(up);
        xd.set_grad(Tensor()), wd.set_grad(Tensor());
      });
      for (bool ours : {true, false}) {
        const double gb = time_ms(with(ours ? B::kernel : B::per_group, fwd_bwd));
        std::printf("%-44s %9.2f %9.3f %11.1f %9.3f %7.0f%%  %s\n",
                    ours ? "x @ w1 fwd + bwd (dx, dw), our kernel" : "x @ w1 fwd + bwd, cuBLASLt per expert", imbalance,
                    gb, 3 * flops13 / gb / 1e9, db, 100 * db / gb, skewed ? "skewed" : "balanced");
      }
      // The kernel against per-expert cuBLASLt on these inputs: output and both gradients.
      auto run = [&](B b) {
        cuda::set_grouped_gemm_backend(b);
        Tensor xa = xs.detach().requires_grad_(), wa = w13.detach().requires_grad_();
        Tensor y = grouped_matmul(xa, wa, off);
        y.backward(up);
        cuda::set_grouped_gemm_backend(B::automatic);
        return std::vector<Tensor>{y.detach().to(DType::f32), xa.grad().to(DType::f32), wa.grad().to(DType::f32)};
      };
      const std::vector<Tensor> ka = run(B::kernel), kb = run(B::per_group);
      const char* names[] = {"y", "dx", "dw"};
      std::printf("  ours vs cuBLASLt, max |diff| / max |cuBLASLt|:");
      for (int i = 0; i < 3; ++i)
        std::printf(" %s %.2e", names[i],
                    std::sqrt(amax((ka[i] - kb[i]) * (ka[i] - kb[i])).item() / amax(kb[i] * kb[i]).item()));
      std::printf("\n");
    }

    if (a["layer"] == 0) return 0;
    // The whole layer: DeepSeekMoE forward + backward against a dense SwiGLU MLP of hidden (top_k + shared) * H,
    // the same FLOPs per token as the MoE's active experts.
    moe::MoEConfig mc;
    mc.dim = D, mc.n_routed = E, mc.top_k = K, mc.n_shared = S, mc.expert_hidden = H;
    mc.router.aux_loss_coef = 0.001;
    Generator init(3);
    moe::DeepSeekMoE layer(mc, {DType::bf16, kGpu, &init});
    nn::SwiGLUMLP dense(D, (K + S) * H, {DType::bf16, kGpu, &init});
    Tensor x = rnd({1, T, D}).requires_grad_();
    const Tensor up = rnd({1, T, D});
    auto step = [&](nn::Layer& l) {
      Tensor y = l.forward(x);
      Tensor loss = sum(y * up);
      if (l.aux_loss().defined()) loss = loss + l.aux_loss().to(loss.dtype());
      loss.backward();
      x.set_grad(Tensor());
      for (Tensor p : l.parameters()) p.set_grad(Tensor());
    };
    const double moe_ms = time_ms([&] { step(layer); }, 10), dense_ms = time_ms([&] { step(dense); }, 10);
    const double active = 6.0 * 3 * (double)T * D * (double)((K + S) * H);  // fwd + bwd of the SwiGLU GEMMs
    const auto st = layer.stats();
    std::printf("\n%-44s %9s %11s\n", "layer forward + backward (bf16)", "ms", "TFLOP/s");
    std::printf("%-44s %9.3f %11.1f   (load max/mean %.2f)\n", "DeepSeekMoE (router, dispatch, experts, shared)",
                moe_ms, active / moe_ms / 1e9, st.max_over_mean);
    std::printf("%-44s %9.3f %11.1f\n", "dense SwiGLU MLP, same active FLOPs", dense_ms, active / dense_ms / 1e9);
    std::printf("MoE / dense time: %.2fx\n", moe_ms / dense_ms);
    // PyTorch in the same run: the usual loop over experts, its dense MLP, and torch._grouped_mm.
    const std::string torch_script = bench::script_path("bench_moe_torch.py");
    const auto torch =
        bench::python_results(fmt::format("python3 {} {} {} {} {} {} {}", torch_script, T, D, E, K, H, S));
    if (torch.count("moe_loop_ms")) {
      const double loop = torch.at("moe_loop_ms"), tdense = torch.at("dense_ms");
      std::printf("%-44s %9.3f %11.1f   (ours is %.2fx faster)\n", "PyTorch: loop over experts (HF pattern)", loop,
                  active / loop / 1e9, loop / moe_ms);
      std::printf("%-44s %9.3f %11.1f\n", "PyTorch: dense SwiGLU MLP", tdense, active / tdense / 1e9);
      if (torch.count("grouped_mm_ms"))
        std::printf("PyTorch torch._grouped_mm, x @ w1 (balanced, max/mean %.2f): %.3f ms, %.1f TFLOP/s\n",
                    torch.at("grouped_mm_max_over_mean"), torch.at("grouped_mm_ms"), torch.at("grouped_mm_tflops"));
    } else {
      std::printf("(PyTorch comparison skipped: python3 %s did not run)\n", torch_script.c_str());
    }
    cuda::Profiler prof;
    prof.start();
    for (int i = 0; i < 3; ++i) step(layer);
    std::printf("\nprofile of 3 DeepSeekMoE forward + backward steps:\n%s", prof.stop(25).c_str());
    if (a["offload_layers"] > 0) offload_table(mc, T, a["offload_layers"]);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
