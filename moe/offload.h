// Offloading of expert weights (DeepSeekMoE's optional memory saving): the routed experts hold most of an MoE
// layer's parameters but run for a few milliseconds per step, so their weights can live in pinned host memory and
// travel to the GPU for each use, on a copy stream that overlaps other layers' work.
//
// HostStagedWeights: tensors whose home is pinned host memory, with device copies that exist only while in use:
// stage() starts the upload (the copy stream waits for work queued before it; nothing blocks), ready() makes the
// current stream wait for it, release() frees the device copies (tensors autograd saved from them included: the
// same storages are filled again by the next stage()). Uploads read the host tensors' values at stage() time.
#pragma once
#include <memory>
#include <vector>

#include "cuda/memory.h"
#include "tensor/tensor.h"

namespace nt::nn {
class TransformerLM;
}

namespace nt::moe {

class HostStagedWeights {
 public:
  // host: contiguous CPU tensors, pinned (Tensor::pin_memory) for uploads that do not block the host; device: where
  // they are used.
  HostStagedWeights(std::vector<Tensor> host, Device device);
  void stage();    // no-op while staged
  void ready();    // stage() if needed, then order the current stream after the upload
  void release();  // no-op when not staged
  bool staged() const { return staged_; }
  // Device views of the staged copies, recorded by autograd as uploads of the host tensors. Their backward copies
  // the gradient into new pinned host memory, waiting for the current stream. Call after ready().
  std::vector<Tensor> device_tensors() const;
  const std::vector<Tensor>& host() const { return host_; }
  Device device() const { return device_; }

 private:
  std::vector<Tensor> host_, device_copies_;
  Device device_;
  cuda::Upload upload_;
  bool staged_ = false;
};

// Offloads the routed experts of every DeepSeekMoE layer of lm (RoutedExperts::offload to lm's device) and chains
// their prefetches: an offloaded layer's forward starts uploading the next offloaded layer's experts, its backward
// the previous one's. Returns the number of layers offloaded. Call after lm.to(device) and before building the
// optimizer: the expert weights become CPU tensors, so train::AdamW keeps their state on the host and updates them
// there (as ZeRO-Offload does), and their gradients arrive on the host.
int64_t offload_experts(nn::TransformerLM& lm);

}  // namespace nt::moe
