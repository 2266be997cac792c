// Rendezvous: rank 0 hands a small blob (e.g. NCCL's unique id) to every rank before any collective exists.
// TCP: rank 0 listens on MASTER_ADDR:MASTER_PORT, the others connect (retrying until the timeout) and say who
// they are; once all have arrived rank 0 sends the blob. File: rank 0 writes it atomically to a shared path, the
// others poll for it. A rank that does not show up within the timeout is an error naming it, not a hang.
#pragma once
#include <string>

#include "dist/launch.h"

namespace nt::dist {

// Returns rank 0's blob on every rank (blob is ignored on the other ranks).
std::string rendezvous_tcp(const ProcessInfo& p, const std::string& blob, double timeout_s = 120);
std::string rendezvous_file(const std::string& path, const ProcessInfo& p, const std::string& blob, double timeout_s = 120);

// A TCP port that was free a moment ago (for tests and single-host runs).
int free_port();

}  // namespace nt::dist
