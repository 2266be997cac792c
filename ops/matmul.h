// Matrix products with broadcasting over batch dims, as torch.matmul: a [..., M, K] @ b [..., K, N];
// a 1-D a is a row vector and a 1-D b a column vector, their dim removed from the result.
#pragma once
#include <initializer_list>
#include <vector>

#include "tensor/tensor.h"

namespace nt {
Tensor matmul(const Tensor& a, const Tensor& b);

// The E + 1 row offsets of grouped_matmul's groups, nondecreasing from 0 to M: on the host, or as an i32 tensor on
// the GPU (moe_dispatch makes one there, so the expert GEMMs run without the host waiting for the routing). Each
// side is made from the other on first use: host() from a device copy waits for the GPU; device() uploads.
class GroupOffsets {
 public:
  GroupOffsets(std::vector<int64_t> host) : host_(std::move(host)) {}  // NOLINT: implicit, as the host form
  GroupOffsets(std::initializer_list<int64_t> host) : host_(host) {}
  explicit GroupOffsets(Tensor device) : device_(std::move(device)) {}
  GroupOffsets() = default;
  int64_t size() const { return device_.defined() ? device_.numel() : (int64_t)host_.size(); }
  bool on_host() const {
    return !device_.defined() || device_.device().is_cpu() || host_.size() == (size_t)device_.numel();
  }
  const std::vector<int64_t>& host() const;
  std::vector<int64_t> sizes() const;  // the E group sizes, from host()
  const Tensor& device(Device dev) const;  // i32 [E + 1] on dev
  const Tensor& stored_device() const { return device_; }  // the device copy as held (may be undefined)

 private:
  mutable std::vector<int64_t> host_;
  mutable Tensor device_;
};

// Rows of x [M, K] in groups (MoE: sorted by expert): rows [offsets[e], offsets[e + 1]) times w[e] (w [E, K, N]),
// -> [M, N]. Empty groups are fine (their w[e] gets a zero gradient). Host offsets are checked (E + 1 entries,
// nondecreasing, 0 to M); GPU offsets only for their count, dtype and device (reading them would wait for the
// GPU), so they must be valid, as moe_dispatch's are: the kernel trusts them, as torch._grouped_mm trusts its
// device offsets. On CUDA, bf16 on Hopper runs our grouped kernel, which reads the offsets on the device; the
// other cases need them on the host.
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const GroupOffsets& offsets);
}  // namespace nt
