// NSA benchmark (GPU): the nsa_attention op (compressed, selected and window branches with their gates; the
// paper's l = 32, d = 16, l' = 64, n = 16, w = 512), branch-wise (nsa/branches.h; each branch alone too) and fused
// (CUDA-core kernels), against dense causal attention on the same shapes in the same run: our flash_attention, and
// PyTorch's scaled_dot_product_attention when python3 with torch is present, with its default backend (cuDNN on
// the H100) and its flash backend (FlashAttention-2, the reference; also the backward's speedup)
// (scripts/bench_nsa_torch.py). Forward and forward + backward time and peak GPU memory (caching allocator; torch's
// max_memory_allocated), batch 1, bf16.
//   build/examples/bench_nsa [T=8192,16384,32768,65536] [hq=64] [hkv=4] [d=128] [fused_max_t=16384] [profile=0]
//                            [qrun=1]
// qrun=R: the queries of R consecutive positions share a random base vector (plus noise of half its size), so
// neighbouring positions choose alike, as the selected-branch kernels' shared loads assume of a trained model;
// qrun=1 (default) draws every query independently (neighbours choose nearly independent blocks).
// profile=1: after each T's rows, the kernels of one branch-wise forward, then of one forward + backward
// (cuda::Profiler, CUPTI). The branch-wise row is the default autograd layout (NsaOneNode, NT_NSA_ONE_NODE); the
// rows "as ..." below it time the other layouts in the same run.
// (the fused CUDA-core op takes seconds at 32k and more: it is timed up to fused_max_t tokens)
// The compressed keys and values are inputs of the op (the compression MLP phi is a separate GEMM composite, not
// timed here); NSA's gate projection and the dense model's projections are not timed either.
// Long calls are timed fewer times: after one warm-up, up to 5 runs or until 3 s have passed (at least one).
// The last column: TFLOP/s of the attention products each row needs (branch_pairs), not of what its kernels do.
// After each T's branch rows (G >= 2), one line on the selected forward's tiles with this run's choice: the blocks
// each tile loads (the union of its positions' choices) and what that makes in bytes from L2 and products; divided
// by the kernel's time (profile=1: nsa_slc_fwd_ws) they give its achieved TB/s and TFLOP/s (docs/nsa.md); then the
// bytes if twice as many positions shared their loads. With PyTorch, its script runs again at the end (it ran
// first): its times and NSA's speedups over both runs show how much the order moved them.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/memory.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "nsa/branches.h"
#include "nsa/nsa_attention.h"
#include "nsa/selection.h"
#include "ops/ops.h"

using namespace nt;

