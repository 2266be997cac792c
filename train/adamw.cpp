#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "cuda/memory.h"
#include "nn/safetensors.h"
#include "ops/dispatch.h"
#include "tensor/convert.h"

namespace nt::train {
namespace cpu {
template <class T, class A>
void adamw_range(T* p, const T* g, A* m, A* v, int64_t lo, int64_t hi, A lr, A b1, A b2, A eps, A wd, A bc1, A bc2,
                 A gscale) {
  for (int64_t i = lo; i < hi; ++i) {
    A x = (A)p[i];
    const A gi = (A)g[i] * gscale;
    x -= lr * wd * x;
    m[i] = b1 * m[i] + (A(1) - b1) * gi;
    v[i] = b2 * v[i] + (A(1) - b2) * gi * gi;
    x -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
    p[i] = T(x);
  }
}
// Host parameters (offloaded experts) can hold hundreds of millions of elements: large updates are split over the
// cores. Each element's update is independent, so the result does not depend on the split.
constexpr int64_t kParallelMin = 1 << 20;
template <class T, class A>
void adamw(T* p, const T* g, A* m, A* v, int64_t n, A lr, A b1, A b2, A eps, A wd, A bc1, A bc2, A gscale) {
  const int64_t workers = std::min<int64_t>({(int64_t)std::max(1u, std::thread::hardware_concurrency()), 32,
                                             n / kParallelMin});
  if (workers <= 1) return adamw_range(p, g, m, v, 0, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);
  std::vector<std::thread> pool;
  const int64_t per = (n + workers - 1) / workers;
  for (int64_t w = 1; w < workers; ++w)
    pool.emplace_back([=] { adamw_range(p, g, m, v, w * per, std::min(n, (w + 1) * per), lr, b1, b2, eps, wd, bc1, bc2, gscale); });
  adamw_range(p, g, m, v, 0, per, lr, b1, b2, eps, wd, bc1, bc2, gscale);
  for (std::thread& t : pool) t.join();
}
}  // namespace cpu

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step, double grad_scale, Tensor* bf16_copy,
                  const Tensor* scale_tensor) {
  NT_CHECK(grad.shape() == param.shape(), "adamw: gradient of shape {} for a parameter of shape {}",
           shape_str(grad.shape()), shape_str(param.shape()));
  NT_CHECK(param.is_contiguous() && m.is_contiguous() && v.is_contiguous(), "adamw: parameter and moments must be contiguous");
  NT_CHECK(step >= 1, "adamw: step must be >= 1, got {}", step);
  NT_CHECK(!bf16_copy || (bf16_copy->dtype() == DType::bf16 && bf16_copy->shape() == param.shape() &&
                          bf16_copy->is_contiguous() && bf16_copy->device() == param.device()),
           "adamw: bf16_copy must be a contiguous bf16 tensor of the parameter's shape and device");
  NT_CHECK(!scale_tensor || (scale_tensor->dtype() == DType::f64 && scale_tensor->numel() == 1 &&
                              scale_tensor->device() == param.device()),
           "adamw: scale_tensor must be one f64 value on the parameter's device ({}), got {} {} on {}",
           param.device().str(), shape_str(scale_tensor->shape()), dtype_name(scale_tensor->dtype()),
           scale_tensor->device().str());
  const double bc1 = 1 - std::pow(beta1, (double)step), bc2 = 1 - std::pow(beta2, (double)step);
  if (param.device().is_cpu()) {
    if (scale_tensor) grad_scale *= scale_tensor->item();
    const Tensor g = grad.to(param.dtype()).contiguous();
    NT_DISPATCH_FLOAT(param.dtype(), "adamw", [&] {
      using T = scalar_t;
      using A = acc_t<T>;
      cpu::adamw<T, A>(param.data<T>(), g.data<T>(), static_cast<A*>(m.data_ptr()), static_cast<A*>(v.data_ptr()),
                       param.numel(), (A)lr, (A)beta1, (A)beta2, (A)eps, (A)weight_decay, (A)bc1, (A)bc2, (A)grad_scale);
    });
    if (bf16_copy) bf16_copy->copy_(param);
  } else {
    // The kernel reads a bf16 gradient of an f32 master as it is; other mixes are converted first.
    const bool mixed = param.dtype() == DType::f32 && grad.dtype() == DType::bf16;
    const Tensor g = (mixed ? grad : grad.to(param.dtype())).contiguous();
    NT_ON_CUDA("adamw", cuda::adamw(param.dtype(), param.data_ptr(), g.dtype(), g.data_ptr(), m.data_ptr(), v.data_ptr(),
                                    bf16_copy ? bf16_copy->data_ptr() : nullptr, param.numel(), lr, beta1, beta2, eps,
                                    weight_decay, bc1, bc2, grad_scale,
                                    scale_tensor ? static_cast<const double*>(scale_tensor->contiguous().data_ptr()) : nullptr,
                                    stream_of(param)));
    if (bf16_copy) bf16_copy->impl()->storage->version++;
  }
  param.impl()->storage->version++;
}

