// Every op on the GPU against the CPU reference, forward and gradient, f32 / bf16 / f64, at sizes that are not
// multiples of any block or vector width.
#include <algorithm>
#include <cstdlib>
#include <random>
#include <sstream>

#include "cuda_util.h"
#include "nn/transformer.h"
#include "ops/moe.h"
#include "nsa/branches.h"
#include "nsa/nsa_attention.h"
#include "train/adamw.h"
#if NT_CUDA
#include "cuda/allocator.h"
#include "cuda/blas.h"
#include "cuda/check.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#endif

using namespace nt;
using namespace nt::test;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

CUDA_TEST("tensors move between devices; copies convert, broadcast and follow strides") {
  // Both offset paths of the strided kernels: 32-bit (prepare_fast_offsets, the default at these sizes) and 64-bit.
#if NT_CUDA
  struct Restore {
    ~Restore() { cuda::set_fast_offsets(true); }
  } restore;
#endif
  for (bool fast : {true, false}) {
    INFO("32-bit offsets " << fast);
#if NT_CUDA
    cuda::set_fast_offsets(fast);
#endif
    const Tensor x = rnd({37, 13}, 1);
    const Tensor d = x.to(cuda_device(0));
    CHECK(d.device().is_cuda());
    expect_close(d.to(kCPU), x, 0);
    const DType all[] = {DType::f64, DType::f32, DType::bf16, DType::f8e4m3, DType::f8e5m2, DType::i32, DType::i64, DType::boolean};
    for (DType a : all)
      for (DType b : all) {
        INFO(dtype_name(a) << " -> " << dtype_name(b));
        const Tensor ref = x.to(a).to(b).to(DType::f64);
        expect_close(x.to(a).to(cuda_device(0)).to(b).to(kCPU).to(DType::f64), ref, 0);
      }
    expect_close(d.mT().contiguous().to(kCPU), x.mT().contiguous(), 0);
    expect_close(d.narrow(1, 3, 5).to(kCPU), x.narrow(1, 3, 5), 0);
    Tensor z = zeros({5, 37, 13}, DType::f32, cuda_device(0));
    z.copy_(d.narrow(0, 0, 1).to(DType::f32));  // broadcast over rows and the new leading dim
    expect_close(z.to(kCPU).to(DType::f64).select(0, 4).select(0, 36), x.select(0, 0).to(DType::f32).to(DType::f64), 0);
    Tensor f = empty({7, 9}, DType::bf16, cuda_device(0));
    f.mT().fill_(2.5);
    expect_values(f.to(kCPU), std::vector<double>(63, 2.5));
    // Contiguous fills: 16-byte stores where the view starts aligned (at the buffer's start and one vector in;
    // lengths that are not a multiple of 16 bytes, and for types of 2 bytes and more several strides of the
    // grid), one element per thread where it starts mid-vector; the elements around the view keep their value.
    for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f8e4m3, DType::i32, DType::i64, DType::boolean})
      for (int64_t n : {int64_t{1}, int64_t{13}, int64_t{4099}, int64_t{(1 << 22) + 3}})
        for (int64_t off : {int64_t{0}, int64_t{1}, 16 / (int64_t)dtype_size(t)}) {
          INFO(dtype_name(t) << " n " << n << " offset " << off);
          const double bg = t == DType::boolean ? 0 : 3, v = t == DType::boolean ? 1 : -2;
          Tensor buf = full({n + 16}, bg, t, cuda_device(0));
          buf.narrow(0, off, n).fill_(v);
          std::vector<double> want((size_t)(n + 16), bg);
          std::fill(want.begin() + off, want.begin() + off + n, v);
          expect_values(buf.to(kCPU).to(DType::f64), want, 0);
        }
    z.narrow(2, 2, 3).copy_(x.narrow(1, 0, 3));  // host -> strided device view
    expect_close(z.to(kCPU).to(DType::f64).select(0, 2).narrow(1, 2, 3), x.narrow(1, 0, 3).to(DType::f32).to(DType::f64), 0);
    // Three dims with odd extents: permuted copies (and casts) and a broadcast add over a permuted view.
    const Tensor y = rnd({5, 7, 11}, 2), yd = y.to(cuda_device(0));
    expect_close(yd.permute({2, 0, 1}).contiguous().to(kCPU), y.permute({2, 0, 1}).contiguous(), 0);
    expect_close(yd.permute({1, 2, 0}).to(DType::f32).to(kCPU).to(DType::f64),
                 y.permute({1, 2, 0}).to(DType::f32).to(DType::f64), 0);
    const Tensor r = rnd({11}, 3);
    expect_close(add(yd.permute({1, 0, 2}), r.to(cuda_device(0))).to(kCPU), add(y.permute({1, 0, 2}), r), 0);
    // Same-dtype copies that keep the innermost dim contiguous move 16-, 8- and 4-byte chunks (bf16 rows of 24, 12
    // and 6 elements), or elements (7); a permuted copy, a broadcast one and a strided destination each.
    for (int64_t inner : {24, 12, 6, 7}) {
      INFO("inner " << inner);
      const Tensor u = rnd({5, 7, inner}, 4).to(DType::bf16), ud = u.to(cuda_device(0));
      expect_close(ud.permute({1, 0, 2}).contiguous().to(kCPU), u.permute({1, 0, 2}).contiguous(), 0);
      Tensor b = zeros({5, 7, inner}, DType::bf16, cuda_device(0));
      b.copy_(ud.narrow(0, 2, 1));  // broadcast over the first dim
      expect_close(b.to(kCPU), u.narrow(0, 2, 1).expand({5, 7, inner}).contiguous(), 0);
      Tensor p = zeros({7, 5, inner}, DType::bf16, cuda_device(0));
      p.permute({1, 0, 2}).copy_(ud);  // into a permuted destination
      expect_close(p.to(kCPU), u.permute({1, 0, 2}).contiguous(), 0);
      if (inner >= 9) {
        // 8 elements of each row: at 12 the rows' stride rules out 16-byte chunks (8 bytes remain); one element
        // in, the address rules out every chunk
        expect_close(ud.narrow(2, 0, 8).contiguous().to(kCPU), u.narrow(2, 0, 8).contiguous(), 0);
        expect_close(ud.narrow(2, 1, 8).contiguous().to(kCPU), u.narrow(2, 1, 8).contiguous(), 0);
      }
    }
    // Casts f32 <-> bf16: contiguous and 16-byte aligned (vectorized) or not (a view at an odd offset).
    const Tensor c32 = rnd({37, 13}, 5).to(DType::f32), c32d = c32.to(cuda_device(0));
    expect_close(c32d.narrow(0, 1, 35).to(DType::bf16).to(kCPU), c32.narrow(0, 1, 35).to(DType::bf16), 0);
    expect_close(c32d.to(DType::bf16).narrow(0, 1, 35).to(DType::f32).to(kCPU),
                 c32.to(DType::bf16).narrow(0, 1, 35).to(DType::f32), 0);
#if NT_CUDA
    {  // the attention backward's cast launcher, aligned (vectorized) and at an odd offset (scalar)
      Tensor out = full({481}, NAN, DType::bf16, cuda_device(0));
      cuda::cast_f32_to_bf16(c32d.data<float>(), out.data_ptr(), 480, cuda::current_stream(0));
      expect_close(out.narrow(0, 0, 480).to(kCPU), c32.reshape({481}).narrow(0, 0, 480).to(DType::bf16), 0);
      cuda::cast_f32_to_bf16(c32d.data<float>() + 1, static_cast<uint16_t*>(out.data_ptr()) + 1, 480,
                             cuda::current_stream(0));
      expect_close(out.narrow(0, 1, 480).to(kCPU), c32.reshape({481}).narrow(0, 1, 480).to(DType::bf16), 0);
    }
#endif
  }
}

CUDA_TEST("random draws are the CPU's numbers") {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Generator a(77), b(77);
    const Tensor cu = rand({1001}, dt, kCPU, &a), gu = rand({1001}, dt, cuda_device(0), &b);
    expect_close(gu.to(kCPU), cu, 0);
    const Tensor cn = randn({999}, dt, kCPU, &a), gn = randn({999}, dt, cuda_device(0), &b);
    expect_close(gn.to(kCPU), cn, dt == DType::f64 ? 1e-6 : 0, dt == DType::f64 ? 1e-6 : 1e-6);
    CHECK(a.offset == b.offset);
  }
  Generator g1(5), g2(5);
  const Tensor x = rnd({3001}, 3);
  expect_close(dropout(x.to(cuda_device(0)), 0.3, true, &g2).to(kCPU), dropout(x, 0.3, true, &g1), 1e-12, 1e-12);
}

CUDA_TEST("unary ops and their gradients") {
  struct U {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    bool positive;
  };
  const std::vector<U> ops = {
      {"neg", [](const Tensor& x) { return neg(x); }, false},
      {"exp", [](const Tensor& x) { return exp(x); }, false},
      {"log", [](const Tensor& x) { return log(x); }, true},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, true},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, true},
      {"tanh", [](const Tensor& x) { return tanh(x); }, false},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, false},
      {"relu", [](const Tensor& x) { return relu(x); }, false},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, GeluApprox::tanh); }, false},
      {"gelu_erf", [](const Tensor& x) { return gelu(x); }, false},
      {"silu", [](const Tensor& x) { return silu(x); }, false},
      {"pow_scalar", [](const Tensor& x) { return pow(x, 1.5); }, true},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.3, 0.8); }, false},
  };
  for (const U& u : ops)
    for (DType dt : kFloatTypes) {
      Tensor x = u.positive ? uniform({1003}, 4, 0.2, 3.0) : rnd({1003}, 4);
      check_cuda(u.name, [&](const std::vector<Tensor>& in) { return u.f(in[0]); }, {x.requires_grad_()}, dt);
      // A non-contiguous input.
      check_cuda(u.name, [&](const std::vector<Tensor>& in) { return u.f(in[0].mT()); },
                 {(u.positive ? uniform({7, 33}, 5, 0.2, 3.0) : rnd({7, 33}, 5)).requires_grad_()}, dt);
    }
}

