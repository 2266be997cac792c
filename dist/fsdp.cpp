#include "dist/fsdp.h"

#include <cctype>
#include <cmath>

namespace nt::dist {

std::vector<NamedParams> units_by_module(const NamedParams& params) {
  std::vector<std::string> keys;
  std::vector<NamedParams> units;
  for (const auto& [name, p] : params) {
    // The first dotted component, plus the next when it is an index (a list of blocks: one unit per block).
    const size_t a = name.find('.');
    std::string key = name.substr(0, a);
    if (a != std::string::npos) {
      const size_t b = name.find('.', a + 1);
      const std::string next = name.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
      if (!next.empty() && std::all_of(next.begin(), next.end(), [](unsigned char c) { return std::isdigit(c); }))
        key += "." + next;
    }
    size_t i = 0;
    while (i < keys.size() && keys[i] != key) ++i;
    if (i == keys.size()) keys.push_back(key), units.emplace_back();
    units[i].emplace_back(name, p);
  }
  return units;
}

ShardedAdamW::ShardedAdamW(Communicator& comm, std::vector<NamedParams> units, const train::AdamWConfig& c)
    : comm_(comm), cfg(c) {
  NT_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1,
           "ShardedAdamW: betas must be in [0, 1), got {} and {}", c.beta1, c.beta2);
  NT_CHECK(c.eps > 0 && c.weight_decay >= 0, "ShardedAdamW: eps must be > 0 and weight_decay >= 0");
  const int64_t n = comm.size(), rank = comm.rank();
  autograd::NoGradGuard no_grad;
  NT_CHECK(!units.empty() && !units[0].empty(), "ShardedAdamW: no parameters");
  const std::string first_name = units[0][0].first;
  const Device first_dev = units[0][0].second.device();
  for (size_t k = 0; k < units.size(); ++k) {
    Unit u;
    u.params = std::move(units[k]);
    NT_CHECK(!u.params.empty(), "ShardedAdamW: unit {} has no parameters", k);
    const DType dt = u.params[0].second.dtype();
    for (const auto& [name, p] : u.params) {
      NT_CHECK(p.dtype() == dt, "ShardedAdamW: parameter '{}' has dtype {} but '{}' in its unit has {}", name,
               dtype_name(p.dtype()), u.params[0].first, dtype_name(dt));
      NT_CHECK(p.is_contiguous(), "ShardedAdamW: parameter '{}' must be contiguous", name);
      NT_CHECK(p.device() == first_dev, "ShardedAdamW: parameter '{}' is on {} but '{}' is on {} (one device per rank)",
               name, p.device().str(), first_name, first_dev.str());
      u.offsets.push_back(u.numel);
      u.numel += p.numel();
    }
    const DType acc = dt == DType::f64 ? DType::f64 : DType::f32;
    u.shard = (u.numel + n - 1) / n;
    const Device dev = u.params[0].second.device();
    u.flat = zeros({u.shard * n}, acc, dev);
    for (size_t i = 0; i < u.params.size(); ++i)
      u.flat.narrow(0, u.offsets[i], u.params[i].second.numel()).copy_(u.params[i].second.reshape({-1}));
    comm.broadcast(u.flat, 0);  // rank 0's initialization wins
    write_params(u, u.flat);
    const int64_t lo = rank * u.shard;
    u.master = u.flat.narrow(0, lo, u.shard).clone();
    u.m = zeros({u.shard}, acc, dev), u.v = zeros({u.shard}, acc, dev);
    if (dt == DType::bf16) {
      u.lowp_shard = u.master.to(DType::bf16), u.lowp_flat = zeros({u.shard * n}, DType::bf16, dev);
      u.flat = Tensor();  // bf16 weights travel in lowp_flat; the f32 buffer is made per step (see flat_of)
    }
    // Decay runs: each parameter's part of [lo, lo + shard), then the padding; adjacent runs alike are merged.
    auto add = [&](int64_t b, int64_t e, bool decay) {
      b = std::max(b, lo) - lo, e = std::min(e, lo + u.shard) - lo;
      if (b >= e) return;
      if (!u.runs.empty() && std::get<1>(u.runs.back()) == b && std::get<2>(u.runs.back()) == decay)
        std::get<1>(u.runs.back()) = e;
      else
        u.runs.emplace_back(b, e, decay);
    };
    for (size_t i = 0; i < u.params.size(); ++i)
      add(u.offsets[i], u.offsets[i] + u.params[i].second.numel(), u.params[i].second.dim() >= 2);
    add(u.numel, u.shard * n, false);
    units_.push_back(std::move(u));
  }
}

