// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON
// header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the raw
// little-endian data. PyTorch's safetensors reads what this writes and the other way round.
//
// Writing is atomic: the file is written to "<path>.tmp.<pid>", flushed to disk and renamed over <path>, so a
// failure (a full disk, a crash) leaves whatever <path> held before.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"

namespace nt::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  NamedTensors tensors;  // CPU tensors, in file order
  std::map<std::string, std::string> metadata;
  const Tensor* find(const std::string& name) const;
};
// Reads and validates a file: a missing file, a truncated or corrupt header, an unknown dtype or data offsets
// outside the file are errors naming the file and what is wrong.
SafetensorsFile load_safetensors(const std::string& path);

// Copies the tensors of `file` into the module's parameters (on their devices). Every mismatch (a missing or
// unexpected name, a wrong shape or dtype) is collected and reported in one error; nothing is copied then.
void load_parameters(Module& module, const SafetensorsFile& file);

}  // namespace nt::nn
