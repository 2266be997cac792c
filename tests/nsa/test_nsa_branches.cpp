// nsa/branches.h: the compressed and window branches through flash_attention equal nsa_attention's branches (its
// CPU reference with one gate at 1 and the others at 0) in f64, values and gradients, on single and packed
// sequences (empty ones, ones shorter than a block), group sizes 1, 2 and 16, l = d, window 0 and windows longer
// than the sequence; the log-sum-exps against direct loops. On a GPU, bf16 through the tensor-core kernels against
// the f64 CPU result.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "cuda/memory.h"
#if NT_CUDA
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#endif
#include "autograd/graph.h"
#include "nsa/branches.h"
#include "ops/device_tables.h"
#include "nsa_naive.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
// Sets the branch-wise path's autograd layout, and puts the previous one back at the end of the scope.
struct OneNodeScope {
  NsaOneNode saved = nsa_branches_one_node();
  explicit OneNodeScope(const NsaOneNode& s) { set_nsa_branches_one_node(s); }
  ~OneNodeScope() { set_nsa_branches_one_node(saved); }
};
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

TEST_CASE("nsa_selected_attention over given blocks equals the selected branch that chose them (f64); bad blocks "
          "are errors") {
  int seed = 900;
  for (const Case& c : cases()) {
    INFO("T " << c.T << " HQ " << c.HQ << " H " << c.H << " l' " << c.opt.select_block);
    const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), seed += 10);
    const Tensor w = rnd({c.T, c.HQ, c.D}, seed + 9);
    const NsaBranch cmp = nsa_compressed_branch(in.q, in.k_cmp, in.v_cmp, c.opt);
    const Tensor chosen = nsa_selected_branch(in.q, in.k_cmp, in.k_slc, in.v_slc, cmp.lse, c.opt).block_indices;
    const Full ref = full_of(in, w, [&](const std::vector<Tensor>& x) {
      return nsa_selected_branch(x[0], x[1], x[3], x[4], cmp.lse, c.opt);
    });
    const Full got = full_of(in, w, [&](const std::vector<Tensor>& x) {
      return nsa_selected_attention(x[0], x[3], x[4], chosen, c.opt);
    });
    CHECK(got.idx.to_vector() == chosen.to_vector());
    expect_close(got.o, ref.o, 1e-12, 1e-10);
    for (int i : {0, 3, 4}) expect_close(got.grads[i], ref.grads[i], 1e-12, 1e-10);
  }
  const NsaInputs in = nsa_inputs(40, 2, 1, 4, 0, 3);
  const NsaOptions opt = blocks(8, 4, 8, 3, 0);
  std::vector<double> idx(40 * 3, -1.0);
  for (int t = 0; t < 40; ++t) idx[t * 3] = 0;
  auto with = [&](std::vector<double> v) { return from_vector(v, {40, 1, 3}, DType::i32); };
  CHECK(nsa_selected_attention(in.q, in.k_slc, in.v_slc, with(idx), opt).o.shape() == Shape{40, 2, 4});
  auto bad = idx;
  bad[20 * 3 + 1] = 3;  // t = 20 sees blocks <= 2
  CHECK_THROWS_WITH_AS(nsa_selected_attention(in.q, in.k_slc, in.v_slc, with(bad), opt),
                       doctest::Contains("block_indices[20, 0] must list distinct ascending blocks <= t / l' = 2"), Error);
  bad = idx;
  bad[30 * 3 + 0] = 2, bad[30 * 3 + 1] = 1;  // descending
  CHECK_THROWS_WITH_AS(nsa_selected_attention(in.q, in.k_slc, in.v_slc, with(bad), opt),
                       doctest::Contains("got 1 at slot 1"), Error);
  bad = idx;
  bad[30 * 3 + 0] = -1, bad[30 * 3 + 1] = 1;  // a block after -1
  CHECK_THROWS_WITH_AS(nsa_selected_attention(in.q, in.k_slc, in.v_slc, with(bad), opt),
                       doctest::Contains("got 1 at slot 1"), Error);
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

