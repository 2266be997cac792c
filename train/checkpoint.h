// Training checkpoints: <dir>/model.safetensors (parameters, by name) and <dir>/optim.safetensors (AdamW moments,
// "<param>.exp_avg" / "<param>.exp_avg_sq"), each written atomically, both carrying the step, the optimizer's
// step count and the data generator's (seed, offset) in their metadata. Resuming restores all of it, so the run
// continues with the same batches and the same updates as one that was never interrupted.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"
#include "train/adamw.h"

namespace nt::train {

struct TrainState {
  int64_t step = 0;  // the next step to run
  Generator data_gen;
  // Other training state that is not a parameter (e.g. an MoE router's balancing bias), by name; stored in
  // optim.safetensors next to the moments.
  std::vector<std::pair<std::string, Tensor>> extra;
};

void save_checkpoint(const std::string& dir, const nn::Module& model, const AdamW& opt, const TrainState& state);
// Loads into an already-built model and optimizer. A missing file, a mismatch with the model (every one is
// listed), or model and optimizer files from different steps (an interrupted save) are errors. extra_names: the
// TrainState::extra entries to read back (each missing one is an error); they come back in TrainState::extra.
TrainState load_checkpoint(const std::string& dir, nn::Module& model, AdamW& opt,
                           const std::vector<std::string>& extra_names = {});

}  // namespace nt::train
