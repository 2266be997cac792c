// nsa/branches.h: the compressed and window branches through flash_attention equal nsa_attention's branches (its
// CPU reference with one gate at 1 and the others at 0) in f64, values and gradients, on single and packed
// sequences (empty ones, ones shorter than a block), group sizes 1, 2 and 16, l = d, window 0 and windows longer
// than the sequence; the log-sum-exps against direct loops. On a GPU, bf16 through the tensor-core kernels against
// the f64 CPU result.
#include <cmath>

#include "cuda/memory.h"
#include "nsa/branches.h"
#include "nsa_naive.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
struct Case {
  int64_t T, HQ, H, D;
  NsaOptions opt;
};
NsaOptions blocks(int64_t l, int64_t d, int64_t lp, int64_t n, int64_t w, std::vector<int32_t> cu = {}) {
  NsaOptions o;
  o.block = l, o.stride = d, o.select_block = lp, o.n_select = n, o.window = w, o.cu_seqlens = std::move(cu);
  return o;
}
std::vector<int32_t> cu_or_one(const NsaOptions& opt, int64_t T) {
  return opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : opt.cu_seqlens;
}
int64_t total_cmp(const NsaOptions& opt, int64_t T) {
  const auto cu = cu_or_one(opt, T);
  int64_t n = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) n += nsa_num_cmp_blocks(cu[b + 1] - cu[b], opt.block, opt.stride);
  return n;
}
std::vector<Case> cases() {
  return {{45, 4, 2, 8, blocks(8, 4, 16, 3, 10)},
          {37, 16, 1, 6, blocks(4, 2, 8, 4, 5)},
          {51, 3, 3, 5, blocks(8, 4, 8, 3, 7, {0, 3, 3, 30, 51})},
          {23, 4, 2, 4, blocks(4, 4, 4, 3, 0)},
          {19, 2, 1, 3, blocks(2, 1, 4, 3, 40, {0, 1, 19})},
          {5, 2, 2, 4, blocks(8, 4, 8, 3, 3)}};  // shorter than a block: no compressed block at all
}
// gates selecting one branch (0 compressed, 2 window)
Tensor one_gate(int64_t T, int64_t HQ, int branch) {
  std::vector<Tensor> parts;
  for (int b = 0; b < 3; ++b) parts.push_back(b == branch ? ones({T, HQ, 1}, DType::f64) : zeros({T, HQ, 1}, DType::f64));
  return cat(parts, 2);
}
// Values and gradients (w.r.t. q, k, v) of sum(o * w) for the reference with one gate on and for the branch.
struct Result {
  Tensor o, dq, dk, dv;
};
Result reference(const NsaInputs& in, const NsaOptions& opt, int branch, const Tensor& w) {
  std::vector<Tensor> x;
  for (const Tensor& t : in.all()) x.push_back(t.detach().requires_grad_());
  const Tensor o = nsa_attention(x[0], x[1], x[2], x[3], x[4], x[5], x[6], one_gate(in.q.size(0), in.q.size(1), branch),
                                 opt).o;
  sum(o * w).backward();
  const int k = branch == 0 ? 1 : 5;
  return {o.detach(), x[0].grad(), x[k].grad(), x[k + 1].grad()};
}
Result branch_of(const NsaInputs& in, const NsaOptions& opt, int branch, const Tensor& w, Tensor* lse = nullptr) {
  const Tensor q = in.q.detach().requires_grad_();
  const Tensor k = (branch == 0 ? in.k_cmp : in.k_win).detach().requires_grad_();
  const Tensor v = (branch == 0 ? in.v_cmp : in.v_win).detach().requires_grad_();
  const NsaBranch r = branch == 0 ? nsa_compressed_branch(q, k, v, opt) : nsa_window_branch(q, k, v, opt);
  if (lse) *lse = r.lse;
  Tensor loss = sum(r.o.to(DType::f64) * w.to(DType::f64).to(r.o.device()));
  if (loss.requires_grad()) loss.backward();
  auto g = [&](const Tensor& t) {
    return t.grad().defined() ? t.grad().to(kCPU).to(DType::f64) : zeros(t.shape(), DType::f64);
  };
  return {r.o.detach().to(kCPU).to(DType::f64), g(q), g(k), g(v)};
}
// Log-sum-exp of the compressed (branch 0) or window (2) scores of every query, by direct loops; -inf if none.
std::vector<double> lse_loops(const NsaInputs& in, const NsaOptions& opt, int branch) {
  const int64_t T = in.q.size(0), HQ = in.q.size(1), D = in.q.size(2);
  const Tensor& K = branch == 0 ? in.k_cmp : in.k_win;
  const int64_t H = K.size(1), G = HQ / H;
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt((double)D);
  const auto Q = in.q.to_vector(), KV = K.to_vector();
  const auto cu = cu_or_one(opt, T);
  std::vector<double> out(T * HQ, -INFINITY);
  int64_t c0 = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t s = cu[b], len = cu[b + 1] - cu[b];
    for (int64_t t = 0; t < len; ++t)
      for (int64_t hq = 0; hq < HQ; ++hq) {
        std::vector<double> sc;
        auto score = [&](int64_t krow) {
          double x = 0;
          for (int64_t e = 0; e < D; ++e) x += Q[((s + t) * HQ + hq) * D + e] * KV[(krow * H + hq / G) * D + e];
          sc.push_back(x * scale);
        };
        if (branch == 0) {
          for (int64_t c = 0; c * opt.stride + opt.block - 1 <= t; ++c) score(c0 + c);
        } else {
          for (int64_t j = std::max<int64_t>(0, t - opt.window + 1); opt.window > 0 && j <= t; ++j) score(s + j);
        }
        if (sc.empty()) continue;
        double m = -INFINITY, z = 0;
        for (double x : sc) m = std::max(m, x);
        for (double x : sc) z += std::exp(x - m);
        out[(s + t) * HQ + hq] = m + std::log(z);
      }
    c0 += nsa_num_cmp_blocks(len, opt.block, opt.stride);
  }
  return out;
}
}  // namespace

