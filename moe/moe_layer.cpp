#include "moe/moe_layer.h"

namespace nt::moe {

namespace {
RouterConfig resolved(const MoEConfig& c) {
  RouterConfig r = c.router;
  NT_CHECK(r.n_routed == 0 || r.n_routed == c.n_routed,
           "DeepSeekMoE: router.n_routed ({}) differs from n_routed ({}); leave it 0", r.n_routed, c.n_routed);
  NT_CHECK(r.top_k == 0 || r.top_k == c.top_k, "DeepSeekMoE: router.top_k ({}) differs from top_k ({}); leave it 0",
           r.top_k, c.top_k);
  r.n_routed = c.n_routed, r.top_k = c.top_k;
  return r;
}
}  // namespace

DeepSeekMoE::DeepSeekMoE(const MoEConfig& c, const nn::Init& init) : cfg(c) {
  NT_CHECK(cfg.dim > 0 && cfg.expert_hidden > 0, "DeepSeekMoE: dim ({}) and expert_hidden ({}) must be positive",
           cfg.dim, cfg.expert_hidden);
  NT_CHECK(cfg.n_shared >= 0, "DeepSeekMoE: n_shared must be >= 0, got {}", cfg.n_shared);
  cfg.router = resolved(cfg);
  router = register_module("router", std::make_shared<Router>(cfg.dim, cfg.router, init));
  experts = register_module("experts", std::make_shared<RoutedExperts>(cfg.n_routed, cfg.dim, cfg.expert_hidden, init));
  if (cfg.n_shared > 0)
    shared =
        register_module("shared", std::make_shared<nn::SwiGLUMLP>(cfg.dim, cfg.n_shared * cfg.expert_hidden, init));
  last_groups_ = GroupOffsets(std::vector<int64_t>(cfg.n_routed + 1, 0));
}

std::vector<int64_t> DeepSeekMoE::last_load() const { return last_groups_.sizes(); }

Tensor DeepSeekMoE::forward(const Tensor& x) {
  NT_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "DeepSeekMoE: x must be [B, T, {}], got {}", cfg.dim,
           shape_str(x.shape()));
  const int64_t N = x.size(0) * x.size(1), D = cfg.dim;
  aux_ = Tensor();
  last_groups_ = GroupOffsets(std::vector<int64_t>(cfg.n_routed + 1, 0));
  if (N == 0) return zeros_like(x);
  const Tensor xf = x.reshape({N, D});
  const RouterOutput r = router->forward(xf);
  // The loads stay on the device: nothing here waits for the GPU (the expert GEMMs read the offsets there; on
  // GPUs without our grouped kernel, cuBLAS takes them on the host and the first GEMM copies them).
  const ExpertDispatch d = moe_dispatch(r.indices, cfg.n_routed);
  last_groups_ = d.groups;
  if (is_training() && router->cfg.aux_free) {
    autograd::NoGradGuard no_grad;
    const Tensor l = d.load.to(DType::i64);
    load_since_update_ = load_since_update_.defined() ? load_since_update_ + l : l;
  }
  aux_ = router->aux_loss(r.scores, d.load);
  if (const Tensor seq = router->seq_aux_loss(r.scores, r.indices, x.size(0), x.size(1)); seq.defined())
    aux_ = aux_.defined() ? aux_ + seq : seq;
  // Combine: each token gathers its top_k expert outputs and adds them weighted by their gates (no atomics: the
  // GPU result is deterministic).
  Tensor y = moe_unpermute(experts->forward(xf, d), r.gates, d);
  if (shared) y = y + shared->forward(xf);
  return y.reshape(x.shape());
}

void DeepSeekMoE::update_bias(const std::function<void(std::vector<int64_t>&)>& reduce_load) {
  if (!router->cfg.aux_free) return;
  NT_CHECK(load_since_update_.defined(), "DeepSeekMoE::update_bias: no training-mode forward since the last update");
  std::vector<int64_t> load = load_since_update_.to(kCPU).to_vector_as<int64_t>();  // waits for the GPU
  if (reduce_load) reduce_load(load);
  router->update_bias(load);
  load_since_update_ = Tensor();
}

}  // namespace nt::moe
