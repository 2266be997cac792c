// Sharded checkpoints of ShardedAdamW (see dist/fsdp.h and docs/distributed.md):
//   <dir>/manifest.txt                    units, their parameters (name, offset, shape), dtype, world size, steps
//   <dir>/shard-<r>-of-<N>.safetensors    rank r's slices: unit.<k>.master, unit.<k>.exp_avg, unit.<k>.exp_avg_sq
// Saving writes a complete new directory next to the old one (<dir>.tmp) and swaps it in with renames once every
// rank has written its file, so an interrupted save leaves the previous checkpoint as it was.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dist/fsdp.h"
#include "nn/safetensors.h"

namespace nt::dist {
namespace fs = std::filesystem;

namespace {
constexpr const char* kMagic = "nsa-transformer sharded checkpoint v1";

std::string shard_file(const std::string& dir, int rank, int world) {
  return dir + "/shard-" + std::to_string(rank) + "-of-" + std::to_string(world) + ".safetensors";
}
DType dtype_named(const std::string& s, const std::string& path) {
  for (DType t : {DType::f64, DType::f32, DType::bf16})
    if (dtype_name(t) == s) return t;
  throw Error(fmt::format("sharded checkpoint: '{}' names dtype '{}' (expected f64, f32 or bf16)", path, s));
}

struct ManifestParam {
  std::string name;
  int64_t offset = 0;
  Shape shape;
};
struct ManifestUnit {
  DType dtype = DType::f32;
  int64_t numel = 0, shard = 0;
  std::vector<ManifestParam> params;
};
struct Manifest {
  int world = 0;
  int64_t optimizer_steps = 0;
  std::vector<ManifestUnit> units;
};

void write_manifest(const std::string& path, const Manifest& m) {
  std::ostringstream o;
  o << kMagic << "\nworld_size " << m.world << "\noptimizer_steps " << m.optimizer_steps << "\nunits " << m.units.size() << "\n";
  for (size_t k = 0; k < m.units.size(); ++k) {
    const ManifestUnit& u = m.units[k];
    o << "unit " << k << " dtype " << dtype_name(u.dtype) << " numel " << u.numel << " shard " << u.shard << " params "
      << u.params.size() << "\n";
    for (const ManifestParam& p : u.params) {
      o << "param " << p.name << " " << p.offset << " ";
      if (p.shape.empty()) o << "-";
      for (size_t i = 0; i < p.shape.size(); ++i) o << (i ? "," : "") << p.shape[i];
      o << "\n";
    }
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << o.str();
    f.flush();
    NT_CHECK(f.good(), "sharded checkpoint: could not write '{}'", tmp);
  }
  fs::rename(tmp, path);
}

Manifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.txt";
  if (!fs::exists(path)) {
    NT_CHECK(!fs::exists(dir + ".old/manifest.txt"),
             "sharded checkpoint: '{}' is missing but '{}.old' holds a complete checkpoint (a save was interrupted "
             "while swapping directories): rename it to '{}'", path, dir, dir);
    throw Error(fmt::format("sharded checkpoint: no '{}' (not a sharded checkpoint directory, or an interrupted save)", path));
  }
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  NT_CHECK(line == kMagic, "sharded checkpoint: '{}' starts with '{}', expected '{}'", path, line, kMagic);
  Manifest m;
  std::string key;
  size_t n_units = 0;
  auto expect = [&](const std::string& want) {
    NT_CHECK(f >> key && key == want, "sharded checkpoint: '{}' is malformed: expected '{}', found '{}'", path, want, key);
  };
  expect("world_size");
  f >> m.world;
  expect("optimizer_steps");
  f >> m.optimizer_steps;
  expect("units");
  f >> n_units;
  NT_CHECK(f && m.world > 0 && n_units < (1u << 20), "sharded checkpoint: '{}' is malformed (header)", path);
  for (size_t k = 0; k < n_units; ++k) {
    ManifestUnit u;
    size_t idx = 0, n_params = 0;
    std::string dt;
    expect("unit");
    f >> idx;
    expect("dtype");
    f >> dt;
    expect("numel");
    f >> u.numel;
    expect("shard");
    f >> u.shard;
    expect("params");
    f >> n_params;
    NT_CHECK(f && idx == k && u.shard * m.world >= u.numel, "sharded checkpoint: '{}' is malformed (unit {})", path, k);
    u.dtype = dtype_named(dt, path);
    for (size_t i = 0; i < n_params; ++i) {
      ManifestParam p;
      std::string dims;
      expect("param");
      f >> p.name >> p.offset >> dims;
      NT_CHECK(f, "sharded checkpoint: '{}' is malformed (unit {}, parameter {})", path, k, i);
      if (dims != "-") {
        std::stringstream ds(dims);
        for (std::string d; std::getline(ds, d, ',');) p.shape.push_back(std::stoll(d));
      }
      u.params.push_back(std::move(p));
    }
    m.units.push_back(std::move(u));
  }
  return m;
}

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Element range [lo, lo + n) of unit k's flat (master, exp_avg or exp_avg_sq) from the old shards.
Tensor gather_range(const std::vector<nn::SafetensorsFile>& shards, const Manifest& m, size_t k, const char* what,
                    int64_t lo, int64_t n, DType acc) {
  Tensor out = zeros({n}, acc);
  const int64_t s0 = m.units[k].shard;
  for (int q = 0; q < m.world && n > 0; ++q) {
    const int64_t a = std::max(lo, q * s0), b = std::min(lo + n, (q + 1) * s0);
    if (a >= b) continue;
    const std::string name = "unit." + std::to_string(k) + "." + what;
    const Tensor* t = shards[q].find(name);
    NT_CHECK(t && t->numel() == s0, "sharded checkpoint: shard {} lacks '{}' of {} elements", q, name, s0);
    out.narrow(0, a - lo, b - a).copy_(t->narrow(0, a - q * s0, b - a));
  }
  return out;
}

std::vector<nn::SafetensorsFile> load_shards(const std::string& dir, int world) {
  std::vector<nn::SafetensorsFile> shards;
  for (int q = 0; q < world; ++q) {
    const std::string path = shard_file(dir, q, world);
    NT_CHECK(fs::exists(path), "sharded checkpoint: '{}' is missing ({} ranks wrote this checkpoint)", path, world);
    shards.push_back(nn::load_safetensors(path));
  }
  return shards;
}
}  // namespace

