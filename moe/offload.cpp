#include "moe/offload.h"

#include "autograd/graph.h"
#include "moe/moe_layer.h"
#include "nn/transformer.h"

namespace nt::moe {

NT_REGISTER_OP(kUpload, "upload_staged", true);

HostStagedWeights::HostStagedWeights(std::vector<Tensor> host, Device device)
    : host_(std::move(host)), device_(device) {
  NT_CHECK(device.is_cuda(), "HostStagedWeights: the device must be a GPU, got {}", device.str());
  for (const Tensor& h : host_) {
    NT_CHECK(h.device().is_cpu() && h.is_contiguous() && h.offset() == 0,
             "HostStagedWeights: host tensors must be contiguous CPU tensors (pinned for asynchronous uploads: "
             "Tensor::pin_memory), got {} on {}{}", shape_str(h.shape()), h.device().str(),
             h.is_contiguous() ? "" : ", not contiguous");
    Tensor d = empty(h.shape(), h.dtype(), device);
    d.impl()->storage->release();
    device_copies_.push_back(d);
  }
}

void HostStagedWeights::stage() {
  if (staged_) return;
  std::vector<cuda::CopySpan> spans;
  for (size_t i = 0; i < host_.size(); ++i) {
    NT_CHECK(host_[i].device().is_cpu(), "HostStagedWeights: host tensor {} moved to {} (by Module::to after "
             "offloading?)", i, host_[i].device().str());
    Storage& s = *device_copies_[i].impl()->storage;
    s.reallocate();
    // Tensors saved by autograd from an earlier staging compare this version: a change of the host values in
    // between (an optimizer step) is then reported as an in-place modification, not silently used.
    s.version.store(host_[i].impl()->storage->version.load());
    spans.push_back({s.data, host_[i].data_ptr(), s.nbytes});
  }
  upload_ = cuda::Upload(spans, device_.index);
  staged_ = true;
}

void HostStagedWeights::ready() {
  stage();
  upload_.wait();
}

void HostStagedWeights::release() {
  if (!staged_) return;
  upload_.wait();  // the copy must be done before the memory goes back to the allocator (ordered on the stream)
  for (Tensor& d : device_copies_) d.impl()->storage->release();
  staged_ = false;
}

std::vector<Tensor> HostStagedWeights::device_tensors() const {
  NT_CHECK(staged_, "HostStagedWeights::device_tensors: not staged (call ready() first)");
  std::vector<Tensor> out;
  for (size_t i = 0; i < host_.size(); ++i) {
    const Tensor& d = device_copies_[i];
    Tensor v = make_view(d, d.shape(), d.strides(), 0);
    if (autograd::needs_grad({&host_[i]}))
      autograd::record(kUpload, v, {host_[i]}, [](const Tensor& g, const std::vector<bool>&) {
        // Straight into pinned memory at full link speed (Tensor::to(kCPU) stages through pageable memory and a
        // host copy: seconds per GiB). Pinned blocks are cached (cuda::host_malloc_pinned), so this allocation is
        // cheap after the first step, and the engine takes the buffer as the leaf's gradient without copying it.
        Tensor h = empty_pinned(g.shape(), g.dtype());
        const Tensor gc = g.contiguous();
        cuda::copy_d2h(h.data_ptr(), gc.data_ptr(), (size_t)gc.numel() * gc.element_size(), g.device().index);
        return std::vector<Tensor>{h};
      });
    out.push_back(v);
  }
  return out;
}

int64_t offload_experts(nn::TransformerLM& lm) {
  RoutedExperts* prev = nullptr;
  int64_t n = 0;
  for (auto& block : lm.layers) {
    auto* m = dynamic_cast<DeepSeekMoE*>(block->mlp.get());
    if (!m) continue;
    RoutedExperts& e = *m->experts;
    NT_CHECK(e.w1.device().is_cuda(), "offload_experts: the model must be on the GPU first (lm.to(device)); layer "
             "experts are on {}", e.w1.device().str());
    e.offload(e.w1.device());
    if (prev) prev->next_offloaded = &e, e.prev_offloaded = prev;
    prev = &e;
    ++n;
  }
  return n;
}

}  // namespace nt::moe
