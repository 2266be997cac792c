// moe_dispatch, moe_permute and moe_unpermute: forwards, backwards right below. CPU loops in ops/cpu/moe.cpp are the
// reference; CUDA kernels in cuda/moe.cu.
#include "ops/moe.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "autograd/graph.h"
#include "ops/dispatch.h"

namespace nt {
namespace cpu {
void moe_dispatch(const Tensor& indices, int64_t n_experts, std::vector<int64_t>& counts, const Tensor& slot_row);
void moe_permute_forward(const Tensor& x, const Tensor& slot_row, const Tensor& rows);
void moe_permute_backward(const Tensor& drows, const Tensor& slot_row, const Tensor& dx);
void moe_unpermute_forward(const Tensor& rows, const Tensor& slot_row, const Tensor& gates, const Tensor& y);
void moe_unpermute_backward(const Tensor& rows, const Tensor& slot_row, const Tensor& gates, const Tensor& dy,
                            const Tensor& drows, const Tensor& dgates);
}  // namespace cpu

NT_REGISTER_OP(kMoePermute, "moe_permute", true);
NT_REGISTER_OP(kMoeUnpermute, "moe_unpermute", true);

std::vector<int64_t> ExpertDispatch::counts() const { return groups.sizes(); }
int64_t ExpertDispatch::max_count() const {
  const std::vector<int64_t> c = counts();
  return c.empty() ? 0 : *std::max_element(c.begin(), c.end());
}

ExpertDispatch moe_dispatch(const Tensor& indices_in, int64_t E) {
  check_index("moe_dispatch", indices_in, "indices");
  check_dim("moe_dispatch", indices_in, "indices", 2);
  NT_CHECK(E > 0, "moe_dispatch: n_experts must be positive, got {}", E);
  const Tensor indices = indices_in.contiguous();
  const int64_t N = indices.size(0), K = indices.size(1), M = N * K;
  NT_CHECK(M < INT32_MAX, "moe_dispatch: {} tokens x {} choices exceed the 2^31-1 rows the dispatch indexes", N, K);
  ExpertDispatch d;
  d.n_tokens = N, d.top_k = K;
  d.slot_row = empty({N, K}, DType::i32, indices.device());
  if (indices.device().is_cpu()) {
    std::vector<int64_t> counts, offsets(E + 1, 0);
    cpu::moe_dispatch(indices, E, counts, d.slot_row);
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
    d.load = from_vector(std::vector<double>(counts.begin(), counts.end()), {E}, DType::i64);
    d.groups = GroupOffsets(std::move(offsets));
  } else {
    NT_ON_CUDA("moe_dispatch", {
      Tensor counts = empty({E}, DType::i32, indices.device()), offsets = empty({E + 1}, DType::i32, indices.device()),
             scratch = empty({cuda::moe_dispatch_scratch(M, E)}, DType::i32, indices.device());
      DeviceFlag bad(indices);
      cuda::moe_dispatch(indices.dtype(), indices.data_ptr(), M, (int)E, static_cast<int32_t*>(counts.data_ptr()),
                         static_cast<int32_t*>(offsets.data_ptr()), static_cast<int32_t*>(d.slot_row.data_ptr()),
                         static_cast<int32_t*>(scratch.data_ptr()), bad.get(), stream_of(counts));
      bad.check("moe_dispatch: an expert index is out of range (expected 0 to {})", E - 1);
      d.load = counts;
      d.groups = GroupOffsets(offsets);
      // NT_MOE_HOST_OFFSETS=1 copies the offsets to the host here, as every dispatch did before 2026-12-06 (a
      // synchronization per MoE layer): to measure what the device-side offsets save.
      static const bool host_offsets = [] {
        const char* v = std::getenv("NT_MOE_HOST_OFFSETS");
        return v != nullptr && *v != '\0' && std::string(v) != "0";
      }();
      if (host_offsets) (void)d.offsets();
    });
  }
  return d;
}

namespace {
void check_dispatch(const char* op, const Tensor& t, const char* name, int64_t rows_dim, const ExpertDispatch& d) {
  NT_CHECK(d.slot_row.defined() && d.slot_row.shape() == Shape({d.n_tokens, d.top_k}) &&
               d.slot_row.dtype() == DType::i32,
           "{}: the dispatch is not one moe_dispatch made (slot_row must be i32 [{}, {}])", op, d.n_tokens, d.top_k);
  check_same_device(op, t, d.slot_row);
  NT_CHECK(t.dim() == 2 && t.size(0) == rows_dim, "{}: {} must be [{}, D] for this dispatch, got {}", op, name,
           rows_dim, shape_str(t.shape()));
}
}  // namespace

Tensor moe_permute(const Tensor& x_in, const ExpertDispatch& d) {
  check_floating("moe_permute", x_in, "x");
  check_dispatch("moe_permute", x_in, "x", d.n_tokens, d);
  const Tensor x = x_in.detach().contiguous();
  const int64_t N = d.n_tokens, K = d.top_k, D = x.size(1);
  Tensor rows = empty({N * K, D}, x.dtype(), x.device());
  if (x.device().is_cpu())
    cpu::moe_permute_forward(x, d.slot_row, rows);
  else
    NT_ON_CUDA("moe_permute", cuda::moe_permute_forward(x.dtype(), x.data_ptr(), d.slot_row.data<int32_t>(),
                                                        rows.data_ptr(), N, K, D, stream_of(rows)));
  if (autograd::needs_grad({&x_in}))
    autograd::record(kMoePermute, rows, {x_in}, [N, K, D, slot_row = d.slot_row](const Tensor& g_in, auto&) {
      const Tensor g = g_in.contiguous();
      Tensor dx = empty({N, D}, g.dtype(), g.device());
      if (g.device().is_cpu())
        cpu::moe_permute_backward(g, slot_row, dx);
      else
        NT_ON_CUDA("moe_permute", cuda::moe_permute_backward(g.dtype(), g.data_ptr(), slot_row.data<int32_t>(),
                                                             dx.data_ptr(), N, K, D, stream_of(dx)));
      return std::vector<Tensor>{dx};
    });
  return rows;
}

Tensor moe_unpermute(const Tensor& rows_in, const Tensor& gates_in, const ExpertDispatch& d) {
  check_floating("moe_unpermute", rows_in, "rows");
  check_same_dtype("moe_unpermute", rows_in, "rows", gates_in, "gates");
  check_dispatch("moe_unpermute", rows_in, "rows", d.n_tokens * d.top_k, d);
  NT_CHECK(gates_in.shape() == Shape({d.n_tokens, d.top_k}), "moe_unpermute: gates must be [{}, {}], got {}",
           d.n_tokens, d.top_k, shape_str(gates_in.shape()));
  check_same_device("moe_unpermute", rows_in, gates_in);
  const Tensor rows = rows_in.detach().contiguous(), gates = gates_in.detach().contiguous();
  const int64_t N = d.n_tokens, K = d.top_k, D = rows.size(1);
  Tensor y = empty({N, D}, rows.dtype(), rows.device());
  if (rows.device().is_cpu())
    cpu::moe_unpermute_forward(rows, d.slot_row, gates, y);
  else
    NT_ON_CUDA("moe_unpermute",
               cuda::moe_unpermute_forward(rows.dtype(), rows.data_ptr(), d.slot_row.data<int32_t>(), gates.data_ptr(),
                                           y.data_ptr(), N, K, D, stream_of(y)));
  if (autograd::needs_grad({&rows_in, &gates_in}))
    autograd::record(kMoeUnpermute, y, {rows_in, gates_in},
                     [N, K, D, slot_row = d.slot_row, sr = autograd::Saved(rows), sg = autograd::Saved(gates)](
                         const Tensor& g_in, auto&) {
                       const Tensor dy = g_in.contiguous(), &rows = sr.get(), &gates = sg.get();
                       Tensor drows = empty({N * K, D}, rows.dtype(), rows.device()),
                              dgates = empty({N, K}, gates.dtype(), gates.device());
                       if (dy.device().is_cpu())
                         cpu::moe_unpermute_backward(rows, slot_row, gates, dy, drows, dgates);
                       else
                         NT_ON_CUDA("moe_unpermute",
                                    cuda::moe_unpermute_backward(rows.dtype(), rows.data_ptr(), slot_row.data<int32_t>(),
                                                                 gates.data_ptr(), dy.data_ptr(), drows.data_ptr(),
                                                                 dgates.data_ptr(), N, K, D, stream_of(drows)));
                       return std::vector<Tensor>{drows, dgates};
                     });
  return y;
}

}  // namespace nt
