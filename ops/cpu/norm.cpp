// CPU reference for rms_norm and layer_norm, forward and backward, over rows of the last dim, in double.
// Forward saves per-row statistics (mean and rstd, f64) so backward does not recompute them.
#include <cmath>

#include "ops/cpu/loops.h"
#include "tensor/convert.h"

namespace nt::cpu {

// x [R, C] contiguous; w, b [C] or undefined; stats [R, 2] f64 = (mean, rstd). rms: mean is 0 and unused.
void norm_forward(bool rms, const Tensor& x, const Tensor& w, const Tensor& b, double eps, const Tensor& y,
                  const Tensor& stats) {
  const int64_t R = x.size(0), C = x.size(1);
  double* st = stats.data<double>();
  NT_DISPATCH_FLOAT(x.dtype(), "norm", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* wp = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    const T* bp = b.defined() ? static_cast<const T*>(b.data_ptr()) : nullptr;
    T* yp = static_cast<T*>(y.data_ptr());
    for (int64_t r = 0; r < R; ++r) {
      const T* row = xp + r * C;
      double mu = 0, ss = 0;
      if (!rms) {
        for (int64_t c = 0; c < C; ++c) mu += (double)row[c];
        mu /= (double)C;
      }
      for (int64_t c = 0; c < C; ++c) ss += ((double)row[c] - mu) * ((double)row[c] - mu);
      const double rstd = 1.0 / std::sqrt(ss / (double)C + eps);
      st[2 * r] = mu, st[2 * r + 1] = rstd;
      for (int64_t c = 0; c < C; ++c) {
        double v = ((double)row[c] - mu) * rstd;
        if (wp) v *= (double)wp[c];
        if (bp) v += (double)bp[c];
        yp[r * C + c] = from_double<T>(v);
      }
    }
  });
}

// dx [R, C]; dw, db [C] f64 accumulators (or undefined when not wanted).
void norm_backward(bool rms, const Tensor& x, const Tensor& w, const Tensor& stats, const Tensor& dy, const Tensor& dx,
                   const Tensor& dw, const Tensor& db) {
  const int64_t R = x.size(0), C = x.size(1);
  const double* st = stats.data<double>();
  double* dwp = dw.defined() ? dw.data<double>() : nullptr;
  double* dbp = db.defined() ? db.data<double>() : nullptr;
  NT_DISPATCH_FLOAT(x.dtype(), "norm_backward", [&] {
    using T = scalar_t;
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* wp = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    const T* gp = static_cast<const T*>(dy.data_ptr());
    T* dxp = static_cast<T*>(dx.data_ptr());
    for (int64_t r = 0; r < R; ++r) {
      const double mu = st[2 * r], rstd = st[2 * r + 1];
      double mean_gw = 0, mean_gw_xhat = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double xhat = ((double)xp[r * C + c] - mu) * rstd;
        const double gw = (double)gp[r * C + c] * (wp ? (double)wp[c] : 1.0);
        mean_gw += gw, mean_gw_xhat += gw * xhat;
        if (dwp) dwp[c] += (double)gp[r * C + c] * xhat;
        if (dbp) dbp[c] += (double)gp[r * C + c];
      }
      mean_gw /= (double)C, mean_gw_xhat /= (double)C;
      if (rms) mean_gw = 0;  // no mean subtracted in the forward
      for (int64_t c = 0; c < C; ++c) {
        const double xhat = ((double)xp[r * C + c] - mu) * rstd;
        const double gw = (double)gp[r * C + c] * (wp ? (double)wp[c] : 1.0);
        dxp[r * C + c] = from_double<T>(rstd * (gw - mean_gw - xhat * mean_gw_xhat));
      }
    }
  });
}

}  // namespace nt::cpu