void ShardedAdamW::write_params(Unit& u, const Tensor& flat) {
  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < u.params.size(); ++i) {
    Tensor p = u.params[i].second;
    p.copy_(flat.narrow(0, u.offsets[i], p.numel()).reshape(p.shape()));
  }
}

// The unit's [shard * N] f32 (f64) buffer: kept for f32/f64 units; for bf16 and fully sharded units a temporary
// one (the caching allocator reuses it unit after unit), so no rank holds a full-size f32 copy of the model.
// Padding is 0.
Tensor ShardedAdamW::flat_of(Unit& u) {
  if (u.flat.defined()) return u.flat;
  Tensor f = empty({u.shard * comm_.size()}, u.master.dtype(), u.master.device());
  if (u.shard * comm_.size() > u.numel) f.narrow(0, u.numel, u.shard * comm_.size() - u.numel).fill_(0.0);
  return f;
}

NamedParams ShardedAdamW::full_weights() {
  autograd::NoGradGuard no_grad;
  NamedParams out;
  for (Unit& u : units_) {
    Tensor full = flat_of(u);
    comm_.all_gather(u.master, full);
    const Tensor flat = full.to(kCPU);
    for (size_t i = 0; i < u.params.size(); ++i) {
      const Tensor& p = u.params[i].second;
      out.emplace_back(u.params[i].first, flat.narrow(0, u.offsets[i], p.numel()).reshape(p.shape()).clone());
    }
  }
  return out;
}

void ShardedAdamW::gather_params() {
  for (Unit& u : units_) {
    if (u.fully_sharded) {  // allocated and filled until the unit next runs (which gathers and frees them again)
      gather_unit(u);
      continue;
    }
    Tensor full = flat_of(u);
    comm_.all_gather(u.master, full);
    write_params(u, full);
  }
}

double ShardedAdamW::step(double lr, double max_norm) {
  ++t_;
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (Unit& u : units_) {
    // This step's gradients (and those accumulate() reduced before) as this rank's shard; fully sharded units
    // reduce-scattered theirs during the backward already. Missing gradients count as zeros.
    if (!u.fully_sharded) reduce_unit(u);
    Tensor g = u.grad_shard.defined() ? u.grad_shard : zeros({u.shard}, u.master.dtype(), u.master.device());
    u.grad_shard = Tensor();
    grads.push_back(g);
  }
  // This rank's sum of squares, on the parameters' device (no read-back before the all-reduce).
  Tensor sq = train::sum_of_squares(grads);
  if (!sq.defined()) sq = zeros({1}, DType::f64);
  comm_.all_reduce(sq, ReduceOp::sum);  // every rank gets the same norm, bit for bit
  const double norm = std::sqrt(sq.item());
  const double scale = norm > max_norm && norm > 0 ? max_norm / (norm + 1e-6) : 1.0;  // as train::AdamW
  for (size_t k = 0; k < units_.size(); ++k) {
    Unit& u = units_[k];
    const bool lowp = u.lowp_shard.defined();
    for (const auto& [b, e, decay] : u.runs) {
      Tensor p = u.master.narrow(0, b, e - b), m = u.m.narrow(0, b, e - b), v = u.v.narrow(0, b, e - b);
      Tensor copy = lowp ? u.lowp_shard.narrow(0, b, e - b) : Tensor();
      train::adamw_update(p, grads[k].narrow(0, b, e - b), m, v, lr, cfg.beta1, cfg.beta2, cfg.eps,
                          decay ? cfg.weight_decay : 0.0, t_, scale,  // the clip scale applied in the kernel
                          lowp ? &copy : nullptr);
    }
    if (u.fully_sharded) continue;  // gathered when the unit next runs
    if (lowp) {
      comm_.all_gather(u.lowp_shard, u.lowp_flat);
      autograd::NoGradGuard ng;
      for (size_t i = 0; i < u.params.size(); ++i) {
        Tensor p = u.params[i].second;
        p.copy_(u.lowp_flat.narrow(0, u.offsets[i], p.numel()).reshape(p.shape()));
      }
    } else {
      comm_.all_gather(u.master, u.flat);
      write_params(u, u.flat);
    }
  }
  return norm;
}