CUDA_TEST("binary ops broadcast; comparisons, where and masked_fill") {
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"add", [](const std::vector<Tensor>& v) { return v[0] + v[1]; }},
      {"sub", [](const std::vector<Tensor>& v) { return v[0] - v[1]; }},
      {"mul", [](const std::vector<Tensor>& v) { return v[0] * v[1]; }},
      {"div", [](const std::vector<Tensor>& v) { return v[0] / (exp(v[1]) + 0.5); }},
      {"pow", [](const std::vector<Tensor>& v) { return pow(exp(v[0] * 0.3), v[1]); }},
  };
  for (auto& [name, f] : ops)
    for (DType dt : kFloatTypes) {
      check_cuda(name, f, {rnd_grad({5, 1, 33}, 6), rnd_grad({7, 33}, 7)}, dt);
      check_cuda(name, f, {rnd_grad({1001}, 8), rnd_grad({1001}, 9)}, dt);  // contiguous fast path
    }
  for (DType dt : kFloatTypes) {
    check_cuda("lt", [](const std::vector<Tensor>& v) { return lt(v[0], v[1]); }, {rnd({3, 17}, 10), rnd({17}, 11)}, dt);
    check_cuda("where", [](const std::vector<Tensor>& v) { return where(gt(v[0], v[1]), v[0], v[1] * 2.0); },
               {rnd_grad({3, 17}, 12), rnd_grad({17}, 13)}, dt);
    check_cuda("masked_fill", [](const std::vector<Tensor>& v) { return masked_fill(v[0], gt(v[1], v[2]), -4.0); },
               {rnd_grad({4, 17}, 14), rnd({17}, 15), rnd({1}, 16)}, dt);
  }
  check_cuda("int add", [](const std::vector<Tensor>& v) { return v[0] * v[1] + v[1]; },
             {arange(35).reshape({5, 7}), arange(7)}, DType::f32);
}

CUDA_TEST("reductions over any dims") {
  for (DType dt : kFloatTypes) {
    Tensor x = rnd({6, 37, 11}, 20);
    x.requires_grad_();
    check_cuda("sum", [](const std::vector<Tensor>& v) { return sum(v[0], {0, 2}); }, {x}, dt);
    check_cuda("sum all", [](const std::vector<Tensor>& v) { return sum(v[0]); }, {x}, dt, {dt == DType::bf16 ? 0.5 : 1e-3, 3e-2});
    check_cuda("mean", [](const std::vector<Tensor>& v) { return mean(v[0], {1}, true); }, {x}, dt);
    check_cuda("amax", [](const std::vector<Tensor>& v) { return amax(v[0], {-1}); }, {x}, dt);
    check_cuda("logsumexp", [](const std::vector<Tensor>& v) { return logsumexp(v[0], {0, 1}); }, {x}, dt);
    check_cuda("var", [](const std::vector<Tensor>& v) { return var(v[0], {1}); }, {x}, dt);
    check_cuda("max", [](const std::vector<Tensor>& v) { return max(v[0], 1).values; }, {x}, dt);
    check_cuda("argmax", [](const std::vector<Tensor>& v) { return argmax(v[0], 2); }, {x.detach()}, dt);
    check_cuda("big row", [](const std::vector<Tensor>& v) { return sum(v[0], {1}); }, {rnd({3, 50001}, 21)}, dt,
               {dt == DType::bf16 ? 1.0 : 1e-2, 3e-2});
    // Few long rows take the two-pass split path (chunks of 16384, ragged last chunk).
    const Tensor longx = rnd({2, 200003}, 22);
    check_cuda("split mean", [](const std::vector<Tensor>& v) { return mean(v[0], {1}); }, {longx}, dt, {1e-3, 3e-2});
    check_cuda("split amax", [](const std::vector<Tensor>& v) { return amax(v[0], {1}); }, {longx}, dt);
    check_cuda("split sum all", [](const std::vector<Tensor>& v) { return sum(v[0] * v[0]); }, {longx}, dt,
               {dt == DType::bf16 ? 200.0 : 1e-1, 3e-2});
    // Short middle dims over many columns read in place (reduce_middle): [300, 3, 257] over dim 1, [40, 2, 7, 2001]
    // over dims 1-2 (mean), and a broadcast's backward ([N, 3, D] expanded from [N, 1, D]).
    check_cuda("middle sum", [](const std::vector<Tensor>& v) { return sum(v[0], {1}); }, {rnd_grad({300, 3, 257}, 23)}, dt);
    check_cuda("middle mean", [](const std::vector<Tensor>& v) { return mean(v[0], {1, 2}); }, {rnd_grad({40, 2, 7, 2001}, 24)}, dt);
    check_cuda("expand backward", [](const std::vector<Tensor>& v) { return v[0].expand({300, 3, 257}) * v[1]; },
               {rnd_grad({300, 1, 257}, 25), rnd({300, 3, 257}, 26)}, dt);
  }
}

CUDA_TEST("matmul: shapes, transposed views, batch broadcast, vectors") {
  for (DType dt : kFloatTypes) {
    const Tol t = dt == DType::bf16 ? Tol{0.15, 3e-2} : (dt == DType::f32 ? Tol{1e-3, 1e-3} : Tol{1e-9, 1e-9});
    auto mm = [](const std::vector<Tensor>& v) { return matmul(v[0], v[1]); };
    check_cuda("matmul", mm, {rnd_grad({37, 129}, 30), rnd_grad({129, 65}, 31)}, dt, t);
    check_cuda("matmul batch", mm, {rnd_grad({2, 1, 17, 33}, 32), rnd_grad({3, 33, 9}, 33)}, dt, t);
    check_cuda("matmul vec", mm, {rnd_grad({33}, 34), rnd_grad({4, 33, 9}, 35)}, dt, t);
    check_cuda("matmul mat-vec", mm, {rnd_grad({17, 33}, 36), rnd_grad({33}, 37)}, dt, t);
    check_cuda("matmul transposed", [](const std::vector<Tensor>& v) { return matmul(v[0].mT(), v[1].mT()); },
               {rnd_grad({129, 37}, 38), rnd_grad({65, 129}, 39)}, dt, t);
    check_cuda("matmul strided", [](const std::vector<Tensor>& v) { return matmul(v[0].narrow(1, 3, 40), v[1]); },
               {rnd_grad({21, 50}, 40), rnd_grad({40, 19}, 41)}, dt, t);
    check_cuda("matmul k=0", mm, {rnd({3, 0}, 42), rnd({0, 5}, 43)}, dt, t);
  }
}

CUDA_TEST("grouped_matmul (MoE experts): uneven and empty groups, one group with every row") {
  for (DType dt : kFloatTypes) {
    const Tol t = dt == DType::bf16 ? Tol{0.15, 3e-2} : (dt == DType::f32 ? Tol{1e-3, 1e-3} : Tol{1e-9, 1e-9});
    // 7 groups of 0, 37, 1, 0, 130, 65, 0 rows: none a multiple of a tile; K = 129, N = 67.
    const std::vector<int64_t> uneven{0, 0, 37, 38, 38, 168, 233, 233};
    check_cuda("grouped_matmul uneven", [&](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], uneven); },
               {rnd_grad({233, 129}, 44), rnd_grad({7, 129, 67}, 45)}, dt, t);
    const std::vector<int64_t> one{0, 0, 0, 97, 97};
    check_cuda("grouped_matmul one group", [&](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], one); },
               {rnd_grad({97, 33}, 46), rnd_grad({4, 33, 18}, 47)}, dt, t);
  }
}

