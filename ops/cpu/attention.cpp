// CPU reference for flash_attention, accumulating in double: per query row, the scores over its visible keys, a
// numerically safe softmax and the weighted sum of values; the backward recomputes the probabilities from the saved
// scores (in double, rather than trusting the f32 log-sum-exp). q, out, dout, dq [N, H, D]; k, v, dk, dv [N, Hkv, D]; lse [H, N] f32; all contiguous.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {
namespace {
struct Geometry {
  int64_t N, H, Hkv, D, G;
  int64_t first_key(int64_t start, int64_t t, int64_t window) const { return window > 0 ? std::max(start, t - window + 1) : start; }
};
Geometry geometry_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(1) / k.size(1)};
}
}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                       const std::vector<int32_t>& cu, int64_t window, double scale) {
  const Geometry g = geometry_of(q, k);
  NT_DISPATCH_FLOAT(q.dtype(), "flash_attention", [&] {
    using T = scalar_t;
    const T *Q = static_cast<const T*>(q.data_ptr()), *K = static_cast<const T*>(k.data_ptr()),
            *V = static_cast<const T*>(v.data_ptr());
    T* O = static_cast<T*>(out.data_ptr());
    float* L = static_cast<float*>(lse.data_ptr());
    std::vector<double> s, acc(g.D);
    for (size_t b = 0; b + 1 < cu.size(); ++b)
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t)
        for (int64_t h = 0; h < g.H; ++h) {
          const T* qr = Q + (t * g.H + h) * g.D;
          const int64_t hk = h / g.G, s0 = g.first_key(cu[b], t, window);
          s.assign(t - s0 + 1, 0.0);
          double mx = -INFINITY;
          for (int64_t j = s0; j <= t; ++j) {
            const T* kr = K + (j * g.Hkv + hk) * g.D;
            double dot = 0;
            for (int64_t d = 0; d < g.D; ++d) dot += (double)qr[d] * (double)kr[d];
            s[j - s0] = dot * scale;
            mx = std::max(mx, s[j - s0]);
          }
          double sum = 0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = s0; j <= t; ++j) {
            const double p = std::exp(s[j - s0] - mx);
            sum += p;
            const T* vr = V + (j * g.Hkv + hk) * g.D;
            for (int64_t d = 0; d < g.D; ++d) acc[d] += p * (double)vr[d];
          }
          T* orow = O + (t * g.H + h) * g.D;
          for (int64_t d = 0; d < g.D; ++d) orow[d] = from_double<T>(acc[d] / sum);
          L[h * g.N + t] = (float)(mx + std::log(sum));
        }
  });
}

// With p = softmax row, dp_j = dout . v_j and delta = dout . out (= sum_j p_j dp_j):
// ds_j = p_j (dp_j - delta); dq = scale sum_j ds_j k_j; dk_j += scale ds_j q; dv_j += p_j dout.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& dout,
                        const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const std::vector<int32_t>& cu, int64_t window, double scale) {
  const Geometry g = geometry_of(q, k);
  NT_DISPATCH_FLOAT(q.dtype(), "flash_attention_backward", [&] {
    using T = scalar_t;
    const T *Q = static_cast<const T*>(q.data_ptr()), *K = static_cast<const T*>(k.data_ptr()),
            *V = static_cast<const T*>(v.data_ptr()), *O = static_cast<const T*>(out.data_ptr()),
            *dO = static_cast<const T*>(dout.data_ptr());
    std::vector<double> gq(g.N * g.H * g.D, 0.0), gk(g.N * g.Hkv * g.D, 0.0), gv(g.N * g.Hkv * g.D, 0.0);
    for (size_t b = 0; b + 1 < cu.size(); ++b)
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t)
        for (int64_t h = 0; h < g.H; ++h) {
          const int64_t row = (t * g.H + h) * g.D, hk = h / g.G, s0 = g.first_key(cu[b], t, window);
          double delta = 0;
          for (int64_t d = 0; d < g.D; ++d) delta += (double)dO[row + d] * (double)O[row + d];
          // Recompute the maximum too, so the probabilities do not depend on the f32 rounding of lse.
          double mx = -INFINITY, sum = 0;
          std::vector<double> s(t - s0 + 1);
          for (int64_t j = s0; j <= t; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < g.D; ++d) dot += (double)Q[row + d] * (double)K[(j * g.Hkv + hk) * g.D + d];
            s[j - s0] = dot * scale, mx = std::max(mx, s[j - s0]);
          }
          for (double x : s) sum += std::exp(x - mx);
          for (int64_t j = s0; j <= t; ++j) {
            const int64_t kr = (j * g.Hkv + hk) * g.D;
            const double p = std::exp(s[j - s0] - mx) / sum;
            double dp = 0;
            for (int64_t d = 0; d < g.D; ++d) dp += (double)dO[row + d] * (double)V[kr + d];
            const double ds = p * (dp - delta) * scale;
            for (int64_t d = 0; d < g.D; ++d) {
              gq[row + d] += ds * (double)K[kr + d];
              gk[kr + d] += ds * (double)Q[row + d];
              gv[kr + d] += p * (double)dO[row + d];
            }
          }
        }
    auto store = [](const std::vector<double>& src, const Tensor& dst) {
      T* p = static_cast<T*>(dst.data_ptr());
      for (size_t i = 0; i < src.size(); ++i) p[i] = from_double<T>(src[i]);
    };
    store(gq, dq), store(gk, dk), store(gv, dv);
  });
}
}  // namespace nt::cpu