AdamW::AdamW(std::vector<std::pair<std::string, Tensor>> params, const AdamWConfig& c) : cfg(c) {
  NT_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, "AdamW: betas must be in [0, 1), got {} and {}",
           c.beta1, c.beta2);
  NT_CHECK(c.eps > 0 && c.weight_decay >= 0, "AdamW: eps must be > 0 and weight_decay >= 0");
  for (auto& [name, p] : params) {
    NT_CHECK(p.is_contiguous(), "AdamW: parameter '{}' must be contiguous", name);
    const DType acc = p.dtype() == DType::f64 ? DType::f64 : DType::f32;
    Slot s{name, p, zeros(p.shape(), acc, p.device()), zeros(p.shape(), acc, p.device()), p.dim() >= 2, {}, {}};
    if (p.dtype() != DType::f32 && p.dtype() != DType::f64) {
      autograd::NoGradGuard no_grad;
      s.master = p.detach().to(DType::f32).contiguous();
    }
    slots_.push_back(std::move(s));
  }
}

Tensor AdamW::gradient(const Slot& s) const {
  const Tensor g = s.param.grad();
  if (!s.acc.defined()) return g;  // the parameter's dtype (bf16 for a bf16 parameter; adamw reads it as it is)
  return g.defined() ? s.acc + g.to(s.acc.dtype()) : s.acc;
}

void AdamW::accumulate() {
  autograd::NoGradGuard no_grad;
  NT_CHECK(!clipped_, "AdamW::accumulate: called after clip_grad_norm; clip once per step, after the last "
           "micro-batch");
  for (Slot& s : slots_) {
    const Tensor g = s.param.grad();
    if (!g.defined()) continue;
    s.acc = s.acc.defined() ? s.acc + g.to(s.acc.dtype()) : g.to(s.param.dtype() == DType::f64 ? DType::f64 : DType::f32).clone();
    s.param.set_grad(Tensor());
  }
}

namespace {
// The global squared norm read back once (no synchronization per tensor); -1 when no gradient is defined.
double squared_norm(const std::vector<Tensor>& grads) {
  const Tensor sq = sum_of_squares(grads);
  return sq.defined() ? sq.item() : -1;
}
}  // namespace