CUDA_TEST("grouped_matmul bf16 on the Hopper kernel: group ends inside tiles, empty groups, both tile widths") {
  // K and N multiples of 8 (the kernel's condition) but of no tile size: 128-wide column tiles for N = 120 and 264,
  // 256-wide for N = 200 and 136; the weight gradient of K = 200 takes 256-row tiles. 70 groups (more than one warp's
  // scan) of 0 to 300 rows: group ends fall inside the kernel's 128-row output and 64-row reduction tiles (the weight
  // gradient's tail masking).
  // On a GPU without the kernel (not sm_90) this runs the cuBLAS path, still against the CPU reference.
  cuda::set_grouped_gemm_backend(cuda::GroupedBackend::kernel);
  struct Restore {
    ~Restore() { cuda::set_grouped_gemm_backend(cuda::GroupedBackend::automatic); }
  } restore;
  int major = 0, minor = 0;
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
  if (major == 9 && minor == 0) CHECK(cuda::sm90a_available(0));
  std::vector<int64_t> off{0};
  for (int e = 0; e < 70; ++e) off.push_back(off.back() + (e % 5 == 0 ? 0 : e == 7 ? 300 : (e * 37) % 131));
  const int64_t M = off.back();
  const Tol t{0.15, 3e-2};
  for (auto [K, N] : {std::pair<int64_t, int64_t>{136, 200}, {200, 120}, {64, 264}}) {
    INFO("K " << K << " N " << N << " rows " << M);
    check_cuda("grouped_matmul sm90", [&](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], off); },
               {rnd_grad({M, K}, 48 + K), rnd_grad({70, K, N}, 49 + N)}, DType::bf16, t);
  }
  // 256 x 128 tiles (four consumer warpgroups): N pads further to 256 than to 128 and the groups average >= 512 rows
  // (cuda/grouped_gemm.cu's pick_tiles). Group ends fall in the first and the second 128-row half of a tile.
  const std::vector<int64_t> tall{0, 700, 700, 2000, 2333};
  check_cuda("grouped_matmul sm90 256-row tiles",
             [&](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], tall); },
             {rnd_grad({2333, 72}, 54), rnd_grad({4, 72, 120}, 55)}, DType::bf16, t);
  // All rows in one group of 70 (the others empty), and a batch smaller than one tile.
  std::vector<int64_t> one(71, 0);
  for (int e = 40; e < 71; ++e) one[e] = 1000;
  check_cuda("grouped_matmul sm90 one group", [&](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], one); },
             {rnd_grad({1000, 72}, 50), rnd_grad({70, 72, 48}, 51)}, DType::bf16, t);
  check_cuda("grouped_matmul sm90 tiny", [&](const std::vector<Tensor>& v) { return grouped_matmul(v[0], v[1], {0, 3, 5}); },
             {rnd_grad({5, 16}, 52), rnd_grad({2, 16, 8}, 53)}, DType::bf16, t);
}

CUDA_TEST("moe_dispatch, moe_permute, moe_unpermute: many chunks, empty experts, every slot on one expert") {
  // 1001 tokens x 6 choices = 6006 slots (23 chunks of 256 and a partial one); 70 experts, 67..69 never chosen.
  // D = 203 is no multiple of a vector width; D = 256 takes the 16-byte path.
  const Tensor spread = randint(0, 67, {1001, 6}, DType::i64), one = full({1001, 6}, 41.0, DType::i64);
  for (const Tensor& idx : {spread, one})
    for (DType it : {DType::i64, DType::i32}) {
      const ExpertDispatch dc = moe_dispatch(idx.to(it), 70), dg = moe_dispatch(idx.to(it).to(cuda_device(0)), 70);
      CHECK(dg.counts() == dc.counts());
      CHECK(dg.offsets() == dc.offsets());
      CHECK(dg.groups.stored_device().device().is_cuda());  // the expert GEMMs read these without a host copy
      CHECK(dg.load.to(kCPU).to_vector_as<int64_t>() == dc.load.to_vector_as<int64_t>());
      REQUIRE(dg.slot_row.device().is_cuda());
      CHECK(dg.slot_row.to(kCPU).to_vector_as<int64_t>() == dc.slot_row.to_vector_as<int64_t>());
    }
  // The bad expert surfaces at the first host read (the offsets here; otherwise the next synchronization).
  expect_error([] { (void)moe_dispatch(full({3, 2}, 70.0, DType::i64, cuda_device(0)), 70).offsets(); },
               {"moe_dispatch", "0 to 69"});
  const ExpertDispatch none = moe_dispatch(empty({0, 3}, DType::i64, cuda_device(0)), 5);
  CHECK(none.offsets() == std::vector<int64_t>(6, 0));
  CHECK(none.load.to(kCPU).to_vector_as<int64_t>() == std::vector<int64_t>(5, 0));
  auto on = [&](const Tensor& like) { return moe_dispatch(spread.to(like.device()), 70); };
  for (DType dt : kFloatTypes)
    for (int64_t D : {203, 256}) {
      check_cuda("moe_permute", [&](const std::vector<Tensor>& v) { return moe_permute(v[0], on(v[0])); },
                 {rnd_grad({1001, D}, 48)}, dt);
      check_cuda("moe_unpermute", [&](const std::vector<Tensor>& v) { return moe_unpermute(v[0], v[1], on(v[0])); },
                 {rnd_grad({6006, D}, 49), rnd_grad({1001, 6}, 50)}, dt);
    }
}

CUDA_TEST("softmax, log_softmax, cross_entropy") {
  for (DType dt : kFloatTypes) {
    check_cuda("softmax", [](const std::vector<Tensor>& v) { return softmax(v[0] * 3.0, -1); }, {rnd_grad({7, 1037}, 50)}, dt);
    check_cuda("softmax mid", [](const std::vector<Tensor>& v) { return softmax(v[0], 1); }, {rnd_grad({3, 17, 5}, 51)}, dt);
    check_cuda("log_softmax", [](const std::vector<Tensor>& v) { return log_softmax(v[0], -1); }, {rnd_grad({5, 5003}, 52)}, dt);
    const Tensor target = randint(0, 5003, {2, 9}, DType::i64);
    Tensor tgt = target.clone();
    tgt.narrow(1, 2, 2).fill_(-100);
    check_cuda("cross_entropy", [&](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1]); },
               {rnd_grad({2, 9, 5003}, 53), tgt}, dt);
    check_cuda("cross_entropy none", [&](const std::vector<Tensor>& v) {
      return cross_entropy(v[0], v[1], -100, Reduction::none); }, {rnd_grad({2, 9, 5003}, 54), tgt.to(DType::i32)}, dt);
    // Rows of 16-byte multiples take the vectorized chunked scan (8200 = 32 chunks of 256 + a remainder).
    check_cuda("softmax vec", [](const std::vector<Tensor>& v) { return softmax(v[0] * 3.0, -1); }, {rnd_grad({5, 8200}, 57)}, dt);
    // Rows over 200 KiB in f32/f64 (not held in shared memory: every pass reads global memory).
    check_cuda("softmax long rows", [](const std::vector<Tensor>& v) { return softmax(v[0] * 3.0, -1); }, {rnd_grad({2, 60000}, 55)}, dt);
    check_cuda("cross_entropy long rows", [&](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1]); },
               {rnd_grad({3, 60001}, 56), randint(0, 60001, {3}, DType::i64)}, dt);
    const Tensor wide_target = randint(0, 8200, {6}, DType::i64);
    check_cuda("cross_entropy vec", [&](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1]); },
               {rnd_grad({6, 8200}, 58), wide_target}, dt);
    // A NaN anywhere in a row makes the row NaN, on both devices.
    Tensor with_nan = rnd({2, 8200}, 59);
    with_nan.narrow(0, 0, 1).narrow(1, 4000, 1).fill_(NAN);
    check_cuda("softmax NaN", [](const std::vector<Tensor>& v) { return softmax(v[0], -1); }, {with_nan}, dt,
               Tol{-1, -1, true});
  }
  for (DType dt : kFloatTypes)
    check_cuda("cross_entropy sum", [](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1], 3, Reduction::sum); },
               {rnd_grad({33, 1001}, 55), randint(0, 1001, {33}, DType::i64)}, dt);
  // loss.backward() with its implicit gradient of 1 returns the gradient the forward pass wrote.
  Tensor lc = rnd({9, 515}, 56).requires_grad_(), lg = lc.detach().to(cuda_device(0)).requires_grad_();
  const Tensor tg = randint(0, 515, {9}, DType::i64);
  cross_entropy(lc, tg).backward();
  cross_entropy(lg, tg.to(cuda_device(0))).backward();
  expect_close(lg.grad().to(kCPU), lc.grad(), 1e-9, 1e-9);
  const Tensor bad = from_vector({7}, {1}, DType::i64, cuda_device(0));
  expect_error([&] { (void)cross_entropy(zeros({1, 7}, DType::f32, cuda_device(0)), bad).to(kCPU); },
               {"cross_entropy", "out of range"});
}

CUDA_TEST("rms_norm, layer_norm") {
  for (DType dt : kFloatTypes) {
    check_cuda("rms_norm", [](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1]); },
               {rnd_grad({3, 11, 333}, 60), rnd_grad({333}, 61)}, dt);
    check_cuda("rms_norm no weight", [](const std::vector<Tensor>& v) { return rms_norm(v[0], Tensor()); },
               {rnd_grad({19, 2049}, 62)}, dt);
    check_cuda("layer_norm", [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
               {rnd_grad({35, 333}, 63), rnd_grad({333}, 64), rnd_grad({333}, 65)}, dt);
    // Rows wider than the register path (more than 32 columns per thread) keep partials in global memory.
    check_cuda("layer_norm wide", [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
               {rnd_grad({3, 16500}, 66), rnd_grad({16500}, 67), rnd_grad({16500}, 68)}, dt,
               dt == DType::bf16 ? Tol{0.1, 3e-2} : tol_for(dt));
    // 16-byte rows (widths a multiple of 8) take the register forward and the pipelined backward; more rows than
    // resident blocks, so blocks walk several rows through both shared-memory buffers.
    check_cuda("rms_norm pipelined", [](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1]); },
               {rnd_grad({9001, 520}, 69), rnd_grad({520}, 70)}, dt, dt == DType::bf16 ? Tol{0.1, 3e-2} : tol_for(dt));
    check_cuda("layer_norm pipelined", [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2]); },
               {rnd_grad({9001, 264}, 71), rnd_grad({264}, 72), rnd_grad({264}, 73)}, dt,
               dt == DType::bf16 ? Tol{0.1, 3e-2} : tol_for(dt));
  }
}

