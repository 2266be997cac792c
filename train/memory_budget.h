// Will a training configuration fit? An estimate of the memory train_lm's loop needs, checked against what the
// device has before anything large is allocated, so a config that cannot fit fails at once with a message that
// says what to change (instead of an out-of-memory error deep inside the first backward pass).
#pragma once
#include <cstdint>
#include <string>

#include "nn/transformer.h"

namespace nt::train {

struct MemoryEstimate {
  double weights = 0;      // parameters, gradients, AdamW moments, f32 masters and accumulation buffers
  double activations = 0;  // tensors saved for backward in one micro-batch, logits and their gradient included
  double total() const { return weights + activations; }
};

// bf16: bf16 parameters and activations with f32 masters (else f32 throughout). reference_attention: the
// composite attention that materializes [B, H, T, T] scores (the CPU path); otherwise the fused op (linear in T).
// The activation count follows nn::Block's saved tensors: about 16 vectors of dim and 3 of the MLP width per
// token and layer, plus the logits twice (cross-entropy keeps its gradient).
MemoryEstimate estimate_training_memory(const nn::LMConfig& cfg, int64_t batch, int64_t seq, bool bf16, bool reference_attention);

// Throws when the estimate exceeds `available` bytes (where: "the GPU", "host memory"), naming the settings to lower.
void check_fits(const MemoryEstimate& e, double available, const std::string& where, int64_t batch, int64_t seq);

}  // namespace nt::train