Tensor sum_of_squares(const std::vector<Tensor>& grads) {
  // Gradients on several devices (offloaded MoE experts keep theirs on the host): each device's sum, added on the
  // host.
  std::vector<Device> devices;
  for (const Tensor& g : grads)
    if (g.defined() && std::find(devices.begin(), devices.end(), g.device()) == devices.end())
      devices.push_back(g.device());
  if (devices.size() > 1) {
    Tensor total;
    for (const Device& dev : devices) {
      std::vector<Tensor> on;
      for (const Tensor& g : grads)
        if (g.defined() && g.device() == dev) on.push_back(g);
      const Tensor part = sum_of_squares(on).to(kCPU);
      total = total.defined() ? total + part : part;
    }
    return total;
  }
#if NT_CUDA
  std::vector<Tensor> dense;
  bool one_gpu = true;
  for (const Tensor& g : grads) {
    if (!g.defined()) continue;
    one_gpu &= g.device().is_cuda() && (dense.empty() || g.device() == dense[0].device()) &&
               (g.dtype() == DType::f64 || g.dtype() == DType::f32 || g.dtype() == DType::bf16);
    dense.push_back(g.contiguous());
  }
  if (dense.empty()) return Tensor();
  if (one_gpu) {
    std::vector<cuda::SquaresChunk> table;
    for (const Tensor& g : dense)
      for (int64_t off = 0; off < g.numel(); off += cuda::kSquaresChunk)
        table.push_back({static_cast<const char*>(g.data_ptr()) + off * g.element_size(),
                         std::min(cuda::kSquaresChunk, g.numel() - off), (int32_t)g.dtype(), 0});
    const Device dev = dense[0].device();
    const int64_t count = (int64_t)table.size();
    Tensor chunks = empty({std::max<int64_t>(1, count * (int64_t)sizeof(cuda::SquaresChunk) / 8)}, DType::i64, dev);
    Tensor partial = empty({std::max<int64_t>(1, count)}, DType::f64, dev), out = empty({1}, DType::f64, dev);
    if (count > 0) cuda::copy_h2d(chunks.data_ptr(), table.data(), table.size() * sizeof(cuda::SquaresChunk), dev.index);
    cuda::sum_squares_chunks(static_cast<const cuda::SquaresChunk*>(chunks.data_ptr()), (int)count,
                             static_cast<double*>(partial.data_ptr()), static_cast<double*>(out.data_ptr()), stream_of(out));
    return out;
  }
#endif
  std::vector<Tensor> parts;
  for (const Tensor& g : grads) {
    if (!g.defined()) continue;
    const Tensor x = g.dtype() == DType::f64 ? g : g.to(DType::f32);
    parts.push_back(sum(x * x).reshape({1}).to(DType::f64));
  }
  if (parts.empty()) return Tensor();
  return sum(cat(parts, 0)).reshape({1});
}

double AdamW::clip_grad_norm(double max_norm) { return clip_grad_norm_async(max_norm).item(); }