void ShardedAdamW::accumulate() {
  for (Unit& u : units_)
    if (!u.fully_sharded) reduce_unit(u);
}

void ShardedAdamW::zero_grad() {
  for (Unit& u : units_) {
    for (auto& [name, p] : u.params) p.set_grad(Tensor());
    u.grad_shard = Tensor();
  }
}

void ShardedAdamW::gather_unit(Unit& u) {
  autograd::NoGradGuard no_grad;
  for (auto& [name, p] : u.params) p.impl()->storage->reallocate();
  const bool lowp = u.lowp_shard.defined();
  Tensor full = lowp ? empty({u.shard * comm_.size()}, DType::bf16, u.master.device()) : flat_of(u);
  comm_.all_gather(lowp ? u.lowp_shard : u.master, full);
  write_params(u, full);
}

void ShardedAdamW::release_unit(Unit& u) {
  for (auto& [name, p] : u.params) p.impl()->storage->release();
}

void ShardedAdamW::reduce_unit(Unit& u) {
  autograd::NoGradGuard no_grad;
  Tensor flat = flat_of(u);
  for (size_t i = 0; i < u.params.size(); ++i) {
    const Tensor& p = u.params[i].second;
    Tensor region = flat.narrow(0, u.offsets[i], p.numel());
    if (p.grad().defined()) region.copy_(p.grad().reshape({-1}));
    else region.fill_(0.0);
    Tensor(p).set_grad(Tensor());
  }
  Tensor g = empty({u.shard}, flat.dtype(), flat.device());
  comm_.reduce_scatter(flat, g, ReduceOp::avg);
  u.grad_shard = u.grad_shard.defined() ? u.grad_shard + g : g;
}

void ShardedAdamW::fully_shard(nn::TransformerLM& lm) {
  std::vector<int> unit_of(lm.layers.size(), -1);
  for (size_t k = 0; k < units_.size(); ++k) {
    const std::string& first = units_[k].params[0].first;
    if (first.rfind("layers.", 0) != 0) continue;
    const size_t i = std::stoul(first.substr(7));
    NT_CHECK(i < lm.layers.size(), "ShardedAdamW::fully_shard: unit '{}' names layer {} of a model with {}", first, i,
             lm.layers.size());
    for (const auto& [name, p] : units_[k].params)
      NT_CHECK(name.rfind("layers." + std::to_string(i) + ".", 0) == 0,
               "ShardedAdamW::fully_shard: unit {} mixes layers ('{}' and '{}'): build the units with units_by_module", k,
               first, name);
    unit_of[i] = (int)k;
    units_[k].fully_sharded = true;
    units_[k].lowp_flat = units_[k].flat = Tensor();  // gathers and reductions go through temporaries
    release_unit(units_[k]);
  }
  for (size_t i = 0; i < unit_of.size(); ++i)
    NT_CHECK(unit_of[i] >= 0, "ShardedAdamW::fully_shard: no unit holds layers.{} (build the units with units_by_module "
             "from this model's named_parameters())", i);
  lm.run_block = [this, unit_of](int64_t i, const std::function<Tensor(const Tensor&)>& run, const Tensor& x) {
    const int k = unit_of[(size_t)i];
    return autograd::checkpoint(
        [this, k, run](const std::vector<Tensor>& in) {
          gather_unit(units_[k]);
          Tensor y = run(in[0]);
          // The first pass runs without recording: nothing keeps the weights, free them. The recomputation inside
          // the backward keeps them until after_backward.
          if (!autograd::grad_enabled()) release_unit(units_[k]);
          return y;
        },
        {x}, [this, k] {
          reduce_unit(units_[k]);
          release_unit(units_[k]);
        });
  };
}

std::vector<Tensor> ShardedAdamW::master_shards() const {
  std::vector<Tensor> out;
  for (const Unit& u : units_) out.push_back(u.master);
  return out;
}

}  // namespace nt::dist
