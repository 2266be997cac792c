#include "nsa/nsa_io.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>

namespace nt::nsa {
namespace {
const char* const kInputs[8] = {"q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates"};

int64_t parse_int(const std::string& key, const std::string& v) {
  int64_t x = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  NT_CHECK(ec == std::errc() && end == v.data() + v.size(), "nsa_io: {}={}: expected an integer", key, v);
  return x;
}
}  // namespace

NsaIoArgs parse_nsa_io_args(const std::vector<std::string>& args) {
  NsaIoArgs r;
  for (const std::string& a : args) {
    const size_t eq = a.find('=');
    NT_CHECK(eq != std::string::npos, "nsa_io: argument '{}' is not key=value", a);
    const std::string key = a.substr(0, eq), v = a.substr(eq + 1);
    if (key == "l") r.opt.block = parse_int(key, v);
    else if (key == "d") r.opt.stride = parse_int(key, v);
    else if (key == "l'" || key == "lp") r.opt.select_block = parse_int(key, v);
    else if (key == "n") r.opt.n_select = parse_int(key, v);
    else if (key == "w") r.opt.window = parse_int(key, v);
    else if (key == "scale") {
      char* end = nullptr;
      r.opt.scale = std::strtod(v.c_str(), &end);
      NT_CHECK(!v.empty() && *end == '\0' && std::isfinite(r.opt.scale), "nsa_io: scale={}: expected a number", v);
    } else if (key == "device") {
      NT_CHECK(v == "cpu" || v == "cuda", "nsa_io: device={}: expected cpu or cuda", v);
      r.device = v == "cpu" ? kCPU : cuda_device(0);
    } else {
      throw Error(fmt::format("nsa_io: unknown key '{}' (valid: l, d, l' (or lp), n, w, scale, device)", key));
    }
  }
  return r;
}

nn::NamedTensors run_nsa_io(const nn::SafetensorsFile& in, const NsaIoArgs& args) {
  std::vector<Tensor> x;
  for (const char* name : kInputs) {
    const Tensor* t = in.find(name);
    NT_CHECK(t, "nsa_io: the input has no tensor '{}' (needed: q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates)", name);
    x.push_back(t->to(args.device).detach());  // detached: requires_grad_ below must not touch `in`
  }
  NsaOptions opt = args.opt;
  if (const Tensor* cu = in.find("cu_seqlens")) {
    NT_CHECK(cu->dim() == 1 && is_integral(cu->dtype()), "nsa_io: cu_seqlens must be a 1-D int32 tensor, got {} {}",
             dtype_name(cu->dtype()), shape_str(cu->shape()));
    for (double v : cu->to_vector()) opt.cu_seqlens.push_back((int32_t)v);
  }
  const Tensor* dout = in.find("do");
  if (dout)
    for (Tensor& t : x) t.requires_grad_();
  const NsaOutput out = nsa_attention(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], opt);
  nn::NamedTensors r = {{"o", out.o.detach().to(kCPU)}, {"block_indices", out.block_indices.to(kCPU)}};
  if (dout) {
    NT_CHECK(dout->shape() == out.o.shape(), "nsa_io: do must have o's shape {}, got {}", shape_str(out.o.shape()),
             shape_str(dout->shape()));
    out.o.backward(dout->to(out.o.dtype()).to(args.device));
    for (int i = 0; i < 8; ++i) {
      const Tensor g = x[i].grad();  // undefined only if nothing reached the input (an empty k_cmp)
      r.emplace_back(std::string("d") + kInputs[i], g.defined() ? g.to(kCPU) : zeros(x[i].shape(), x[i].dtype()));
    }
  }
  return r;
}

void nsa_io(const std::string& in_path, const std::string& out_path, const NsaIoArgs& args) {
  const nn::SafetensorsFile in = nn::load_safetensors(in_path);
  const NsaOptions& o = args.opt;
  const Tensor* q = in.find("q");
  const double scale = o.scale != 0 || !q || q->dim() != 3 ? o.scale : 1.0 / std::sqrt((double)q->size(2));
  const std::map<std::string, std::string> meta = {
      {"written_by", "nsa_io (nsa-transformer)"}, {"l", std::to_string(o.block)},  {"d", std::to_string(o.stride)},
      {"l'", std::to_string(o.select_block)},     {"n", std::to_string(o.n_select)}, {"w", std::to_string(o.window)},
      {"scale", fmt::format("{}", scale)},      {"device", args.device.str()}};
  nn::save_safetensors(out_path, run_nsa_io(in, args), meta);
}

}  // namespace nt::nsa