Tensor AdamW::clip_grad_norm_async(double max_norm) {
  NT_CHECK(max_norm > 0, "AdamW::clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Slot& s : slots_) grads.push_back(gradient(s));
  grad_scale_ = 1.0, device_scale_ = Tensor(), clipped_ = true;
  const Tensor sq = sum_of_squares(grads);
  if (!sq.defined()) return zeros({1}, DType::f64);
  // step() multiplies the gradients by the scale in its fused kernel (no pass over them here). Every gradient on
  // the GPU that holds the sum: the scale stays there; else (on the host, or spread over devices) it is read.
#if NT_CUDA
  if (sq.device().is_cuda()) {
    Tensor norm = empty({1}, DType::f64, sq.device());
    device_scale_ = empty({1}, DType::f64, sq.device());
    cuda::clip_scale(static_cast<const double*>(sq.data_ptr()), max_norm, static_cast<double*>(norm.data_ptr()),
                     static_cast<double*>(device_scale_.data_ptr()), stream_of(sq));
    return norm;
  }
#endif
  const double norm = std::sqrt(sq.item());
  grad_scale_ = norm > max_norm && norm > 0 ? max_norm / (norm + 1e-6) : 1.0;
  return full({1}, norm, DType::f64);
}

// Every parameter (or master) with a gradient on one GPU, f32 or f64, a master only behind a bf16 parameter: one
// launch over a table of chunks, instead of a launch and the host's checks per tensor (~70 a step in the dense
// default). The table is uploaded only when it changed: the caching allocator gives the gradients the same
// addresses step after step.
bool AdamW::step_one_launch(double lr) {
#if NT_CUDA
  static const bool per_tensor = [] {  // NT_ADAMW_PER_TENSOR=1: a launch per tensor (A/B runs)
    const char* e = std::getenv("NT_ADAMW_PER_TENSOR");
    return e && std::string(e) == "1";
  }();
  if (per_tensor) return false;
  Device dev = kCPU;
  for (const Slot& s : slots_) {
    const Tensor& target = s.master.defined() ? s.master : s.param;
    const Tensor g = s.param.grad();
    if (!g.defined() && !s.acc.defined()) continue;
    NT_CHECK(!g.defined() || g.shape() == s.param.shape(), "AdamW::step: parameter '{}' of shape {} has a gradient "
             "of shape {}", s.name, shape_str(s.param.shape()), shape_str(g.shape()));
    const bool ok = target.device().is_cuda() && (dev.is_cpu() || target.device() == dev) &&
                    (target.dtype() == DType::f32 || target.dtype() == DType::f64) &&
                    (!s.master.defined() || s.param.dtype() == DType::bf16) && (!g.defined() || g.device() == target.device());
    if (!ok) return false;
    dev = target.device();
  }
  if (dev.is_cpu()) return false;  // no gradient at all: nothing to update
  std::vector<Tensor> keep;      // the gradients (some converted) until the launch is queued
  std::vector<cuda::AdamWChunk> table;
  for (Slot& s : slots_) {
    Tensor g = gradient(s);
    if (!g.defined()) continue;
    Tensor& target = s.master.defined() ? s.master : s.param;
    int32_t kind = cuda::kAdamWF32;
    if (target.dtype() == DType::f64) g = g.to(DType::f64), kind = cuda::kAdamWF64;
    else if (g.dtype() == DType::bf16) kind = cuda::kAdamWF32Bf16Grad;
    else g = g.to(DType::f32);
    g = g.contiguous();
    keep.push_back(g);
    const int64_t es = target.element_size();
    void* copy = s.master.defined() ? s.param.data_ptr() : nullptr;
    for (int64_t off = 0; off < target.numel(); off += cuda::kAdamWChunk)
      table.push_back({static_cast<char*>(target.data_ptr()) + off * es, static_cast<const char*>(g.data_ptr()) + off * g.element_size(),
                       static_cast<char*>(s.m.data_ptr()) + off * es, static_cast<char*>(s.v.data_ptr()) + off * es,
                       copy ? static_cast<char*>(copy) + off * 2 : nullptr, std::min(cuda::kAdamWChunk, target.numel() - off),
                       s.decay ? cfg.weight_decay : 0.0, kind, 0});
    target.impl()->storage->version++;
    if (copy) s.param.impl()->storage->version++;
  }
  const size_t bytes = table.size() * sizeof(cuda::AdamWChunk);
  const auto* raw = reinterpret_cast<const unsigned char*>(table.data());
  if (!chunk_table_.defined() || chunk_table_.device() != dev || chunk_bytes_.size() != bytes ||
      !std::equal(chunk_bytes_.begin(), chunk_bytes_.end(), raw)) {
    chunk_table_ = empty({(int64_t)std::max<size_t>(8, bytes) / 8}, DType::i64, dev);
    if (bytes > 0) cuda::copy_h2d(chunk_table_.data_ptr(), table.data(), bytes, dev.index);
    chunk_bytes_.assign(raw, raw + bytes);
  }
  const double bc1 = 1 - std::pow(cfg.beta1, (double)t_), bc2 = 1 - std::pow(cfg.beta2, (double)t_);
  cuda::adamw_chunks(static_cast<const cuda::AdamWChunk*>(chunk_table_.data_ptr()), (int)table.size(), lr, cfg.beta1,
                     cfg.beta2, cfg.eps, bc1, bc2, grad_scale_,
                     device_scale_.defined() ? static_cast<const double*>(device_scale_.data_ptr()) : nullptr,
                     stream_of(chunk_table_));
  return true;
#else
  (void)lr;
  return false;
#endif
}

void AdamW::step(double lr) {
  ++t_;
  autograd::NoGradGuard no_grad;
  one_launch_ = step_one_launch(lr);
  if (one_launch_) {
    for (Slot& s : slots_) s.acc = Tensor();
    grad_scale_ = 1.0, device_scale_ = Tensor(), clipped_ = false;
    return;
  }
  for (Slot& s : slots_) {
    const Tensor g = gradient(s);
    if (!g.defined()) continue;
    const double wd = s.decay ? cfg.weight_decay : 0.0;
    const Tensor* scale = device_scale_.defined() ? &device_scale_ : nullptr;  // all gradients on its device
    if (s.master.defined()) {
      Tensor* copy = s.param.dtype() == DType::bf16 ? &s.param : nullptr;
      adamw_update(s.master, g, s.m, s.v, lr, cfg.beta1, cfg.beta2, cfg.eps, wd, t_, grad_scale_, copy, scale);
      if (!copy) Tensor(s.param).copy_(s.master);
    } else {
      adamw_update(s.param, g, s.m, s.v, lr, cfg.beta1, cfg.beta2, cfg.eps, wd, t_, grad_scale_, nullptr, scale);
    }
    s.acc = Tensor();
  }
  grad_scale_ = 1.0, device_scale_ = Tensor(), clipped_ = false;
}

void AdamW::zero_grad() {
  for (Slot& s : slots_) s.param.set_grad(Tensor()), s.acc = Tensor();
  grad_scale_ = 1.0, device_scale_ = Tensor(), clipped_ = false;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Slot& s : slots_) {
    out.emplace_back(s.name + ".exp_avg", s.m), out.emplace_back(s.name + ".exp_avg_sq", s.v);
    if (s.master.defined()) out.emplace_back(s.name + ".master", s.master);
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> AdamW::f32_weights() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Slot& s : slots_) out.emplace_back(s.name, s.master.defined() ? s.master : s.param);
  return out;
}