TEST_CASE("NSA compressed and window branches through flash_attention equal nsa_attention's, values and gradients") {
  int seed = 300;
  for (const Case& c : cases())
    for (int branch : {0, 2}) {
      INFO("T " << c.T << " HQ " << c.HQ << " H " << c.H << " D " << c.D << " l " << c.opt.block << " d "
                << c.opt.stride << " w " << c.opt.window << " packed " << !c.opt.cu_seqlens.empty() << " branch "
                << branch);
      const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), seed += 10);
      const Tensor w = rnd({c.T, c.HQ, c.D}, seed + 9);
      const Result ref = reference(in, c.opt, branch, w);
      Tensor lse;
      const Result got = branch_of(in, c.opt, branch, w, &lse);
      expect_close(got.o, ref.o, 1e-12, 1e-10);
      expect_close(got.dq, ref.dq, 1e-12, 1e-10);
      expect_close(got.dk, ref.dk, 1e-12, 1e-10);
      expect_close(got.dv, ref.dv, 1e-12, 1e-10);
      REQUIRE(lse.shape() == Shape{c.T, c.HQ});
      CHECK(lse.dtype() == DType::f32);
      const auto want = lse_loops(in, c.opt, branch), have = lse.to_vector();
      for (size_t i = 0; i < want.size(); ++i) {
        INFO("row " << i / c.HQ << " head " << i % c.HQ);
        if (std::isinf(want[i]))
          CHECK(have[i] == -INFINITY);
        else
          CHECK(have[i] == doctest::Approx(want[i]).epsilon(1e-6));
      }
    }
}

