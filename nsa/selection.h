// NSA's block selection rule (docs/nsa.md, "The op"), shared by the CPU reference (nsa/cpu/nsa_attention.cpp) and
// decoding (nsa/nsa_decode.cpp); the CUDA kernels (cuda/nsa.cu, cuda/nsa_select.cu) implement the same rule.
#pragma once
#include <cstdint>
#include <vector>

#include "nsa/nsa_attention.h"

namespace nt {

// The keys compressed block c ([c d, c d + l)) and selection block j ([j l', (j+1) l')) share (0 when none); over d,
// c's weight in j's score.
int64_t nsa_block_overlap(int64_t c, int64_t j, const NsaOptions& opt);
// score[j] += p[c] * overlap(c, j) / d for each visible compressed block c (p[c]: its probability) and each selection
// block j it overlaps; all those j are candidates (<= t / l'), since c's keys are <= t.
void nsa_add_block_scores(const std::vector<double>& p, const NsaOptions& opt, std::vector<double>& score);
// Blocks 0, t/l' and t/l' - 1 always; the other slots to the highest scores (NaN last), ties to the lower index.
// Writes n_select entries: the chosen blocks ascending, then -1.
void nsa_select_blocks(const std::vector<double>& score, int64_t t, const NsaOptions& opt, int32_t* out);

// How many blocks groups of `positions` consecutive positions chose together: block_indices (i32 [T, H, n], as
// nsa_attention returns it; copied to the host if on the GPU) cut per sequence (opt.cu_seqlens) into groups from the
// sequence's start (the last one shorter), the union of each group's lists counted per key/value head. The selected
// forward's wgmma kernel loads each union block's keys and values once per tile of 64 / G positions (G rounded up to
// a power of two) and computes every row of the tile on all of them, so with that group size this gives its
// traffic and products (bench_nsa prints them).
struct NsaUnionCount {
  int64_t groups = 0;  // (group, key/value head) pairs
  int64_t blocks = 0;  // union sizes summed over them
  int64_t chosen = 0;  // the lists' entries (not -1) summed over every position and head
};
NsaUnionCount nsa_count_block_unions(const Tensor& block_indices, int64_t positions, const NsaOptions& opt);

}  // namespace nt
