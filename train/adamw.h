// AdamW (Loshchilov & Hutter, decoupled weight decay) with one fused update per parameter tensor:
//   p -= lr * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Moments are f32 (f64 for f64 parameters). Weight decay applies to matrices and embeddings (dim >= 2), not to
// norms and biases, as in GPT-2/Llama training.
//
// Mixed precision (llm.c style): a bf16 parameter is the compute weight; the optimizer keeps an f32 master copy,
// updates the master and rounds it into the parameter, so small updates are not lost to bf16 rounding.
// Gradient accumulation: accumulate() moves the parameters' gradients into f32 buffers after each micro-batch, so
// the sum over micro-batches is f32 even when the gradients arrive in bf16; step() uses buffer + current gradient.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "ops/ops.h"

namespace nt::nn {
struct SafetensorsFile;
}

namespace nt::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, Tensor>> params, const AdamWConfig& cfg = {});
  // One update with learning rate lr; parameters without a gradient are skipped (their step count still advances).
  void step(double lr);
  // Clears the parameters' gradients and the accumulation buffers.
  void zero_grad();
  // Adds each parameter's gradient into its f32 buffer and clears the gradient (between micro-batches).
  void accumulate();
  // Global L2 norm of the gradients step() would use (one device-to-host read); the next step() scales them so it
  // is at most max_norm (inside its fused kernel). Returns the norm before clipping. Call it once per step, after
  // the last accumulate().
  double clip_grad_norm(double max_norm);
  // clip_grad_norm without the read: the norm as a [1] f64 tensor, on the GPU where every gradient is on that GPU
  // (else on the host; zero when no gradient is defined); on one GPU the clip scale stays in device memory and step() reads it there, so the host does not
  // wait for the backward to finish. Read the norm (item()) only when it is logged.
  Tensor clip_grad_norm_async(double max_norm);
  int64_t steps() const { return t_; }
  // Whether the last step() ran as one kernel over every tensor (on one GPU; tests and profiles).
  bool last_step_one_launch() const { return one_launch_; }
  // Moments by parameter name ("<name>.exp_avg", "<name>.exp_avg_sq", and "<name>.master" for bf16 parameters)
  // for checkpoints.
  std::vector<std::pair<std::string, Tensor>> state() const;
  // The weights in full precision by parameter name: the f32 masters of bf16 parameters, the others as they are
  // (what a final export should save).
  std::vector<std::pair<std::string, Tensor>> f32_weights() const;
  // Restores the moments (by the names state() gives; every missing or mis-shaped one is an error) and the step count.
  void load_state(const nn::SafetensorsFile& file, int64_t steps);
  AdamWConfig cfg;

 private:
  struct Slot {
    std::string name;
    Tensor param, m, v;
    bool decay;
    Tensor master, acc;  // f32 master copy (bf16 parameters); f32 gradient buffer (after accumulate())
  };
  Tensor gradient(const Slot& s) const;  // acc + param.grad() in f32 (or the parameter's dtype without a master)
  bool step_one_launch(double lr);        // step() on one GPU in one kernel; false (nothing done) where it does not apply
  std::vector<Slot> slots_;
  int64_t t_ = 0;
  bool clipped_ = false, one_launch_ = false;
  double grad_scale_ = 1.0;  // set by clip_grad_norm, applied and reset by step()
  Tensor device_scale_;      // [1] f64 on the GPU: clip_grad_norm_async's scale, applied and reset by step()
  std::vector<unsigned char> chunk_bytes_;  // step_one_launch's last table, and its copy on the device
  Tensor chunk_table_;
};

// The fused update on one tensor (used by AdamW::step; exposed for tests). The gradient is multiplied by
// grad_scale and, when given, by scale_tensor (a [1] f64 tensor on the parameter's device, read there); bf16_copy
// (optional) receives the updated parameter rounded to bf16 in the same pass (an f32 master's compute weight). On
// CUDA an f32 parameter takes a bf16 gradient as it is.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step, double grad_scale = 1.0, Tensor* bf16_copy = nullptr,
                  const Tensor* scale_tensor = nullptr);

// The sum of squares of every defined tensor (f64, f32 or bf16) as a [1] f64 tensor on their device, not read
// back; undefined when none is defined. On one GPU: one kernel over all of them (cuda::sum_squares_chunks), no f32
// copies of bf16 tensors; elsewhere per tensor in f32 (f64 for f64), summed in f64. Tensors on several devices: on
// the host (each device's sum read back).
Tensor sum_of_squares(const std::vector<Tensor>& tensors);

// Scales every gradient so that their global L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Linear warmup from 0 to peak over `warmup` steps, then cosine decay to `floor` at `total` steps (and floor after).
double lr_at(int64_t step, int64_t warmup, int64_t total, double peak = 2e-4, double floor = 2e-5);

}  // namespace nt::train