// The regrouped layout by direct loops: row c, head hq d + r holds query t = l - 1 + d c' + r of the sequence of
// compressed row c (c' its index there), zeros past the sequence's end.
Tensor regrouped_loops(const Tensor& q, const NsaOptions& opt) {
  const int64_t T = q.size(0), HQ = q.size(1), D = q.size(2), l = opt.block, d = opt.stride;
  const auto cu = cu_or_one(opt, T);
  const auto Q = q.to_vector();
  std::vector<double> out;
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int64_t c = 0; c < nsa_num_cmp_blocks(cu[b + 1] - cu[b], l, d); ++c)
      for (int64_t hq = 0; hq < HQ; ++hq)
        for (int64_t r = 0; r < d; ++r) {
          const int64_t t = l - 1 + d * c + r;
          for (int64_t i = 0; i < D; ++i)
            out.push_back(t < cu[b + 1] - cu[b] ? Q[((cu[b] + t) * HQ + hq) * D + i] : 0.0);
        }
  return from_vector(out, {total_cmp(opt, T), HQ * d, D}, DType::f64);
}

TEST_CASE("nsa_regroup_queries / nsa_ungroup_queries: the layout by direct loops, inverse on the queries that see "
          "a block, every dtype") {
  for (const Case& c : cases())
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      INFO("T " << c.T << " HQ " << c.HQ << " D " << c.D << " cu_seqlens " << c.opt.cu_seqlens.size() << " "
                << dtype_name(dt));
      const Tensor q = rnd({c.T, c.HQ, c.D}, 7).to(dt);
      const Tensor qr = nsa_regroup_queries(q, c.opt);
      CHECK(qr.dtype() == dt);
      expect_close(qr.to(DType::f64), regrouped_loops(q.to(DType::f64), c.opt), 0, 0);
      // Back: every query that sees a block (t >= l - 1 in its sequence) returns, the others are zero.
      const Tensor back = nsa_ungroup_queries(qr, c.T, c.opt).to(DType::f64);
      const auto cu = cu_or_one(c.opt, c.T);
      std::vector<double> keep(c.T * c.HQ * c.D, 0.0);
      for (size_t b = 0; b + 1 < cu.size(); ++b)
        for (int64_t t = cu[b] + c.opt.block - 1; t < cu[b + 1]; ++t)
          for (int64_t i = t * c.HQ * c.D; i < (t + 1) * c.HQ * c.D; ++i) keep[i] = 1.0;
      expect_close(back, q.to(DType::f64) * from_vector(keep, q.shape(), DType::f64), 0, 0);
    }
  const Tensor q = rnd({20, 4, 8}, 1);
  CHECK_THROWS_WITH_AS(nsa_ungroup_queries(rnd({4, 10, 8}, 2), 20, blocks(8, 4, 8, 3, 5)),
                       doctest::Contains("qr must be [NC, HQ * d, D] with NC = 4 compressed rows and d = 4, got [4, 10, 8]"),
                       Error);
  CHECK_THROWS_WITH_AS(nsa_regroup_queries(q, blocks(8, 0, 8, 3, 5)), doctest::Contains("stride (0) must be positive"),
                       Error);
  CHECK_THROWS_WITH_AS(nsa_regroup_queries(q.to(DType::i32), blocks(8, 4, 8, 3, 5)), doctest::Contains("q"), Error);
}

