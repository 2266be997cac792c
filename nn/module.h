// Module: a tree of named parameters and submodules, as torch.nn.Module. Parameters are leaf tensors that require
// grad, registered by the address of the member that holds them, so to(device) can replace them in place.
// Names are dotted paths ("layers.0.attn.wq.weight"), the names checkpoints use.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ops/ops.h"

namespace nt::nn {

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter with its dotted name, in registration order (depth first).
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  int64_t num_parameters() const;
  void zero_grad();
  void train(bool on = true);
  bool is_training() const { return training_; }
  // Moves (or casts) every parameter; gradients are dropped.
  void to(Device device);
  void to(DType dtype);

 protected:
  // `slot` must outlive the module (a member of the derived class); t becomes a leaf requiring grad.
  void register_parameter(const std::string& name, Tensor* slot, Tensor t);
  template <class M> std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void visit(const std::string& prefix, const std::function<void(const std::string&, Tensor*)>& f) const;
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// What a forward pass over a batch needs besides the activations. cu_seqlens: packed documents, as boundaries
// over the batch's B * T tokens flattened (starts at 0, ends at B * T, each row boundary included); attention
// stays inside a document. Empty: each row of the batch is one sequence.
struct ForwardContext {
  std::vector<int32_t> cu_seqlens;
};

// Decoding state of one attention layer: keys and values of the positions seen so far, [B, max_seq, Hkv, D]
// preallocated; `length` positions are filled. more: further state of layers that keep more than one key/value
// pair per position (NSA: its branches' keys and values and the compressed blocks).
struct LayerCache {
  Tensor k, v;
  int64_t length = 0;
  std::vector<Tensor> more;
};

// A module that maps one tensor to one tensor (blocks, attention, MLPs): what a transformer block plugs in.
// Layers that care about document boundaries (attention) override the two-argument form.
class Layer : public Module {
 public:
  virtual Tensor forward(const Tensor& x) = 0;
  virtual Tensor forward(const Tensor& x, const ForwardContext&) { return forward(x); }
  // A loss term the layer's last forward adds to the training objective (e.g. an MoE balancing loss); undefined
  // when there is none. TransformerLM::loss adds every block's.
  virtual Tensor aux_loss() const { return Tensor(); }
  // Decoding (attention layers; TransformerLM::forward_cached): a fresh cache for `batch` sequences of up to
  // max_seq positions, and a forward of the next positions x [B, Tn, dim] against it. Others throw.
  virtual LayerCache new_cache(int64_t batch, int64_t max_seq, DType dtype, Device device) const;
  virtual Tensor forward_cached(const Tensor& x, LayerCache& cache);
};


}  // namespace nt::nn
