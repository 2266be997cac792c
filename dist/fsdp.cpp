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
  for (size_t k = 0; k < units_.size(); ++k) {
    Unit& u = units_[k];
    if (u.fully_sharded) {  // allocated and filled until the unit next runs (which gathers and frees them again)
      gather_unit(k);
      continue;
    }
    Tensor full = flat_of(u);
    comm_.all_gather(u.master, full);
    write_params(u, full);
  }
}

double ShardedAdamW::step(double lr, double max_norm) {
  NT_CHECK(max_norm > 0, "ShardedAdamW::step: max_norm must be > 0 (infinity: no clipping), got {}", max_norm);
  ++t_;
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> grads;
  // This step's gradients (and those accumulate() reduced before) as this rank's shard; fully sharded units
  // reduce-scattered theirs during the backward already. Missing gradients count as zeros.
  for (size_t k = 0; k < units_.size(); ++k)
    if (!units_[k].fully_sharded) reduce_unit(k);
  finish_reductions();
  prefetched_ = {};  // the weights change
  for (Unit& u : units_) {
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
    if (u.fully_sharded) {  // gathered when the unit next runs; tensors saved from the old weights are stale now
      for (auto& [name, p] : u.params) ++p.impl()->storage->version;
      continue;
    }
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
  for (size_t k = 0; k < units_.size(); ++k)
    if (!units_[k].fully_sharded) reduce_unit(k);
  finish_reductions();
}

void ShardedAdamW::zero_grad() {
  finish_reductions();
  for (Unit& u : units_) {
    for (auto& [name, p] : u.params) p.set_grad(Tensor());
    u.grad_shard = Tensor();
  }
}

// The unit's weights all-gathered into a new [shard * N] buffer (bf16 units gather their bf16 shard), in flight.
std::pair<Tensor, Work> ShardedAdamW::start_gather(Unit& u) {
  autograd::NoGradGuard no_grad;
  const bool lowp = u.lowp_shard.defined();
  Tensor full = lowp ? empty({u.shard * comm_.size()}, DType::bf16, u.master.device()) : flat_of(u);
  Work w = comm_.all_gather_async(lowp ? u.lowp_shard : u.master, full);
  return {full, std::move(w)};
}

void ShardedAdamW::gather_unit(size_t k) {
  Unit& u = units_[k];
  Tensor full;
  if (prefetched_.unit == (int64_t)k) {
    prefetched_.work.wait();
    full = prefetched_.full;
  } else {
    auto [f, w] = start_gather(u);
    w.wait();
    full = f;
  }
  prefetched_ = {};  // a prefetch of another unit is stale: the compute stream waits for it (Work) and drops it
  // The same values the storages held before release (step() bumps the versions when they change), so tensors
  // autograd saved from them stay valid: keep their versions.
  std::vector<uint64_t> versions;
  for (auto& [name, p] : u.params) {
    p.impl()->storage->reallocate();
    versions.push_back(p.impl()->storage->version);
  }
  write_params(u, full);
  for (size_t i = 0; i < u.params.size(); ++i) u.params[i].second.impl()->storage->version = versions[i];
}

void ShardedAdamW::prefetch_unit(size_t k) {
  if (!overlap || prefetched_.unit == (int64_t)k) return;
  auto [full, w] = start_gather(units_[k]);
  prefetched_.unit = (int64_t)k, prefetched_.full = full, prefetched_.work = std::move(w);
}

void ShardedAdamW::release_unit(Unit& u) {
  for (auto& [name, p] : u.params) p.impl()->storage->release();
}

void ShardedAdamW::reduce_unit(size_t k) {
  autograd::NoGradGuard no_grad;
  Unit& u = units_[k];
  Tensor flat = flat_of(u);
  for (size_t i = 0; i < u.params.size(); ++i) {
    const Tensor& p = u.params[i].second;
    Tensor region = flat.narrow(0, u.offsets[i], p.numel());
    if (p.grad().defined()) region.copy_(p.grad().reshape({-1}));
    else region.fill_(0.0);
    Tensor(p).set_grad(Tensor());
  }
  // At most one reduction in flight: the previous one has had this unit's backward (or copy) to finish, and its
  // full-size buffer is released before the next is made.
  finish_reductions();
  Tensor g = empty({u.shard}, flat.dtype(), flat.device());
  reducing_.unit = (int64_t)k, reducing_.grad = g;
  reducing_.work = comm_.reduce_scatter_async(flat, g, ReduceOp::avg);
  if (!overlap) finish_reductions();
}

void ShardedAdamW::finish_reductions() {
  if (reducing_.unit < 0) return;
  reducing_.work.wait();
  Unit& u = units_[(size_t)reducing_.unit];
  u.grad_shard = u.grad_shard.defined() ? u.grad_shard + reducing_.grad : reducing_.grad;
  reducing_ = {};
}

void ShardedAdamW::fully_shard(nn::TransformerLM& lm, bool recompute) {
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
  const int64_t L = (int64_t)unit_of.size();
  if (recompute) {
    lm.run_block = [this, unit_of, L, &lm](int64_t i, const std::function<Tensor(const Tensor&)>& run,
                                           const Tensor& x) {
      const int k = unit_of[(size_t)i];
      const bool training = autograd::grad_enabled();
      Tensor out = autograd::checkpoint(
          [this, k, i, L, unit_of, run](const std::vector<Tensor>& in) {
            gather_unit((size_t)k);
            // The next block's weights travel while this one computes: block i + 1 in the forward (no recording),
            // block i - 1 in the backward's recomputation (blocks run last to first).
            const int64_t next = autograd::grad_enabled() ? i - 1 : i + 1;
            if (next >= 0 && next < L) prefetch_unit((size_t)unit_of[(size_t)next]);
            Tensor y = run(in[0]);
            // The first pass runs without recording: nothing keeps the weights, free them. The recomputation
            // inside the backward keeps them until after_backward.
            if (!autograd::grad_enabled()) release_unit(units_[k]);
            return y;
          },
          {x}, [this, k] {
            reduce_unit((size_t)k);
            release_unit(units_[k]);
          });
      const auto& block = *lm.layers[(size_t)i];
      NT_CHECK(!training || !(block.mlp->aux_loss().defined() || block.attn->aux_loss().defined()),
               "ShardedAdamW::fully_shard: block {} has an auxiliary loss (MoE), whose gradient the recomputation "
               "would lose (its first pass records nothing): use fully_shard(lm, recompute=false)", i);
      return out;
    };
    return;
  }
  // As PyTorch's FSDP: the block is recorded with its gathered weights, which are freed after its forward. The
  // tensors autograd saved share the parameters' storage, so their memory goes too; a hook on the block's output
  // gathers the weights back into that storage before the backward reaches the block, and one on its input
  // reduce-scatters the block's gradients and frees the weights once the block's backward is done.
  lm.run_block = [this, unit_of, L](int64_t i, const std::function<Tensor(const Tensor&)>& run, const Tensor& x) {
    const size_t k = (size_t)unit_of[(size_t)i];
    gather_unit(k);
    if (i + 1 < L) prefetch_unit((size_t)unit_of[(size_t)i + 1]);
    if (!autograd::grad_enabled()) {
      Tensor y = run(x);
      release_unit(units_[k]);
      return y;
    }
    const Tensor in = autograd::on_backward(x, [this, k] {
      reduce_unit(k);
      release_unit(units_[k]);
    });
    const Tensor y = run(in);
    release_unit(units_[k]);
    return autograd::on_backward(y, [this, k, i, unit_of] {
      gather_unit(k);
      if (i > 0) prefetch_unit((size_t)unit_of[(size_t)i - 1]);
    });
  };
}

std::vector<Tensor> ShardedAdamW::master_shards() const {
  std::vector<Tensor> out;
  for (const Unit& u : units_) out.push_back(u.master);
  return out;
}

}  // namespace nt::dist