TEST_CASE("NSA index tables are built once per layout (every layer of a step shares them) and never confused") {
  const Tensor q = rnd({40, 2, 3}, 11);
  const std::vector<int32_t> cu{0, 17, 17, 40};
  // The same packed layout with three block/stride settings, then the first again: each answer by direct loops.
  const NsaOptions a = blocks(8, 4, 8, 3, 0, cu), b = blocks(8, 2, 8, 3, 0, cu), c = blocks(4, 4, 8, 3, 0, cu);
  const int64_t before = cached_table_builds();
  for (const NsaOptions* o : {&a, &b, &c, &a}) expect_close(nsa_regroup_queries(q, *o), regrouped_loops(q, *o), 0, 0);
  const int64_t built = cached_table_builds() - before;
  CHECK(built == 6);  // the take and back maps of each setting, none for the repeat
  for (int layer = 0; layer < 4; ++layer) (void)nsa_regroup_queries(q, a);  // later layers: no new tables
  CHECK(cached_table_builds() - before == built);
  // Another layout (a new batch) with the first setting.
  const NsaOptions a2 = blocks(8, 4, 8, 3, 0, {0, 23, 40});
  expect_close(nsa_regroup_queries(q, a2), regrouped_loops(q, a2), 0, 0);
  CHECK(cached_table_builds() - before == built + 2);
}

GRADCHECK_TEST("nsa_regroup_queries") {
  for (const Case& c : {cases()[0], cases()[2]}) {
    const NsaOptions opt = c.opt;
    check_grad("nsa_regroup_queries", [opt](const std::vector<Tensor>& x) { return nsa_regroup_queries(x[0], opt); },
               {rnd_grad({c.T, c.HQ, 3}, 3)});
  }
}

GRADCHECK_TEST("nsa_ungroup_queries") {
  for (const Case& c : {cases()[0], cases()[2]}) {
    const NsaOptions opt = c.opt;
    const int64_t T = c.T;
    check_grad("nsa_ungroup_queries",
               [opt, T](const std::vector<Tensor>& x) { return nsa_ungroup_queries(x[0], T, opt); },
               {rnd_grad({total_cmp(opt, T), c.HQ * opt.stride, 3}, 4)});
  }
}

TEST_CASE("nsa_mix_branches: the gated sum, one rounding, every dtype; argument errors") {
  for (const Shape& s : {Shape{7, 3, 5}, Shape{4, 2, 16}, Shape{3, 1, 300}, Shape{0, 2, 4}})
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      INFO(shape_str(s) << " " << dtype_name(dt));
      const Tensor a = rnd(s, 1).to(dt), b = rnd(s, 2).to(dt), c = rnd(s, 3).to(dt);
      const Tensor g = uniform({s[0], s[1], 3}, 4, 0, 1, dt);
      const Tensor gf = g.to(DType::f64);
      const Tensor want = gf.narrow(2, 0, 1) * a.to(DType::f64) + gf.narrow(2, 1, 1) * b.to(DType::f64) +
                          gf.narrow(2, 2, 1) * c.to(DType::f64);
      const Tensor o = nsa_mix_branches(a, b, c, g);
      CHECK(o.dtype() == dt);
      expect_close(o.to(DType::f64), want.to(dt).to(DType::f64), 0, 0);  // one rounding of the exact sum
    }
  const Tensor a = rnd({4, 2, 3}, 1);
  CHECK_THROWS_WITH_AS(nsa_mix_branches(a, a.narrow(2, 0, 2), a, rnd({4, 2, 3}, 2)),
                       doctest::Contains("o_slc must have o_cmp's shape [4, 2, 3], got [4, 2, 2]"), Error);
  CHECK_THROWS_WITH_AS(nsa_mix_branches(a, a, a, rnd({4, 2, 2}, 2)),
                       doctest::Contains("gates must be [4, 2, 3], got [4, 2, 2]"), Error);
  CHECK_THROWS_WITH_AS(nsa_mix_branches(a, a, a.to(DType::f32), rnd({4, 2, 3}, 2)),
                       doctest::Contains("o_win must have o_cmp's dtype f64, got f32"), Error);
}

GRADCHECK_TEST("nsa_mix_branches") {
  check_grad("nsa_mix_branches",
             [](const std::vector<Tensor>& x) { return nsa_mix_branches(x[0], x[1], x[2], x[3]); },
             {rnd_grad({5, 3, 7}, 1), rnd_grad({5, 3, 7}, 2), rnd_grad({5, 3, 7}, 3), rnd_grad({5, 3, 3}, 4)});
}