namespace {
const Device kGpu = cuda_device(0);

// Median ms of fn (CUDA events on the library's stream) and the peak GPU memory above `base` during one call, GiB.
std::pair<double, double> measure(const std::function<void()>& fn) {
  cudaStream_t s = cuda::current_stream(0);
  fn();  // warm-up
  NT_CUDA_CHECK(cudaDeviceSynchronize());
  const double base = (double)cuda::allocator_stats(0).allocated;
  cuda::reset_peak_stats(0);
  std::vector<float> t;
  cudaEvent_t a, b;
  NT_CUDA_CHECK(cudaEventCreate(&a));
  NT_CUDA_CHECK(cudaEventCreate(&b));
  const auto start = std::chrono::steady_clock::now();
  while (t.empty() || (t.size() < 5 && std::chrono::steady_clock::now() - start < std::chrono::seconds(3))) {
    NT_CUDA_CHECK(cudaEventRecord(a, s));
    fn();
    NT_CUDA_CHECK(cudaEventRecord(b, s));
    NT_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    NT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  const double peak = ((double)cuda::allocator_stats(0).peak_allocated - base) / (1024.0 * 1024.0 * 1024.0);
  return {t[t.size() / 2], peak};
}

// Key-query pairs each branch attends at T positions (one head), for its useful FLOPs: forward 4 D per pair (S and
// P V), forward + backward 14 D (the backward recomputes S and computes dP, dV, dK, dQ). The selected branch's rows
// see n blocks (block 0, the local ones and the rest by score): every full block but the current one, which is cut
// at t; before n blocks exist, every key <= t. Its selection re-scores the compressed keys: 2 D per pair, once.
struct BranchPairs {
  double cmp = 0, slc = 0, win = 0, dense = 0;
};
BranchPairs branch_pairs(int64_t T, const NsaOptions& o) {
  BranchPairs p;
  for (int64_t t = 0; t < T; ++t) {
    p.cmp += t + 1 < o.block ? 0 : (double)((t + 1 - o.block) / o.stride + 1);
    const int64_t cur = t / o.select_block;
    p.slc += cur + 1 <= o.n_select ? (double)(t + 1)
                                   : (double)((o.n_select - 1) * o.select_block + t % o.select_block + 1);
    p.win += (double)std::min<int64_t>(t + 1, o.window);
    p.dense += (double)(t + 1);
  }
  return p;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // rows appear as they are measured (long runs)
  try {
    std::vector<int64_t> Ts = {8192, 16384, 32768, 65536};
    std::map<std::string, int64_t> a{{"hq", 64}, {"hkv", 4}, {"d", 128}, {"fused_max_t", 16384}, {"profile", 0},
                                       {"qrun", 1}, {"dense", 1}};
    for (int i = 1; i < argc; ++i) {
      const std::string s = argv[i];
      const size_t eq = s.find('=');
      const std::string key = eq == std::string::npos ? s : s.substr(0, eq);
      NT_CHECK(eq != std::string::npos && (key == "T" || a.count(key)),
               "bench_nsa: unknown argument '{}'; use T=8192,16384,..., hq=, hkv=, d=, fused_max_t=, profile=1, qrun=, dense=0",
               s);
      if (key == "T") Ts = parse_list(s.substr(eq + 1));
      else a[key] = std::stoll(s.substr(eq + 1));
    }
    NT_CHECK(cuda::available(), "bench_nsa: needs a GPU");
    const int64_t HQ = a["hq"], H = a["hkv"], D = a["d"];
    NT_CHECK(HQ % H == 0, "bench_nsa: hq ({}) must be a multiple of hkv ({})", HQ, H);
    const int64_t qrun = a["qrun"];
    NT_CHECK(qrun >= 1, "bench_nsa: qrun must be >= 1, got {}", qrun);
    cudaDeviceProp prop;
    NT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const NsaOptions opt;  // the paper's sizes
    std::printf("bench_nsa on %s: batch 1, %lld query heads, %lld kv heads, head dim %lld, bf16; NSA l=%lld d=%lld "
                "l'=%lld n=%lld w=%lld\n", prop.name, (long long)HQ, (long long)H, (long long)D, (long long)opt.block,
                (long long)opt.stride, (long long)opt.select_block, (long long)opt.n_select, (long long)opt.window);
    if (qrun > 1) std::printf("queries: runs of %lld positions share a base vector (qrun)\n", (long long)qrun);
    std::string t_list;
    for (int64_t T : Ts) t_list += (t_list.empty() ? "" : ",") + std::to_string(T);
    // dense=0 (A/B runs of NSA's kernels): no dense attention, ours or torch's.
    const std::string torch_script = bench::script_path("bench_nsa_torch.py");
    const auto torch = a["dense"] ? bench::python_results(fmt::format("python3 {} {} {} {} {}", torch_script, t_list,
                                                                      HQ, H, D))
                                  : std::map<std::string, double>{};
    std::printf("\n%-7s %-30s %10s %10s %12s %10s   %s\n", "T", "attention", "fwd ms", "fwd GiB", "fwd+bwd ms",
                "f+b GiB", "useful TFLOP/s fwd, f+b (attention products only)");
    Generator gen(1);
    std::map<int64_t, std::pair<double, double>> nsa_ms;  // the branch-wise row's fwd and fwd+bwd ms per T
    for (int64_t T : Ts) {
      auto rnd = [&](const Shape& s) { return randn(s, DType::f32, kGpu, &gen).to(DType::bf16); };
      const int64_t NC = nsa_num_cmp_blocks(T, opt.block, opt.stride);
      // qrun > 1: base[t / qrun] + noise / 2 (the base rows repeated by a broadcast view, then cut to T rows).
      auto queries = [&] {
        if (qrun == 1) return rnd({T, HQ, D});
        const int64_t runs = (T + qrun - 1) / qrun;
        const Tensor base = randn({runs, 1, HQ, D}, DType::f32, kGpu, &gen).expand({runs, qrun, HQ, D})
                                .reshape({runs * qrun, HQ, D}).narrow(0, 0, T);
        return (base + randn({T, HQ, D}, DType::f32, kGpu, &gen) * 0.5).to(DType::bf16);
      };
      const Tensor q = queries(), kc = rnd({NC, H, D}), vc = rnd({NC, H, D}), ks = rnd({T, H, D}),
                   vs = rnd({T, H, D}), kw = rnd({T, H, D}), vw = rnd({T, H, D});
      const Tensor gates = sigmoid(randn({T, HQ, 3}, DType::f32, kGpu, &gen)).to(DType::bf16);
      const Tensor dout = rnd({T, HQ, D});
      std::vector<Tensor> nsa_in = {q, kc, vc, ks, vs, kw, vw, gates};
      for (Tensor& t : nsa_in) t = t.detach().requires_grad_();
      NsaOptions fused = opt;
      fused.fused = true;
      auto nsa_fwd = [&] {
        autograd::NoGradGuard ng;
        nsa_attention(q, kc, vc, ks, vs, kw, vw, gates, fused);
      };
      auto nsa_fb = [&] {  // the gradients are freed inside the call, so its peak counts them
        const NsaOutput r = nsa_attention(nsa_in[0], nsa_in[1], nsa_in[2], nsa_in[3], nsa_in[4], nsa_in[5], nsa_in[6],
                                          nsa_in[7], fused);
        r.o.backward(dout);
        for (Tensor& t : nsa_in) t.set_grad(Tensor());
      };
      // The branch-wise path (nsa/branches.h): compressed and window branches on flash_attention's kernels.
      auto br_fwd = [&] {
        autograd::NoGradGuard ng;
        nsa_attention_branches(q, kc, vc, ks, vs, kw, vw, gates, opt);
      };
      auto br_fb = [&] {
        const NsaOutput r = nsa_attention_branches(nsa_in[0], nsa_in[1], nsa_in[2], nsa_in[3], nsa_in[4], nsa_in[5],
                                                   nsa_in[6], nsa_in[7], opt);
        r.o.backward(dout);
        for (Tensor& t : nsa_in) t.set_grad(Tensor());
      };
      Tensor qd = q.detach().requires_grad_(), kd = ks.detach().requires_grad_(), vd = vs.detach().requires_grad_();
      auto dense_fwd = [&] {
        autograd::NoGradGuard ng;
        flash_attention(q, ks, vs);
      };
      auto dense_fb = [&] {
        flash_attention(qd, kd, vd).backward(dout);
        qd.set_grad(Tensor()), kd.set_grad(Tensor()), vd.set_grad(Tensor());
      };
      // The branch-wise path's parts: each branch alone, forward and forward + backward (the selected branch from
      // the compressed log-sum-exps, computed once outside the timing).
      Tensor lse_cmp;
      {
        autograd::NoGradGuard ng;
        lse_cmp = nsa_compressed_branch(q, kc, vc, opt).lse;
      }
      auto part = [&](int which, bool grad) {
        return [&, which, grad] {
          std::unique_ptr<autograd::NoGradGuard> ng(grad ? nullptr : new autograd::NoGradGuard);
          const Tensor& qq = grad ? nsa_in[0] : q;
          Tensor o;
          if (which == 0) o = nsa_compressed_branch(qq, grad ? nsa_in[1] : kc, grad ? nsa_in[2] : vc, opt).o;
          else if (which == 1) o = nsa_selected_branch(qq, kc, grad ? nsa_in[3] : ks, grad ? nsa_in[4] : vs, lse_cmp, opt).o;
          else o = nsa_window_branch(qq, grad ? nsa_in[5] : kw, grad ? nsa_in[6] : vw, opt).o;
          if (grad) {
            o.backward(dout);
            for (Tensor& t : nsa_in) t.set_grad(Tensor());
          }
        };
      };
      auto row = [](const std::string& t, const char* name, std::pair<double, double> f, std::pair<double, double> b,
                    const std::string& note) {
        std::printf("%-7s %-30s %10.2f %10.2f %12.2f %10.2f%s\n", t.c_str(), name, f.first, f.second, b.first, b.second,
                    note.c_str());
      };
      // Useful FLOPs per branch (HQ heads, D wide), and the TFLOP/s they give at the measured times.
      const BranchPairs pairs = branch_pairs(T, opt);
      const double hd = (double)HQ * (double)D, sel = 2 * hd * pairs.cmp;
      const double fw[3] = {4 * hd * pairs.cmp, 4 * hd * pairs.slc + sel, 4 * hd * pairs.win};
      const double fb[3] = {14 * hd * pairs.cmp, 14 * hd * pairs.slc + sel, 14 * hd * pairs.win};
      auto rate = [](double flop_f, double flop_b, std::pair<double, double> f, std::pair<double, double> b) {
        return fmt::format("   {:.0f}, {:.0f}", flop_f / f.first / 1e9, flop_b / b.first / 1e9);
      };
      const auto bf = measure(br_fwd), bb = measure(br_fb);
      nsa_ms[T] = {bf.first, bb.first};
      row(std::to_string(T), "NSA branch-wise (branches.h)", bf, bb,
          rate(fw[0] + fw[1] + fw[2], fb[0] + fb[1] + fb[2], bf, bb));
      {  // the branch-wise path's other autograd layouts (NsaOneNode) in the same run: same forward kernels
        const NsaOneNode saved = nsa_branches_one_node();
        const std::pair<const char*, NsaOneNode> layouts[3] = {{"  as per-branch nodes", {true, false, false}},
                                                               {"  as one node", {true, true, false}},
                                                               {"  as one node, deltas from mix", {true, true, true}}};
        for (const auto& [name, layout] : layouts) {
          if (layout.cuda == saved.cuda && layout.deltas_from_mix == saved.deltas_from_mix) continue;  // the row above
          set_nsa_branches_one_node(layout);
          const auto lf = measure(br_fwd), lb = measure(br_fb);
          row("", name, lf, lb, rate(fw[0] + fw[1] + fw[2], fb[0] + fb[1] + fb[2], lf, lb));
        }
        set_nsa_branches_one_node(saved);
      }
      const char* parts[3] = {"  compressed branch", "  selected branch (+ choice)", "  window branch"};
      for (int i = 0; i < 3; ++i) {
        const auto pf = measure(part(i, false)), pb = measure(part(i, true));
        row("", parts[i], pf, pb, rate(fw[i], fb[i], pf, pb));
      }
      if (HQ / H >= 2) {  // What the selected forward loads and multiplies with this run's choice (nsa_count_block_unions:
        // its wgmma kernel, G >= 2 on sm_90a, walks per tile of 64 / G positions (G rounded up to a power of two) the
        // union of their blocks, every row of the tile on every block): its L2 traffic and products, against the
        // kernel's time (profile=1); and the traffic if two tiles shared their loads.
        Tensor chosen;
        {
          autograd::NoGradGuard ng;
          chosen = nsa_selected_branch(q, kc, ks, vs, lse_cmp, opt).block_indices;
        }
        int64_t gp = 1;
        while (gp < HQ / H) gp *= 2;
        const int64_t P = 64 / gp;
        const NsaUnionCount u = nsa_count_block_unions(chosen, P, opt), u2 = nsa_count_block_unions(chosen, 2 * P, opt);
        const double lp = (double)opt.select_block, th = (double)(T * H), kv = lp * (double)D * 4;  // bytes per block
        std::printf("        selected forward, tiles of %lld positions: %.1f blocks each, %.2f per position (%.2f "
                    "chosen): %.1f GB of keys and values, %.2f TFLOP of products; %lld positions sharing: %.2f per "
                    "position, %.1f GB\n",
                    (long long)P, (double)u.blocks / (double)u.groups, (double)u.blocks / th, (double)u.chosen / th,
                    (double)u.blocks * kv / 1e9, (double)u.blocks * lp * 64 * (double)D * 4 / 1e12, (long long)(2 * P),
                    (double)u2.blocks / th, (double)u2.blocks * kv / 1e9);
      }
      if (a["profile"]) {
        cuda::Profiler prof;
        prof.start();
        br_fwd();
        std::printf("kernels of one branch-wise forward at T = %lld:\n%s", (long long)T, prof.stop(12).c_str());
        prof.start();
        br_fb();
        std::printf("kernels of one branch-wise forward + backward at T = %lld:\n%s", (long long)T, prof.stop(12).c_str());
      }
      if (T <= a["fused_max_t"]) row("", "NSA fused (CUDA cores)", measure(nsa_fwd), measure(nsa_fb), "");
      if (!a["dense"]) continue;
      const auto df = measure(dense_fwd), db = measure(dense_fb);
      row("", "dense causal (flash_attention)", df, db,
          rate(4 * hd * pairs.dense, 14 * hd * pairs.dense, df, db) +
              fmt::format("   NSA (branch-wise) speedup {:.2f}x fwd, {:.2f}x fwd+bwd", df.first / bf.first,
                          db.first / bb.first));
      // PyTorch's default backend (cuDNN on the H100: PERF-TARGETS.md's NSA targets) and its flash backend
      // (FlashAttention-2: the 9x forward / 6x backward at 64k), each where it ran.
      const std::string k = std::to_string(T);
      for (const auto& [key, name] : {std::pair{"sdpa", "dense causal (torch SDPA)"},
                                      std::pair{"fa2", "dense causal (torch flash, FA2)"}}) {
        const std::string p = key;
        if (!torch.count(p + "_fwd_ms_" + k) || !torch.count(p + "_fwdbwd_gib_" + k)) continue;
        const std::pair<double, double> tf{torch.at(p + "_fwd_ms_" + k), torch.at(p + "_fwd_gib_" + k)},
            tb{torch.at(p + "_fwdbwd_ms_" + k), torch.at(p + "_fwdbwd_gib_" + k)};
        std::string speedup = fmt::format("   NSA (branch-wise) speedup {:.2f}x fwd, {:.2f}x fwd+bwd", tf.first / bf.first,
                                          tb.first / bb.first);
        if (p == "fa2") speedup += fmt::format(", {:.2f}x bwd", (tb.first - tf.first) / (bb.first - bf.first));
        row("", name, tf, tb, rate(4 * hd * pairs.dense, 14 * hd * pairs.dense, tf, tb) + speedup);
      }
    }
    if (torch.empty() && a["dense"]) std::printf("(PyTorch comparison skipped: python3 %s did not run)\n", torch_script.c_str());
    if (!torch.empty()) {
      // PyTorch ran before everything above, on a cooler GPU: at the H100's power cap the clock falls as a run goes on
      // (docs/cuda.md), which favours whatever runs first. Its script again, last, bounds that order's effect on the
      // speedups: the speedup over each run, first and last.
      const auto again = bench::python_results(fmt::format("python3 {} {} {} {} {}", torch_script, t_list, HQ, H, D));
      if (again.empty()) std::printf("\n(PyTorch's second run did not run: python3 %s)\n", torch_script.c_str());
      else std::printf("\nPyTorch again, after NSA (ms; NSA's branch-wise speedup over its first run, then this one):\n");
      for (int64_t T : Ts)
        for (const auto& [key, name] : {std::pair{"sdpa", "dense causal (torch SDPA)"},
                                        std::pair{"fa2", "dense causal (torch flash, FA2)"}}) {
          const std::string f = std::string(key) + "_fwd_ms_" + std::to_string(T),
                            b = std::string(key) + "_fwdbwd_ms_" + std::to_string(T);
          if (!again.count(f) || !again.count(b) || !torch.count(f) || !torch.count(b) || !nsa_ms.count(T)) continue;
          const auto [nf, nb] = nsa_ms.at(T);
          std::printf("%-7lld %-30s %10.2f %23.2f   fwd %.2fx, %.2fx; fwd+bwd %.2fx, %.2fx\n", (long long)T, name,
                      again.at(f), again.at(b), torch.at(f) / nf, again.at(f) / nf, torch.at(b) / nb, again.at(b) / nb);
        }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
