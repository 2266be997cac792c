// Kernel benchmark: achieved bandwidth of the memory-bound kernels and TFLOP/s of matmul, each next to the
// ceiling measured in the same run (device-to-device copy; cuBLAS through torch.matmul when python3 with torch is
// present, which scripts/bench_torch.py times on the same shapes).
//
//   build/examples/bench_kernels [--no-torch] [--only=memory|matmul|attention]
// Bytes counted: each input read once and each output written once (the minimum any implementation must move).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "bench_timing.h"
#include "cuda/check.h"
#include "cuda/kernels.h"
#include "cuda/memory.h"
#include "cuda/runtime.h"
#include "cuda/allocator.h"
#include "ops/ops.h"

using namespace nt;

namespace {
const Device kGpu = cuda_device(0);

using bench::time_ms;

std::map<std::string, double> torch_results(bool enabled, const std::string& only) {
  if (!enabled) return {};
  return bench::python_results("python3 " + bench::script_path("bench_torch.py") + " --only=" + only);
}

struct Row {
  std::string name, torch_key;
  double ms, value;  // GB/s or TFLOP/s
};
}  // namespace

int main(int argc, char** argv) {
  bool use_torch = true;
  std::string only;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--no-torch") use_torch = false;
    else if (arg.rfind("--only=", 0) == 0) only = arg.substr(7);
    else throw Error(fmt::format("bench_kernels: unknown argument '{}'; use --no-torch, --only=memory|matmul|attention", arg));
  }
  NT_CHECK(only.empty() || only == "memory" || only == "matmul" || only == "attention",
           "bench_kernels: --only must be memory, matmul or attention, got '{}'", only);
  auto want = [&](const char* part) { return only.empty() || only == part; };
  NT_CHECK(cuda::available(), "bench_kernels needs a GPU");
  cudaDeviceProp prop;
  NT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("GPU: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const auto torch = torch_results(use_torch, only);
  if (use_torch)
    std::printf("torch reference: %s\n", torch.empty() ? "not available" : bench::script_path("bench_torch.py").c_str());
  autograd::NoGradGuard no_grad;
  Generator gen(1);
  std::vector<Row> rows;
  auto gbps = [](double bytes, double ms) { return bytes / ms / 1e6; };

  // Ceiling: device-to-device copy of 1 GiB.
  {
    Tensor a = rand({1 << 28}, DType::f32, kGpu, &gen), b = empty({1 << 28}, DType::f32, kGpu);
    const double ms = time_ms([&] { b.copy_(a); });
    rows.push_back({"copy 1 GiB (ceiling)", "copy_gbps", ms, gbps(2.0 * a.numel() * 4, ms)});
  }
  const double copy_bw = rows[0].value;
  if (want("memory")) {
  {
    const int64_t R = 16384, C = 4096;
    Tensor x = randn({R, C}, DType::bf16, kGpu, &gen), y = randn({R, C}, DType::bf16, kGpu, &gen);
    Tensor w = randn({C}, DType::bf16, kGpu, &gen);
    const double n = (double)R * C;
    double ms = time_ms([&] { add(x, y); });
    rows.push_back({"add bf16 16384x4096", "add_gbps", ms, gbps(3 * n * 2, ms)});
    ms = time_ms([&] { gelu(x, GeluApprox::tanh); });
    rows.push_back({"gelu_tanh bf16 16384x4096", "gelu_tanh_gbps", ms, gbps(2 * n * 2, ms)});
    ms = time_ms([&] { swiglu(x, y); });
    rows.push_back({"swiglu fwd bf16 16384x4096", "swiglu_gbps", ms, gbps(3 * n * 2, ms)});
    ms = time_ms([&] { rms_norm(x, w); });
    rows.push_back({"rms_norm fwd bf16 16384x4096", "rms_norm_gbps", ms, gbps(2 * n * 2, ms)});
    {  // fills (zeroing gradient sums): 16-byte stores from a small grid, and a view starting mid-vector, which
       // takes the kernel of one element per thread
      Tensor f = empty({(1 << 26) + 1}, DType::f32, kGpu);
      Tensor aligned = f.narrow(0, 0, 1 << 26), unaligned = f.narrow(0, 1, 1 << 26);
      ms = time_ms([&] { aligned.fill_(0.0); });
      rows.push_back({"fill f32 2^26 (256 MiB written)", "fill_f32_gbps", ms, gbps((double)(1 << 26) * 4, ms)});
      ms = time_ms([&] { unaligned.fill_(0.0); });
      rows.push_back({"  same, unaligned view (thread per element)", "", ms, gbps((double)(1 << 26) * 4, ms)});
    }
    {  // the strided copy kernels: casts (contiguous), a permuted copy, a broadcast add over a permuted view
      const Tensor xf = x.to(DType::f32), x3 = x.reshape({4096, 128, 128}), w128 = w.narrow(0, 0, 128);
      ms = time_ms([&] { xf.to(DType::bf16); });
      rows.push_back({"cast f32 -> bf16 16384x4096", "cast_f32_bf16_gbps", ms, gbps(n * 6, ms)});
      ms = time_ms([&] { x.to(DType::f32); });
      rows.push_back({"cast bf16 -> f32 16384x4096", "cast_bf16_f32_gbps", ms, gbps(n * 6, ms)});
      ms = time_ms([&] { x3.permute({1, 0, 2}).contiguous(); });
      rows.push_back({"permute(1,0,2) copy bf16 4096x128x128", "permute_bf16_gbps", ms, gbps(n * 4, ms)});
      ms = time_ms([&] { add(x3.permute({1, 0, 2}), w128); });
      rows.push_back({"add bf16, permuted + broadcast row", "add_bcast_bf16_gbps", ms, gbps(n * 4, ms)});
      cuda::set_fast_offsets(false);  // the same two with 64-bit offsets (the path before 2026-12-06, and above 2^31)
      ms = time_ms([&] { x3.permute({1, 0, 2}).contiguous(); });
      rows.push_back({"  permute copy, 64-bit offsets", "", ms, gbps(n * 4, ms)});
      ms = time_ms([&] { add(x3.permute({1, 0, 2}), w128); });
      rows.push_back({"  permuted add, 64-bit offsets", "", ms, gbps(n * 4, ms)});
      cuda::set_fast_offsets(true);
    }
    {
      autograd::EnableGradGuard grad;
      Tensor xg = x.detach().requires_grad_(), wg = w.detach().requires_grad_();
      Tensor out = rms_norm(xg, wg);
      ms = time_ms([&] {
        xg.set_grad(Tensor()), wg.set_grad(Tensor());  // time the backward, not gradient accumulation
        out.backward(y, true);
      });
      rows.push_back({"rms_norm bwd bf16 16384x4096", "rms_norm_bwd_gbps", ms, gbps(3 * n * 2, ms)});
      // The kernels alone (dx and dw), without the op's allocations and the autograd engine.
      Tensor stats = empty({R, 2}, DType::f32, kGpu), dx = empty({R, C}, DType::bf16, kGpu), dw = empty({C}, DType::bf16, kGpu);
      cuda::norm_forward(true, DType::bf16, x.data_ptr(), w.data_ptr(), nullptr, 1e-6, dx.data_ptr(), stats.data_ptr(), R, C,
                         cuda::current_stream(0));
      ms = time_ms([&] {
        cuda::norm_backward(true, DType::bf16, x.data_ptr(), w.data_ptr(), stats.data_ptr(), y.data_ptr(), dx.data_ptr(),
                            dw.data_ptr(), nullptr, R, C, cuda::current_stream(0));
      });
      rows.push_back({"  rms_norm bwd kernels only", "", ms, gbps(3 * n * 2, ms)});
    }
  }
  {
    const int64_t R = 16384, V = 50304;
    Tensor logits = randn({R, V}, DType::bf16, kGpu, &gen);
    Tensor target = randint(0, V, {R}, DType::i64, kGpu, &gen);
    const double n = (double)R * V;
    double ms = time_ms([&] { softmax(logits, -1); }, 10);
    rows.push_back({"softmax bf16 16384x50304", "softmax_gbps", ms, gbps(2 * n * 2, ms)});
    autograd::EnableGradGuard grad;
    Tensor lg = logits.detach().requires_grad_();
    ms = time_ms([&] {
      lg.set_grad(Tensor());
      cross_entropy(lg, target).backward();
    }, 10);
    rows.push_back({"cross_entropy fwd+bwd bf16 16384x50304", "cross_entropy_gbps", ms, gbps(2 * n * 2, ms)});
    Tensor loss = empty({R}, DType::f32, kGpu), lse = empty({R}, DType::f32, kGpu), dl = empty({R, V}, DType::bf16, kGpu);
    Tensor count = full({}, (double)R, DType::f32, kGpu), flag = zeros({1}, DType::i32, kGpu);
    ms = time_ms([&] {
      cuda::cross_entropy_forward(DType::bf16, logits.data_ptr(), DType::i64, target.data_ptr(), -100, loss.data_ptr(),
                                  lse.data_ptr(), dl.data_ptr(), count.data_ptr(), R, V, flag.data<int32_t>(),
                                  cuda::current_stream(0));
    }, 10);
    rows.push_back({"  cross_entropy fused kernel only", "", ms, gbps(2 * n * 2, ms)});
  }
  }
  std::printf("\n%-42s %10s %10s %8s %12s %8s\n", "memory-bound kernel", "ms", "GB/s", "of copy", "torch GB/s", "vs torch");
  for (const Row& r : rows) {
    const auto it = torch.find(r.torch_key);
    const double t = it == torch.end() ? 0 : it->second;
    std::printf("%-42s %10.3f %10.0f %7.0f%% %12s %8s\n", r.name.c_str(), r.ms, r.value, 100 * r.value / copy_bw,
                t > 0 ? std::to_string((int)t).c_str() : "-", t > 0 ? fmt::format("{:.2f}x", r.value / t).c_str() : "-");
  }

  struct Mm {
    int64_t M, N, K;
  };
  if (want("matmul")) {
  std::printf("\n%-42s %10s %10s %14s %8s\n", "matmul bf16 (f32 accumulate)", "ms", "TFLOP/s", "torch TFLOP/s", "ratio");
  for (const Mm& m : {Mm{8192, 8192, 8192}, Mm{16384, 2304, 768}, Mm{16384, 768, 2048}, Mm{16384, 50304, 768}}) {
    Tensor a = randn({m.M, m.K}, DType::bf16, kGpu, &gen), b = randn({m.K, m.N}, DType::bf16, kGpu, &gen);
    const double ms = time_ms([&] { matmul(a, b); });
    const double tf = 2.0 * m.M * m.N * m.K / ms / 1e9;
    const std::string key = fmt::format("matmul_{}x{}x{}_tflops", m.M, m.N, m.K);
    const auto it = torch.find(key);
    const std::string name = fmt::format("{} x {} x {}", m.M, m.N, m.K);
    std::printf("%-42s %10.3f %10.1f %14s %8s\n", name.c_str(), ms, tf,
                it == torch.end() ? "-" : fmt::format("{:.1f}", it->second).c_str(),
                it == torch.end() ? "-" : fmt::format("{:.3f}", tf / it->second).c_str());
  }
  }
  // Fused attention (bf16, causal): FLOPs are those of the visible (query, key) pairs, 4 D per pair forward
  // (q.k and p.v) and 10 D forward + backward (the backward recomputes q.k: 2.5x the forward).
  struct At {
    int64_t B, T, H, Hkv, D, window;
  };
  if (want("attention")) {
  std::printf("\n%-42s %10s %10s %14s %8s\n", "flash_attention bf16 causal", "ms", "TFLOP/s", "torch TFLOP/s", "ratio");
  for (const At& c : {At{4, 2048, 12, 12, 64, 0}, At{2, 4096, 16, 16, 128, 0}, At{1, 8192, 32, 8, 128, 0},
                      At{1, 16384, 16, 4, 128, 512}}) {
    Tensor q = randn({c.B, c.T, c.H, c.D}, DType::bf16, kGpu, &gen), k = randn({c.B, c.T, c.Hkv, c.D}, DType::bf16, kGpu, &gen),
           v = randn({c.B, c.T, c.Hkv, c.D}, DType::bf16, kGpu, &gen), dout = randn({c.B, c.T, c.H, c.D}, DType::bf16, kGpu, &gen);
    double pairs = 0;
    for (int64_t t = 0; t < c.T; ++t) pairs += (double)(c.window > 0 ? std::min(t + 1, c.window) : t + 1);
    const double fwd_flop = 4.0 * c.B * c.H * c.D * pairs;
    const AttentionOptions opt{c.window};
    // The default and its variants (the other forward kernel versions, cuda::set_attention_kernel; the other
    // ping-pong setting; the persistent forward's other block counts, cuda::set_attention_fwd_blocks; the other block
    // orders, forward and forward + backward; both directions on mma.sync, version 3's forward and 128-key backward)
    // are timed in rounds, each variant once per round, every other round in reverse order, and reported as the mean
    // over an even number of rounds: every variant's places in the order then average to the middle of the list,
    // so a clock that drifts steadily over the rounds shifts every variant alike. Why: the H100 runs these at its
    // power cap (clocks_event_reasons 0x4, ~700 W; SM clock down to ~1.56 GHz here, ~1.46 in bench_nsa, from 1.98;
    // 2026-12-07), and a kernel's place in the order moved its time by ~5%: the same forward took 1.03-1.08 ms
    // timed first on the warp-specialized kernel and 1.19-1.25 ms timed last of the T8192 row (docs/nsa-history.md,
    // thirty-first session). The median of three rounds, reversed every other one or each started a third of the
    // list further on, still left a variant near the list's start ahead of the same kernel near its end (0.95x and
    // 0.96x; thirty-second session).
    const int default_version = cuda::attention_kernel();
    const bool default_pingpong = cuda::attention_fwd_pingpong();
    const int default_fwd_blocks = cuda::attention_fwd_blocks();
    using Order = cuda::AttentionBlockOrder;
    const Order default_order = cuda::attention_block_order();
    autograd::EnableGradGuard grad;
    Tensor qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(), vg = v.detach().requires_grad_();
    const std::function<void()> fwd_only = [&] { flash_attention(q, k, v, opt); };
    const std::function<void()> fwd_bwd = [&] {
      qg.set_grad(Tensor()), kg.set_grad(Tensor()), vg.set_grad(Tensor());
      flash_attention(qg, kg, vg, opt).backward(dout);
    };
    struct Variant {
      std::string name;  // empty: the default
      bool fb;           // forward + backward
      std::function<void()> set;
      std::vector<double> ms = {};
    };
    std::vector<Variant> vars;
    auto defaults = [&] {
      cuda::set_attention_kernel(default_version), cuda::set_attention_fwd_pingpong(default_pingpong);
      cuda::set_attention_block_order(default_order), cuda::set_attention_fwd_blocks(default_fwd_blocks);
    };
    for (int ver = 1; ver <= 7; ++ver)
      if (ver != default_version)
        vars.push_back({fmt::format("fwd, kernel v{}", ver), false, [ver] { cuda::set_attention_kernel(ver); }});
    vars.push_back({fmt::format("fwd, ping-pong {}", default_pingpong ? "off" : "on"), false,
                    [&] { cuda::set_attention_fwd_pingpong(!default_pingpong); }});
    for (auto [blocks, name] : {std::pair{-1, "one block per SM (-1)"}, std::pair{-2, "automatic blocks (-2)"},
                                std::pair{0, "one block per tile (0)"}})
      if (blocks != default_fwd_blocks)
        vars.push_back({fmt::format("fwd, {}", name), false, [b = blocks] { cuda::set_attention_fwd_blocks(b); }});
    vars.push_back({"fwd+bwd, mma.sync v3", true, [] { cuda::set_attention_kernel(3); }});
    for (auto [o, name] : {std::pair{Order::per_group, "per group"}, std::pair{Order::longest_first, "longest first"},
                           std::pair{Order::automatic, "automatic order"}})
      if (o != default_order)
        for (bool fb : {false, true})
          vars.push_back({fmt::format("{}, {}", fb ? "fwd+bwd" : "fwd", name), fb,
                          [o = o] { cuda::set_attention_block_order(o); }});
    vars.push_back({"", false, [] {}});
    vars.push_back({"", true, [] {}});
    constexpr int kRounds = 4;  // even: each variant's places average to the middle
    for (int r = 0; r < kRounds; ++r)
      for (size_t i = 0; i < vars.size(); ++i) {
        Variant& var = vars[r % 2 ? vars.size() - 1 - i : i];
        var.set();
        var.ms.push_back(time_ms(var.fb ? fwd_bwd : fwd_only));
        defaults();
      }
    auto mean = [](const std::vector<double>& t) { return std::accumulate(t.begin(), t.end(), 0.0) / (double)t.size(); };
    const double fwd = mean(vars[vars.size() - 2].ms), fb = mean(vars.back().ms);
    for (const Variant& var : vars) {
      if (var.name.empty()) continue;
      const double ms = mean(var.ms), base = var.fb ? fb : fwd;
      std::printf("%-42s %10.3f %10.1f %14s %8s\n", fmt::format("  {} ({:.2f}x the default)", var.name, ms / base).c_str(),
                  ms, (var.fb ? 3.5 : 1.0) * fwd_flop / ms / 1e9, "", "");
    }
    const std::string shape = fmt::format("{}x{}x{}x{}x{}x{}", c.B, c.T, c.H, c.Hkv, c.D, c.window);
    for (int pass = 0; pass < 2; ++pass) {
      const double ms = pass ? fb : fwd, tf = (pass ? 3.5 : 1.0) * fwd_flop / ms / 1e9;
      const auto it = torch.find(fmt::format("attn_{}_{}_tflops", shape, pass ? "fwdbwd" : "fwd"));
      const std::string name = fmt::format("{} B{} T{} H{}/{} D{}{}", pass ? "fwd+bwd" : "fwd", c.B, c.T, c.H, c.Hkv, c.D,
                                           c.window ? fmt::format(" w{}", c.window) : "");
      std::printf("%-42s %10.3f %10.1f %14s %8s\n", name.c_str(), ms, tf,
                  it == torch.end() ? "-" : fmt::format("{:.1f}", it->second).c_str(),
                  it == torch.end() ? "-" : fmt::format("{:.3f}", tf / it->second).c_str());
    }
    const auto [f0, f1] = std::minmax_element(vars[vars.size() - 2].ms.begin(), vars[vars.size() - 2].ms.end());
    const auto [b0, b1] = std::minmax_element(vars.back().ms.begin(), vars.back().ms.end());
    std::printf("  (the default over %d rounds: fwd %.3f-%.3f ms, fwd+bwd %.3f-%.3f)\n", kRounds, *f0, *f1, *b0, *b1);
  }
  }
  const auto st = cuda::allocator_stats(0);
  std::printf("\nallocator: peak %.2f GiB, reserved %.2f GiB, %llu allocations, %llu cache hits\n",
              st.peak_allocated / 1073741824.0, st.reserved / 1073741824.0, (unsigned long long)st.allocations,
              (unsigned long long)st.cache_hits);
  return 0;
}