namespace {
// o, block indices and the gradients of sum(o * w) w.r.t. all eight inputs, through fn.
struct Full {
  Tensor o, idx;
  std::vector<Tensor> grads;
};
template <class Fn> Full full_of(const NsaInputs& in, const Tensor& w, Fn fn) {
  std::vector<Tensor> x;
  for (const Tensor& t : in.all()) x.push_back(t.detach().requires_grad_());
  const NsaOutput r = fn(x);
  sum(r.o.to(DType::f64) * w.to(r.o.device()).to(DType::f64)).backward();
  Full f{r.o.detach().to(kCPU).to(DType::f64), r.block_indices.to(kCPU), {}};
  for (const Tensor& t : x)
    f.grads.push_back(t.grad().defined() ? t.grad().to(kCPU).to(DType::f64) : zeros(t.shape(), DType::f64));
  return f;
}
}  // namespace

TEST_CASE("NSA selected branch and the branch-wise nsa_attention equal the fused op (f64)") {
  int seed = 700;
  const char* names[8] = {"q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates"};
  for (const Case& c : cases()) {
    INFO("T " << c.T << " HQ " << c.HQ << " H " << c.H << " D " << c.D << " l " << c.opt.block << " d "
              << c.opt.stride << " l' " << c.opt.select_block << " n " << c.opt.n_select << " w " << c.opt.window
              << " packed " << !c.opt.cu_seqlens.empty());
    const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), seed += 10);
    const Tensor w = rnd({c.T, c.HQ, c.D}, seed + 9);
    {  // the selected branch alone: the fused op with gates (0, 1, 0)
      NsaInputs sel = in;
      sel.gates = one_gate(c.T, c.HQ, 1);
      const Full ref = full_of(sel, w, [&](const std::vector<Tensor>& x) {
        return nsa_attention(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], c.opt);
      });
      const Full got = full_of(sel, w, [&](const std::vector<Tensor>& x) {
        const NsaBranch cmp = nsa_compressed_branch(x[0], x[1], x[2], c.opt);
        return nsa_selected_branch(x[0], x[1], x[3], x[4], cmp.lse, c.opt);
      });
      CHECK(got.idx.to_vector() == ref.idx.to_vector());
      expect_close(got.o, ref.o, 1e-12, 1e-10);
      for (int i : {0, 3, 4}) {
        INFO("selected branch, gradient of " << names[i]);
        expect_close(got.grads[i], ref.grads[i], 1e-12, 1e-10);
      }
      CHECK(sum(got.grads[1] * got.grads[1]).item() == 0);  // no gradient through the selection
    }
    const Full ref = full_of(in, w, [&](const std::vector<Tensor>& x) {
      return nsa_attention(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], c.opt);
    });
    const Full got = full_of(in, w, [&](const std::vector<Tensor>& x) {
      return nsa_attention_branches(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], c.opt);
    });
    CHECK(got.idx.to_vector() == ref.idx.to_vector());
    expect_close(got.o, ref.o, 1e-12, 1e-10);
    for (int i = 0; i < 8; ++i) {
      INFO("gradient of " << names[i]);
      expect_close(got.grads[i], ref.grads[i], 1e-12, 1e-10);
    }
  }
}

TEST_CASE("NSA branches: argument errors") {
  const NsaInputs in = nsa_inputs(20, 4, 2, 8, 4, 1);
  CHECK_THROWS_WITH_AS(nsa_compressed_branch(in.q, in.k_cmp.narrow(0, 0, 3), in.v_cmp.narrow(0, 0, 3), blocks(8, 4, 8, 3, 5)),
                       doctest::Contains("keys must have 4 rows"), Error);
  CHECK_THROWS_WITH_AS(nsa_window_branch(in.q, in.k_win.narrow(1, 0, 1).expand({20, 3, 8}), in.v_win.narrow(1, 0, 1).expand({20, 3, 8}),
                                         blocks(8, 4, 8, 3, 5)),
                       doctest::Contains("H dividing 4 query heads"), Error);
  NsaOptions bad = blocks(8, 4, 8, 3, 5, {0, 7, 19});
  CHECK_THROWS_WITH_AS(nsa_compressed_branch(in.q, in.k_cmp, in.v_cmp, bad), doctest::Contains("cu_seqlens must run from 0 to T = 20"),
                       Error);
}

