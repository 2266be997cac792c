#include "nsa/selection.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace nt {

int64_t nsa_block_overlap(int64_t c, int64_t j, const NsaOptions& opt) {
  const int64_t lo = c * opt.stride, hi = lo + opt.block;
  return std::max<int64_t>(0, std::min(hi, (j + 1) * opt.select_block) - std::max(lo, j * opt.select_block));
}

void nsa_add_block_scores(const std::vector<double>& p, const NsaOptions& opt, std::vector<double>& score) {
  for (size_t c = 0; c < p.size(); ++c) {
    const int64_t lo = (int64_t)c * opt.stride, hi = lo + opt.block;
    for (int64_t j = lo / opt.select_block; j * opt.select_block < hi; ++j) {
      score[j] += p[c] * (double)nsa_block_overlap((int64_t)c, j, opt) / (double)opt.stride;
    }
  }
}

void nsa_select_blocks(const std::vector<double>& score, int64_t t, const NsaOptions& opt, int32_t* out) {
  const int64_t n = opt.n_select, cur = t / opt.select_block, candidates = cur + 1;
  std::vector<int32_t> chosen;
  if (candidates <= n) {
    for (int64_t j = 0; j < candidates; ++j) chosen.push_back((int32_t)j);
  } else {  // candidates > n >= 3, so cur >= 3 and the forced blocks are distinct
    chosen = {0, (int32_t)(cur - 1), (int32_t)cur};
    std::vector<int32_t> rest;
    for (int64_t j = 1; j < cur - 1; ++j) rest.push_back((int32_t)j);
    // NaN ranks last, so the order stays strict-weak with broken inputs.
    auto key = [&](int32_t j) { return std::isnan(score[j]) ? -INFINITY : score[j]; };
    std::sort(rest.begin(), rest.end(), [&](int32_t a, int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); });
    chosen.insert(chosen.end(), rest.begin(), rest.begin() + (n - 3));
    std::sort(chosen.begin(), chosen.end());
  }
  for (int64_t i = 0; i < n; ++i) out[i] = i < (int64_t)chosen.size() ? chosen[i] : -1;
}

NsaUnionCount nsa_count_block_unions(const Tensor& block_indices, int64_t positions, const NsaOptions& opt) {
  const char* what = "nsa_count_block_unions";
  NT_CHECK(block_indices.dim() == 3 && block_indices.dtype() == DType::i32,
           "{}: block_indices must be i32 [T, H, n], got {} {}", what, dtype_name(block_indices.dtype()),
           shape_str(block_indices.shape()));
  NT_CHECK(positions > 0, "{}: positions must be positive, got {}", what, positions);
  const int64_t T = block_indices.size(0), H = block_indices.size(1), n = block_indices.size(2);
  const std::vector<int32_t> cu = opt.cu_seqlens.empty() ? std::vector<int32_t>{0, (int32_t)T} : opt.cu_seqlens;
  NT_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == T, "{}: cu_seqlens must run from 0 to T = {}", what, T);
  const Tensor bi = block_indices.to(kCPU).contiguous();
  const int32_t* x = bi.data<int32_t>();
  NsaUnionCount c;
  std::vector<int32_t> u;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    NT_CHECK(cu[s + 1] >= cu[s], "{}: cu_seqlens must not decrease, got {} after {}", what, cu[s + 1], cu[s]);
    for (int64_t t0 = cu[s]; t0 < cu[s + 1]; t0 += positions)
      for (int64_t h = 0; h < H; ++h) {
        u.clear();
        for (int64_t t = t0; t < std::min<int64_t>(t0 + positions, cu[s + 1]); ++t)
          for (int64_t i = 0; i < n; ++i)
            if (const int32_t b = x[(t * H + h) * n + i]; b >= 0) u.push_back(b);
        c.chosen += (int64_t)u.size();
        std::sort(u.begin(), u.end());
        c.blocks += std::unique(u.begin(), u.end()) - u.begin();
        ++c.groups;
      }
  }
  return c;
}

}  // namespace nt
