#include "nn/module.h"

namespace nt::nn {

void Module::register_parameter(const std::string& name, Tensor* slot, Tensor t) {
  for (auto& [n, p] : params_) NT_CHECK(n != name, "register_parameter: '{}' is registered twice", name);
  *slot = t.detach();
  slot->requires_grad_(true);
  params_.emplace_back(name, slot);
}

void Module::visit(const std::string& prefix, const std::function<void(const std::string&, Tensor*)>& f) const {
  for (auto& [name, slot] : params_) f(prefix + name, slot);
  for (auto& [name, child] : children_) child->visit(prefix + name + ".", f);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  visit("", [&](const std::string& n, Tensor* t) { out.emplace_back(n, *t); });
  return out;
}
std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  visit("", [&](const std::string&, Tensor* t) { out.push_back(*t); });
  return out;
}
int64_t Module::num_parameters() const {
  int64_t n = 0;
  visit("", [&](const std::string&, Tensor* t) { n += t->numel(); });
  return n;
}
void Module::zero_grad() {
  visit("", [](const std::string&, Tensor* t) { t->set_grad(Tensor()); });
}
void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}
void Module::to(Device device) {
  visit("", [&](const std::string&, Tensor* t) {
    *t = t->detach().to(device).detach();
    t->requires_grad_(true);
  });
}
void Module::to(DType dtype) {
  visit("", [&](const std::string&, Tensor* t) {
    *t = t->detach().to(dtype);
    t->requires_grad_(true);
  });
}

LayerCache Layer::new_cache(int64_t, int64_t, DType, Device) const {
  throw Error("this layer does not support decoding with a cache (forward_cached)");
}
Tensor Layer::forward_cached(const Tensor&, LayerCache&) {
  throw Error("this layer does not support decoding with a cache (forward_cached)");
}

}  // namespace nt::nn
