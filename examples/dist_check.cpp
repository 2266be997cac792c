// Multi-GPU check of the NCCL communicator: every collective on known data, one process per GPU.
//   bash scripts/dist_check.sh 2        (starts 2 processes with RANK/WORLD_SIZE/LOCAL_RANK set; or use torchrun)
// Prints one line per rank and exits non-zero on the first mismatch.
#include <cstdio>

#include "dist/launch.h"
#if NT_NCCL
#include "dist/nccl_communicator.h"
#endif
#include "ops/ops.h"

using namespace nt;

int main() {
  try {
#if NT_NCCL
    const dist::ProcessInfo p = dist::process_info();
    dist::NcclCommunicator comm(p, 60);
    const int r = comm.rank(), n = comm.size();
    const Device dev = cuda_device(p.local_rank);
    auto check = [&](const char* what, const Tensor& got, const std::vector<double>& want) {
      const std::vector<double> g = got.to(kCPU).to(DType::f64).to_vector();
      NT_CHECK(g == want, "dist_check: rank {}: {} differs", r, what);
    };
    const int64_t m = 1003;  // not a multiple of anything
    for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
      Tensor shard = full({m}, (double)(r + 1), dt, dev), all = empty({m * n}, dt, dev);
      comm.all_gather(shard, all);
      std::vector<double> want;
      for (int k = 0; k < n; ++k) want.insert(want.end(), m, (double)(k + 1));
      check("all_gather", all, want);
      Tensor fullv = full({m * n}, (double)(r + 1), dt, dev), part = empty({m}, dt, dev);
      comm.reduce_scatter(fullv, part, dist::ReduceOp::sum);
      check("reduce_scatter sum", part, std::vector<double>(m, n * (n + 1) / 2.0));
      Tensor t = full({m}, (double)(r + 1), dt, dev);
      comm.all_reduce(t, dist::ReduceOp::avg);
      check("all_reduce avg", t, std::vector<double>(m, (n + 1) / 2.0));
      Tensor b = full({m}, (double)(r + 7), dt, dev);
      comm.broadcast(b, n - 1);
      check("broadcast", b, std::vector<double>(m, (double)(n - 1 + 7)));
    }
    comm.barrier();
    std::printf("dist_check: rank %d of %d (%s, GPU %d): all collectives correct\n", r, n, p.launcher.c_str(), p.local_rank);
#else
    std::fprintf(stderr, "dist_check: built without NCCL\n");
    return 2;
#endif
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