void AdamW::load_state(const nn::SafetensorsFile& file, int64_t steps) {
  std::vector<std::string> problems;
  for (const Slot& s : slots_)
    for (const auto& [suffix, t] : {std::pair{".exp_avg", &s.m}, std::pair{".exp_avg_sq", &s.v}, std::pair{".master", &s.master}}) {
      if (!t->defined()) continue;
      const Tensor* f = file.find(s.name + suffix);
      if (!f) problems.push_back(fmt::format("missing '{}{}'", s.name, suffix));
      else if (f->shape() != t->shape() || f->dtype() != t->dtype())
        problems.push_back(fmt::format("'{}{}': {} {} in the file, {} {} expected", s.name, suffix, shape_str(f->shape()),
                                       dtype_name(f->dtype()), shape_str(t->shape()), dtype_name(t->dtype())));
    }
  if (!problems.empty()) {
    std::string msg = fmt::format("AdamW::load_state: {} problem(s):", problems.size());
    for (auto& p : problems) msg += "\n  " + p;
    throw Error(msg);
  }
  autograd::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    Tensor(s.m).copy_(*file.find(s.name + ".exp_avg"));
    Tensor(s.v).copy_(*file.find(s.name + ".exp_avg_sq"));
    if (s.master.defined()) Tensor(s.master).copy_(*file.find(s.name + ".master")), Tensor(s.param).copy_(s.master);
    s.acc = Tensor();
  }
  t_ = steps;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  NT_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : params) grads.push_back(p.grad());
  const double sq = squared_norm(grads);
  if (sq < 0) return 0.0;
  const double norm = std::sqrt(sq);
  if (norm > max_norm && norm > 0) {
    const double scale = max_norm / (norm + 1e-6);
    for (const Tensor& p : params)
      if (p.grad().defined()) p.set_grad(p.grad() * scale);
  }
  return norm;
}

double lr_at(int64_t step, int64_t warmup, int64_t total, double peak, double floor) {
  if (warmup > 0 && step < warmup) return peak * (double)(step + 1) / (double)warmup;
  if (step >= total) return floor;
  const double progress = (double)(step - warmup) / (double)std::max<int64_t>(1, total - warmup);
  return floor + 0.5 * (peak - floor) * (1 + std::cos(M_PI * progress));
}

}  // namespace nt::train
