// Whether a device runs this build's sm_90a code (wgmma, TMA): the device must be compute 9.0 and the binary must carry
// sm_90a code for it. A one-thread kernel reports which variant the driver loaded; the answer is cached per device.
// Also the tensor maps the TMA kernels read (encoded through the driver entry point: no link against libcuda).
#include <cudaTypedefs.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "cuda/check.h"
#include "cuda/hopper.cuh"
#include "cuda/runtime.h"

namespace nt::cuda {
namespace {
__global__ void probe_sm90a(int* out) {
#ifdef NT_SM90A
  *out = 1;
#else
  *out = 0;
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    NT_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
    if (!f || q != cudaDriverEntryPointSuccess) throw_cuda_error("driver has no cuTensorMapEncodeTiled", "encode_fn", __FILE__, __LINE__);
    return (PFN_cuTensorMapEncodeTiled_v12000)f;
  }();
  return fn;
}

CUtensorMap encode_map(CUtensorMapDataType type, CUtensorMapSwizzle swizzle, const void* base, int rank,
                       const uint64_t* dims, const uint64_t* strides, const uint32_t* box, const char* who) {
  if (rank < 1 || rank > 5) throw std::invalid_argument(std::string(who) + ": rank must be 1..5, got " + std::to_string(rank));
  CUtensorMap m;
  const uint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  const CUresult r = encode_fn()(&m, type, rank, const_cast<void*>(base), dims, strides, box, elem_strides,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw_cuda_error("cuTensorMapEncodeTiled failed", who, __FILE__, __LINE__);
  return m;
}
}  // namespace

namespace sm90 {
CUtensorMap tensor_map_bf16(const void* base, int rank, const uint64_t* dims, const uint64_t* strides, const uint32_t* box) {
  return encode_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, CU_TENSOR_MAP_SWIZZLE_128B, base, rank, dims, strides, box,
                    "tensor_map_bf16");
}
CUtensorMap tensor_map_f32(const void* base, int rank, const uint64_t* dims, const uint64_t* strides, const uint32_t* box) {
  return encode_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, CU_TENSOR_MAP_SWIZZLE_NONE, base, rank, dims, strides, box,
                    "tensor_map_f32");
}
}  // namespace sm90

bool sm90a_available(int device) {
  constexpr int kCached = 64;
  static std::atomic<int> known[kCached] = {};  // 0 unknown, 1 yes, 2 no (racing first calls probe twice: harmless)
  if (device >= 0 && device < kCached && known[device].load(std::memory_order_relaxed))
    return known[device].load(std::memory_order_relaxed) == 1;
  int major = 0, minor = 0;
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  NT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  int ok = 0;
  if (major == 9 && minor == 0) {
    int prev = 0;
    NT_CUDA_CHECK(cudaGetDevice(&prev));
    NT_CUDA_CHECK(cudaSetDevice(device));
    int* flag = nullptr;
    NT_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    probe_sm90a<<<1, 1>>>(flag);
    NT_CUDA_CHECK_LAUNCH();
    NT_CUDA_CHECK(cudaMemcpy(&ok, flag, sizeof(int), cudaMemcpyDeviceToHost));
    NT_CUDA_CHECK(cudaFree(flag));
    NT_CUDA_CHECK(cudaSetDevice(prev));
  }
  if (device >= 0 && device < kCached) known[device].store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok == 1;
}
}  // namespace nt::cuda
