// nsa_attention on the CPU: against the naive implementation of the equations (tests/nsa/nsa_naive.h) for small,
// non-default block parameters; block indices worked out by hand; gradients in f64 with the selection fixed; packed
// sequences against each sequence alone; determinism; argument errors.
#include "nsa/nsa_attention.h"
#include "nsa/selection.h"
#include "nsa_naive.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
NsaOutput run(const NsaInputs& in, const NsaOptions& opt) {
  return nsa_attention(in.q, in.k_cmp, in.v_cmp, in.k_slc, in.v_slc, in.k_win, in.v_win, in.gates, opt);
}
Tensor i32_tensor(const std::vector<int32_t>& v, const Shape& s) {
  return from_vector(std::vector<double>(v.begin(), v.end()), s, DType::i32);
}
// Compressed blocks per sequence of opt.cu_seqlens (one sequence of T when empty).
std::vector<int64_t> cmp_counts(const NsaOptions& opt, int64_t T) {
  const std::vector<int32_t> cu = opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : opt.cu_seqlens;
  std::vector<int64_t> nc;
  for (size_t b = 0; b + 1 < cu.size(); ++b) nc.push_back(nsa_num_cmp_blocks(cu[b + 1] - cu[b], opt.block, opt.stride));
  return nc;
}
// Sequence b's rows and compressed blocks, given its first row s, length n and first compressed block c0.
NsaInputs sequence(const NsaInputs& in, int64_t s, int64_t n, int64_t c0, int64_t nc) {
  auto r = [&](const Tensor& t) { return t.narrow(0, s, n); };
  auto c = [&](const Tensor& t) { return t.narrow(0, c0, nc); };
  return {r(in.q), c(in.k_cmp), c(in.v_cmp), r(in.k_slc), r(in.v_slc), r(in.k_win), r(in.v_win), r(in.gates)};
}
// The naive implementation's selection margin over every sequence.
double margin_of(const NsaInputs& in, NsaOptions opt) {
  const int64_t T = in.q.size(0);
  const std::vector<int32_t> cu = opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : opt.cu_seqlens;
  const std::vector<int64_t> nc = cmp_counts(opt, T);
  opt.cu_seqlens.clear();
  double m = INFINITY;
  int64_t c0 = 0;
  for (size_t b = 0; b + 1 < cu.size(); c0 += nc[b], ++b)
    if (cu[b + 1] > cu[b]) m = std::min(m, naive_nsa(sequence(in, cu[b], cu[b + 1] - cu[b], c0, nc[b]), opt).margin);
  return m;
}
// The gradients of sum(o * w) with respect to every input.
std::vector<Tensor> grads_of(const NsaInputs& in, const NsaOptions& opt, const Tensor& w) {
  std::vector<Tensor> leaves;
  for (const Tensor& t : in.all()) leaves.push_back(t.detach().requires_grad_());
  const NsaInputs x{leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], leaves[7]};
  sum(run(x, opt).o * w).backward();
  std::vector<Tensor> g;
  for (const Tensor& t : leaves) g.push_back(t.grad());
  return g;
}
}  // namespace

TEST_CASE("nsa_attention matches the naive equations (block sizes, GQA, windows, short sequences)") {
  const std::vector<Case> cases = {
      {29, 2, 2, 3, blocks(4, 2, 8, 3, 5)},    // G = 1, the brief's small parameters
      {37, 4, 2, 4, blocks(4, 2, 8, 4, 5)},    // G = 2; the 4th slot is chosen by score
      {45, 4, 1, 2, blocks(4, 4, 4, 5, 3)},    // G = 4, l' = l = d
      {31, 3, 1, 3, blocks(2, 2, 2, 6, 7)},    // G = 3, l' = l = d = 2: many candidates
      {26, 2, 1, 5, blocks(3, 1, 6, 4, 1)},    // d = 1, window of one key
      {19, 2, 2, 3, blocks(4, 2, 8, 3, 0)},    // empty window: that branch adds nothing
      {3, 2, 1, 3, blocks(4, 2, 8, 3, 5)},     // T < l: no compressed block at all
      {17, 2, 1, 4, blocks(4, 2, 8, 16, 512)}, // fewer candidates than n: -1 padding everywhere
  };
  for (const Case& c : cases) {
    const NsaOptions& o = c.opt;
    INFO("T " << c.T << " HQ/H " << c.HQ << "/" << c.H << " D " << c.D << " l " << o.block << " d " << o.stride
              << " l' " << o.select_block << " n " << o.n_select << " w " << o.window);
    const int64_t NC = nsa_num_cmp_blocks(c.T, o.block, o.stride);
    const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, NC, 100 + c.T);
    const NaiveNsa want = naive_nsa(in, o);
    const NsaOutput got = run(in, o);
    CHECK(got.o.dtype() == DType::f64);
    CHECK(got.block_indices.dtype() == DType::i32);
    expect_close(got.block_indices.to(DType::f64), i32_tensor(want.block_indices, {c.T, c.H, o.n_select}).to(DType::f64), 0, 0);
    expect_close(got.o, from_vector(want.o, {c.T, c.HQ, c.D}, DType::f64), 1e-12, 1e-12);
    // An explicit scale; f32 and bf16 inputs (computed in double, rounded once to the inputs' dtype).
    NsaOptions scaled = o;
    scaled.scale = 0.7;
    expect_close(run(in, scaled).o, from_vector(naive_nsa(in, scaled).o, {c.T, c.HQ, c.D}, DType::f64), 1e-12, 1e-12);
    for (DType dt : {DType::f32, DType::bf16}) {
      const NsaInputs low = nsa_cast(in, dt);
      const NsaOutput r = run(low, o);
      CHECK(r.o.dtype() == dt);
      const double tol = dt == DType::f32 ? 1e-6 : 1e-2;
      expect_close(r.o.to(DType::f64), from_vector(naive_nsa(low, o).o, {c.T, c.HQ, c.D}, DType::f64), tol, tol);
    }
  }
}

