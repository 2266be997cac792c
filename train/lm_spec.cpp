#include "train/lm_spec.h"

#include <sstream>

namespace nt::train {

nn::LMConfig LMSpec::config() const {
  nn::LMConfig cfg = model;
  if (mlp == "moe") {
    moe::MoEConfig mc = moe;
    mc.dim = cfg.dim;
    const int64_t first_dense = moe_first_dense, hidden = cfg.hidden(), dim = cfg.dim;
    cfg.make_mlp = [mc, first_dense, hidden, dim](int64_t layer, const nn::Init& init) -> std::shared_ptr<nn::Layer> {
      if (layer < first_dense) return std::make_shared<nn::SwiGLUMLP>(dim, hidden, init);
      return std::make_shared<moe::DeepSeekMoE>(mc, init);
    };
  } else {
    NT_CHECK(mlp == "dense", "LMSpec: mlp must be dense or moe, got '{}'", mlp);
  }
  if (attention == "nsa") {
    nsa::NsaConfig nc = nsa;
    nc.dim = cfg.dim, nc.n_heads = cfg.n_heads, nc.n_kv_heads = cfg.n_kv_heads, nc.head_dim = cfg.dim / cfg.n_heads;
    cfg.make_attention = [nc](int64_t, std::shared_ptr<const nn::Rotary> r, const nn::Init& init) {
      return std::make_shared<nsa::NativeSparseAttention>(nc, std::move(r), init);
    };
  } else {
    NT_CHECK(attention == "dense", "LMSpec: attention must be dense or nsa, got '{}'", attention);
  }
  return cfg;
}

std::map<std::string, std::string> LMSpec::metadata(const nn::TransformerLM* lm) const {
  const nn::LMConfig& c = model;
  std::map<std::string, std::string> m = {
      {"vocab", std::to_string(c.vocab)},          {"dim", std::to_string(c.dim)},
      {"layers", std::to_string(c.n_layers)},      {"heads", std::to_string(c.n_heads)},
      {"kv_heads", std::to_string(c.n_kv_heads)},  {"max_seq", std::to_string(c.max_seq)},
      {"mlp_hidden", std::to_string(c.hidden())},  {"rope_theta", fmt::format("{}", c.rope.theta)},
      {"attention", attention},                    {"mlp", mlp}};
  if (attention == "nsa") {
    m["nsa.block"] = std::to_string(nsa.block), m["nsa.stride"] = std::to_string(nsa.stride);
    m["nsa.select_block"] = std::to_string(nsa.select_block), m["nsa.n_select"] = std::to_string(nsa.n_select);
    m["nsa.window"] = std::to_string(nsa.window), m["nsa.cmp_hidden"] = std::to_string(nsa.cmp_hidden);
  }
  if (mlp == "moe") {
    m["moe.n_routed"] = std::to_string(moe.n_routed), m["moe.top_k"] = std::to_string(moe.top_k);
    m["moe.n_shared"] = std::to_string(moe.n_shared), m["moe.expert_hidden"] = std::to_string(moe.expert_hidden);
    m["moe.first_dense"] = std::to_string(moe_first_dense), m["moe.affinity"] = moe.router.affinity;
    m["moe.normalize_topk"] = moe.router.normalize_topk ? "1" : "0", m["moe.aux_free"] = moe.router.aux_free ? "1" : "0";
    m["moe.routed_scaling_factor"] = fmt::format("{:.17g}", moe.router.routed_scaling_factor);
    if (lm)
      for (size_t i = 0; i < lm->layers.size(); ++i)
        if (auto* l = dynamic_cast<const moe::DeepSeekMoE*>(lm->layers[i]->mlp.get()); l && l->cfg.router.aux_free) {
          std::string s;
          for (double b : l->router->bias()) s += (s.empty() ? "" : ",") + fmt::format("{:.17g}", b);
          m["moe.bias." + std::to_string(i)] = s;
        }
  }
  return m;
}

LMSpec LMSpec::from_metadata(const std::map<std::string, std::string>& meta, const std::string& source) {
  auto str = [&](const std::string& k) -> const std::string& {
    auto it = meta.find(k);
    NT_CHECK(it != meta.end(), "'{}' has no '{}' in its metadata (train_lm writes it)", source, k);
    return it->second;
  };
  auto num = [&](const std::string& k) {
    const std::string& v = str(k);
    try {
      size_t used = 0;
      const double x = std::stod(v, &used);
      if (used == v.size()) return x;
    } catch (const std::exception&) {
    }
    throw Error(fmt::format("'{}': metadata '{}' must be a number, got '{}'", source, k, v));
  };
  auto integer = [&](const std::string& k) { return (int64_t)num(k); };
  LMSpec s;
  nn::LMConfig& c = s.model;
  c.vocab = integer("vocab"), c.dim = integer("dim"), c.n_layers = integer("layers"), c.n_heads = integer("heads");
  c.n_kv_heads = integer("kv_heads"), c.max_seq = integer("max_seq"), c.mlp_hidden = integer("mlp_hidden");
  c.rope.theta = num("rope_theta");
  s.attention = meta.count("attention") ? str("attention") : "dense";
  s.mlp = meta.count("mlp") ? str("mlp") : "dense";
  NT_CHECK(s.attention == "dense" || s.attention == "nsa", "'{}': metadata 'attention' must be dense or nsa, got '{}'",
           source, s.attention);
  NT_CHECK(s.mlp == "dense" || s.mlp == "moe", "'{}': metadata 'mlp' must be dense or moe, got '{}'", source, s.mlp);
  if (s.attention == "nsa") {
    s.nsa.block = integer("nsa.block"), s.nsa.stride = integer("nsa.stride");
    s.nsa.select_block = integer("nsa.select_block"), s.nsa.n_select = integer("nsa.n_select");
    s.nsa.window = integer("nsa.window"), s.nsa.cmp_hidden = integer("nsa.cmp_hidden");
  }
  if (s.mlp == "moe") {
    s.moe.n_routed = integer("moe.n_routed"), s.moe.top_k = integer("moe.top_k");
    s.moe.n_shared = integer("moe.n_shared"), s.moe.expert_hidden = integer("moe.expert_hidden");
    s.moe_first_dense = integer("moe.first_dense");
    s.moe.router.affinity = str("moe.affinity");
    s.moe.router.normalize_topk = str("moe.normalize_topk") == "1", s.moe.router.aux_free = str("moe.aux_free") == "1";
    // checkpoints from before the factor existed ran without it
    const char* scaling = "moe.routed_scaling_factor";
    s.moe.router.routed_scaling_factor = meta.count(scaling) ? num(scaling) : 1.0;
  }
  return s;
}

void restore_moe_biases(nn::TransformerLM& lm, const std::map<std::string, std::string>& meta, const std::string& source) {
  for (size_t i = 0; i < lm.layers.size(); ++i) {
    auto it = meta.find("moe.bias." + std::to_string(i));
    if (it == meta.end()) continue;
    auto* l = dynamic_cast<moe::DeepSeekMoE*>(lm.layers[i]->mlp.get());
    NT_CHECK(l, "'{}': metadata has an MoE bias for layer {}, which is not an MoE layer", source, i);
    std::vector<double> b;
    std::stringstream ss(it->second);
    std::string item;
    while (std::getline(ss, item, ',')) b.push_back(std::stod(item));
    NT_CHECK((int64_t)b.size() == l->cfg.n_routed, "'{}': moe.bias.{} has {} values for {} experts", source, i, b.size(),
             l->cfg.n_routed);
    l->router->set_bias(b);
  }
}

}  // namespace nt::train
