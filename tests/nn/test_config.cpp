// Configs: composition from groups, overrides, group switches, the errors (each naming the key and the valid
// keys or choices), the check that every key was read, dump round trips, and every shipped config under configs/.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "tensor/error.h"
#include "train/config.h"

using nt::train::Config;
namespace fs = std::filesystem;

namespace {

// A config tree of its own in the temp dir, so the tests do not depend on the working directory.
std::string write_tree(const std::string& name, const std::map<std::string, std::string>& files) {
  const fs::path dir = fs::temp_directory_path() / ("nt_config_test_" + name);
  fs::remove_all(dir);
  for (const auto& [path, text] : files) {
    fs::create_directories((dir / path).parent_path());
    std::ofstream(dir / path) << text;
  }
  return dir.string();
}

const std::map<std::string, std::string> kTree = {
    {"train.yaml", "defaults:\n  - model: small\n  - training: base\nname: run  # the root's own key\n"},
    {"model/small.yaml", "dim: 384\nlayers: 6\n"},
    {"model/tiny.yaml", "dim: 128\nlayers: 4\n"},
    {"training/base.yaml", "steps: 100\nlr: 6e-4\nflag: true\nout: runs/lm\nresume: null\nopt:\n  beta1: 0.9\n"},
    {"extra/on.yaml", "level: 3\n"},
};

template <class F> std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const nt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Each part must appear in the message of the nt::Error fn throws.
template <class F> void expect_error(F&& fn, std::initializer_list<std::string> parts) {
  const std::string msg = error_of(fn);
  for (const std::string& p : parts) CHECK_MESSAGE(msg.find(p) != std::string::npos, "message '" << msg << "' lacks '" << p << "'");
}

}  // namespace

TEST_CASE("config: groups from the defaults list land under their keys; the root's keys on top") {
  const std::string dir = write_tree("compose", kTree);
  const Config c = Config::compose(dir, "train");
  CHECK(c.get_int("model.dim") == 384);
  CHECK(c.get_int("model.layers") == 6);
  CHECK(c.get_int("training.steps") == 100);
  CHECK(c.get_double("training.lr") == 6e-4);
  CHECK(c.get_bool("training.flag"));
  CHECK(c.get_string("training.out") == "runs/lm");
  CHECK(c.is_null("training.resume"));
  CHECK(c.get_double("training.opt.beta1") == 0.9);
  CHECK(c.get_string("name") == "run");
  CHECK(c.has("model.dim"));
  CHECK_FALSE(c.has("model.nope"));
  REQUIRE(c.choices().size() == 2);
  CHECK(c.choices()[0] == std::pair<std::string, std::string>{"model", "small"});
  c.check_all_read();
}

TEST_CASE("config: key overrides apply in order, values parsed as YAML") {
  const std::string dir = write_tree("override", kTree);
  const Config c = Config::compose(dir, "train", {"training.lr=3e-4", "training.steps=7", "training.steps=50", "training.flag=false",
                                                   "training.resume=runs/lm/ckpt", "training.out=", "training.opt.beta1=0.8"});
  CHECK(c.get_double("training.lr") == 3e-4);
  CHECK(c.get_int("training.steps") == 50);
  CHECK_FALSE(c.get_bool("training.flag"));
  CHECK(c.get_string("training.resume") == "runs/lm/ckpt");
  CHECK(c.is_null("training.out"));  // an empty value is null
  CHECK(c.get_double("training.opt.beta1") == 0.8);
}

TEST_CASE("config: group=choice switches a whole group, wherever it stands among the overrides") {
  const std::string dir = write_tree("group", kTree);
  const Config c = Config::compose(dir, "train", {"model.dim=64", "model=tiny"});
  CHECK(c.get_int("model.dim") == 64);
  CHECK(c.get_int("model.layers") == 4);
  CHECK(c.choices()[0].second == "tiny");
  // A program's own choice put first loses to the user's.
  CHECK(Config::compose(dir, "train", {"model=tiny", "model=small"}).get_int("model.layers") == 6);
  // Unknown choice: the available ones are listed.
  expect_error([&] { Config::compose(dir, "train", {"model=huge"}); }, {"config:", "model", "'huge'", "small, tiny"});
  // A group outside the defaults list needs +.
  expect_error([&] { Config::compose(dir, "train", {"extra=on"}); }, {"'extra'", "+extra=on", "model, training"});
  const Config e = Config::compose(dir, "train", {"+extra=on"});
  CHECK(e.get_int("extra.level") == 3);
  CHECK(e.choices().back() == std::pair<std::string, std::string>{"extra", "on"});
}

