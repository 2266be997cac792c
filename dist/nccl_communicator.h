// The Communicator over NCCL: one process per GPU, rank 0's ncclUniqueId handed out by the TCP rendezvous
// (dist/rendezvous.h). Tensors are contiguous CUDA tensors. Collectives run on the communicator's own stream, each
// after the work already queued on the device's current stream; the blocking calls make the current stream wait
// for them (stream order, no host sync), the *_async ones only at Work::wait(), so compute overlaps the transfer.
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
  void all_to_all(const Tensor& in, Tensor& out) override;
  void barrier() override;
  Work all_gather_async(const Tensor& shard, Tensor& full) override;
  Work reduce_scatter_async(const Tensor& full, Tensor& shard, ReduceOp op) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
};

}  // namespace nt::dist