void ShardedAdamW::save(const std::string& dir, const std::map<std::string, std::string>& rank_metadata) {
  autograd::NoGradGuard no_grad;
  const int rank = comm_.rank(), world = comm_.size();
  const std::string tmp = dir + ".tmp";
  if (rank == 0) {
    fs::remove_all(tmp);
    fs::create_directories(tmp);
  }
  comm_.barrier();
  nn::NamedTensors mine;
  for (size_t k = 0; k < units_.size(); ++k) {
    const std::string p = "unit." + std::to_string(k) + ".";
    mine.emplace_back(p + "master", units_[k].master.to(kCPU));
    mine.emplace_back(p + "exp_avg", units_[k].m.to(kCPU));
    mine.emplace_back(p + "exp_avg_sq", units_[k].v.to(kCPU));
  }
  std::map<std::string, std::string> meta = rank_metadata;
  meta["rank"] = std::to_string(rank), meta["world_size"] = std::to_string(world);
  meta["optimizer_steps"] = std::to_string(t_);
  nn::save_safetensors(shard_file(tmp, rank, world), mine, meta);
  comm_.barrier();  // every shard is complete before the directory is swapped in
  if (rank == 0) {
    Manifest m;
    m.world = world, m.optimizer_steps = t_;
    for (const Unit& u : units_) {
      ManifestUnit mu;
      mu.dtype = u.params[0].second.dtype(), mu.numel = u.numel, mu.shard = u.shard;
      for (size_t i = 0; i < u.params.size(); ++i) mu.params.push_back({u.params[i].first, u.offsets[i], u.params[i].second.shape()});
      m.units.push_back(std::move(mu));
    }
    write_manifest(tmp + "/manifest.txt", m);
    const std::string old = dir + ".old";
    fs::remove_all(old);
    if (fs::exists(dir)) fs::rename(dir, old);
    fs::rename(tmp, dir);
    fs::remove_all(old);
  }
  comm_.barrier();
}