TEST_CASE("nsa_attention block indices by hand: forced blocks, group sums, ties to the lower index, -1 padding") {
  // l = d = l' = 2: compressed block c covers exactly selection block c, so block j's score is p_cmp[j] (overlap 2,
  // divided by d = 2). D = 1 and scale 1: the compressed logits are q * k_cmp.
  const int64_t T = 10, NC = 5;  // (10 - 2) / 2 + 1
  NsaInputs in = nsa_inputs(T, 4, 2, 1, NC, 7);
  // Query heads 0 and 1 (kv head 0) have q = 1; k_cmp of kv head 0 ties blocks 1 and 2.
  // Query heads 2 and 3 (kv head 1) have q = +1 and -1; with k_cmp [0, 1, -1.5, 0, 0] head 2 alone prefers block 1
  // (p 0.46 vs 0.04) but head 3 prefers block 2 more strongly (0.57 vs 0.05), so the group's sum picks 2.
  in.q = ones({T, 4, 1}, DType::f64);
  in.q.narrow(1, 3, 1).fill_(-1.0);
  in.k_cmp = from_vector({0, 0, 1, 1, 1, -1.5, 0, 0, 0, 0}, {NC, 2, 1}, DType::f64);
  NsaOptions opt = blocks(2, 2, 2, 4, 3);
  opt.scale = 1;
  const Tensor idx = run(in, opt).block_indices;  // [T, 2, 4]
  auto at = [&](int64_t t, int64_t h) {
    std::vector<int32_t> v;
    for (double x : idx.select(0, t).select(0, h).to_vector()) v.push_back((int32_t)x);
    return v;
  };
  using V = std::vector<int32_t>;
  for (int64_t h = 0; h < 2; ++h) {
    CHECK(at(0, h) == V{0, -1, -1, -1});  // one candidate
    CHECK(at(1, h) == V{0, -1, -1, -1});
    CHECK(at(3, h) == V{0, 1, -1, -1});
    CHECK(at(5, h) == V{0, 1, 2, -1});
    CHECK(at(7, h) == V{0, 1, 2, 3});     // 4 candidates fill n = 4
  }
  // t = 8, 9: candidates 0..4; 0, 3 and 4 are forced and one slot is left for block 1 or 2.
  for (int64_t t : {8, 9}) {
    CHECK(at(t, 0) == V{0, 1, 3, 4});  // tie: the lower index
    CHECK(at(t, 1) == V{0, 2, 3, 4});  // the group's sum, not head 2's preference
  }
  // n = 3: only the forced blocks remain.
  opt.n_select = 3;
  const Tensor idx3 = run(in, opt).block_indices;
  CHECK(idx3.select(0, 9).to_vector() == std::vector<double>{0, 3, 4, 0, 3, 4});
  CHECK(idx3.select(0, 5).to_vector() == std::vector<double>{0, 1, 2, 0, 1, 2});
}

