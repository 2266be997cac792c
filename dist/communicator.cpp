#include "dist/communicator.h"

#include <cstring>
#include <thread>

namespace nt::dist {

ThreadGroup::ThreadGroup(int size, std::chrono::milliseconds t) : timeout(t), size_(size), here_(size), posts_(size) {
  NT_CHECK(size >= 1, "ThreadGroup: size must be >= 1, got {}", size);
  NT_CHECK(t.count() > 0, "ThreadGroup: timeout must be > 0 ms, got {}", t.count());
}

void ThreadGroup::abort(const std::string& why) {
  std::lock_guard lk(mu_);
  if (!broken_) broken_ = true, why_ = why;
  cv_.notify_all();
}

void ThreadGroup::arrive(int rank, const char* op) {
  std::unique_lock lk(mu_);
  if (broken_) throw Error(fmt::format("{} on rank {}: the group is broken: {}", op, rank, why_));
  const uint64_t gen = generation_;
  here_[rank] = true;
  if (++arrived_ == size_) {
    arrived_ = 0, std::fill(here_.begin(), here_.end(), false), ++generation_;
    cv_.notify_all();
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const bool done = cv_.wait_until(lk, deadline, [&] { return generation_ != gen || broken_; });
  if (done && generation_ != gen) return;  // completed (even if the group broke right after)
  if (!done) {
    std::string missing;
    for (int r = 0; r < size_; ++r)
      if (!here_[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    broken_ = true;
    why_ = fmt::format("{} timed out after {} ms on rank {}: rank(s) {} did not arrive (a rank skipped a collective "
                       "or called them in another order)", op, timeout.count(), rank, missing);
    cv_.notify_all();
    throw Error(why_);
  }
  throw Error(fmt::format("{} on rank {}: the group is broken: {}", op, rank, why_));
}

ThreadCommunicator::ThreadCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {
  NT_CHECK(rank >= 0 && rank < group.size(), "ThreadCommunicator: rank {} outside [0, {})", rank, group.size());
}

namespace {
void check_buffer(const char* op, const char* arg, const Tensor& t) {
  NT_CHECK(t.defined(), "{}: {} is undefined", op, arg);
  NT_CHECK(t.device().is_cpu(), "{}: {} must be a CPU tensor", op, arg);
  NT_CHECK(t.is_contiguous(), "{}: {} must be contiguous", op, arg);
}
void check_reducible(const char* op, const char* arg, const Tensor& t) {
  NT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, "{}: {} has dtype {}; reductions take f32 or f64", op,
           arg, dtype_name(t.dtype()));
}

// out[i] = op over ranks r = 0, 1, ... (in that order, so the result does not depend on timing) of src[r][i].
template <class T> void reduce_into(T* out, const std::vector<const T*>& src, int64_t n, ReduceOp op) {
  for (int64_t i = 0; i < n; ++i) {
    double acc = 0;
    for (const T* s : src) acc += (double)s[i];
    out[i] = (T)(op == ReduceOp::avg ? acc / (double)src.size() : acc);
  }
}
void reduce(DType dt, void* out, const std::vector<const void*>& src, int64_t offset, int64_t n, ReduceOp op) {
  auto run = [&]<class T>(T*) {
    std::vector<const T*> s;
    for (const void* p : src) s.push_back(static_cast<const T*>(p) + offset);
    reduce_into(static_cast<T*>(out), s, n, op);
  };
  if (dt == DType::f64) run((double*)nullptr);
  else run((float*)nullptr);
}
}  // namespace

void ThreadCommunicator::collective(const char* op, const Tensor& t, const void* src, int root,
                                    const std::function<void()>& body) {
  {
    std::lock_guard lk(group_.mu_);
    group_.posts_[rank_] = {op, t.defined() ? t.dtype() : DType::f32, t.defined() ? t.numel() : 0, src, root};
  }
  group_.arrive(rank_, op);
  // The arrive() above orders every rank's post before these reads; nobody writes a post until the second arrive().
  const auto& posts = group_.posts_;
  for (int r = 0; r < size(); ++r) {
    const ThreadGroup::Post& p = posts[r];
    NT_CHECK(p.op == op, "{} on rank {}: rank {} called {} at the same time (every rank must call the same "
             "collectives in the same order)", op, rank_, r, p.op);
    NT_CHECK(p.dtype == posts[rank_].dtype, "{}: rank {} passed dtype {} but rank {} passed dtype {}", op, r,
             dtype_name(p.dtype), rank_, dtype_name(posts[rank_].dtype));
    NT_CHECK(p.numel == posts[rank_].numel, "{}: rank {} passed {} elements but rank {} passed {} elements", op, r, p.numel,
             rank_, posts[rank_].numel);
    NT_CHECK(p.root == root, "{}: rank {} passed root {} but rank {} passed {}", op, r, p.root, rank_, root);
  }
  body();
  group_.arrive(rank_, op);
}

void ThreadCommunicator::all_gather(const Tensor& shard, Tensor& full) {
  check_buffer("all_gather", "shard", shard), check_buffer("all_gather", "full", full);
  NT_CHECK(full.dtype() == shard.dtype(), "all_gather: full has dtype {} but shard has {}", dtype_name(full.dtype()),
           dtype_name(shard.dtype()));
  NT_CHECK(full.numel() == size() * shard.numel(), "all_gather: full has {} elements; it must have size ({}) * "
           "shard's {} = {}", full.numel(), size(), shard.numel(), size() * shard.numel());
  collective("all_gather", shard, shard.data_ptr(), -1, [&] {
    const size_t bytes = (size_t)shard.numel() * shard.element_size();
    char* out = static_cast<char*>(full.data_ptr());
    for (int r = 0; r < size(); ++r)
      if (out + r * bytes != group_.posts_[r].src) std::memmove(out + r * bytes, group_.posts_[r].src, bytes);
  });
  full.impl()->storage->version++;
}

void ThreadCommunicator::reduce_scatter(const Tensor& full, Tensor& shard, ReduceOp op) {
  check_buffer("reduce_scatter", "full", full), check_buffer("reduce_scatter", "shard", shard);
  check_reducible("reduce_scatter", "full", full);
  NT_CHECK(full.dtype() == shard.dtype(), "reduce_scatter: shard has dtype {} but full has {}",
           dtype_name(shard.dtype()), dtype_name(full.dtype()));
  NT_CHECK(full.numel() == size() * shard.numel(), "reduce_scatter: full has {} elements; it must have size ({}) * "
           "shard's {} = {}", full.numel(), size(), shard.numel(), size() * shard.numel());
  collective("reduce_scatter", full, full.data_ptr(), -1, [&] {
    std::vector<const void*> src;
    for (const auto& p : group_.posts_) src.push_back(p.src);
    reduce(full.dtype(), shard.data_ptr(), src, rank_ * shard.numel(), shard.numel(), op);
  });
  shard.impl()->storage->version++;
}

void ThreadCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  check_buffer("all_reduce", "t", t), check_reducible("all_reduce", "t", t);
  const Tensor staged = t.clone();  // others read our input while we overwrite t
  collective("all_reduce", t, staged.data_ptr(), -1, [&] {
    std::vector<const void*> src;
    for (const auto& p : group_.posts_) src.push_back(p.src);
    reduce(t.dtype(), t.data_ptr(), src, 0, t.numel(), op);
  });
  t.impl()->storage->version++;
}

void ThreadCommunicator::all_to_all(const Tensor& in, Tensor& out) {
  check_buffer("all_to_all", "in", in), check_buffer("all_to_all", "out", out);
  NT_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel(),
           "all_to_all: out has {} elements of {}, expected in's {} of {}", out.numel(), dtype_name(out.dtype()),
           in.numel(), dtype_name(in.dtype()));
  NT_CHECK(in.numel() % size() == 0, "all_to_all: in has {} elements, not a multiple of the {} ranks", in.numel(),
           size());
  const Tensor staged = in.data_ptr() == out.data_ptr() ? in.clone() : in;  // others read our input while we write
  collective("all_to_all", in, staged.data_ptr(), -1, [&] {
    const size_t bytes = (size_t)(in.numel() / size()) * in.element_size();
    for (int r = 0; r < size(); ++r)
      std::memcpy(static_cast<char*>(out.data_ptr()) + r * bytes,
                  static_cast<const char*>(group_.posts_[r].src) + rank_ * bytes, bytes);
  });
  out.impl()->storage->version++;
}

void ThreadCommunicator::broadcast(Tensor& t, int root) {
  check_buffer("broadcast", "t", t);
  NT_CHECK(root >= 0 && root < size(), "broadcast: root {} outside [0, {})", root, size());
  collective("broadcast", t, t.data_ptr(), root, [&] {
    if (rank_ != root) std::memcpy(t.data_ptr(), group_.posts_[root].src, (size_t)t.numel() * t.element_size());
  });
  if (rank_ != root) t.impl()->storage->version++;
}

void ThreadCommunicator::barrier() { collective("barrier", Tensor(), nullptr, -1, [] {}); }

void run_ranks(int n, const std::function<void(Communicator&)>& fn, std::chrono::milliseconds timeout) {
  ThreadGroup group(n, timeout);
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      std::string what = "unknown exception";
      std::exception_ptr ex;
      try {
        ThreadCommunicator comm(group, r);
        fn(comm);
        return;
      } catch (const std::exception& e) {
        what = e.what(), ex = std::current_exception();
      } catch (...) {
        ex = std::current_exception();
      }
      {
        std::lock_guard lk(mu);
        if (!first) first = ex;
      }
      group.abort(fmt::format("rank {} failed: {}", r, what));  // wake the others instead of letting them time out
    });
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

void all_reduce_counts(Communicator& comm, std::vector<int64_t>& counts, Device device) {
  if (counts.empty()) return;
  std::vector<double> v(counts.begin(), counts.end());
  Tensor t = from_vector(v, {(int64_t)v.size()}, DType::f64).to(device);
  comm.all_reduce(t, ReduceOp::sum);
  const std::vector<double> r = t.to(kCPU).to_vector();
  for (size_t i = 0; i < counts.size(); ++i) counts[i] = (int64_t)r[i];
}

}  // namespace nt::dist
