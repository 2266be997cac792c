// Devices and streams. Each device has one current stream (created on first use, non-blocking); every kernel,
// copy and GEMM of the library runs on it, so the caching allocator can reuse a freed block at once.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace nt::cuda {
cudaStream_t current_stream(int device);
// Makes `stream` the current stream of `device` (nullptr restores the library's own stream).
void set_current_stream(int device, cudaStream_t stream);
// Waits for the device's current stream, then reads the index checks deferred so far (below).
void synchronize(int device);
// Index checks without a stall: an op whose kernel may find a bad index takes a flag (a host-mapped int, zeroed),
// passes it to the kernel, which sets it to nonzero, and defers its message. Every synchronizing call of the
// library (synchronize, copies to the host, so reading a loss or a tensor) reads the pending flags after its wait
// and throws nt::Error with the first raised one's message. set_sync_checks(true), or NT_SYNC_CHECKS=1 in the
// environment, makes defer_check synchronize at once (the error at the call, the GPU stalled at every check).
// (Checks cover the device's current stream of the calling thread: the library queues all its work there.)
int* acquire_check_flag(int device);
void defer_check(int device, int* flag, std::string message);
size_t pending_checks(int device);  // how many are deferred now: the ones a wait beginning now covers
// Reads the first `count` deferred checks (all of them by default) and throws the first raised one's message.
void run_deferred_checks(int device, size_t count = static_cast<size_t>(-1));
// After a wait that failed with `what`: throws what, with the first raised index check's message added (the likely
// cause of a kernel fault).
[[noreturn]] void throw_wait_failure(int device, size_t count, const std::string& what);
void set_sync_checks(bool on);
bool sync_checks();
int multiprocessor_count(int device);
// The device is compute 9.0 and this build carries sm_90a code (wgmma, TMA) for it (cuda/hopper.cu).
bool sm90a_available(int device);
}  // namespace nt::cuda