// The branch-wise op end to end, its regrouped mix (nsa_mix_branches_regrouped: the compressed output is mixed, and
// its gradient written, in the regrouped layout) included. Every position has at most n selection blocks, so the
// discrete choice cannot change under the finite differences. Packed, with a sequence too short for a block.
// The branch-wise op's output checked against finite differences in all eight inputs (4 query heads, 2 kv heads,
// head dim 3), under the autograd layout the caller's OneNodeScope sets.
static void check_branches_grad(const char* name, const NsaOptions& opt, int64_t T, uint64_t seed) {
  std::vector<Tensor> x;
  for (Tensor t : nsa_inputs(T, 4, 2, 3, total_cmp(opt, T), seed).all()) x.push_back(t.requires_grad_(true));
  check_grad(name,
             [opt](const std::vector<Tensor>& x) {
               return nsa_attention_branches(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], opt).o;
             },
             x);
}

GRADCHECK_TEST("nsa_mix_branches_regrouped") {
  const OneNodeScope scope({false, false, false});  // the per-branch nodes (the one node would hide the mix)
  // 44: the last regrouped row is past the end
  check_branches_grad("nsa_mix_branches_regrouped", blocks(4, 2, 8, 3, 6, {0, 3, 20, 44}), 44, 30);
}

// The op nsa_attention_branches: the branch-wise path as one autograd node (on the CPU and, in bf16, on CUDA, where
// the case below compares it with the per-branch nodes). One sequence of 3 selection blocks (n = 3 takes them all,
// so the choice cannot change under the differences), GQA 2, window 5.
GRADCHECK_TEST("nsa_attention_branches") {
  const OneNodeScope scope({true, true, false});
  check_branches_grad("nsa_attention_branches", blocks(4, 2, 8, 3, 5), 24, 33);
}