CUDA_TEST("embedding (repeated indices), rope, dropout, swiglu") {
  for (DType dt : kFloatTypes) {
    const Tensor idx = randint(0, 53, {7, 19}, DType::i64);
    check_cuda("embedding", [](const std::vector<Tensor>& v) { return embedding(v[0], v[1]); }, {rnd_grad({53, 35}, 70), idx}, dt);
    check_cuda("embedding i32", [](const std::vector<Tensor>& v) { return embedding(v[0], v[1]); },
               {rnd_grad({53, 35}, 71), idx.to(DType::i32)}, dt);
    auto [c, s] = rope_tables(13, 10, 10000.0, 3);
    for (bool inter : {false, true})
      check_cuda("rope", [&](const std::vector<Tensor>& v) { return rope(v[0], c.to(cuda_device(0)).to(v[0].device()), s.to(v[0].device()), inter); },
                 {rnd_grad({2, 13, 3, 10}, 72)}, dt, dt == DType::f64 ? Tol{1e-6, 1e-6} : tol_for(dt));
    check_cuda("dropout", [](const std::vector<Tensor>& v) { Generator g(8); return dropout(v[0], 0.25, true, &g); },
               {rnd_grad({1037}, 73)}, dt);
    check_cuda("swiglu", [](const std::vector<Tensor>& v) { return swiglu(v[0], v[1]); }, {rnd_grad({7, 1033}, 74), rnd_grad({7, 1033}, 75)}, dt);
    check_cuda("swiglu halves", [](const std::vector<Tensor>& v) { return swiglu(v[0].narrow(-1, 0, 37), v[0].narrow(-1, 37, 37)); },
               {rnd_grad({5, 74}, 76)}, dt);
  }
  expect_error([] {
    (void)embedding(zeros({5, 3}, DType::f32, cuda_device(0)), from_vector({5}, {1}, DType::i64, cuda_device(0))).to(kCPU);
  }, {"embedding", "out of range"});
}

CUDA_TEST("cat, split, index_select, gather, scatter_add, topk, cumsum") {
  for (DType dt : kFloatTypes) {
    check_cuda("cat", [](const std::vector<Tensor>& v) { return cat({v[0], v[1]}, 1); }, {rnd_grad({3, 5, 7}, 80), rnd_grad({3, 2, 7}, 81)}, dt);
    check_cuda("stack", [](const std::vector<Tensor>& v) { return stack({v[0], v[1] * 2.0}, 2); }, {rnd_grad({3, 5}, 82), rnd_grad({3, 5}, 83)}, dt);
    check_cuda("split", [](const std::vector<Tensor>& v) { return split(v[0], {2, 5}, 1)[1] * 3.0; }, {rnd_grad({3, 7}, 84)}, dt);
    const Tensor sel = from_vector({4, 0, 4, 2, 1}, {5}, DType::i64);
    check_cuda("index_select", [&](const std::vector<Tensor>& v) { return index_select(v[0], 1, v[1]); }, {rnd_grad({3, 5, 7}, 85), sel}, dt);
    const Tensor gi = randint(0, 9, {4, 6}, DType::i64);
    check_cuda("gather", [&](const std::vector<Tensor>& v) { return gather(v[0], 1, v[1]); }, {rnd_grad({5, 9}, 86), gi}, dt);
    check_cuda("scatter_add", [&](const std::vector<Tensor>& v) { return scatter_add(v[0], 1, v[1], v[2]); },
               {rnd_grad({5, 9}, 87), gi, rnd_grad({4, 6}, 88)}, dt);
    check_cuda("topk", [](const std::vector<Tensor>& v) { return topk(v[0], 7, 1).values; }, {rnd_grad({4, 301}, 89)}, dt);
    check_cuda("topk indices", [](const std::vector<Tensor>& v) { return topk(v[0], 5, 0, false).indices; }, {rnd({37, 3}, 90)}, dt);
    check_cuda("cumsum", [](const std::vector<Tensor>& v) { return cumsum(v[0], 1); }, {rnd_grad({3, 101, 2}, 91)}, dt);
  }
  // Ties go to the lower index, as on the CPU.
  const Tensor tied = from_vector({1, 3, 3, 2, 3}, {5}, DType::f32, cuda_device(0));
  expect_values(topk(tied, 3).indices.to(kCPU), {1, 2, 4});
}

#if NT_CUDA
CUDA_TEST("caching allocator: reuse, stats, empty_cache, out-of-memory message") {
  cuda::empty_cache();
  const auto before = cuda::allocator_stats(0);
  {
    Tensor a = empty({1 << 20}, DType::f32, cuda_device(0));
    CHECK(cuda::allocator_stats(0).allocated >= before.allocated + (4u << 20));
  }
  const auto mid = cuda::allocator_stats(0);
  { Tensor b = empty({1 << 20}, DType::f32, cuda_device(0)); }
  const auto after = cuda::allocator_stats(0);
  CHECK(after.cache_hits == mid.cache_hits + 1);
  CHECK(after.device_mallocs == mid.device_mallocs);
  CHECK(after.peak_allocated >= (4u << 20));
  cuda::empty_cache();
  CHECK(cuda::allocator_stats(0).reserved <= after.reserved - (4u << 20));
  expect_error([] { empty({int64_t(1) << 45}, DType::f32, cuda_device(0)); }, {"out of memory", "cuda:0", "tried to allocate"});
}

CUDA_TEST("uploads: many small ones and a large one, the host source freed at once") {
  std::vector<Tensor> on_gpu;
  std::vector<std::vector<double>> want;
  for (int i = 0; i < 400; ++i) {
    const int64_t n = 1 + (int64_t)i * 7919 % 9000;
    std::vector<double> v(n);
    for (int64_t k = 0; k < n; ++k) v[k] = i * 10000.0 + (double)k;
    on_gpu.push_back(from_vector(v, {n}, DType::f32).to(cuda_device(0)));
    want.push_back(std::move(v));
  }
  std::vector<double> big(300000);
  for (size_t k = 0; k < big.size(); ++k) big[k] = (double)(k % 65536);
  const Tensor big_gpu = from_vector(big, {(int64_t)big.size()}, DType::f32).to(cuda_device(0));
  for (int i = 0; i < 400; ++i) expect_values(on_gpu[i].to(kCPU), want[i], 0);
  expect_values(big_gpu.to(kCPU), big, 0);
}

CUDA_TEST("index checks wait for the next synchronization, or run at the call under set_sync_checks") {
  const Tensor x = rnd({4, 6}, 400).to(cuda_device(0));
  const Tensor good = from_vector({5, 0, 3}, {3}, DType::i64, cuda_device(0));
  const Tensor bad = from_vector({1, 6}, {2}, DType::i64, cuda_device(0));
  const Tensor bad2 = from_vector({9}, {1}, DType::i64, cuda_device(0));
  cuda::synchronize(0);
  // Deferred (the default): the call returns; the next synchronization reports the first bad op of the ones queued.
  REQUIRE_FALSE(cuda::sync_checks());
  Tensor y;
  CHECK_NOTHROW(y = index_select(x, 1, bad));
  CHECK_NOTHROW(gather(x, 1, bad2.reshape({1, 1})));
  expect_error([] { cuda::synchronize(0); }, {"index_select", "out of range for dim 1 of size 6", "queued earlier"});
  CHECK_NOTHROW(cuda::synchronize(0));  // reported once; the flags went back to the pool
  // A copy to the host is a synchronization too; a valid op in between does not hide the error.
  (void)index_select(x, 0, bad2);
  (void)index_select(x, 1, good);
  expect_error([&] { (void)x.to(kCPU); }, {"index_select", "of size 4"});
  expect_values(index_select(x, 1, good).to(kCPU), index_select(x.to(kCPU), 1, good.to(kCPU)).to_vector());
  // More checks than the pool's flags between two synchronizations: the pool synchronizes and carries on.
  for (int i = 0; i < 4200; ++i) (void)index_select(x, 1, good);
  CHECK_NOTHROW(cuda::synchronize(0));
  // At the call, without the deferral note.
  cuda::set_sync_checks(true);
  try {
    (void)index_select(x, 1, bad);
    FAIL_CHECK("expected an nt::Error at the call");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK(m.find("index_select") != std::string::npos);
    CHECK(m.find("queued earlier") == std::string::npos);
  }
  cuda::set_sync_checks(false);
  CHECK_NOTHROW(cuda::synchronize(0));
}

CUDA_TEST("every CUDA failure names the call") {
  expect_error([] { zeros({2}, DType::f32, cuda_device(63)); }, {"cuda:63"});
}
#endif

