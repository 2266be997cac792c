#include "dist/launch.h"

#include <cstdlib>

#include "tensor/error.h"

namespace nt::dist {
namespace {
int to_int(const char* var, const std::string& v, int lo, int hi) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (...) {
    used = 0;
  }
  NT_CHECK(used == v.size() && !v.empty() && x >= lo && x <= hi, "launch: {}='{}' must be an integer in [{}, {}]", var, v, lo, hi);
  return (int)x;
}
}  // namespace

ProcessInfo process_info(const std::function<std::optional<std::string>(const char*)>& getenv_fn) {
  auto env = [&](const char* k) -> std::optional<std::string> {
    if (getenv_fn) return getenv_fn(k);
    const char* v = std::getenv(k);
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  ProcessInfo p;
  struct Scheme {
    const char *name, *rank, *size, *local;
  };
  for (const Scheme s : {Scheme{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
                         Scheme{"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
                         Scheme{"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"}}) {
    const auto rank = env(s.rank), size = env(s.size);
    if (!rank && !size) continue;
    NT_CHECK(rank && size, "launch: {} is set but {} is not (launcher {})", rank ? s.rank : s.size, rank ? s.size : s.rank, s.name);
    p.launcher = s.name;
    p.world_size = to_int(s.size, *size, 1, 1 << 20);
    p.rank = to_int(s.rank, *rank, 0, p.world_size - 1);
    const auto local = env(s.local);
    p.local_rank = local ? to_int(s.local, *local, 0, 1 << 20) : p.rank;
    break;
  }
  if (const auto a = env("MASTER_ADDR"); a && !a->empty()) p.master_addr = *a;
  if (const auto port = env("MASTER_PORT")) p.master_port = to_int("MASTER_PORT", *port, 1, 65535);
  return p;
}

}  // namespace nt::dist