TEST_CASE("config: an unknown key in an override names it and lists the valid keys at its level") {
  const std::string dir = write_tree("unknown", kTree);
  expect_error([&] { Config::compose(dir, "train", {"training.stpes=5"}); },
               {"config:", "'training.stpes'", "valid keys in training:", "steps", "lr", "+training.stpes=5"});
  expect_error([&] { Config::compose(dir, "train", {"steps=5"}); },
               {"'steps'", "did you mean training.steps?", "valid top-level keys: model, training, name"});
  expect_error([&] { Config::compose(dir, "train", {"optim.lr=5"}); }, {"'optim'", "valid top-level keys"});
  expect_error([&] { Config::compose(dir, "train", {"training.opt=5"}); }, {"training.opt is a section", "beta1"});
  expect_error([&] { Config::compose(dir, "train", {"training.steps.x=5"}); }, {"training.steps is a value"});
  expect_error([&] { Config::compose(dir, "train", {"steps"}); }, {"key=value", "'steps'"});
  expect_error([&] { Config::compose(dir, "train", {"training.lr=[1,"}); }, {"training.lr", "not valid YAML"});
  expect_error([&] { Config::compose(dir, "nope"); }, {"config: no file", "nope.yaml"});
}

TEST_CASE("config: a bad value names the key and what it must be") {
  const std::string dir = write_tree("bad", kTree);
  const Config c = Config::compose(dir, "train", {"training.steps=abc", "training.lr=1e-3x", "training.flag=maybe", "training.out=[1, 2]"});
  expect_error([&] { c.get_int("training.steps"); }, {"config: training.steps must be an integer, got 'abc'"});
  expect_error([&] { c.get_int("training.lr"); }, {"training.lr must be an integer"});
  expect_error([&] { c.get_double("training.lr"); }, {"config: training.lr must be a number, got '1e-3x'"});
  expect_error([&] { c.get_bool("training.flag"); }, {"training.flag must be true or false, got 'maybe'"});
  expect_error([&] { c.get_string("training.out"); }, {"training.out must be a string, got a list"});
  expect_error([&] { c.get_double("training.resume"); }, {"training.resume must be a number, got null"});
  expect_error([&] { c.get_int("training.opt"); }, {"training.opt must be an integer, got a section with keys beta1"});
  expect_error([&] { c.get_string("model.dim", {"a", "b"}); }, {"model.dim must be one of a, b, got '384'"});
  expect_error([&] { c.get_int("training.nope"); }, {"missing key 'training.nope'", "keys in training are: steps, lr"});
  CHECK(c.get_string("name", {"run", "walk"}) == "run");
  CHECK(Config::compose(dir, "train", {"training.steps=+12"}).get_int("training.steps") == 12);
}

TEST_CASE("config: +key=value adds keys and sections; existing keys are set") {
  const std::string dir = write_tree("add", kTree);
  const Config c = Config::compose(dir, "train", {"+training.extra=5", "+optim.adam.beta2=0.95", "+training.steps=9"});
  CHECK(c.get_int("training.extra") == 5);
  CHECK(c.get_double("optim.adam.beta2") == 0.95);
  CHECK(c.get_int("training.steps") == 9);
  CHECK(c.get_int("model.dim") == 384);
}

TEST_CASE("config: check_all_read names every unread key, where it came from, and the keys the program read") {
  auto files = kTree;
  files["training/base.yaml"] += "warmpu: 10\n";
  const std::string dir = write_tree("unread", files);
  const Config c = Config::compose(dir, "train", {"+surprise.x=1"});
  for (const char* k : {"model.dim", "model.layers", "training.steps", "training.lr", "training.flag", "training.out",
                        "training.resume", "training.opt.beta1", "name"})
    (void)c.has(k), c.is_null(k);
  const std::string msg = error_of([&] { c.check_all_read(); });
  CHECK(msg.find("config: unknown key 'training.warmpu' (from " + (fs::path(dir) / "training" / "base.yaml").string() + "); "
                 "valid keys in training: flag, lr, opt, out, resume, steps") != std::string::npos);
  CHECK(msg.find("config: unknown key 'surprise.x' (from override '+surprise.x=1'); valid top-level keys: model, name, training") !=
        std::string::npos);
  CHECK(c.get_int("training.warmpu") == 10);  // read now: no longer unknown
  expect_error([&] { c.check_all_read(); }, {"surprise.x"});
  CHECK(error_of([&] { c.check_all_read(); }).find("warmpu") == std::string::npos);
}

TEST_CASE("config: dump reads back to the same tree and text") {
  const std::string dir = write_tree("dump", kTree);
  const Config c = Config::compose(dir, "train", {"model=tiny", "training.out='null'", "+training.tags=[a, b]", "training.lr=3e-4"});
  const std::string text = c.dump();
  CHECK(text.starts_with("# "));
  CHECK(text.find("model=tiny training=base") != std::string::npos);  // the choices, in the header comment
  const Config back = Config::parse(text, "config.yaml");
  CHECK(back.dump() == text);
  CHECK(back.get_int("model.dim") == 128);
  CHECK(back.get_double("training.lr") == 3e-4);
  CHECK(back.get_string("training.out") == "null");  // quoted text stays text
  CHECK(back.is_null("training.resume"));
  CHECK(back.get_bool("training.flag"));
  CHECK(back.get_string("name") == "run");
  expect_error([] { Config::parse("a: [1,", "x.yaml"); }, {"config: x.yaml"});
  expect_error([] { Config::parse("- 1\n- 2\n", "x.yaml"); }, {"x.yaml must be a mapping"});
  expect_error([] { Config::parse("a: 1\n", "x.yaml").check_all_read(); }, {"unknown key 'a' (from x.yaml)"});
}