CUDA_TEST("AdamW's fused kernel matches the CPU update") {
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    INFO(dtype_name(dt));
    const DType acc = dt == DType::f64 ? DType::f64 : DType::f32;
    Tensor p = rnd({1037}, 1).to(dt), g = rnd({1037}, 2).to(dt);
    Tensor m = (rnd({1037}, 3) * 0.1).to(acc), v = (rnd({1037}, 4) * rnd({1037}, 4) * 0.01).to(acc);
    Tensor pd = p.to(cuda_device(0)), md = m.to(cuda_device(0)), vd = v.to(cuda_device(0));
    train::adamw_update(p, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 7);
    train::adamw_update(pd, g.to(cuda_device(0)), md, vd, 1e-3, 0.9, 0.95, 1e-8, 0.1, 7);
    const Tol t = dt == DType::bf16 ? Tol{1e-2, 1e-2} : Tol{1e-6, 1e-5};
    expect_close(pd.to(kCPU).to(DType::f64), p.to(DType::f64), t.atol, t.rtol);
    expect_close(md.to(kCPU).to(DType::f64), m.to(DType::f64), 1e-6, 1e-5);
    expect_close(vd.to(kCPU).to(DType::f64), v.to(DType::f64), 1e-6, 1e-5);
  }
  // Mixed precision as AdamW::step's per-tensor path runs it: f32 master, bf16 gradient read as it is, a clip scale
  // (in part from device memory), and the bf16 compute copy written in the same pass (poisoned first).
  Tensor p = rnd({4099}, 5).to(DType::f32), g = rnd({4099}, 6).to(DType::bf16);
  Tensor m = (rnd({4099}, 7) * 0.1).to(DType::f32), v = (rnd({4099}, 8) * rnd({4099}, 8) * 0.01).to(DType::f32);
  Tensor pd = p.to(cuda_device(0)), md = m.to(cuda_device(0)), vd = v.to(cuda_device(0));
  Tensor copy = full({4099}, NAN, DType::bf16, cuda_device(0));
  train::adamw_update(p, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.37);
  const Tensor scale = full({1}, 0.74, DType::f64, cuda_device(0));  // times 0.5: the clip scale read on the device
  train::adamw_update(pd, g.to(cuda_device(0)), md, vd, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.5, &copy, &scale);
  expect_close(pd.to(kCPU).to(DType::f64), p.to(DType::f64), 1e-6, 1e-5);
  expect_close(md.to(kCPU).to(DType::f64), m.to(DType::f64), 1e-6, 1e-5);
  expect_close(vd.to(kCPU).to(DType::f64), v.to(DType::f64), 1e-6, 1e-5);
  expect_close(copy.to(kCPU).to(DType::f64), p.to(DType::bf16).to(DType::f64), 0, 0);
}

CUDA_TEST("global gradient norm: one kernel over bf16, f32 and f64 gradients of odd sizes equals the CPU's") {
  std::vector<Tensor> cpu, gpu;
  double want = 0;
  int seed = 30;
  for (auto [n, dt] : {std::pair<int64_t, DType>{70001, DType::bf16}, {5, DType::f32}, {131073, DType::f32}, {999, DType::f64}}) {
    const Tensor g = rnd({n}, seed++).to(dt);
    for (double x : g.to(DType::f64).to_vector()) want += x * x;
    Tensor pc = zeros({n}, dt), pg = zeros({n}, dt, cuda_device(0));
    pc.set_grad(g), pg.set_grad(g.to(cuda_device(0)));
    cpu.push_back(pc), gpu.push_back(pg);
  }
  CHECK(train::clip_grad_norm(gpu, 1e9) == doctest::Approx(std::sqrt(want)).epsilon(1e-6));
  CHECK(train::clip_grad_norm(cpu, 1e9) == doctest::Approx(std::sqrt(want)).epsilon(1e-6));
  // Clipping scales every gradient by max_norm / norm.
  CHECK(train::clip_grad_norm(gpu, 1.0) == doctest::Approx(std::sqrt(want)).epsilon(1e-6));
  CHECK(train::clip_grad_norm(gpu, 1e9) == doctest::Approx(1.0).epsilon(1e-3));
}

CUDA_TEST("AdamW clips on the device (clip_grad_norm_async): the same update as the CPU's clip, no read needed") {
  // A bf16 parameter (f32 master) and an f32 one of odd sizes; the norm (~60) is above max_norm, so the scale
  // read by the kernel from device memory matters; a second step with a huge max_norm must not clip.
  Tensor wc = rnd({37, 29}, 40).to(DType::bf16), bc = rnd({301}, 41, DType::f32);
  Tensor wg = wc.to(cuda_device(0)), bg = bc.to(cuda_device(0));
  train::AdamW cpu({{"w", wc}, {"b", bc}}), gpu({{"w", wg}, {"b", bg}});
  for (int step = 0; step < 2; ++step) {
    const Tensor gw = (rnd({37, 29}, 50 + step) * 2.0).to(DType::bf16), gb = rnd({301}, 60 + step, DType::f32) * 2.0;
    wc.set_grad(gw), bc.set_grad(gb), wg.set_grad(gw.to(cuda_device(0))), bg.set_grad(gb.to(cuda_device(0)));
    const double max_norm = step == 0 ? 1.0 : 1e9;
    const double want = cpu.clip_grad_norm(max_norm);
    const Tensor norm = gpu.clip_grad_norm_async(max_norm);
    CHECK(norm.device() == cuda_device(0));
    gpu.step(1e-2), cpu.step(1e-2);
    CHECK(norm.item() == doctest::Approx(want).epsilon(1e-6));
    CHECK(want > (step == 0 ? 10.0 : 0.0));
    expect_close(wg.to(kCPU).to(DType::f64), wc.to(DType::f64), 1e-2, 1e-2);
    expect_close(bg.to(kCPU).to(DType::f64), bc.to(DType::f64), 1e-6, 1e-5);
    const auto sc = cpu.state(), sg = gpu.state();
    for (size_t i = 0; i < sc.size(); ++i) expect_close(sg[i].second.to(kCPU).to(DType::f64), sc[i].second.to(DType::f64), 1e-6, 1e-5);
    cpu.zero_grad(), gpu.zero_grad();
  }
}

CUDA_TEST("AdamW::step on one GPU (one launch over every tensor) matches the CPU's per-tensor update") {
  // A bf16 matrix (f32 master) spanning two chunks, an f32 matrix given bf16 gradients, an f32 bias (no decay), an
  // f64 matrix, and an f32 parameter never given a gradient. Step 0: two micro-batches (the kernel reads the f32
  // buffers); steps 1 and 3: one (the raw bf16 gradients, also in the second chunk), step 1 clipped; step 2: the
  // f64 matrix gets no gradient (a new chunk table).
  std::vector<Tensor> cpu_p = {rnd({7, 10001}, 70).to(DType::bf16), rnd({33, 5}, 71, DType::f32),
                               rnd({29}, 72, DType::f32), rnd({3, 11}, 73), rnd({4}, 74, DType::f32)};
  std::vector<std::pair<std::string, Tensor>> cpu_named, gpu_named;
  std::vector<Tensor> gpu_p;
  for (size_t i = 0; i < cpu_p.size(); ++i) {
    gpu_p.push_back(cpu_p[i].to(cuda_device(0)));
    cpu_named.emplace_back("p" + std::to_string(i), cpu_p[i]), gpu_named.emplace_back("p" + std::to_string(i), gpu_p[i]);
  }
  train::AdamW cpu(cpu_named), gpu(gpu_named);
  int seed = 80;
  for (int step = 0; step < 4; ++step) {
    const int micros = step == 0 ? 2 : 1;
    for (int micro = 0; micro < micros; ++micro) {
      for (size_t i = 0; i + 1 < cpu_p.size(); ++i) {
        if (i == 3 && step == 2) continue;
        const DType gt = i <= 1 ? DType::bf16 : cpu_p[i].dtype();
        const Tensor g = rnd(cpu_p[i].shape(), seed++).to(gt);
        cpu_p[i].set_grad(g), gpu_p[i].set_grad(g.to(cuda_device(0)));
      }
      if (micro + 1 < micros) cpu.accumulate(), gpu.accumulate();
    }
    cpu.clip_grad_norm(step == 1 ? 1.0 : 1e9), gpu.clip_grad_norm(step == 1 ? 1.0 : 1e9);
    cpu.step(3e-2), gpu.step(3e-2);
    CHECK(gpu.last_step_one_launch());
    CHECK(!cpu.last_step_one_launch());
    cpu.zero_grad(), gpu.zero_grad();
  }
  for (size_t i = 0; i < cpu_p.size(); ++i) {
    INFO("parameter " << i);
    const double tol = cpu_p[i].dtype() == DType::bf16 ? 1e-2 : 1e-6;
    expect_close(gpu_p[i].to(kCPU).to(DType::f64), cpu_p[i].to(DType::f64), tol, tol);
  }
  const auto sc = cpu.state(), sg = gpu.state();
  REQUIRE(sc.size() == sg.size());
  for (size_t i = 0; i < sc.size(); ++i) {
    INFO(sc[i].first);
    expect_close(sg[i].second.to(kCPU).to(DType::f64), sc[i].second.to(DType::f64), 1e-6, 1e-5);
  }
  CHECK(sum(pow(sg.back().second, 2.0)).item() == 0.0);  // p4 (no gradient): its moments untouched
  // A gradient of the wrong shape is refused before anything runs.
  gpu_p[1].set_grad(zeros({5, 33}, DType::f32, cuda_device(0)));
  CHECK_THROWS_WITH(gpu.step(1e-2), doctest::Contains("p1"));
}

CUDA_TEST("a transformer LM's loss and gradients on the GPU match the CPU") {
  nn::LMConfig c;
  c.vocab = 101, c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.max_seq = 33, c.mlp_hidden = 96;
  Generator g1(3), g2(3);
  nn::TransformerLM cpu_lm(c, {DType::f32, kCPU, &g1}), gpu_lm(c, {DType::f32, kCPU, &g2});
  gpu_lm.to(cuda_device(0));
  const Tensor tok = randint(0, 101, {3, 34}, DType::i64);
  const Tensor x = tok.narrow(1, 0, 33).contiguous(), y = tok.narrow(1, 1, 33).contiguous();
  Tensor lc = cpu_lm.loss(x, y), lg = gpu_lm.loss(x.to(cuda_device(0)), y.to(cuda_device(0)));
  CHECK(lg.item() == doctest::Approx(lc.item()).epsilon(1e-4));
  lc.backward(), lg.backward();
  const auto pc = cpu_lm.named_parameters(), pg = gpu_lm.named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) {
    INFO(pc[i].first);
    expect_close(pg[i].second.grad().to(kCPU), pc[i].second.grad(), 2e-4, 2e-3);
  }
}

