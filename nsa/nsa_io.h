// The safetensors I/O behind examples/nsa_io (the comparison contract: docs/nsa.md, "Comparing with other
// implementations"): read nsa_attention's inputs from a file, run the op, write o, block_indices and, when the
// file has `do`, the gradients.
// Tests call these functions directly.
//
// Input tensors: q [T, HQ, D]; k_cmp, v_cmp [NC, H, D]; k_slc, v_slc, k_win, v_win [T, H, D]; gates [T, HQ, 3];
// optional cu_seqlens (int32 [N+1]) and do [T, HQ, D]; any other tensors are ignored. Output tensors: o,
// block_indices (int32 [T, H, n]) and with `do` dq, dk_cmp, dv_cmp, dk_slc, dv_slc, dk_win, dv_win, dgates, each
// in its input's dtype; the metadata records the options used.
#pragma once
#include <string>
#include <vector>

#include "nn/safetensors.h"
#include "nsa/nsa_attention.h"

namespace nt::nsa {

struct NsaIoArgs {
  NsaOptions opt;       // cu_seqlens comes from the input file
  Device device = kCPU;
};
// key=value arguments: l, d, l' (or lp), n, w, scale, device (cpu or cuda). An unknown key or a bad value is an
// error naming it.
NsaIoArgs parse_nsa_io_args(const std::vector<std::string>& args);

nn::NamedTensors run_nsa_io(const nn::SafetensorsFile& in, const NsaIoArgs& args);
// load_safetensors(in_path), run_nsa_io, save_safetensors(out_path) with the options as metadata.
void nsa_io(const std::string& in_path, const std::string& out_path, const NsaIoArgs& args);

}  // namespace nt::nsa
