#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "cuda/check.h"
#include "cuda/runtime.h"
#include "dist/rendezvous.h"

namespace nt::dist {
namespace {
void nccl_check(ncclResult_t r, const char* what) {
  NT_CHECK(r == ncclSuccess, "NCCL: {} failed: {} ({})", what, ncclGetErrorString(r), ncclGetLastError(nullptr));
}
ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    default: throw Error(fmt::format("NCCL: no collective for dtype {}", dtype_name(t)));
  }
}
void check_tensor(const Tensor& t, const char* name, int device) {
  NT_CHECK(t.device().is_cuda() && t.device().index == device && t.is_contiguous(),
           "NCCL: {} must be a contiguous tensor on cuda:{}, got {} on {}", name, device,
           t.is_contiguous() ? "a contiguous tensor" : "a strided view", t.device().str());
}
}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  int device = 0;
  cudaStream_t stream() const { return cuda::current_stream(device); }
};

NcclCommunicator::NcclCommunicator(const ProcessInfo& p, double timeout_s) : impl_(std::make_unique<Impl>()) {
  rank_ = p.rank, size_ = p.world_size, impl_->device = p.local_rank;
  NT_CUDA_CHECK(cudaSetDevice(impl_->device));
  ncclUniqueId id;
  if (p.rank == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  const std::string blob = rendezvous_tcp(p, std::string(reinterpret_cast<const char*>(&id), sizeof id), timeout_s);
  NT_CHECK(blob.size() == sizeof id, "NCCL: rendezvous returned {} bytes, expected {}", blob.size(), sizeof id);
  std::memcpy(&id, blob.data(), sizeof id);
  nccl_check(ncclCommInitRank(&impl_->comm, size_, id, rank_), "ncclCommInitRank");
}

NcclCommunicator::~NcclCommunicator() {
  if (impl_ && impl_->comm) ncclCommDestroy(impl_->comm);
}

void NcclCommunicator::all_gather(const Tensor& shard, Tensor& full) {
  check_tensor(shard, "shard", impl_->device), check_tensor(full, "full", impl_->device);
  NT_CHECK(full.numel() == shard.numel() * size_ && full.dtype() == shard.dtype(),
           "all_gather: full has {} elements of {}, expected {} x {} of {}", full.numel(), dtype_name(full.dtype()), size_,
           shard.numel(), dtype_name(shard.dtype()));
  nccl_check(ncclAllGather(shard.data_ptr(), full.data_ptr(), (size_t)shard.numel(), nccl_type(shard.dtype()), impl_->comm,
                           impl_->stream()), "ncclAllGather");
}

void NcclCommunicator::reduce_scatter(const Tensor& full, Tensor& shard, ReduceOp op) {
  check_tensor(shard, "shard", impl_->device), check_tensor(full, "full", impl_->device);
  NT_CHECK(full.numel() == shard.numel() * size_ && full.dtype() == shard.dtype(),
           "reduce_scatter: full has {} elements, expected {} x {}", full.numel(), size_, shard.numel());
  nccl_check(ncclReduceScatter(full.data_ptr(), shard.data_ptr(), (size_t)shard.numel(), nccl_type(full.dtype()),
                               op == ReduceOp::avg ? ncclAvg : ncclSum, impl_->comm, impl_->stream()), "ncclReduceScatter");
}

void NcclCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  check_tensor(t, "t", impl_->device);
  nccl_check(ncclAllReduce(t.data_ptr(), t.data_ptr(), (size_t)t.numel(), nccl_type(t.dtype()),
                           op == ReduceOp::avg ? ncclAvg : ncclSum, impl_->comm, impl_->stream()), "ncclAllReduce");
}

void NcclCommunicator::broadcast(Tensor& t, int root) {
  check_tensor(t, "t", impl_->device);
  NT_CHECK(root >= 0 && root < size_, "broadcast: root {} outside [0, {})", root, size_);
  nccl_check(ncclBroadcast(t.data_ptr(), t.data_ptr(), (size_t)t.numel(), nccl_type(t.dtype()), root, impl_->comm,
                           impl_->stream()), "ncclBroadcast");
}

void NcclCommunicator::barrier() {
  Tensor one = ones({1}, DType::f32, cuda_device(impl_->device));
  all_reduce(one, ReduceOp::sum);
  NT_CUDA_CHECK(cudaStreamSynchronize(impl_->stream()));
}

}  // namespace nt::dist