TEST_CASE("NSA branches on CUDA (bf16, tensor-core flash_attention) match the f64 CPU result" *
          doctest::skip(!cuda::available())) {
  for (const Case& c : {Case{300, 16, 1, 64, blocks(32, 16, 64, 16, 128)},
                        Case{211, 8, 2, 64, blocks(16, 8, 32, 4, 50, {0, 90, 90, 100, 211})}})
    for (int branch : {0, 2}) {
      INFO("T " << c.T << " branch " << branch);
      const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), 77);
      const NsaInputs rounded = nsa_cast(nsa_cast(in, DType::bf16), DType::f64);
      const Tensor w = rnd({c.T, c.HQ, c.D}, 78);
      Tensor lse_cpu, lse_gpu;
      const Result cpu = branch_of(rounded, c.opt, branch, w, &lse_cpu);
      NsaInputs g = nsa_cast(in, DType::bf16);
      for (Tensor* t : {&g.q, &g.k_cmp, &g.v_cmp, &g.k_win, &g.v_win}) *t = t->to(cuda_device(0));
      const Result gpu = branch_of(g, c.opt, branch, w, &lse_gpu);
      expect_close(gpu.o, cpu.o, 2e-2, 2e-2);
      expect_close(gpu.dq, cpu.dq, 5e-2, 5e-2);
      expect_close(gpu.dk, cpu.dk, 5e-2, 5e-2);
      expect_close(gpu.dv, cpu.dv, 5e-2, 5e-2);
      const auto a = lse_gpu.to(kCPU).to_vector(), b = lse_cpu.to_vector();
      for (size_t i = 0; i < a.size(); ++i) {
        if (std::isinf(b[i])) CHECK(a[i] == -INFINITY);
        else CHECK(std::fabs(a[i] - b[i]) < 2e-2);
      }
    }
}

TEST_CASE("NSA branch-wise path on CUDA (f32) matches the fused CPU op, block indices included" *
          doctest::skip(!cuda::available())) {
  for (const Case& c : {Case{300, 16, 1, 64, blocks(32, 16, 64, 16, 128)},
                        Case{211, 8, 2, 40, blocks(16, 8, 32, 4, 50, {0, 90, 90, 100, 211})},
                        Case{97, 4, 4, 32, blocks(8, 4, 16, 3, 0)}}) {
    INFO("T " << c.T << " HQ " << c.HQ << " H " << c.H << " D " << c.D);
    const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), 91);
    const NsaInputs rounded = nsa_cast(nsa_cast(in, DType::f32), DType::f64);
    const Tensor w = rnd({c.T, c.HQ, c.D}, 92);
    const Full ref = full_of(rounded, w, [&](const std::vector<Tensor>& x) {
      return nsa_attention(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], c.opt);
    });
    NsaInputs g = nsa_cast(in, DType::f32);
    for (Tensor* t : {&g.q, &g.k_cmp, &g.v_cmp, &g.k_slc, &g.v_slc, &g.k_win, &g.v_win, &g.gates})
      *t = t->to(cuda_device(0));
    const Full got = full_of(g, w, [&](const std::vector<Tensor>& x) {
      return nsa_attention_branches(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], c.opt);
    });
    CHECK(got.idx.to_vector() == ref.idx.to_vector());
    expect_close(got.o, ref.o, 1e-4, 1e-4);
    for (int i = 0; i < 8; ++i) {
      INFO("gradient " << i);
      expect_close(got.grads[i], ref.grads[i], 2e-4, 2e-4);
    }
  }
}
