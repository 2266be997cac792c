// Reverse-mode autograd: each differentiable op that sees an input requiring grad records a Node holding its
// backward closure and edges to its inputs. backward() walks the recorded graph (the tape) from the output in
// reverse creation order, so every node runs after all the nodes that consume its output.
//
// Rules:
// - Closures save tensors through Saved, which remembers the storage version: a saved tensor written in place
//   before backward is an error, not a wrong gradient.
// - After backward the closures (and so the saved tensors) are freed unless retain_graph is set; a second
//   backward through a freed node is an error.
// - Backward runs with grad recording off: backward formulas are written with ordinary ops.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace nt {

// ---- op registry: every op has a name, and whether it is differentiable ----
struct OpKind {
  int id;
  const char* name;
  bool differentiable;
};
const OpKind& register_op(const char* name, bool differentiable);
const std::vector<OpKind>& registered_ops();
// Defines `static const OpKind& var` registered under `name`.
#define NT_REGISTER_OP(var, name, differentiable) \
  static const ::nt::OpKind& var = ::nt::register_op(name, differentiable)

namespace autograd {

bool grad_enabled();
struct NoGradGuard {
  bool prev;
  NoGradGuard();
  ~NoGradGuard();
};
struct EnableGradGuard {
  bool prev;
  EnableGradGuard();
  ~EnableGradGuard();
};

// A tensor kept for backward, with the storage version it had when saved.
class Saved {
 public:
  Saved() = default;
  explicit Saved(const Tensor& t);
  // The saved tensor; throws if its storage was written in place since it was saved.
  const Tensor& get() const;
  bool defined() const { return t_.defined(); }

 private:
  Tensor t_;
  uint64_t version_ = 0;
};

// grads[i] for input i; an undefined Tensor for inputs that need none. needs[i] says which are wanted.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad, const std::vector<bool>& needs)>;

struct Node {
  const OpKind* op = nullptr;
  uint64_t seq = 0;  // creation order: a node's inputs always have smaller seq
  std::vector<std::shared_ptr<Node>> input_fns;        // grad_fn of input i (null for leaves and constants)
  std::vector<std::shared_ptr<TensorImpl>> input_leaves;  // leaf requiring grad at input i, else null
  std::vector<bool> needs;                             // input i requires grad
  Shape out_shape;
  DType out_dtype = DType::f32;
  BackwardFn backward;
  bool released = false;
};

// True when grad recording is on and any input requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);
// Attach a node for `op` to `out` (which then requires grad) with the given inputs and backward closure.
void record(const OpKind& op, Tensor& out, const std::vector<Tensor>& inputs, BackwardFn backward);

// The engine behind Tensor::backward.
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph);

// Every op that occurs in the graph behind `t` (for coverage checks of gradient tests).
std::vector<const OpKind*> graph_ops(const Tensor& t);

// Activation checkpointing: run fn(inputs) without keeping its intermediate tensors; during backward run it
// again with recording on and backpropagate through the recomputation. The default generator's offset is restored
// before recomputing, so dropout inside fn draws the same mask twice.
// after_backward (optional) runs once the recomputed segment's backward has finished (fully sharded training
// reduce-scatters and frees the segment's parameter gradients and weights there).
Tensor checkpoint(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs,
                  const std::function<void()>& after_backward = {});

// Identity whose backward first runs hook() and then passes the gradient on. The engine runs nodes in reverse
// creation order, so a hook on a segment's output runs before any of the segment's backward, and a hook on its
// input after all of it (fully sharded training gathers a block's weights in the first and reduce-scatters its
// gradients in the second). Recorded whenever grad recording is on, even if x needs no grad.
Tensor on_backward(const Tensor& x, const std::function<void()>& hook);

}  // namespace autograd
}  // namespace nt
