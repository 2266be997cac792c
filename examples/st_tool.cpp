// Inspect safetensors files, or write a sample one (for checking interoperability with PyTorch's safetensors).
//   st_tool dump FILE     names, dtypes, shapes, metadata and the sum of each tensor
//   st_tool sample FILE   writes tensors of every dtype with known values
//   st_tool consolidate SHARDED_DIR OUT_DIR
//                         a sharded checkpoint (several GPUs, dist::ShardedAdamW) -> one process's checkpoint:
//                         OUT_DIR/model.safetensors + optim.safetensors (train_lm training.resume=OUT_DIR resumes
//                         it on one GPU; PyTorch reads model.safetensors)
#include <cstring>

#include "dist/fsdp.h"
#include "nn/safetensors.h"

using namespace nt;

int main(int argc, char** argv) {
  const bool consolidate = argc == 4 && std::strcmp(argv[1], "consolidate") == 0;
  if (!consolidate && (argc != 3 || (std::strcmp(argv[1], "dump") != 0 && std::strcmp(argv[1], "sample") != 0))) {
    fmt::print(stderr, "usage: st_tool dump FILE | st_tool sample FILE | st_tool consolidate SHARDED_DIR OUT_DIR\n");
    return 2;
  }
  try {
    if (consolidate) {
      dist::consolidate_checkpoint(argv[2], argv[3]);
      fmt::print("wrote {0}/model.safetensors and {0}/optim.safetensors\n", argv[3]);
      return 0;
    }
    if (std::strcmp(argv[1], "sample") == 0) {
      nn::NamedTensors ts;
      for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f8e4m3, DType::f8e5m2, DType::i32, DType::i64, DType::boolean})
        ts.emplace_back(fmt::format("x_{}", dtype_name(t)), arange(12, t).reshape({3, 4}));
      nn::save_safetensors(argv[2], ts, {{"written_by", "nsa-transformer"}});
      fmt::print("wrote {} tensors to {}\n", ts.size(), argv[2]);
      return 0;
    }
    const nn::SafetensorsFile f = nn::load_safetensors(argv[2]);
    for (auto& [k, v] : f.metadata) fmt::print("metadata {} = {}\n", k, v);
    for (auto& [name, t] : f.tensors)
      fmt::print("{} {} {} sum={}\n", name, dtype_name(t.dtype()), shape_str(t.shape()), sum(t.to(DType::f64)).item());
  } catch (const Error& e) {
    fmt::print(stderr, "st_tool: {}\n", e.what());
    return 1;
  }
  return 0;
}