CUDA_TEST("flash_attention's backward walk: automatic is rows first for full causal attention, heads first with a window") {
#if NT_CUDA
  using Walk = cuda::AttentionBwdWalk;
  const Walk saved = cuda::attention_bwd_walk();
  cuda::set_attention_bwd_walk(Walk::automatic);
  CHECK(cuda::attention_bwd_rows_first(0));
  CHECK_FALSE(cuda::attention_bwd_rows_first(512));
  CHECK_FALSE(cuda::attention_bwd_rows_first(1));
  cuda::set_attention_bwd_walk(Walk::heads_first);
  CHECK_FALSE(cuda::attention_bwd_rows_first(0));
  cuda::set_attention_bwd_walk(Walk::rows_first);
  CHECK(cuda::attention_bwd_rows_first(512));
  cuda::set_attention_bwd_walk(saved);
#endif
}

CUDA_TEST("flash_attention's block order: automatic is longest first forward, and backward up to 8 waves") {
#if NT_CUDA
  using Order = cuda::AttentionBlockOrder;
  const Order saved = cuda::attention_block_order();
  const int64_t waves8 = 8 * (int64_t)cuda::multiprocessor_count(0);
  cuda::set_attention_block_order(Order::automatic);
  CHECK(cuda::attention_longest_first(false, 100 * waves8));
  CHECK(cuda::attention_longest_first(true, waves8));
  CHECK_FALSE(cuda::attention_longest_first(true, waves8 + 1));
  cuda::set_attention_block_order(Order::per_group);
  CHECK_FALSE(cuda::attention_longest_first(false, 1));
  CHECK_FALSE(cuda::attention_longest_first(true, 1));
  cuda::set_attention_block_order(Order::longest_first);
  CHECK(cuda::attention_longest_first(true, 100 * waves8));
  cuda::set_attention_block_order(saved);
#endif
}

CUDA_TEST("flash_attention: tensor-core (bf16) and CUDA-core kernels against the CPU reference") {
  struct C {
    int64_t B, T, H, Hkv, D, window;
    std::vector<int32_t> cu;  // packed: B = 0 and T = N
  };
  // Lengths that are not multiples of the 64-row tiles, group sizes 1, 4 and 16, head dims that are padded
  // (40, 72, 200), the two-pass 256-wide backward, a dim that is not a multiple of 8 (CUDA-core path in bf16);
  // the backward's head splits: a group of 40 (16 + 16 + 8 heads per block) and a grid of few blocks (12 heads
  // over 1-head blocks); full causal D = 128 and 96 over several 128-row blocks (version 6's tiles), packed; fewer
  // rows than one tile (D = 128, T = 40); 140 packed sequences of 100-128 rows (enough blocks that the wgmma
  // backward walks 2 heads per block); a window of INT_MAX keys (none: the kernels' window arithmetic must not
  // overflow).
  std::vector<int32_t> many = {0};
  for (int b = 0; b < 140; ++b) many.push_back(many.back() + 100 + (b * 37) % 29);
  const std::vector<C> cases = {{2, 77, 4, 4, 64, 0, {}},         {1, 130, 8, 2, 72, 33, {}},
                                {0, 200, 16, 1, 40, 0, {0, 70, 71, 71, 200}}, {1, 65, 2, 1, 256, 0, {}},
                                {1, 50, 2, 2, 200, 7, {}},        {2, 19, 4, 2, 12, 0, {}},
                                {1, 300, 4, 4, 128, 100, {}},     {1, 700, 4, 2, 64, 0, {}},
                                {1, 600, 2, 1, 128, 200, {}},     {0, 900, 4, 2, 64, 0, {0, 17, 600, 900}},
                                {1, 150, 40, 1, 64, 0, {}},       {0, 260, 24, 2, 72, 0, {0, 100, 260}},
                                {0, 333, 8, 2, 128, 0, {0, 5, 200, 333}}, {1, 200, 4, 1, 96, 0, {}},
                                {1, 40, 4, 2, 128, 0, {}},        {0, many.back(), 2, 1, 128, 0, many},
                                {1, 90, 4, 2, 128, 2147483647, {}}};
  // Forward kernel versions 1-7 (4 and 5: wgmma on sm_90a for D 72..128, one or two warpgroups per block, 6: warp-
  // specialized with TMA, and the wgmma backward there, 7: 6 with the warp-specialized backward; 3: 32 rows per warp; 2: 16), version 1 paired with the mma.sync backward's 64-key blocks
  // and the others with its 128-key blocks, then back to the defaults.
#if NT_CUDA
  const int default_version = cuda::attention_kernel(), default_keys = cuda::attention_bwd_keys();
  const bool default_tma_dq = cuda::attention_bwd_tma_dq(), default_pingpong = cuda::attention_fwd_pingpong();
  const int default_fwd_blocks = cuda::attention_fwd_blocks();
  const bool default_fwd_alternate = cuda::attention_fwd_alternate();
  const cuda::AttentionBlockOrder default_order = cuda::attention_block_order();
  const cuda::AttentionBwdWalk default_walk = cuda::attention_bwd_walk();
  auto set_version = [](int v) {
    cuda::set_attention_kernel(std::min(v, 7)), cuda::set_attention_bwd_keys(v == 1 ? 64 : 128);
    cuda::set_attention_bwd_tma_dq(v == 8 || v == 10 || v == 11 || v == 13);
    cuda::set_attention_fwd_pingpong(v >= 9 && v != 14), cuda::set_attention_fwd_blocks(v == 13 ? 3 : v == 14 ? 5 : 0);
    cuda::set_attention_fwd_alternate(v != 14);
    cuda::set_attention_block_order(v == 10 || v == 13 ? cuda::AttentionBlockOrder::longest_first
                                                       : cuda::AttentionBlockOrder::per_group);
    cuda::set_attention_bwd_walk(v == 11 || v == 12 ? cuda::AttentionBwdWalk::rows_first
                                                    : cuda::AttentionBwdWalk::heads_first);
  };
  struct Restore {  // also when a check throws
    int version, keys, fwd_blocks;
    bool tma_dq, pingpong, fwd_alternate;
    cuda::AttentionBlockOrder order;
    cuda::AttentionBwdWalk walk;
    ~Restore() {
      cuda::set_attention_kernel(version), cuda::set_attention_bwd_keys(keys), cuda::set_attention_bwd_tma_dq(tma_dq);
      cuda::set_attention_fwd_pingpong(pingpong), cuda::set_attention_block_order(order);
      cuda::set_attention_bwd_walk(walk), cuda::set_attention_fwd_blocks(fwd_blocks);
      cuda::set_attention_fwd_alternate(fwd_alternate);
    }
  } restore_at_exit{default_version, default_keys, default_fwd_blocks, default_tma_dq, default_pingpong,
                    default_fwd_alternate, default_order, default_walk};
  auto restore = [] {};
#else
  auto set_version = [](int) {};
  auto restore = [] {};
#endif
  // 8: version 7 with the TMA-reduce dQ (set_attention_bwd_tma_dq); 9: version 7 with the ping-pong forward
  // (set_attention_fwd_pingpong); 10: 8 and 9 with the longest walks launched first across the grid both ways
  // (set_attention_block_order; what the default, automatic, does on these small grids); versions 6-9: the
  // per-group order; 1-10: the backward walking heads first; 11: 10 in the per-group order and 12: 9, both with the
  // backward walking rows first (set_attention_bwd_walk; with a window too, where the default walks heads first).
  // Versions 6-12 run the warp-specialized forward on one block per 128-query tile; 13: 10 on 3 persistent blocks
  // and 14: 7 (no ping-pong, the per-group order) on 5 (set_attention_fwd_blocks), so that every block walks many
  // tiles, of several heads and sequences, skipping the tiles past short sequences' ends; 13 takes every other
  // round of tiles back to front (the default), 14 every round front to back (set_attention_fwd_alternate).
  // These small grids keep one head per block (bwd_heads_per_block) except the packed case of 140 sequences (two);
  // the case below checks rows first on grids of 16 heads per block.
  // NT_TEST_ATTENTION_VERSIONS=13,14 runs only those: compute-sanitizer takes minutes for all of them.
  std::vector<int> versions = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
  if (const char* e = std::getenv("NT_TEST_ATTENTION_VERSIONS"); e && *e) {
    const std::string list = e;  // (a std::string: doctest's INFO and MESSAGE print a bare const char* as a pointer)
    versions.clear();
    std::istringstream in(list);
    for (std::string item; std::getline(in, item, ',');) {
      char* end = nullptr;
      const long v = std::strtol(item.c_str(), &end, 10);
      INFO("NT_TEST_ATTENTION_VERSIONS: expected a comma-separated list of versions 1-14, got '" << list << "'");
      REQUIRE((!item.empty() && *end == 0 && v >= 1 && v <= 14));
      versions.push_back((int)v);
    }
    MESSAGE("NT_TEST_ATTENTION_VERSIONS: only versions " << list << " of 1-14");
  }
  for (int version : versions)
  for (const C& c : cases)
    for (DType dt : kFloatTypes) {
      if (c.cu.size() > 100 && (dt != DType::bf16 || version < 4)) continue;  // the head walk of the wgmma backwards
      if (version >= 8 && dt != DType::bf16) continue;
      set_version(version);
      INFO("forward kernel " << version << " (backward keys " << (version == 1 ? 64 : 128) << ") B " << c.B << " T " << c.T << " H " << c.H << "/" << c.Hkv << " D " << c.D << " window " << c.window
                << " packed " << !c.cu.empty());
      const Shape qs = c.B ? Shape{c.B, c.T, c.H, c.D} : Shape{c.T, c.H, c.D}, ks = c.B ? Shape{c.B, c.T, c.Hkv, c.D} : Shape{c.T, c.Hkv, c.D};
      const AttentionOptions opt{c.window, 0, c.cu};
      // bf16: probabilities and dS are rounded to bf16 before their products, as in FlashAttention.
      const Tol tol = dt == DType::bf16 ? Tol{2e-2, 5e-2} : (dt == DType::f32 ? Tol{2e-5, 2e-4} : Tol{1e-6, 1e-6});
      check_cuda("flash_attention", [&](const std::vector<Tensor>& v) { return flash_attention(v[0], v[1], v[2], opt); },
                 {rnd_grad(qs, 90), rnd_grad(ks, 91), rnd_grad(ks, 92)}, dt, tol);
    }
  restore();
}

