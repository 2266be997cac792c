// train/lm_spec.h: the model description train_lm writes into model.safetensors and generate reads back. A dense
// model round-trips (and an old file without the nsa/moe keys reads as dense); an NSA + MoE model with V3 balancing
// biases rebuilds into the same parameters and the same outputs; bad metadata is a clear error.
#include "train/lm_spec.h"

#include "test_util.h"

using namespace nt;
using namespace nt::test;

namespace {
train::LMSpec small_spec() {
  train::LMSpec s;
  s.model.vocab = 40, s.model.dim = 32, s.model.n_layers = 3, s.model.n_heads = 4, s.model.n_kv_heads = 2;
  s.model.max_seq = 24, s.model.rope.theta = 5000;
  return s;
}
}  // namespace

TEST_CASE("LMSpec: a dense model's metadata round-trips; files without the nsa/moe keys read as dense") {
  const train::LMSpec s = small_spec();
  const auto meta = s.metadata();
  CHECK(meta.at("attention") == "dense");
  CHECK(meta.at("mlp") == "dense");
  CHECK(meta.count("moe.n_routed") == 0);
  const train::LMSpec r = train::LMSpec::from_metadata(meta, "m.safetensors");
  CHECK(r.model.vocab == 40);
  CHECK(r.model.n_layers == 3);
  CHECK(r.model.n_kv_heads == 2);
  CHECK(r.model.hidden() == s.model.hidden());
  CHECK(r.model.rope.theta == 5000);
  auto old = meta;
  old.erase("attention"), old.erase("mlp");
  CHECK(train::LMSpec::from_metadata(old, "old").mlp == "dense");
}

TEST_CASE("LMSpec: an NSA + MoE model with balancing biases rebuilds into the same model") {
  train::LMSpec s = small_spec();
  s.attention = "nsa";
  s.nsa.block = 4, s.nsa.stride = 2, s.nsa.select_block = 8, s.nsa.n_select = 3, s.nsa.window = 6;
  s.mlp = "moe";
  s.moe.n_routed = 5, s.moe.top_k = 2, s.moe.n_shared = 1, s.moe.expert_hidden = 8;
  s.moe.router.affinity = "sigmoid", s.moe.router.normalize_topk = true, s.moe.router.aux_free = true;
  s.moe.router.routed_scaling_factor = 2.5;
  s.moe_first_dense = 1;
  Generator g1(5);
  nn::TransformerLM a(s.config(), {DType::f64, kCPU, &g1});
  auto* moe1 = dynamic_cast<moe::DeepSeekMoE*>(a.layers[1]->mlp.get());
  REQUIRE(moe1);
  CHECK(dynamic_cast<moe::DeepSeekMoE*>(a.layers[0]->mlp.get()) == nullptr);  // first_dense
  moe1->router->set_bias({0.25, -0.5, 0.125, 0, 1.0 / 3});
  const auto meta = s.metadata(&a);
  CHECK(meta.count("moe.bias.1") == 1);
  CHECK(meta.count("moe.bias.0") == 0);

  const train::LMSpec r = train::LMSpec::from_metadata(meta, "m.safetensors");
  CHECK(r.attention == "nsa");
  CHECK(r.nsa.select_block == 8);
  CHECK(r.moe.router.affinity == "sigmoid");
  CHECK(r.moe.router.normalize_topk);
  CHECK(r.moe.router.routed_scaling_factor == 2.5);
  CHECK(r.moe_first_dense == 1);
  auto old = meta;  // written before the factor existed: those models ran without it
  old.erase("moe.routed_scaling_factor");
  CHECK(train::LMSpec::from_metadata(old, "old.safetensors").moe.router.routed_scaling_factor == 1.0);
  Generator g2(99);  // other weights: they are copied below
  nn::TransformerLM b(r.config(), {DType::f64, kCPU, &g2});
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    INFO(pa[i].first);
    REQUIRE(pa[i].first == pb[i].first);
    REQUIRE(pa[i].second.shape() == pb[i].second.shape());
    autograd::NoGradGuard ng;
    Tensor(pb[i].second).copy_(pa[i].second);
  }
  train::restore_moe_biases(b, meta, "m.safetensors");
  CHECK(dynamic_cast<moe::DeepSeekMoE*>(b.layers[1]->mlp.get())->router->bias() == moe1->router->bias());
  const Tensor idx = randint(0, 40, {2, 20}, DType::i64, kCPU, &g1);
  autograd::NoGradGuard ng;
  CHECK(b.forward(idx).to_vector() == a.forward(idx).to_vector());
}

TEST_CASE("LMSpec: missing and bad metadata are errors naming the file and the key") {
  auto meta = small_spec().metadata();
  auto no_dim = meta;
  no_dim.erase("dim");
  CHECK_THROWS_WITH_AS(train::LMSpec::from_metadata(no_dim, "x.safetensors"),
                       doctest::Contains("'x.safetensors' has no 'dim'"), Error);
  auto bad = meta;
  bad["heads"] = "4x";
  CHECK_THROWS_WITH_AS(train::LMSpec::from_metadata(bad, "x"), doctest::Contains("'heads' must be a number, got '4x'"),
                       Error);
  bad = meta;
  bad["mlp"] = "sparse";
  CHECK_THROWS_WITH_AS(train::LMSpec::from_metadata(bad, "x"), doctest::Contains("'mlp' must be dense or moe"), Error);
  bad = meta;
  bad["mlp"] = "moe";
  CHECK_THROWS_WITH_AS(train::LMSpec::from_metadata(bad, "x"), doctest::Contains("no 'moe.n_routed'"), Error);
}