TEST_CASE("NSA branch-wise path on CUDA (bf16) as one autograd node equals the per-branch nodes, dq up to their "
          "bf16 roundings" * doctest::skip(!cuda::available())) {
  const OneNodeScope scope(nsa_branches_one_node());  // the cases below switch it
  // The node needs the selected branch alone on the wgmma kernels with its walk computing dq (sm_90a, l' = 64, G >= 2,
  // D <= 128; the last two hold in every case here): with l' = 32, or on another GPU, the op falls back to the
  // per-branch nodes.
  for (const Case& c : {Case{300, 16, 1, 64, blocks(32, 16, 64, 16, 128)},
                        Case{211, 8, 2, 64, blocks(16, 8, 32, 4, 50, {0, 90, 90, 100, 211})},
                        Case{1000, 16, 2, 128, blocks(32, 16, 64, 6, 100, {0, 333, 1000})}}) {
    INFO("T " << c.T << " HQ " << c.HQ << " H " << c.H << " D " << c.D << " packed " << !c.opt.cu_seqlens.empty());
#if NT_CUDA
    const bool applies = c.opt.select_block == 64 && cuda::sm90a_available(0);
#else
    const bool applies = false;
#endif
    NsaInputs g = nsa_cast(nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), 95), DType::bf16);
    for (Tensor* t : {&g.q, &g.k_cmp, &g.v_cmp, &g.k_slc, &g.v_slc, &g.k_win, &g.v_win, &g.gates})
      *t = t->to(cuda_device(0));
    const Tensor w = rnd({c.T, c.HQ, c.D}, 96);
    std::string node;
    auto run = [&](bool one, bool deltas = false) {
      set_nsa_branches_one_node({one, one, deltas});
      return full_of(g, w, [&](const std::vector<Tensor>& x) {
        NsaOutput r = nsa_attention_branches(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], c.opt);
        node = r.o.grad_fn() ? r.o.grad_fn()->op->name : "none";
        return r;
      });
    };
    const std::string one_name = applies ? "nsa_attention_branches" : "nsa_mix_branches_regrouped";
    const Full one = run(true);
    CHECK(node == one_name);
    const Full per = run(false);
    CHECK(node == "nsa_mix_branches_regrouped");
    // (vector == and expect_close fail on NaN too; this names the path that left an element unwritten)
    auto finite = [](const Full& f) {
      int64_t bad = 0;
      for (const Tensor& t : f.grads)
        for (double v : t.to_vector()) bad += !std::isfinite(v);
      for (double v : f.o.to_vector()) bad += !std::isfinite(v);
      return bad;
    };
    CHECK(finite(one) == 0);
    auto max_abs = [](const Tensor& t) {
      double m = 0;
      for (double v : t.to_vector()) m = std::max(m, std::fabs(v));
      return m;
    };
    const char* names[8] = {"q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates"};
    // Same kernels in the same order: the output, the choice and the gates' gradient agree exactly. The keys' and
    // values' gradients are f32 sums added with atomics (the selected branch's walk; flash_attention's split
    // heads), so their order, and with it a bf16 rounding here and there, differs from run to run: within a bf16
    // ulp of the entry (a rounding flip) or 0.2% of the largest one. dq: one f32 sum and one rounding against three
    // roundings and two bf16 additions (each a few bf16 ulps of the largest term), so relative to the largest entry.
    auto compare = [&](const Full& x, const char* what) {
      CHECK(x.idx.to_vector() == per.idx.to_vector());
      CHECK(x.o.to_vector() == per.o.to_vector());
      CHECK(x.grads[7].to_vector() == per.grads[7].to_vector());
      for (int i = 0; i < 7; ++i) {
        INFO("gradient of " << std::string(names[i]) << what);
        const double m = max_abs(per.grads[i]);
        if (i == 0) expect_close(x.grads[0], per.grads[0], 2e-2 * m, 2e-2);
        else expect_close(x.grads[i], per.grads[i], 2e-3 * m, 8e-3);
      }
    };
    compare(one, "");
    // With the branches' deltas from the mix backward (the same sums in another order: the gradients of q and the
    // keys and values move by f32 roundings before their bf16 rounding).
    const Full mixd = run(true, true);
    CHECK(node == one_name);
    CHECK(finite(mixd) == 0);
    compare(mixd, ", deltas from the mix");
  }
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
      // dk and dv sum over up to 4000 (query, head) terms whose probabilities and dS were rounded to bf16: the error
      // grows with the gradient's scale (H100, 2026-12-05: dv of 0.31 against 0.23 where max |dv| is 67), so the
      // absolute tolerance is 0.5% of the largest reference entry (at least 5e-2).
      auto scaled = [](const Tensor& got, const Tensor& ref) {
        double m = 0;
        for (double x : ref.to_vector()) m = std::max(m, std::fabs(x));
        expect_close(got, ref, std::max(5e-2, 5e-3 * m), 5e-2);
      };
      scaled(gpu.dq, cpu.dq);
      scaled(gpu.dk, cpu.dk);
      scaled(gpu.dv, cpu.dv);
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

