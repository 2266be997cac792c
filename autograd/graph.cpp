// The tape: op registry, grad mode, node recording, the backward engine and activation checkpointing.
#include "autograd/graph.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "ops/elementwise.h"

namespace nt {

namespace {
// Kinds live in a deque so references handed out stay valid as more are registered; the vector is the listing.
std::deque<OpKind>& kinds() {
  static std::deque<OpKind> k;
  return k;
}
std::vector<OpKind>& kind_list() {
  static std::vector<OpKind> l;
  return l;
}
}  // namespace

const OpKind& register_op(const char* name, bool differentiable) {
  for (const OpKind& k : kinds())
    NT_CHECK(std::string(k.name) != name, "register_op: op '{}' registered twice", name);
  kinds().push_back(OpKind{(int)kinds().size(), name, differentiable});
  kind_list().push_back(kinds().back());
  return kinds().back();
}
const std::vector<OpKind>& registered_ops() { return kind_list(); }

namespace autograd {
namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_seq{0};
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev; }
EnableGradGuard::EnableGradGuard() : prev(g_grad_enabled) { g_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { g_grad_enabled = prev; }

Saved::Saved(const Tensor& t) {
  if (!t.defined()) return;
  t_ = t.detach();  // no grad_fn: saving an op's own output must not make a reference cycle
  version_ = t.impl()->storage->version.load();
}
const Tensor& Saved::get() const {
  const uint64_t now = t_.impl()->storage->version.load();
  NT_CHECK(now == version_,
           "backward: a tensor of shape {} saved for the gradient was modified in place after it was saved "
           "(version {} when saved, {} now); clone it before writing to it",
           shape_str(t_.shape()), version_, now);
  return t_;
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}
bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const OpKind& op, Tensor& out, const std::vector<Tensor>& inputs, BackwardFn backward) {
  auto node = std::make_shared<Node>();
  node->op = &op;
  node->seq = g_seq.fetch_add(1);
  const size_t n = inputs.size();
  node->input_fns.resize(n);
  node->input_leaves.resize(n);
  node->needs.resize(n, false);
  for (size_t i = 0; i < n; ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.requires_grad()) continue;
    node->needs[i] = true;
    if (t.grad_fn())
      node->input_fns[i] = t.grad_fn();
    else
      node->input_leaves[i] = t.impl_ptr();
  }
  node->out_shape = out.shape();
  node->out_dtype = out.dtype();
  node->backward = std::move(backward);
  out.impl()->requires_grad = true;
  out.impl()->grad_fn = std::move(node);
}

namespace {
// True when nothing but `g` refers to its memory, and g covers all of it: then it can become a .grad as it is.
bool sole_owner(const Tensor& g) {
  return g.impl_ptr().use_count() == 1 && g.impl()->storage.use_count() == 1 && g.is_contiguous() && g.offset() == 0 &&
         (size_t)g.numel() * g.element_size() == g.impl()->storage->nbytes && !g.grad_fn();
}
void accumulate(std::shared_ptr<TensorImpl>& slot, Tensor g) {
  if (!slot)
    slot = sole_owner(g) ? g.impl_ptr() : g.clone().impl_ptr();  // else own a copy: g may alias a live tensor
  else
    slot = add(Tensor(slot), g).impl_ptr();
}
void check_grad_shape(const Tensor& g, const Shape& shape, DType dtype, const char* what, const char* op) {
  NT_CHECK(g.shape() == shape, "backward: gradient for {} of op '{}' has shape {}, expected {}", what, op,
           shape_str(g.shape()), shape_str(shape));
  NT_CHECK(g.dtype() == dtype, "backward: gradient for {} of op '{}' has dtype {}, expected {}", what, op,
           dtype_name(g.dtype()), dtype_name(dtype));
}
void accumulate_leaf(TensorImpl* leaf, Tensor g) {
  check_grad_shape(g, leaf->shape, leaf->dtype, "a leaf", "accumulate");
  accumulate(leaf->grad, std::move(g));
}
void collect(const std::shared_ptr<Node>& root, std::vector<Node*>& order) {
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack{root.get()};
  seen.insert(root.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    order.push_back(n);
    for (auto& f : n->input_fns)
      if (f && seen.insert(f.get()).second) stack.push_back(f.get());
  }
  std::sort(order.begin(), order.end(), [](Node* a, Node* b) { return a->seq > b->seq; });
}
}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_in, bool retain_graph) {
  NT_CHECK(root.requires_grad(),
           "backward: the tensor (shape {}) does not require grad and has no grad_fn; "
           "did you create it under a no-grad scope or from inputs that do not require grad?",
           shape_str(root.shape()));
  Tensor grad = grad_in;
  if (!grad.defined()) {
    NT_CHECK(root.numel() == 1,
             "backward: grad can be implicitly created only for a one-element output; got shape {}, pass a grad",
             shape_str(root.shape()));
    grad = ones_like(root);
  }
  NT_CHECK(grad.shape() == root.shape(), "backward: grad has shape {}, expected the output's shape {}",
           shape_str(grad.shape()), shape_str(root.shape()));
  NoGradGuard no_grad;
  if (!root.grad_fn()) {
    accumulate_leaf(root.impl(), grad.to(root.dtype()));
    return;
  }
  std::vector<Node*> order;
  collect(root.grad_fn(), order);
  std::unordered_map<Node*, std::shared_ptr<TensorImpl>> pending;
  pending[root.grad_fn().get()] = grad.to(root.dtype()).impl_ptr();
  for (Node* node : order) {
    auto it = pending.find(node);
    if (it == pending.end()) continue;  // reachable only through inputs that need no grad
    Tensor g(it->second);
    pending.erase(it);
    NT_CHECK(!node->released,
             "backward: the graph through op '{}' was already freed by an earlier backward; "
             "pass retain_graph=true to the first backward to run backward twice",
             node->op->name);
    std::vector<Tensor> grads = node->backward(g, node->needs);
    g = Tensor();
    // Free the saved tensors before accumulating, so a gradient no one else holds can be adopted without a copy.
    if (!retain_graph) {
      node->backward = nullptr;
      node->released = true;
    }
    NT_CHECK(grads.size() == node->needs.size(), "backward: op '{}' returned {} gradients for {} inputs",
             node->op->name, grads.size(), node->needs.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!node->needs[i]) continue;
      NT_CHECK(grads[i].defined(), "backward: op '{}' returned no gradient for input {}", node->op->name, i);
      if (node->input_fns[i]) {
        Node* in = node->input_fns[i].get();
        check_grad_shape(grads[i], in->out_shape, in->out_dtype, "an input", node->op->name);
        accumulate(pending[in], std::move(grads[i]));
      } else if (node->input_leaves[i]) {
        accumulate_leaf(node->input_leaves[i].get(), std::move(grads[i]));
      }
    }
  }
}

