// Where a tensor's memory lives.
#pragma once
#include <string>

namespace nt {
enum class DeviceType : unsigned char { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};
inline const Device kCPU{};
inline Device cuda_device(int index = 0) { return Device{DeviceType::cuda, index}; }
}  // namespace nt
