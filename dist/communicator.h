// Collectives between the ranks of a data-parallel job, and an in-process implementation where each rank is a
// thread (what the CPU tests use; an NCCL communicator would implement the same interface).
//
// Tensors are contiguous CPU tensors of one dtype; shapes are ignored, only numel matters (flat buffers).
// Reductions run over f32 and f64; gathers and broadcasts over any dtype.
#pragma once
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ops/ops.h"

namespace nt::dist {

enum class ReduceOp { sum, avg };

// A collective in flight (the *_async calls). wait() orders the caller's later work after it: with NCCL the current
// CUDA stream waits for the collective's stream (no host sync), so the compute issued between the call and wait()
// overlaps the transfer. Work keeps the collective's tensors alive until then, so the caching allocator cannot hand
// their memory to a kernel while NCCL still reads or writes it; destroying an unwaited Work waits.
class Work {
 public:
  Work() = default;
  explicit Work(std::function<void()> wait) : wait_(std::move(wait)) {}
  Work(Work&& o) noexcept : wait_(std::exchange(o.wait_, nullptr)) {}
  Work& operator=(Work&& o) noexcept {
    if (this != &o) finish(), wait_ = std::exchange(o.wait_, nullptr);
    return *this;
  }
  ~Work() { finish(); }
  void wait() {
    if (auto w = std::exchange(wait_, nullptr)) w();
  }
  bool pending() const { return (bool)wait_; }

 private:
  void finish() noexcept {
    try {
      wait();
    } catch (...) {  // a destructor must not throw; the next CUDA call reports the error
    }
  }
  std::function<void()> wait_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // full = concat over ranks of shard (full.numel() == size() * shard.numel()). shard may be full's own slice.
  virtual void all_gather(const Tensor& shard, Tensor& full) = 0;
  // shard = slice rank() of the reduction of every rank's full.
  virtual void reduce_scatter(const Tensor& full, Tensor& shard, ReduceOp op) = 0;
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  // Every rank's t becomes root's t.
  virtual void broadcast(Tensor& t, int root) = 0;
  // in and out split into size() equal chunks: chunk j of in goes to rank j, chunk i of out comes from rank i
  // (e.g. tokens to the ranks holding their experts). out may be in.
  virtual void all_to_all(const Tensor& in, Tensor& out) = 0;
  virtual void barrier() = 0;
  // The same collectives, returned in flight (see Work). The default runs them at once (the threads communicator).
  virtual Work all_gather_async(const Tensor& shard, Tensor& full) {
    all_gather(shard, full);
    return {};
  }
  virtual Work reduce_scatter_async(const Tensor& full, Tensor& shard, ReduceOp op) {
    reduce_scatter(full, shard, op);
    return {};
  }
};

// What the threads of one job share. After a timeout or a failed rank the group is broken: every later (and every
// waiting) collective throws, so one failure cannot leave the other ranks hanging.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size, std::chrono::milliseconds timeout = std::chrono::seconds(60));
  int size() const { return size_; }
  std::chrono::milliseconds timeout;
  // Marks the group broken with `why` and wakes every waiting rank.
  void abort(const std::string& why);

 private:
  friend class ThreadCommunicator;
  struct Post {
    std::string op;
    DType dtype = DType::f32;
    int64_t numel = 0;
    const void* src = nullptr;
    int root = -1;
  };
  // Waits until every rank has called arrive() for this round; throws on timeout or when the group is broken.
  void arrive(int rank, const char* op);
  int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
  std::vector<bool> here_;
  int arrived_ = 0;
  bool broken_ = false;
  std::string why_;
  std::vector<Post> posts_;  // rank r writes posts_[r] only; others read it between the two arrive()s
};

class ThreadCommunicator : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank);
  int rank() const override { return rank_; }
  int size() const override { return group_.size(); }
  void all_gather(const Tensor& shard, Tensor& full) override;
  void reduce_scatter(const Tensor& full, Tensor& shard, ReduceOp op) override;
  void all_reduce(Tensor& t, ReduceOp op) override;
  void broadcast(Tensor& t, int root) override;
  void all_to_all(const Tensor& in, Tensor& out) override;
  void barrier() override;

 private:
  // Posts this rank's buffer, waits for all, checks that every rank called the same op with the same dtype and
  // numel, runs `body` (which may read every rank's post), then waits again so no buffer changes while read.
  void collective(const char* op, const Tensor& t, const void* src, int root, const std::function<void()>& body);
  ThreadGroup& group_;
  int rank_;
};

// Runs fn on n ranks (threads sharing one ThreadGroup), joins them and rethrows the first exception thrown.
void run_ranks(int n, const std::function<void(Communicator&)>& fn,
               std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Sums counts over the ranks in place (through an f64 tensor on `device`: exact below 2^53), e.g. MoE expert loads.
void all_reduce_counts(Communicator& comm, std::vector<int64_t>& counts, Device device = kCPU);

}  // namespace nt::dist
