// nsa_io: runs nsa_attention on inputs from a safetensors file and writes the outputs (and, when the input has `do`,
// the gradients) to another, for comparing this implementation with others. Tensor names: nsa/nsa_io.h.
//   nsa_io IN.safetensors OUT.safetensors [l=32] [d=16] [l'=64] [n=16] [w=512] [scale=0] [device=cpu]
#include "nsa/nsa_io.h"

using namespace nt;

int main(int argc, char** argv) {
  if (argc < 3) {
    fmt::print(stderr, "usage: nsa_io IN.safetensors OUT.safetensors [l=32] [d=16] [l'=64] [n=16] [w=512] [scale=0] "
                       "[device=cpu|cuda]\n");
    return 2;
  }
  try {
    const nsa::NsaIoArgs args = nsa::parse_nsa_io_args(std::vector<std::string>(argv + 3, argv + argc));
    nsa::nsa_io(argv[1], argv[2], args);
    fmt::print("wrote {}\n", argv[2]);
  } catch (const Error& e) {
    fmt::print(stderr, "nsa_io: {}\n", e.what());
    return 1;
  }
  return 0;
}
