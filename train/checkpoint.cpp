#include "train/checkpoint.h"

#include <filesystem>

#include "nn/safetensors.h"

namespace nt::train {

namespace {
std::map<std::string, std::string> meta(const AdamW& opt, const TrainState& s) {
  return {{"step", std::to_string(s.step)}, {"optimizer_steps", std::to_string(opt.steps())},
          {"data_seed", std::to_string(s.data_gen.seed)}, {"data_offset", std::to_string(s.data_gen.offset)}};
}
uint64_t meta_u64(const nn::SafetensorsFile& f, const std::string& key, const std::string& path) {
  auto it = f.metadata.find(key);
  NT_CHECK(it != f.metadata.end(), "load_checkpoint: '{}' has no '{}' in its metadata (not a training checkpoint?)", path, key);
  return std::stoull(it->second);
}
}  // namespace

void save_checkpoint(const std::string& dir, const nn::Module& model, const AdamW& opt, const TrainState& state) {
  std::filesystem::create_directories(dir);
  const auto m = meta(opt, state);
  // Optimizer first, model last: a crash between the two leaves files whose steps differ, which loading rejects.
  auto optim = opt.state();
  for (const auto& e : state.extra) optim.push_back(e);
  nn::save_safetensors(dir + "/optim.safetensors", optim, m);
  nn::save_safetensors(dir + "/model.safetensors", model.named_parameters(), m);
}

TrainState load_checkpoint(const std::string& dir, nn::Module& model, AdamW& opt, const std::vector<std::string>& extra_names) {
  const std::string mp = dir + "/model.safetensors", op = dir + "/optim.safetensors";
  const nn::SafetensorsFile mf = nn::load_safetensors(mp), of = nn::load_safetensors(op);
  TrainState s;
  s.step = (int64_t)meta_u64(mf, "step", mp);
  const uint64_t ostep = meta_u64(of, "step", op);
  NT_CHECK((int64_t)ostep == s.step, "load_checkpoint: '{}' is from step {} but '{}' from step {}: the save was interrupted",
           mp, s.step, op, ostep);
  s.data_gen.seed = meta_u64(mf, "data_seed", mp);
  s.data_gen.offset = meta_u64(mf, "data_offset", mp);
  nn::load_parameters(model, mf);
  opt.load_state(of, (int64_t)meta_u64(of, "optimizer_steps", op));
  for (const std::string& name : extra_names) {
    const Tensor* t = of.find(name);
    NT_CHECK(t, "load_checkpoint: '{}' has no '{}' (saved by a run with other settings?)", op, name);
    s.extra.emplace_back(name, t->clone());
  }
  return s;
}

}  // namespace nt::train
