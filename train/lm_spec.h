// What a language model is built from beyond nn::LMConfig: the attention (dense or NSA) and feed-forward (dense or
// DeepSeekMoE) of its blocks. train_lm writes it into model.safetensors' metadata, so examples/generate (or any
// program) rebuilds the same model from the file alone.
#pragma once
#include <map>
#include <string>

#include "moe/moe_layer.h"
#include "nn/transformer.h"
#include "nsa/nsa_layer.h"

namespace nt::train {

struct LMSpec {
  nn::LMConfig model;               // shape; config() adds the block factories
  std::string attention = "dense";  // or "nsa"
  nsa::NsaConfig nsa;               // block sizes (dims come from model)
  std::string mlp = "dense";        // or "moe": DeepSeekMoE in every block from moe_first_dense on
  moe::MoEConfig moe;               // dim comes from model
  int64_t moe_first_dense = 0;

  // model with make_attention / make_mlp set for the choices above.
  nn::LMConfig config() const;
  // The metadata strings: vocab, dim, layers, heads, kv_heads, max_seq, mlp_hidden, rope_theta, attention, mlp, and
  // the nsa.* / moe.* settings when used. With lm, also each MoE layer's balancing bias (moe.bias.<layer>, a
  // comma-separated list), state that selects experts when aux_free.
  std::map<std::string, std::string> metadata(const nn::TransformerLM* lm = nullptr) const;
  // The inverse (errors name `source` and the missing or bad key). Files written before the nsa.* / moe.* keys
  // existed read as dense models.
  static LMSpec from_metadata(const std::map<std::string, std::string>& meta, const std::string& source);
};

// Sets the MoE layers' biases from metadata's moe.bias.<layer> entries (no-op without them).
void restore_moe_biases(nn::TransformerLM& lm, const std::map<std::string, std::string>& meta, const std::string& source);

}  // namespace nt::train