TEST_CASE("NSA selection on tensor cores (bf16): a valid top-n of the f64 scores, deterministic; selected branch as "
          "the CPU where the choice agrees; both kernels (wgmma, mma.sync)" * doctest::skip(!cuda::available())) {
#if NT_CUDA
  struct Restore {
    int version = cuda::nsa_select_kernel();
    cuda::SelectFold fold = cuda::nsa_select_fold();
    ~Restore() { cuda::set_nsa_select_kernel(version), cuda::set_nsa_select_slots(0), cuda::set_nsa_select_fold(fold); }
  } restore;
  const bool sm90a = cuda::sm90a_available(0);
#endif
  // version 2: the wgmma kernel with one score slot per SM, so its thread blocks wait for each other's slot (and
  // take slots other blocks wrote before them); 3, 4 and 5: the wgmma kernel with its periodic fold from a table
  // read up front (kTable), as a loop (kLoop; also where a table has more than 8 entries per block) and with
  // constant keys and weights where l = 2 d and l' = 4 d (kFixed, the default; elsewhere as kTable): the same sums
  // in the same order, so versions 4 and 5 must choose exactly as version 3 did
  std::map<std::string, std::vector<int32_t>> table_choice;
  for (int version : {0, 1, 2, 3, 4, 5})
  for (const Case& c : {Case{300, 16, 1, 64, blocks(32, 16, 64, 16, 128)},
                        Case{333, 32, 2, 128, blocks(16, 8, 32, 5, 0, {0, 100, 100, 107, 333})},
                        Case{150, 4, 4, 64, blocks(8, 4, 16, 4, 0)},
                        Case{129, 2, 2, 72, blocks(8, 8, 8, 3, 0)},
                        // up to 85 candidates for 37 free picks: lanes of the top-n warp hold several candidates
                        // and win more than twice (its rescans)
                        Case{2000, 8, 2, 64, blocks(16, 8, 16, 40, 0, {0, 600, 2000})},
                        // G = 8, 2, 1 and 16 over 4 or 5 of the wgmma kernel's 64-key tiles (both stages reused),
                        // packed, the positions per block (128 / G) not dividing the lengths
                        Case{1400, 16, 2, 64, blocks(16, 4, 32, 6, 0, {0, 350, 1400})},
                        // G = 8 with 8 table entries per block (l' + l = 6 d), the most kTable unrolls; l = 2 d and
                        // l' = 4 d, like 6 other cases here, so versions 0, 2 (by default) and 5 take it as constants
                        Case{1200, 16, 2, 64, blocks(16, 8, 32, 6, 0, {0, 500, 1200})},
                        Case{500, 4, 2, 128, blocks(32, 16, 64, 4, 0)},
                        Case{1000, 2, 2, 64, blocks(8, 4, 16, 5, 0)},
                        Case{2501, 32, 2, 64, blocks(16, 8, 32, 16, 0, {0, 501, 2501})},
                        // l' = 3 d: a 64-key tile does not start a selection block, so the wgmma kernel folds each
                        // tile by the general rule (the others take its per-tile table), over 3 tiles
                        Case{1000, 8, 2, 64, blocks(8, 4, 12, 6, 0, {0, 400, 1000})}}) {
#if NT_CUDA
    cuda::set_nsa_select_kernel(version == 1 ? 1 : 0);
    cuda::set_nsa_select_slots(version == 2 ? 1 : 0);
    if (version >= 3)
      cuda::set_nsa_select_fold(version == 3   ? cuda::SelectFold::kTable
                                : version == 4 ? cuda::SelectFold::kLoop
                                               : cuda::SelectFold::kFixed);
#endif
    // (a std::string: doctest's INFO prints a bare const char* as a pointer)
    const std::string kernel = version == 0   ? "wgmma where it applies"
                               : version == 1 ? "mma.sync"
                               : version == 2 ? "wgmma, one slot per SM"
                               : version == 3 ? "wgmma, fold from a table read up front"
                               : version == 4 ? "wgmma, fold as a loop"
                                              : "wgmma, fold with constant keys where l = 2 d, l' = 4 d";
    INFO("kernel " << kernel << "; T " << c.T << " HQ " << c.HQ << " H " << c.H << " D " << c.D << " l "
                   << c.opt.block << " d " << c.opt.stride << " l' " << c.opt.select_block << " n " << c.opt.n_select);
    const int64_t T = c.T, HQ = c.HQ, H = c.H, G = HQ / H, D = c.D, n = c.opt.n_select;
    const NsaInputs in = nsa_cast(nsa_cast(nsa_inputs(T, HQ, H, D, total_cmp(c.opt, T), 55), DType::bf16), DType::f64);
    // f64 reference: the compressed log-sum-exps and the selected branch with the CPU's own choice.
    const NsaBranch cmp_cpu = nsa_compressed_branch(in.q, in.k_cmp, in.v_cmp, c.opt);
    const NsaOutput ref = nsa_selected_branch(in.q, in.k_cmp, in.k_slc, in.v_slc, cmp_cpu.lse, c.opt);
    auto gpu = [&](const Tensor& t) { return t.to(DType::bf16).to(cuda_device(0)); };
    const Tensor q = gpu(in.q), kc = gpu(in.k_cmp), vc = gpu(in.v_cmp), ks = gpu(in.k_slc), vs = gpu(in.v_slc);
    const NsaBranch cmp = nsa_compressed_branch(q, kc, vc, c.opt);
    const NsaOutput a = nsa_selected_branch(q, kc, ks, vs, cmp.lse, c.opt);
    const NsaOutput b = nsa_selected_branch(q, kc, ks, vs, cmp.lse, c.opt);
#if NT_CUDA
    CHECK(cuda::nsa_select_last_wgmma() == (version != 1 && sm90a && D <= 128));  // the kernel meant ran
#endif
    const auto idx = a.block_indices.to(kCPU).to_vector_as<int32_t>();
    CHECK(idx == b.block_indices.to(kCPU).to_vector_as<int32_t>());  // deterministic
    const std::string key = std::to_string(c.T) + " " + std::to_string(c.HQ) + " " + std::to_string(c.H) + " " +
                            std::to_string(c.D) + " " + std::to_string(c.opt.block) + " " +
                            std::to_string(c.opt.stride) + " " + std::to_string(c.opt.select_block);
    if (version == 3) table_choice[key] = idx;
    if (version >= 4) CHECK(idx == table_choice.at(key));
    // Scores in f64 from the same bf16 values and the f64 log-sum-exps.
    const auto Q = in.q.to_vector(), K = in.k_cmp.to_vector(), L = cmp_cpu.lse.to(DType::f64).to_vector();
    const double scale = 1.0 / std::sqrt((double)D);
    const auto cu = cu_or_one(c.opt, T);
    const auto ref_idx = ref.block_indices.to_vector_as<int32_t>();
    const auto o_gpu = a.o.to(kCPU).to(DType::f64).to_vector(), o_ref = ref.o.to_vector();
    int64_t rows = 0, agree = 0, c0 = 0;
    double worst = 0;
    for (size_t sq = 0; sq + 1 < cu.size(); ++sq) {
      const int64_t s0 = cu[sq], len = cu[sq + 1] - cu[sq];
      for (int64_t t = 0; t < len; ++t)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t cur = t / c.opt.select_block, ncand = cur + 1;
          std::vector<double> score(ncand, 0.0);
          for (int64_t hq = h * G; hq < (h + 1) * G; ++hq)
            for (int64_t cb = 0; cb * c.opt.stride + c.opt.block - 1 <= t; ++cb) {
              double dot = 0;
              for (int64_t e = 0; e < D; ++e) dot += Q[((s0 + t) * HQ + hq) * D + e] * K[((c0 + cb) * H + h) * D + e];
              const double p = std::exp(dot * scale - L[(s0 + t) * HQ + hq]);
              const int64_t lo = cb * c.opt.stride, hi = lo + c.opt.block;
              for (int64_t j = lo / c.opt.select_block; j * c.opt.select_block < hi; ++j)
                score[j] += p * (double)(std::min(hi, (j + 1) * c.opt.select_block) - std::max(lo, j * c.opt.select_block)) /
                            (double)c.opt.stride;
            }
          const int32_t* got = &idx[((s0 + t) * H + h) * n];
          ++rows;
          agree += std::equal(got, got + n, &ref_idx[((s0 + t) * H + h) * n]);
          std::vector<int32_t> want_forced, chosen(got, got + n);
          if (ncand <= n) {
            for (int64_t i = 0; i < n; ++i) CHECK(got[i] == (i < ncand ? i : -1));
            continue;
          }
          for (int64_t i = 0; i + 1 < n; ++i) REQUIRE(got[i] < got[i + 1]);  // ascending, no -1, no repeats
          CHECK(got[0] == 0);
          CHECK(std::count(got, got + n, (int32_t)cur) == 1);
          CHECK(std::count(got, got + n, (int32_t)(cur - 1)) == 1);
          double min_in = INFINITY, max_out = -INFINITY;
          for (int64_t j = 1; j < cur - 1; ++j) {
            const bool in_set = std::count(got, got + n, (int32_t)j) > 0;
            if (in_set) min_in = std::min(min_in, score[j]);
            else max_out = std::max(max_out, score[j]);
          }
          worst = std::max(worst, max_out - min_in);
        }
      c0 += nsa_num_cmp_blocks(len, c.opt.block, c.opt.stride);
    }
    INFO("rows " << rows << ", same choice as the CPU in " << agree << ", worst score inversion " << worst);
    CHECK(worst <= 2e-3);         // any inversion is a near-tie that bf16 rounding of the scores can flip
    CHECK(agree >= rows * 9 / 10);
    // Where the choice agrees, the selected branch's output does too.
    for (int64_t r = 0; r < T; ++r)
      for (int64_t h = 0; h < H; ++h) {
        if (!std::equal(&idx[(r * H + h) * n], &idx[(r * H + h) * n] + n, &ref_idx[(r * H + h) * n])) continue;
        for (int64_t hq = h * G; hq < (h + 1) * G; ++hq)
          for (int64_t e = 0; e < D; ++e) {
            const double x = o_gpu[(r * HQ + hq) * D + e], y = o_ref[(r * HQ + hq) * D + e];
            if (std::fabs(x - y) > 2e-2 + 2e-2 * std::fabs(y)) {
              FAIL_CHECK("row " << r << " head " << hq << " dim " << e << ": " << x << " vs " << y);
              r = T, h = H, hq = HQ;
              break;
            }
          }
      }
  }
}

