// Which process am I? Rank, world size and the rendezvous address from the environment that common launchers set,
// so train programs run unchanged under torchrun (--no-python), srun and mpirun:
//   torchrun:  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   srun:      SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (MASTER_ADDR/MASTER_PORT from the job script)
//   mpirun:    OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
// Nothing set: a single process (rank 0 of 1).
#pragma once
#include <functional>
#include <optional>
#include <string>

namespace nt::dist {

struct ProcessInfo {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // torchrun, slurm, openmpi or none
};

// getenv: how to read a variable (std::getenv by default; tests pass their own). Inconsistent or malformed values
// (a rank outside [0, world size), a non-numeric port) are errors naming the variable and its value.
ProcessInfo process_info(const std::function<std::optional<std::string>(const char*)>& getenv = {});

}  // namespace nt::dist
