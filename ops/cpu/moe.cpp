// CPU reference for the MoE dispatch ops: a counting sort, and row loops accumulating in double.
#include <cstring>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

// indices [N, K] contiguous; counts gets E entries; slot_row [N, K] i32.
void moe_dispatch(const Tensor& indices, int64_t E, std::vector<int64_t>& counts, const Tensor& slot_row) {
  const int64_t M = indices.numel();
  std::vector<int64_t> expert(M);
  NT_DISPATCH_INDEX(indices.dtype(), "moe_dispatch", [&] {
    const scalar_t* ip = static_cast<const scalar_t*>(indices.data_ptr());
    for (int64_t s = 0; s < M; ++s) expert[s] = (int64_t)ip[s];
  });
  counts.assign(E, 0);
  for (int64_t s = 0; s < M; ++s) {
    NT_CHECK(expert[s] >= 0 && expert[s] < E, "moe_dispatch: slot {} chose expert {}, expected 0 to {}", s, expert[s],
             E - 1);
    ++counts[expert[s]];
  }
  // Counting sort, stable in slot order.
  std::vector<int64_t> next(E, 0);
  for (int64_t e = 1; e < E; ++e) next[e] = next[e - 1] + counts[e - 1];
  int32_t* sr = slot_row.data<int32_t>();
  for (int64_t s = 0; s < M; ++s) sr[s] = (int32_t)next[expert[s]]++;
}

// x [N, D], slot_row [N, K], rows [N * K, D]; all contiguous.
void moe_permute_forward(const Tensor& x, const Tensor& slot_row, const Tensor& rows) {
  const int64_t N = slot_row.size(0), K = slot_row.size(1), D = x.size(1);
  const size_t bytes = D * x.element_size();
  const int32_t* sr = slot_row.data<int32_t>();
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < K; ++j)
      std::memcpy(static_cast<char*>(rows.data_ptr()) + sr[t * K + j] * bytes,
                  static_cast<const char*>(x.data_ptr()) + t * bytes, bytes);
}

// dx[t] = sum_j drows[slot_row[t, j]].
void moe_permute_backward(const Tensor& drows, const Tensor& slot_row, const Tensor& dx) {
  const int64_t N = slot_row.size(0), K = slot_row.size(1), D = dx.size(1);
  const int32_t* sr = slot_row.data<int32_t>();
  NT_DISPATCH_FLOAT(drows.dtype(), "moe_permute_backward", [&] {
    using T = scalar_t;
    const T* g = drows.data<T>();
    T* out = dx.data<T>();
    std::vector<double> acc(D);
    for (int64_t t = 0; t < N; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < K; ++j)
        for (int64_t c = 0; c < D; ++c) acc[c] += (double)g[sr[t * K + j] * D + c];
      for (int64_t c = 0; c < D; ++c) out[t * D + c] = T(acc[c]);
    }
  });
}

// y[t] = sum_j gates[t, j] * rows[slot_row[t, j]].
void moe_unpermute_forward(const Tensor& rows, const Tensor& slot_row, const Tensor& gates, const Tensor& y) {
  const int64_t N = slot_row.size(0), K = slot_row.size(1), D = y.size(1);
  const int32_t* sr = slot_row.data<int32_t>();
  NT_DISPATCH_FLOAT(rows.dtype(), "moe_unpermute", [&] {
    using T = scalar_t;
    const T *r = rows.data<T>(), *g = gates.data<T>();
    T* out = y.data<T>();
    std::vector<double> acc(D);
    for (int64_t t = 0; t < N; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < K; ++j)
        for (int64_t c = 0; c < D; ++c) acc[c] += (double)g[t * K + j] * (double)r[sr[t * K + j] * D + c];
      for (int64_t c = 0; c < D; ++c) out[t * D + c] = T(acc[c]);
    }
  });
}

// drows[slot_row[t, j]] = gates[t, j] * dy[t]; dgates[t, j] = <dy[t], rows[slot_row[t, j]]>.
void moe_unpermute_backward(const Tensor& rows, const Tensor& slot_row, const Tensor& gates, const Tensor& dy,
                            const Tensor& drows, const Tensor& dgates) {
  const int64_t N = slot_row.size(0), K = slot_row.size(1), D = dy.size(1);
  const int32_t* sr = slot_row.data<int32_t>();
  NT_DISPATCH_FLOAT(rows.dtype(), "moe_unpermute_backward", [&] {
    using T = scalar_t;
    const T *r = rows.data<T>(), *g = gates.data<T>(), *gy = dy.data<T>();
    T *dr = drows.data<T>(), *dg = dgates.data<T>();
    for (int64_t t = 0; t < N; ++t)
      for (int64_t j = 0; j < K; ++j) {
        const int64_t row = sr[t * K + j];
        const double gate = (double)g[t * K + j];
        double dot = 0;
        for (int64_t c = 0; c < D; ++c) {
          dot += (double)gy[t * D + c] * (double)r[row * D + c];
          dr[row * D + c] = T(gate * (double)gy[t * D + c]);
        }
        dg[t * K + j] = T(dot);
      }
  });
}

}  // namespace nt::cpu