// Grids of at least 8 blocks per SM keep up to 16 query heads per backward block, where the rows-first walk
// interleaves heads; the CPU reference is too slow at these sizes, so rows first is checked against heads first
// (the flash_attention case checks heads first against the CPU): the same sums in another order.
CUDA_TEST("flash_attention's backward walk: rows first gives heads first's gradients on grids of many heads per block") {
#if NT_CUDA
  if (!cuda::sm90a_available(0)) {
    MESSAGE("no sm_90a: the warp-specialized backward does not run");
    return;
  }
  const cuda::AttentionBwdWalk saved = cuda::attention_bwd_walk();
  const int version = cuda::attention_kernel();
  cuda::set_attention_kernel(7);
  struct C {
    int64_t T, H, Hkv, window;
  };
  // 64 heads over 4 kv heads, 16 per block once the grid has a block per SM (bwd_heads_per_block: 128-key blocks x
  // 4 kv heads >= the SMs); T not a multiple of the tiles (4453 rows on 132 SMs); then a window of 340. The 101 rows
  // past the last full key block, and the window's 128 + 339 rows, give every block an even number of 64-row query
  // tiles (2, 4, 6, 8): with an odd number n, a walk taking tile it % n with head it % 16 (not it / 16) still meets
  // every (head, tile) pair once, and this case could not tell it from the right walk (with T = 4389 and a window
  // of 300 it did not, 2026-12-07).
  const int64_t blocks = (int64_t)cuda::multiprocessor_count(0) / 4 + 1;  // key blocks per kv head
  for (const C& c : {C{blocks * 128 + 101, 64, 4, 0}, C{blocks * 128 + 101, 64, 4, 340}}) {
    INFO("T " << c.T << " H " << c.H << "/" << c.Hkv << " window " << c.window);
    const Device gpu = cuda_device(0);
    const Tensor q0 = rnd({c.T, c.H, 128}, 93).to(DType::bf16).to(gpu), k0 = rnd({c.T, c.Hkv, 128}, 94).to(DType::bf16).to(gpu);
    const Tensor v0 = rnd({c.T, c.Hkv, 128}, 95).to(DType::bf16).to(gpu), dy = rnd({c.T, c.H, 128}, 96).to(DType::bf16).to(gpu);
    auto grads = [&](cuda::AttentionBwdWalk walk) {
      cuda::set_attention_bwd_walk(walk);
      Tensor q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(), v = v0.detach().requires_grad_();
      flash_attention(q, k, v, AttentionOptions{c.window, 0, {}}).backward(dy);
      return std::vector<Tensor>{q.grad().to(kCPU).to(DType::f64), k.grad().to(kCPU).to(DType::f64),
                                 v.grad().to(kCPU).to(DType::f64)};
    };
    const auto heads = grads(cuda::AttentionBwdWalk::heads_first), rows = grads(cuda::AttentionBwdWalk::rows_first);
    for (size_t i = 0; i < 3; ++i) {
      INFO("gradient " << i << " (dq, dk, dv)");
      expect_close(rows[i], heads[i], 2e-2, 2e-2);
    }
  }
  cuda::set_attention_bwd_walk(saved);
  cuda::set_attention_kernel(version);
#endif
}

CUDA_TEST("nsa_attention: CUDA-core kernels against the CPU reference") {
  struct C {
    int64_t HQ, H, D;
    std::vector<int32_t> cu;  // packed sequences over T = cu.back() rows
    NsaOptions opt;
  };
  auto opts = [](int64_t l, int64_t d, int64_t lp, int64_t n, int64_t w) {
    NsaOptions o;
    o.block = l, o.stride = d, o.select_block = lp, o.n_select = n, o.window = w;
    o.fused = true;  // the CUDA-core kernels (nsa_attention's CUDA default is the branch-wise path)
    return o;
  };
  // Group sizes 1, 4 and 16; lengths that are not multiples of the blocks; more candidates than n (selection by
  // score), fewer (all selected), an empty sequence, a sequence shorter than l, an empty window.
  const std::vector<C> cases = {{4, 4, 16, {0, 70}, opts(8, 4, 16, 3, 20)},
                                {8, 2, 24, {0, 30, 31, 31, 97}, opts(8, 4, 16, 4, 9)},
                                {16, 1, 8, {0, 53}, opts(4, 2, 8, 3, 0)},
                                {2, 1, 40, {0, 129}, opts(16, 8, 32, 3, 40)}};
  for (const C& c : cases)
    for (DType dt : kFloatTypes) {
      const int64_t T = c.cu.back();
      int64_t NC = 0;
      for (size_t b = 0; b + 1 < c.cu.size(); ++b) NC += nsa_num_cmp_blocks(c.cu[b + 1] - c.cu[b], c.opt.block, c.opt.stride);
      INFO("HQ " << c.HQ << " H " << c.H << " D " << c.D << " T " << T << " NC " << NC);
      NsaOptions opt = c.opt;
      opt.cu_seqlens = c.cu;
      const Tol tol = dt == DType::bf16 ? Tol{3e-2, 6e-2} : (dt == DType::f32 ? Tol{3e-5, 3e-4} : Tol{1e-8, 1e-8});
      const Tensor gates = sigmoid(rnd({T, c.HQ, 3}, 107));
      check_cuda("nsa_attention",
                 [&](const std::vector<Tensor>& v) { return nsa_attention(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], opt).o; },
                 {rnd_grad({T, c.HQ, c.D}, 100), rnd_grad({NC, c.H, c.D}, 101), rnd_grad({NC, c.H, c.D}, 102),
                  rnd_grad({T, c.H, c.D}, 103), rnd_grad({T, c.H, c.D}, 104), rnd_grad({T, c.H, c.D}, 105),
                  rnd_grad({T, c.H, c.D}, 106), gates.detach().requires_grad_()},
                 dt, tol);
      if (dt == DType::bf16) continue;  // bf16 scores may order near-ties differently
      std::vector<Tensor> in;
      for (uint64_t s = 100; s < 107; ++s) {
        const Shape sh = s == 100 ? Shape{T, c.HQ, c.D} : (s <= 102 ? Shape{NC, c.H, c.D} : Shape{T, c.H, c.D});
        in.push_back(rnd(sh, s).to(dt));
      }
      const Tensor ref = nsa_attention(in[0], in[1], in[2], in[3], in[4], in[5], in[6], gates.to(dt), opt).block_indices;
      for (Tensor& t : in) t = t.to(cuda_device(0));
      const Tensor got = nsa_attention(in[0], in[1], in[2], in[3], in[4], in[5], in[6], gates.to(dt).to(cuda_device(0)), opt).block_indices;
      expect_close(got.to(kCPU).to(DType::f64), ref.to(DType::f64), 0, 0);
    }
}

// Blocks for nsa_selected_attention: position t takes its own block t / l' and up to n - 1 earlier ones, drawn
// from a generator shared by runs of 4 positions (neighbours mostly choose alike, as trained models do), except
// every 7th position (its own draw: the union of a thread block's positions has blocks only some of them chose);
// every 5th position takes one block fewer (a -1 after its list); positions 8..11 of the first sequence none.
static Tensor random_block_indices(const std::vector<int32_t>& cu, int64_t H, int64_t n, int64_t lp) {
  const int64_t T = cu.back();
  std::vector<double> idx(T * H * n, -1.0);
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int64_t t = 0; t < cu[b + 1] - cu[b]; ++t)
      for (int64_t h = 0; h < H; ++h) {
        // Positions 8..11 of the first sequence choose nothing (a row of -1: o = 0, no gradient; at G = 16 a
        // whole thread block of version 3 then walks no tile).
        if (b == 0 && t >= 8 && t < 12) continue;
        const int64_t cur = t / lp, want = std::min(n, cur + 1) - (t % 5 == 4 && cur > 0 ? 1 : 0);
        std::mt19937 rng(t % 7 == 3 ? (uint32_t)(1000003 * t + h) : (uint32_t)(7919 * (t / 4) + 31 * h + 17 * (int64_t)b));
        std::vector<int64_t> set{cur};
        while ((int64_t)set.size() < want) {
          const int64_t x = (int64_t)(rng() % (uint32_t)cur);
          if (std::find(set.begin(), set.end(), x) == set.end()) set.push_back(x);
        }
        std::sort(set.begin(), set.end());
        for (size_t i = 0; i < set.size(); ++i) idx[((cu[b] + t) * H + h) * n + i] = (double)set[i];
      }
  return from_vector(idx, {T, H, n}, DType::i32, kCPU);
}

