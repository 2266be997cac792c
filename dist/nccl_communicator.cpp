#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <functional>

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
  cudaStream_t stream = nullptr;  // the collectives' own stream (high priority: transfers start as soon as ready)

  // Issues a collective on `stream` after everything queued so far on the current (compute) stream, which then
  // waits for it only in Work::wait(). `keep` stays alive until then.
  Work launch(std::vector<Tensor> keep, const std::function<ncclResult_t(cudaStream_t)>& issue, const char* what) {
    const cudaStream_t compute = cuda::current_stream(device);
    cudaEvent_t ready, done;
    NT_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    NT_CUDA_CHECK(cudaEventRecord(ready, compute));
    NT_CUDA_CHECK(cudaStreamWaitEvent(stream, ready, 0));
    NT_CUDA_CHECK(cudaEventDestroy(ready));  // released once the wait has passed it
    nccl_check(issue(stream), what);
    NT_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    NT_CUDA_CHECK(cudaEventRecord(done, stream));
    const int dev = device;
    return Work([done, dev, keep = std::move(keep)] {
      NT_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(dev), done, 0));
      NT_CUDA_CHECK(cudaEventDestroy(done));
    });
  }
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
  int least, greatest;
  NT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  NT_CUDA_CHECK(cudaStreamCreateWithPriority(&impl_->stream, cudaStreamNonBlocking, greatest));
}

NcclCommunicator::~NcclCommunicator() {
  if (!impl_) return;
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  if (impl_->comm) ncclCommDestroy(impl_->comm);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

Work NcclCommunicator::all_gather_async(const Tensor& shard, Tensor& full) {
  check_tensor(shard, "shard", impl_->device), check_tensor(full, "full", impl_->device);
  NT_CHECK(full.numel() == shard.numel() * size_ && full.dtype() == shard.dtype(),
           "all_gather: full has {} elements of {}, expected {} x {} of {}", full.numel(), dtype_name(full.dtype()), size_,
           shard.numel(), dtype_name(shard.dtype()));
  return impl_->launch({shard, full}, [&](cudaStream_t st) {
    return ncclAllGather(shard.data_ptr(), full.data_ptr(), (size_t)shard.numel(), nccl_type(shard.dtype()), impl_->comm, st);
  }, "ncclAllGather");
}

Work NcclCommunicator::reduce_scatter_async(const Tensor& full, Tensor& shard, ReduceOp op) {
  check_tensor(shard, "shard", impl_->device), check_tensor(full, "full", impl_->device);
  NT_CHECK(full.numel() == shard.numel() * size_ && full.dtype() == shard.dtype(),
           "reduce_scatter: full has {} elements, expected {} x {}", full.numel(), size_, shard.numel());
  return impl_->launch({full, shard}, [&](cudaStream_t st) {
    return ncclReduceScatter(full.data_ptr(), shard.data_ptr(), (size_t)shard.numel(), nccl_type(full.dtype()),
                             op == ReduceOp::avg ? ncclAvg : ncclSum, impl_->comm, st);
  }, "ncclReduceScatter");
}

void NcclCommunicator::all_gather(const Tensor& shard, Tensor& full) { all_gather_async(shard, full).wait(); }

void NcclCommunicator::reduce_scatter(const Tensor& full, Tensor& shard, ReduceOp op) {
  reduce_scatter_async(full, shard, op).wait();
}

void NcclCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  check_tensor(t, "t", impl_->device);
  impl_->launch({t}, [&](cudaStream_t st) {
    return ncclAllReduce(t.data_ptr(), t.data_ptr(), (size_t)t.numel(), nccl_type(t.dtype()),
                         op == ReduceOp::avg ? ncclAvg : ncclSum, impl_->comm, st);
  }, "ncclAllReduce").wait();
}

void NcclCommunicator::broadcast(Tensor& t, int root) {
  check_tensor(t, "t", impl_->device);
  NT_CHECK(root >= 0 && root < size_, "broadcast: root {} outside [0, {})", root, size_);
  impl_->launch({t}, [&](cudaStream_t st) {
    return ncclBroadcast(t.data_ptr(), t.data_ptr(), (size_t)t.numel(), nccl_type(t.dtype()), root, impl_->comm, st);
  }, "ncclBroadcast").wait();
}

void NcclCommunicator::all_to_all(const Tensor& in, Tensor& out) {
  check_tensor(in, "in", impl_->device), check_tensor(out, "out", impl_->device);
  NT_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel(),
           "all_to_all: out has {} elements of {}, expected in's {} of {}", out.numel(), dtype_name(out.dtype()),
           in.numel(), dtype_name(in.dtype()));
  NT_CHECK(in.numel() % size_ == 0, "all_to_all: in has {} elements, not a multiple of the {} ranks", in.numel(), size_);
  // Point-to-point pairs in one NCCL group; an in-place exchange sends from a copy.
  const Tensor src = in.data_ptr() == out.data_ptr() ? in.clone() : in;
  const size_t n = (size_t)(in.numel() / size_), bytes = n * in.element_size();
  impl_->launch({src, out}, [&](cudaStream_t st) {
    ncclResult_t r = ncclGroupStart();
    for (int peer = 0; peer < size_ && r == ncclSuccess; ++peer) {
      r = ncclSend(static_cast<const char*>(src.data_ptr()) + peer * bytes, n, nccl_type(in.dtype()), peer, impl_->comm, st);
      if (r == ncclSuccess)
        r = ncclRecv(static_cast<char*>(out.data_ptr()) + peer * bytes, n, nccl_type(in.dtype()), peer, impl_->comm, st);
    }
    const ncclResult_t end = ncclGroupEnd();
    return r != ncclSuccess ? r : end;
  }, "ncclSend/ncclRecv (all_to_all)").wait();
}

void NcclCommunicator::barrier() {
  Tensor one = ones({1}, DType::f32, cuda_device(impl_->device));
  all_reduce(one, ReduceOp::sum);
  NT_CUDA_CHECK(cudaStreamSynchronize(cuda::current_stream(impl_->device)));
}

}  // namespace nt::dist
