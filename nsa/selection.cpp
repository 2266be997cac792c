#include "nsa/selection.h"

#include <algorithm>
#include <cmath>

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

}  // namespace nt