CUDA_TEST("nsa_selected_attention on tensor cores (bf16): kernel versions 1-4 and 6 against the CPU reference") {
  struct C {
    int64_t HQ, H, D, n, lp;
    std::vector<int32_t> cu;
  };
  // Version 3 (wgmma, sm_90a) takes l' = 64, D <= 128, 2 <= G <= 16: group sizes 16 (also with 2 kv heads and
  // 640 positions: unions of several tiles), 4, 3 (padded to 4), 2 (32 positions per block), 12 (padded to 16),
  // 8; head dims padded to 128 (72, 96, 64, 40); lengths that are not multiples of the positions per block or of
  // l'; varlen with an empty sequence. The last two fall back to version 2 under 3, 4 and 6 (G = 1; l' = 32).
  // Version 4 is 3 with dq computed in the dk/dv kernel, 6 is 4 with the warp-specialized forward (TMA, 64-key
  // union tiles). check_cuda compares the gradients too (dq, dk, dv).
  const std::vector<C> cases = {{16, 1, 128, 5, 64, {0, 300}},
                                {32, 2, 72, 8, 64, {0, 640}},
                                {8, 2, 72, 4, 64, {0, 100, 100, 229, 420}},
                                {6, 2, 96, 6, 64, {0, 333}},
                                {4, 2, 128, 3, 64, {0, 200}},
                                {12, 1, 64, 4, 64, {0, 190}},
                                {8, 1, 40, 16, 64, {0, 70, 150}},
                                {4, 4, 64, 4, 64, {0, 130}},
                                {8, 2, 128, 5, 32, {0, 150}}};
#if NT_CUDA
  int major = 0, minor = 0;
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
  if (major == 9 && minor == 0) CHECK(cuda::sm90a_available(0));  // else version 3 would quietly run version 2
  struct Restore {  // a failed REQUIRE throws: later tests still get the default kernel, chunk and walk blocks
    int version = cuda::nsa_selected_kernel(), chunk = cuda::nsa_selected_chunk();
    int blocks = cuda::nsa_selected_walk_blocks();
    ~Restore() {
      cuda::set_nsa_selected_kernel(version), cuda::set_nsa_selected_chunk(chunk);
      cuda::set_nsa_selected_walk_blocks(blocks);
    }
  } restore;
  const int chunk0 = restore.chunk, blocks0 = restore.blocks;
#else
  const int chunk0 = 0, blocks0 = 0;
#endif
  // (version, rows per chunk of the backward's walk, its thread blocks): 6 is the warp-specialized forward; chunk0
  // and blocks0 are the defaults (chunks of 2048 rows, so one chunk at these sizes, and a thread block per piece,
  // unless NT_NSA_SLC_CHUNK or NT_NSA_SLC_WALK_BLOCKS is set); 48 (equal chunks of 38..48 rows) cuts every block's rows into several chunks of
  // one piece each; 300 leaves chunks whose blocks have more rows than one piece takes (block 0 at T = 640,
  // G = 16). 3 and 1 thread blocks walk several pieces each (versions 6 and 3, the fused and the dk/dv-only walk);
  // -1 (as many as run at once) only checks its launch: these grids all fit at once.
  struct Run {
    int version, chunk, blocks;
  };
  const std::vector<Run> runs = {{1, chunk0, blocks0}, {2, chunk0, blocks0}, {3, chunk0, blocks0},
                                 {4, chunk0, blocks0}, {6, chunk0, blocks0}, {2, 48, blocks0},
                                 {3, 48, blocks0},     {6, 48, blocks0},     {6, 300, blocks0},
                                 {6, chunk0, 3},       {3, 48, 1},           {6, 300, -1}};
  for (const auto& [version, chunk, blocks] : runs)
    for (const C& c : cases) {
#if NT_CUDA
      cuda::set_nsa_selected_kernel(version);
      cuda::set_nsa_selected_chunk(chunk);
      cuda::set_nsa_selected_walk_blocks(blocks);
#endif
      const int64_t T = c.cu.back();
      INFO("kernel version " << version << " chunk " << chunk << " walk blocks " << blocks << " HQ " << c.HQ
                             << " H " << c.H << " D " << c.D << " n " << c.n << " l' " << c.lp << " T " << T);
      NsaOptions opt;
      opt.select_block = c.lp, opt.n_select = c.n, opt.cu_seqlens = c.cu;
      const Tensor idx = random_block_indices(c.cu, c.H, c.n, c.lp);
      check_cuda("nsa_selected_attention",
                 [&](const std::vector<Tensor>& v) { return nsa_selected_attention(v[0], v[1], v[2], v[3], opt).o; },
                 {rnd_grad({T, c.HQ, c.D}, 120), rnd_grad({T, c.H, c.D}, 121), rnd_grad({T, c.H, c.D}, 122), idx},
                 DType::bf16, Tol{2e-2, 5e-2});
    }
#if NT_CUDA
  // Version 6's forward writes o in bf16 (no f32 copy); backwards under other versions (1-3: dq steps that read o
  // in f32, widened for them; 4: delta from the bf16 o) give what those versions give both ways.
  if (!cuda::sm90a_available(0)) {
    MESSAGE("no sm_90a: version 6's bf16 output not tested");
  } else {
    const C& c = cases[1];
    const int64_t T = c.cu.back();
    NsaOptions opt;
    opt.select_block = c.lp, opt.n_select = c.n, opt.cu_seqlens = c.cu;
    const Device gpu = cuda_device(0);
    const Tensor idx = random_block_indices(c.cu, c.H, c.n, c.lp).to(gpu);
    const Tensor dy = rnd({T, c.HQ, c.D}, 126).to(DType::bf16).to(gpu);
    auto run = [&](int forward_version, int backward_version) {
      std::vector<Tensor> x;
      int64_t seed = 123;
      for (const Shape& s : {Shape{T, c.HQ, c.D}, Shape{T, c.H, c.D}, Shape{T, c.H, c.D}})
        x.push_back(rnd(s, seed++).to(DType::bf16).to(gpu).requires_grad_());
      cuda::set_nsa_selected_kernel(forward_version);
      const Tensor o = nsa_selected_attention(x[0], x[1], x[2], idx, opt).o;
      cuda::set_nsa_selected_kernel(backward_version);
      o.backward(dy);
      std::vector<Tensor> r{o.detach().to(kCPU).to(DType::f64)};
      for (const Tensor& t : x) r.push_back(t.grad().to(kCPU).to(DType::f64));
      return r;
    };
    for (int backward_version : {1, 2, 3, 4}) {
      const std::vector<Tensor> mixed = run(6, backward_version), same = run(backward_version, backward_version);
      for (size_t i = 0; i < mixed.size(); ++i) {
        INFO("backward version " << backward_version << ", output " << i << " (o, dq, dk, dv)");
        expect_close(mixed[i], same[i], 2e-2, 5e-2);
      }
    }
  }
#endif
}

CUDA_TEST("nsa_regroup_queries, nsa_ungroup_queries, nsa_mix_branches against the CPU reference") {
  // Vector widths 16, 8, 4 and 2 bytes (D 8, 12, 6, 5 in bf16), packed sequences with an empty and a short one.
  for (DType dt : kFloatTypes)
    for (int64_t D : {8, 12, 6, 5, 128}) {
      INFO("D " << D);
      NsaOptions opt;
      opt.block = 8, opt.stride = 4, opt.cu_seqlens = {0, 37, 37, 43, 101};
      int64_t NC = 0;
      for (size_t b = 0; b + 1 < opt.cu_seqlens.size(); ++b)
        NC += nsa_num_cmp_blocks(opt.cu_seqlens[b + 1] - opt.cu_seqlens[b], opt.block, opt.stride);
      check_cuda("nsa_regroup_queries", [&](const std::vector<Tensor>& v) { return nsa_regroup_queries(v[0], opt); },
                 {rnd_grad({101, 3, D}, 40)}, dt, {0, 0});
      check_cuda("nsa_ungroup_queries", [&](const std::vector<Tensor>& v) { return nsa_ungroup_queries(v[0], 101, opt); },
                 {rnd_grad({NC, 3 * opt.stride, D}, 41)}, dt, {0, 0});
    }
  for (DType dt : kFloatTypes)
    for (const Shape& s : {Shape{37, 5, 128}, Shape{29, 3, 40}, Shape{11, 2, 7}, Shape{9, 3, 300}}) {
      INFO(shape_str(s));
      check_cuda("nsa_mix_branches",
                 [](const std::vector<Tensor>& v) { return nsa_mix_branches(v[0], v[1], v[2], v[3]); },
                 {rnd_grad(s, 42), rnd_grad(s, 43), rnd_grad(s, 44), rnd_grad({s[0], s[1], 3}, 45)}, dt);
    }
}