GRADCHECK_TEST("nsa_attention") {
  // The selection is piecewise constant in the inputs; gradcheck's perturbations (1e-6) cannot flip it when the
  // naive implementation reports a score margin of at least 1e-3 for these inputs, which is checked first.
  struct G {
    int64_t T, HQ, H, D;
    NsaOptions opt;
    uint64_t seed;
  };
  for (const G& c : {G{21, 2, 1, 3, blocks(4, 2, 4, 4, 3), 11},           // G = 2, scores pick the 4th block
                     G{14, 4, 1, 2, blocks(2, 2, 2, 4, 2), 12},           // G = 4, l' = l = d
                     G{12, 2, 2, 3, blocks(4, 2, 8, 3, 0), 13},           // empty window
                     G{20, 2, 2, 2, blocks(2, 1, 2, 3, 3, {0, 9, 9, 20}), 14}}) {  // packed, with an empty sequence
    INFO("T " << c.T << " HQ/H " << c.HQ << "/" << c.H << " cu_seqlens " << c.opt.cu_seqlens.size());
    const std::vector<int64_t> nc = cmp_counts(c.opt, c.T);
    const NsaInputs in = nsa_inputs(c.T, c.HQ, c.H, c.D, std::accumulate(nc.begin(), nc.end(), int64_t{0}), c.seed);
    const double margin = margin_of(in, c.opt);
    INFO("selection margin " << margin);
    CHECK(margin >= 1e-3);
    std::vector<Tensor> leaves;
    for (const Tensor& t : in.all()) leaves.push_back(t.detach().requires_grad_());
    const NsaOptions opt = c.opt;
    check_grad("nsa_attention",
               [opt](const std::vector<Tensor>& x) {
                 return nsa_attention(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], opt).o;
               },
               leaves);
  }
}

TEST_CASE("nsa_attention on packed sequences equals each sequence on its own (values, indices, gradients)") {
  const std::vector<int32_t> cu = {0, 7, 7, 26, 29, 40};  // an empty sequence and one shorter than l
  const int64_t T = 40, HQ = 4, H = 2, D = 3;
  const NsaOptions opt = blocks(4, 2, 8, 3, 5, cu);
  const std::vector<int64_t> nc = cmp_counts(opt, T);
  const NsaInputs in = nsa_inputs(T, HQ, H, D, std::accumulate(nc.begin(), nc.end(), int64_t{0}), 21);
  const Tensor w = rnd({T, HQ, D}, 22);
  const NsaOutput packed = run(in, opt);
  const std::vector<Tensor> g = grads_of(in, opt, w);
  int64_t c0 = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) {
    const int64_t s = cu[b], n = cu[b + 1] - cu[b];
    INFO("sequence " << b);
    auto rows = [&](const Tensor& t) { return t.narrow(0, s, n); };
    auto blocks_of = [&](const Tensor& t) { return t.narrow(0, c0, nc[b]); };
    if (n > 0) {
      const NsaInputs one = sequence(in, s, n, c0, nc[b]);
      const NsaOptions o1 = blocks(4, 2, 8, 3, 5);
      const NsaOutput alone = run(one, o1);
      expect_close(rows(packed.o), alone.o, 1e-12, 1e-12);
      expect_close(rows(packed.block_indices).to(DType::f64), alone.block_indices.to(DType::f64), 0, 0);
      const std::vector<Tensor> g1 = grads_of(one, o1, rows(w));
      for (int i : {0, 3, 4, 5, 6, 7}) expect_close(rows(g[i]), g1[i], 1e-12, 1e-12);
      for (int i : {1, 2}) expect_close(blocks_of(g[i]), g1[i], 1e-12, 1e-12);
    }
    c0 += nc[b];
  }
}

TEST_CASE("nsa_attention is deterministic (values, indices and gradients bit for bit)") {
  const NsaOptions opt = blocks(4, 2, 8, 4, 5);
  const NsaInputs in = nsa_inputs(33, 4, 2, 3, nsa_num_cmp_blocks(33, 4, 2), 31);
  const Tensor w = rnd({33, 4, 3}, 32);
  const NsaOutput a = run(in, opt), b = run(in, opt);
  CHECK(a.o.to_vector() == b.o.to_vector());
  CHECK(a.block_indices.to_vector() == b.block_indices.to_vector());
  const auto ga = grads_of(in, opt, w), gb = grads_of(in, opt, w);
  for (size_t i = 0; i < ga.size(); ++i) CHECK(ga[i].to_vector() == gb[i].to_vector());
}