std::map<std::string, std::string> ShardedAdamW::load(const std::string& dir) {
  autograd::NoGradGuard no_grad;
  const Manifest m = read_manifest(dir);
  // The model must be the one that was saved: same units, parameter names, shapes and dtypes (every mismatch listed).
  std::vector<std::string> problems;
  if (m.units.size() != units_.size())
    problems.push_back(fmt::format("{} units in the checkpoint, {} here", m.units.size(), units_.size()));
  for (size_t k = 0; k < std::min(m.units.size(), units_.size()); ++k) {
    const ManifestUnit& mu = m.units[k];
    const Unit& u = units_[k];
    if (mu.params.size() != u.params.size()) {
      problems.push_back(fmt::format("unit {}: {} parameters in the checkpoint, {} here", k, mu.params.size(), u.params.size()));
      continue;
    }
    if (mu.dtype != u.params[0].second.dtype())
      problems.push_back(fmt::format("unit {}: dtype {} in the checkpoint, {} here", k, dtype_name(mu.dtype),
                                     dtype_name(u.params[0].second.dtype())));
    for (size_t i = 0; i < mu.params.size(); ++i) {
      const auto& [name, p] = u.params[i];
      if (mu.params[i].name != name || mu.params[i].shape != p.shape())
        problems.push_back(fmt::format("unit {}: '{}' {} in the checkpoint, '{}' {} here", k, mu.params[i].name,
                                       shape_str(mu.params[i].shape), name, shape_str(p.shape())));
    }
  }
  if (!problems.empty()) {
    std::string msg = fmt::format("ShardedAdamW::load: '{}' does not match this model ({} problem(s)):", dir, problems.size());
    for (const auto& p : problems) msg += "\n  " + p;
    throw Error(msg);
  }
  // Every rank reads every old shard: simple, and a different rank count works the same way (the new shard is
  // any range of the old flat). Host memory: the whole optimizer state, transiently.
  const std::vector<nn::SafetensorsFile> shards = load_shards(dir, m.world);
  const int rank = comm_.rank();
  for (size_t k = 0; k < units_.size(); ++k) {
    Unit& u = units_[k];
    const int64_t lo = rank * u.shard, n = std::max<int64_t>(0, std::min(u.shard, u.numel - lo));
    const DType acc = u.master.dtype();
    u.master.fill_(0.0), u.m.fill_(0.0), u.v.fill_(0.0);  // padding stays 0
    if (n > 0) {
      u.master.narrow(0, 0, n).copy_(gather_range(shards, m, k, "master", lo, n, acc));
      u.m.narrow(0, 0, n).copy_(gather_range(shards, m, k, "exp_avg", lo, n, acc));
      u.v.narrow(0, 0, n).copy_(gather_range(shards, m, k, "exp_avg_sq", lo, n, acc));
    }
  }
  t_ = m.optimizer_steps;
  gather_params();
  // This rank's metadata when the rank count is unchanged; else rank 0's (with "resharded_from" added).
  auto meta = shards[m.world == comm_.size() ? rank : 0].metadata;
  if (m.world != comm_.size()) meta["resharded_from"] = std::to_string(m.world);
  return meta;
}

void consolidate_checkpoint(const std::string& dir, const std::string& out_dir, int rank_for_metadata) {
  const Manifest m = read_manifest(dir);
  NT_CHECK(rank_for_metadata >= 0 && rank_for_metadata < m.world,
           "consolidate_checkpoint: rank_for_metadata must be in [0, {}), got {}", m.world, rank_for_metadata);
  const std::vector<nn::SafetensorsFile> shards = load_shards(dir, m.world);
  nn::NamedTensors weights, optim;
  for (size_t k = 0; k < m.units.size(); ++k) {
    const ManifestUnit& u = m.units[k];
    const DType acc = u.dtype == DType::f64 ? DType::f64 : DType::f32;
    const Tensor master = gather_range(shards, m, k, "master", 0, u.numel, acc);
    const Tensor ea = gather_range(shards, m, k, "exp_avg", 0, u.numel, acc);
    const Tensor eas = gather_range(shards, m, k, "exp_avg_sq", 0, u.numel, acc);
    for (const ManifestParam& p : u.params) {
      const int64_t n = numel_of(p.shape);
      auto part = [&](const Tensor& flat) { return flat.narrow(0, p.offset, n).reshape(p.shape).clone(); };
      weights.emplace_back(p.name, part(master).to(u.dtype));  // the parameter as the model holds it
      optim.emplace_back(p.name + ".exp_avg", part(ea));
      optim.emplace_back(p.name + ".exp_avg_sq", part(eas));
      if (u.dtype != acc) optim.emplace_back(p.name + ".master", part(master));
    }
  }
  // train::save_checkpoint's layout and metadata, so train::load_checkpoint resumes it in one process.
  std::map<std::string, std::string> meta = shards[rank_for_metadata].metadata;
  meta.erase("rank"), meta.erase("world_size");
  meta["optimizer_steps"] = std::to_string(m.optimizer_steps);
  meta["consolidated_from"] = std::to_string(m.world);
  fs::create_directories(out_dir);
  nn::save_safetensors(out_dir + "/optim.safetensors", optim, meta);
  nn::save_safetensors(out_dir + "/model.safetensors", weights, meta);
}

}  // namespace nt::dist
