// The comparison tool's library functions (nsa/nsa_io.h): a safetensors round trip against calling nsa_attention
// directly, with and without `do`, packed sequences, and argument errors.
#include <filesystem>

#include "nsa/nsa_io.h"
#include "nsa_naive.h"
#include "test_util.h"

using namespace nt;
using namespace nt::test;
namespace fs = std::filesystem;

TEST_CASE("nsa_io: a safetensors round trip gives nsa_attention's outputs and gradients") {
  const fs::path dir = fs::temp_directory_path() / "nt_nsa_io";
  fs::create_directories(dir);
  const std::vector<int32_t> cu = {0, 11, 30};
  const int64_t T = 30, HQ = 4, H = 2, D = 3, NC = nsa_num_cmp_blocks(11, 4, 2) + nsa_num_cmp_blocks(19, 4, 2);
  const NsaInputs in = nsa_inputs(T, HQ, H, D, NC, 51, DType::f32);
  const Tensor dout = rnd({T, HQ, D}, 52, DType::f32);
  nn::NamedTensors file;
  for (size_t i = 0; i < 8; ++i)
    file.emplace_back(std::vector<std::string>{"q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates"}[i],
                      in.all()[i]);
  file.emplace_back("cu_seqlens", from_vector(std::vector<double>(cu.begin(), cu.end()), {3}, DType::i32));
  file.emplace_back("unrelated", zeros({2}));  // ignored
  nn::save_safetensors((dir / "in.safetensors").string(), file);
  file.emplace_back("do", dout);
  nn::save_safetensors((dir / "in_do.safetensors").string(), file);

  const nsa::NsaIoArgs args = nsa::parse_nsa_io_args({"l=4", "d=2", "l'=8", "n=3", "w=5"});
  CHECK(args.opt.select_block == 8);
  NsaOptions opt = args.opt;
  opt.cu_seqlens = cu;
  std::vector<Tensor> leaves;
  for (const Tensor& t : in.all()) leaves.push_back(t.detach().requires_grad_());
  const NsaOutput want = nsa_attention(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], leaves[7], opt);
  want.o.backward(dout);

  nsa::nsa_io((dir / "in.safetensors").string(), (dir / "out.safetensors").string(), args);
  const nn::SafetensorsFile out = nn::load_safetensors((dir / "out.safetensors").string());
  CHECK(out.tensors.size() == 2);
  CHECK(out.metadata.at("l'") == "8");
  REQUIRE(out.find("o"));
  CHECK(out.find("o")->dtype() == DType::f32);
  expect_close(out.find("o")->to(DType::f64), want.o.to(DType::f64), 0, 0);
  CHECK(out.find("block_indices")->dtype() == DType::i32);
  expect_close(out.find("block_indices")->to(DType::f64), want.block_indices.to(DType::f64), 0, 0);

  nsa::nsa_io((dir / "in_do.safetensors").string(), (dir / "out_do.safetensors").string(), args);
  const nn::SafetensorsFile g = nn::load_safetensors((dir / "out_do.safetensors").string());
  CHECK(g.tensors.size() == 10);
  const char* names[8] = {"dq", "dk_cmp", "dv_cmp", "dk_slc", "dv_slc", "dk_win", "dv_win", "dgates"};
  for (int i = 0; i < 8; ++i) {
    INFO(names[i]);
    REQUIRE(g.find(names[i]));
    CHECK(g.find(names[i])->dtype() == DType::f32);
    expect_close(g.find(names[i])->to(DType::f64), leaves[i].grad().to(DType::f64), 0, 0);
  }
  // bf16 inputs stay bf16.
  nn::SafetensorsFile f16;
  for (auto& [name, t] : file) f16.tensors.emplace_back(name, t.dtype() == DType::f32 ? t.to(DType::bf16) : t);
  const nn::NamedTensors r16 = nsa::run_nsa_io(f16, args);
  CHECK(r16[0].second.dtype() == DType::bf16);
  CHECK(r16.back().first == "dgates");
  CHECK(r16.back().second.dtype() == DType::bf16);
  fs::remove_all(dir);
}

TEST_CASE("nsa_io argument and input errors") {
  expect_error([] { nsa::parse_nsa_io_args({"l=4", "x=2"}); }, {"unknown key 'x'", "valid: l, d, l'"});
  expect_error([] { nsa::parse_nsa_io_args({"n=three"}); }, {"n=three", "integer"});
  expect_error([] { nsa::parse_nsa_io_args({"w"}); }, {"'w'", "key=value"});
  expect_error([] { nsa::parse_nsa_io_args({"device=tpu"}); }, {"device=tpu", "cpu or cuda"});
  CHECK(nsa::parse_nsa_io_args({"lp=16", "scale=0.5"}).opt.select_block == 16);
  nn::SafetensorsFile f;
  f.tensors.emplace_back("q", zeros({4, 2, 2}));
  expect_error([&] { nsa::run_nsa_io(f, {}); }, {"no tensor 'k_cmp'"});
}
