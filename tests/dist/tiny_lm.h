// The tiny language model and random token data the distributed tests train (vocab 23, dim 16, GQA 2/1 heads,
// seq 8), so every test compares the same setup.
#pragma once
#include "nn/transformer.h"
#include "train/data.h"

namespace nt::test {
inline nn::LMConfig tiny_lm(int64_t layers = 2) {
  nn::LMConfig c;
  c.vocab = 23, c.dim = 16, c.n_layers = layers, c.n_heads = 2, c.n_kv_heads = 1, c.max_seq = 8, c.mlp_hidden = 32;
  return c;
}
// 500 tokens uniform over the 23-token vocabulary (seed 9).
inline train::TokenShard random_tokens() {
  train::TokenShard d;
  d.vocab = 23;
  Generator g(9);
  for (double v : randint(0, 23, {500}, DType::i64, kCPU, &g).to_vector()) d.tokens.push_back((uint16_t)v);
  return d;
}
}  // namespace nt::test