std::vector<const OpKind*> graph_ops(const Tensor& t) {
  std::vector<const OpKind*> ops;
  if (!t.grad_fn()) return ops;
  std::vector<Node*> order;
  collect(t.grad_fn(), order);
  for (Node* n : order)
    if (std::find(ops.begin(), ops.end(), n->op) == ops.end()) ops.push_back(n->op);
  return ops;
}

NT_REGISTER_OP(kCheckpoint, "checkpoint", true);

Tensor checkpoint(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& inputs,
                  const std::function<void()>& after_backward) {
  const uint64_t rng_offset = default_generator().offset;
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(inputs);
  }
  // Recorded even when no input requires grad: parameters used inside fn may.
  if (!grad_enabled()) return out;
  auto backward = [fn, inputs, rng_offset, after_backward](const Tensor& g, const std::vector<bool>&) {
    std::vector<Tensor> leaves;
    for (const Tensor& t : inputs) {
      Tensor d = t.detach();
      if (t.requires_grad()) d.requires_grad_(true);
      leaves.push_back(d);
    }
    const uint64_t saved_offset = default_generator().offset;
    default_generator().offset = rng_offset;
    Tensor y;
    {
      EnableGradGuard enable;
      y = fn(leaves);
    }
    default_generator().offset = saved_offset;
    if (y.requires_grad()) y.backward(g);  // also accumulates into parameters used inside fn
    if (after_backward) after_backward();
    std::vector<Tensor> grads;
    for (size_t i = 0; i < leaves.size(); ++i)
      grads.push_back(inputs[i].requires_grad() ? (leaves[i].grad().defined() ? leaves[i].grad()
                                                                             : zeros_like(inputs[i]))
                                                : Tensor());
    return grads;
  };
  record(kCheckpoint, out, inputs, backward);
  return out;
}

NT_REGISTER_OP(kOnBackward, "on_backward", true);

Tensor on_backward(const Tensor& x, const std::function<void()>& hook) {
  if (!grad_enabled()) return x;
  Tensor out = x.detach();
  record(kOnBackward, out, {x}, [hook](const Tensor& g, const std::vector<bool>&) {
    hook();
    return std::vector<Tensor>{g};
  });
  return out;
}

}  // namespace autograd

void Tensor::backward(const Tensor& grad, bool retain_graph) const { autograd::run_backward(*this, grad, retain_graph); }

Tensor& Tensor::requires_grad_(bool on) {
  NT_CHECK(!on || is_floating(dtype()), "requires_grad_: only floating-point tensors can require grad, got {}",
           dtype_name(dtype()));
  NT_CHECK(is_leaf(), "requires_grad_: can only be changed on a leaf tensor (this one has grad_fn '{}')",
           grad_fn()->op->name);
  impl_->requires_grad = on;
  return *this;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->offset = impl_->offset;
  impl->dtype = impl_->dtype;
  return Tensor(impl);
}

}  // namespace nt