#ifdef NT_SOURCE_DIR
namespace {
// What examples/train_lm reads; a key a shipped file adds without the program reading it fails check_all_read.
void read_like_train_lm(const Config& c) {
  for (const char* k : {"model.dim", "model.layers", "model.heads", "model.kv_heads", "model.seq"}) CHECK(c.get_int(k) > 0);
  CHECK(c.get_double("model.rope_theta") > 0);
  for (const char* k : {"training.steps", "training.batch", "training.eval_every", "training.eval_batches", "training.log_every"})
    CHECK(c.get_int(k) > 0);
  for (const char* k : {"training.warmup", "training.save_every", "training.seed"}) CHECK(c.get_int(k) >= 0);
  for (const char* k : {"training.lr", "training.weight_decay", "training.clip"}) CHECK(c.get_double(k) >= 0);
  if (!c.is_null("training.lr_floor")) CHECK(c.get_double("training.lr_floor") >= 0);
  if (!c.is_null("training.resume")) c.get_string("training.resume");
  c.get_string("training.out");
  c.get_string("training.device", {"auto", "cpu", "cuda"});
  c.get_string("training.precision", {"f32", "bf16"});
  CHECK(c.get_int("training.grad_accum") > 0);
  if (!c.is_null("training.peak_tflops")) CHECK(c.get_double("training.peak_tflops") > 0);
  c.get_string("data.path");
  c.get_bool("data.packing");
  c.get_string("model.attention", {"dense", "nsa"});
  for (const char* k : {"model.nsa.block", "model.nsa.stride", "model.nsa.select_block", "model.nsa.n_select", "model.nsa.window"})
    CHECK(c.get_int(k) > 0);
  CHECK(c.get_int("training.dense_warmup_steps") >= 0);
  CHECK(c.get_int("training.profile_steps") >= 0);
  c.get_bool("training.fully_shard"), c.get_bool("training.overlap_comm"), c.get_bool("training.activation_checkpointing");
  c.get_string("model.mlp", {"dense", "moe"});
  for (const char* k : {"model.moe.n_routed", "model.moe.top_k", "model.moe.expert_hidden"}) CHECK(c.get_int(k) > 0);
  for (const char* k : {"model.moe.n_shared", "model.moe.first_dense"}) CHECK(c.get_int(k) >= 0);
  c.get_string("model.moe.affinity", {"softmax", "sigmoid"});
  c.get_bool("model.moe.normalize_topk"), c.get_bool("model.moe.aux_free"), c.get_bool("model.moe.offload");
  CHECK(c.get_double("model.moe.aux_loss_coef") >= 0);
  CHECK(c.get_double("model.moe.bias_update_speed") >= 0);
  CHECK(c.get_double("model.moe.routed_scaling_factor") > 0);
  CHECK(c.get_double("model.moe.seq_aux_loss_coef") >= 0);
  CHECK(c.get_int("model.dim") % c.get_int("model.heads") == 0);
  CHECK(c.get_int("model.heads") % c.get_int("model.kv_heads") == 0);
  c.check_all_read();
}
}  // namespace

TEST_CASE("config: every shipped config composes and every key in it is one train_lm reads") {
  const fs::path dir = fs::path(NT_SOURCE_DIR) / "configs";
  std::map<std::string, std::vector<std::string>> choices;
  for (const char* group : {"model", "training", "data"})
    for (const auto& e : fs::directory_iterator(dir / group))
      if (e.path().extension() == ".yaml") choices[group].push_back(e.path().stem().string());
  CHECK(choices["model"].size() >= 3);
  CHECK(choices["training"].size() >= 2);
  for (const auto& m : choices["model"])
    for (const auto& t : choices["training"])
      for (const auto& d : choices["data"]) {
        INFO("model=", m, " training=", t, " data=", d);
        const Config c = Config::compose(dir.string(), "train", {"model=" + m, "training=" + t, "data=" + d});
        read_like_train_lm(c);
        read_like_train_lm(Config::parse(c.dump()));
      }
  const Config plain = Config::compose(dir.string(), "train");
  CHECK(plain.get_int("model.dim") == 384);  // the defaults list: the GPU's choices
  CHECK(Config::compose(dir.string(), "train", {"model=tiny", "training=cpu"}).get_int("training.steps") == 400);
}
#endif
