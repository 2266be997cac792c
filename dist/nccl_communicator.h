// The Communicator over NCCL: one process per GPU, rank 0's ncclUniqueId handed out by the TCP rendezvous
// (dist/rendezvous.h). Tensors are contiguous CUDA tensors; collectives run on the device's current stream (ordered
// with the compute that produces and consumes them; a separate stream for overlap comes with the ZeRO-3 prefetch).
// Built only when NCCL is found next to the CUDA toolkit (NT_NCCL).
#pragma once
#include <memory>

#include "dist/communicator.h"
#include "dist/launch.h"

namespace nt::dist {

class NcclCommunicator : public Communicator {
 public:
  // Uses GPU p.local_rank; rendezvous at p.master_addr:p.master_port within timeout_s.
  explicit NcclCommunicator(const ProcessInfo& p, double timeout_s = 120);
  ~NcclCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_gather(const Tensor& shard, Tensor& full) override;
  void reduce_scatter(const Tensor& full, Tensor& shard, ReduceOp op) override;
  void all_reduce(Tensor& t, ReduceOp op) override;
  void broadcast(Tensor& t, int root) override;
  void barrier() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
};

}  // namespace nt::dist