// In bf16 both directions run on tensor cores (the backward's key-centric pieces: 128 positions at G = 16, so
// block 0 of the first case is split over 3 thread blocks); f32 runs the CUDA-core kernels.
TEST_CASE("NSA selected branch on CUDA over the GPU's choice (bf16: tensor cores; f32) matches the f64 CPU over the "
          "same blocks, values and gradients" * doctest::skip(!cuda::available())) {
  for (DType dt : {DType::bf16, DType::f32})
    for (const Case& c : {Case{300, 16, 1, 64, blocks(32, 16, 64, 16, 128)},
                          Case{333, 32, 2, 128, blocks(16, 8, 32, 5, 0, {0, 100, 100, 107, 333})},
                          Case{150, 4, 4, 64, blocks(8, 4, 16, 4, 0)},
                          Case{701, 8, 2, 40, blocks(32, 16, 128, 4, 0, {0, 250, 250, 701})}}) {
      INFO(dtype_name(dt) << " T " << c.T << " HQ " << c.HQ << " H " << c.H << " D " << c.D);
      const NsaInputs in = nsa_cast(nsa_cast(nsa_inputs(c.T, c.HQ, c.H, c.D, total_cmp(c.opt, c.T), 66), dt), DType::f64);
      const Tensor w = rnd({c.T, c.HQ, c.D}, 67);
      NsaInputs g = nsa_cast(in, dt);
      for (Tensor* t : {&g.q, &g.k_cmp, &g.v_cmp, &g.k_slc, &g.v_slc}) *t = t->to(cuda_device(0));
      const NsaBranch cmp = nsa_compressed_branch(g.q, g.k_cmp, g.v_cmp, c.opt);
      const Full got = full_of(g, w, [&](const std::vector<Tensor>& x) {
        return nsa_selected_branch(x[0], x[1], x[3], x[4], cmp.lse, c.opt);
      });
      const Full ref = full_of(in, w, [&](const std::vector<Tensor>& x) {
        return nsa_selected_attention(x[0], x[3], x[4], got.idx, c.opt);
      });
      const double tol = dt == DType::bf16 ? 2e-2 : 1e-4;
      expect_close(got.o, ref.o, tol, tol);
      for (int i : {0, 3, 4}) {
        INFO("gradient " << i);
        expect_close(got.grads[i], ref.grads[i], 3 * tol, 3 * tol);
      }
    }
}