TEST_CASE("nsa_attention argument errors name the argument, the expected and the actual value") {
  const int64_t T = 12, NC = nsa_num_cmp_blocks(T, 4, 2);  // 5
  const NsaInputs in = nsa_inputs(T, 4, 2, 3, NC, 41);
  const NsaOptions ok = blocks(4, 2, 8, 3, 5);
  auto with = [&](int i, const Tensor& t) {
    auto a = in.all();
    a[i] = t;
    return NsaInputs{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]};
  };
  auto opts = [&](auto edit) {
    NsaOptions o = ok;
    edit(o);
    return o;
  };
  CHECK_NOTHROW(run(in, ok));
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.stride = 3; })); }, {"stride d (3)", "block l (4)", "select_block l' (8)"});
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.block = 8, o.select_block = 4; })); }, {"block l (8)", "<= select_block l' (4)"});
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.n_select = 2; })); }, {"n_select", ">= 3", "got 2"});
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.window = -1; })); }, {"window", "-1"});
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.block = 0; })); }, {"block l (0)", "positive"});
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.cu_seqlens = {0, 5, 11}; })); }, {"cu_seqlens", "end at T = 12"});
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.cu_seqlens = {0, 7, 5, 12}; })); }, {"cu_seqlens", "decrease"});
  // Packed as 6 + 6: NC = 2 + 2 = 4, not the 5 of one sequence of 12.
  expect_error([&] { run(in, opts([](NsaOptions& o) { o.cu_seqlens = {0, 6, 12}; })); },
               {"k_cmp must be [NC, H, D] = [4, 2, 3]", "2 + 2", "got [5, 2, 3]"});
  expect_error([&] { run(with(2, rnd({6, 2, 3}, 1)), ok); }, {"v_cmp", "[5, 2, 3]", "got [6, 2, 3]"});
  expect_error([&] { run(with(0, rnd({T, 3, 3}, 1)), ok); }, {"3 query heads", "2 key/value heads"});
  expect_error([&] { run(with(7, rnd({T, 4, 2}, 1)), ok); }, {"gates must be [T, HQ, 3] = [12, 4, 3]", "got [12, 4, 2]"});
  expect_error([&] { run(with(5, rnd({T, 2, 4}, 1)), ok); }, {"k_win must be [T, H, D] = [12, 2, 3]", "got [12, 2, 4]"});
  expect_error([&] { run(with(4, rnd({T - 1, 2, 3}, 1)), ok); }, {"v_slc", "got [11, 2, 3]"});
  expect_error([&] { run(with(3, rnd({T, 2, 3}, 1, DType::f32)), ok); }, {"k_slc has dtype f32", "q has dtype f64"});
  expect_error([&] { run(with(6, rnd({T, 2, 3, 1}, 1)), ok); }, {"v_win must have 3 dims"});
  expect_error([&] { run(with(1, arange(30, DType::i64).reshape({5, 2, 3})), ok); }, {"k_cmp has dtype i64"});
}

TEST_CASE("nsa_count_block_unions: the blocks groups of positions chose together, per sequence and head") {
  // [T = 7, H = 2, n = 3], ascending lists with -1 last (as nsa_attention returns them), worked out by hand.
  const Tensor bi = i32_tensor({0, -1, -1, /* h1 */ 0, -1, -1,   // t = 0
                                0, 1, -1, /*    */ 0, 1, -1,     // t = 1
                                0, 1, 2, /*     */ 0, 2, -1,     // t = 2
                                0, 2, 3, /*     */ 0, 1, 3,      // t = 3
                                1, 3, 4, /*     */ 0, 1, 3,      // t = 4
                                0, -1, -1, /*   */ 0, -1, -1,    // t = 5
                                0, 1, -1, /*    */ 0, -1, -1},   // t = 6
                               {7, 2, 3});
  auto count = [&](int64_t positions, std::vector<int32_t> cu) {
    NsaOptions o;
    o.cu_seqlens = std::move(cu);
    return nsa_count_block_unions(bi, positions, o);
  };
  // Packed as 5 + 2, groups of 3: {0, 1, 2} / {0, 1, 2}, then t = 3, 4: {0, 1, 2, 3, 4} / {0, 1, 3}, then the
  // second sequence's t = 5, 6: {0, 1} / {0}.
  NsaUnionCount c = count(3, {0, 5, 7});
  CHECK(c.groups == 6);
  CHECK(c.blocks == 3 + 3 + 5 + 3 + 2 + 1);
  CHECK(c.chosen == 15 + 13);
  // One sequence, groups of 2: {0, 1} {0, 1, 2, 3} {0, 1, 3, 4} {0, 1} / {0, 1} {0, 1, 2, 3} {0, 1, 3} {0}.
  c = count(2, {});
  CHECK(c.groups == 8);
  CHECK(c.blocks == 12 + 10);
  CHECK(c.chosen == 28);
  // Groups of one position: every entry is its own union.
  c = count(1, {});
  CHECK(c.groups == 14);
  CHECK(c.blocks == 28);
  expect_error([&] { count(0, {}); }, {"positions must be positive", "got 0"});
  expect_error([&] { count(2, {0, 3, 6}); }, {"cu_seqlens", "T = 7"});
  expect_error([&] { nsa_count_block_unions(bi.to(DType::i64), 2, {}); }, {"block_indices must be i32 [T, H, n]", "i64"});
}
