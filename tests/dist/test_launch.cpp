// Launcher environments and the rank-0 rendezvous (TCP on localhost with threads as ranks, and a shared file).
#include <filesystem>
#include <map>
#include <thread>

#include "dist/launch.h"
#include "dist/rendezvous.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
auto env_of(std::map<std::string, std::string> m) {
  return [m](const char* k) -> std::optional<std::string> {
    auto it = m.find(k);
    return it == m.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
}
}  // namespace

TEST_CASE("launch: rank and world size from torchrun, srun, mpirun, or none") {
  auto p = dist::process_info(env_of({}));
  CHECK(p.launcher == "none");
  CHECK((p.rank == 0 && p.world_size == 1));
  p = dist::process_info(env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "1234"}}));
  CHECK(p.launcher == "torchrun");
  CHECK((p.rank == 3 && p.world_size == 4 && p.local_rank == 1 && p.master_addr == "node7" && p.master_port == 1234));
  p = dist::process_info(env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}}));
  CHECK((p.launcher == "slurm" && p.rank == 5 && p.world_size == 8 && p.local_rank == 1 && p.master_port == 29500));
  p = dist::process_info(env_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}}));
  CHECK((p.launcher == "openmpi" && p.rank == 0 && p.world_size == 2 && p.local_rank == 0));
  expect_error([] { dist::process_info(env_of({{"RANK", "4"}, {"WORLD_SIZE", "4"}})); }, {"RANK='4'", "[0, 3]"});
  expect_error([] { dist::process_info(env_of({{"RANK", "1"}})); }, {"RANK is set but WORLD_SIZE is not"});
  expect_error([] { dist::process_info(env_of({{"MASTER_PORT", "http"}})); }, {"MASTER_PORT='http'"});
}

TEST_CASE("rendezvous: rank 0's blob reaches every rank over TCP; a missing rank is a timely error") {
  for (int world : {2, 4}) {
    const int port = dist::free_port();
    std::vector<std::string> got(world);
    std::vector<std::thread> ts;
    std::vector<std::string> errors(world);
    for (int r = 0; r < world; ++r)
      ts.emplace_back([&, r] {
        dist::ProcessInfo p;
        p.rank = r, p.world_size = world, p.master_port = port;
        try {
          got[r] = dist::rendezvous_tcp(p, r == 0 ? std::string("nccl-id\0with-bytes", 18) : "ignored", 20);
        } catch (const Error& e) {
          errors[r] = e.what();
        }
      });
    for (auto& t : ts) t.join();
    for (int r = 0; r < world; ++r) {
      INFO("world " << world << " rank " << r << " error " << errors[r]);
      CHECK(got[r] == std::string("nccl-id\0with-bytes", 18));
    }
  }
  // World of 3 with rank 2 never started: rank 0 names it after the timeout.
  const int port = dist::free_port();
  std::string err0;
  std::thread t1([&] {
    dist::ProcessInfo p;
    p.rank = 1, p.world_size = 3, p.master_port = port;
    try { dist::rendezvous_tcp(p, "", 1.0); } catch (const Error&) {}
  });
  dist::ProcessInfo p0;
  p0.rank = 0, p0.world_size = 3, p0.master_port = port;
  try {
    dist::rendezvous_tcp(p0, "x", 0.5);
  } catch (const Error& e) {
    err0 = e.what();
  }
  t1.join();
  CHECK(err0.find("rank(s) 2 of 3") != std::string::npos);
  // A rank whose rank 0 never comes up says where it looked.
  dist::ProcessInfo lonely;
  lonely.rank = 1, lonely.world_size = 2, lonely.master_port = dist::free_port();
  expect_error([&] { dist::rendezvous_tcp(lonely, "", 0.3); }, {"could not reach rank 0 at 127.0.0.1:"});
}

TEST_CASE("rendezvous: through a shared file") {
  const auto path = (std::filesystem::temp_directory_path() / fmt::format("nt_rdv_{}", dist::free_port())).string();
  std::filesystem::remove(path);
  std::string a, b;
  std::thread t([&] {
    dist::ProcessInfo p;
    p.rank = 1, p.world_size = 2;
    b = dist::rendezvous_file(path, p, "", 10);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  dist::ProcessInfo p0;
  p0.world_size = 2;
  a = dist::rendezvous_file(path, p0, "blob", 10);
  t.join();
  CHECK((a == "blob" && b == "blob"));
  std::filesystem::remove(path);
  dist::ProcessInfo p1;
  p1.rank = 1, p1.world_size = 2;
  expect_error([&] { dist::rendezvous_file(path + ".none", p1, "", 0.1); }, {"waited", ".none"});
}
