#include "nn/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

namespace nt::nn {
namespace {

const char* st_dtype(DType t) {
  switch (t) {
    case DType::f64: return "F64";
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f8e4m3: return "F8_E4M3";
    case DType::f8e5m2: return "F8_E5M2";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::boolean: return "BOOL";
  }
  return "?";
}
bool parse_dtype(const std::string& s, DType& t) {
  for (DType d : {DType::f64, DType::f32, DType::bf16, DType::f8e4m3, DType::f8e5m2, DType::i32, DType::i64, DType::boolean})
    if (s == st_dtype(d)) return t = d, true;
  return false;
}
std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if ((unsigned char)c < 0x20) o += fmt::format("\\u{:04x}", (int)(unsigned char)c);
    else o += c;
  }
  return o;
}

// A minimal JSON reader for safetensors headers: objects, arrays, strings, integers, true/false/null.
struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  double num = 0;
  std::string str;
  std::vector<Json> arr;
  std::vector<std::pair<std::string, Json>> obj;
};
class JsonParser {
 public:
  JsonParser(const std::string& s, const std::string& file) : s_(s), file_(file) {}
  Json parse() {
    Json v = value();
    ws();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) {
    throw Error(fmt::format("safetensors: {}: corrupt header: {} at byte {}", file_, what, i_));
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  char peek() {
    ws();
    if (i_ >= s_.size()) fail("unexpected end");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c).c_str());
    ++i_;
  }
  std::string string() {
    expect('"');
    std::string o;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') return o;
      if (c != '\\') {
        o += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated escape");
      const char e = s_[i_++];
      switch (e) {
        case 'n': o += '\n'; break;
        case 't': o += '\t'; break;
        case 'r': o += '\r'; break;
        case 'b': o += '\b'; break;
        case 'f': o += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("bad \\u escape");
          const unsigned cp = (unsigned)std::stoul(s_.substr(i_, 4), nullptr, 16);
          i_ += 4;
          if (cp < 0x80) o += (char)cp;
          else if (cp < 0x800) o += (char)(0xC0 | (cp >> 6)), o += (char)(0x80 | (cp & 0x3F));
          else o += (char)(0xE0 | (cp >> 12)), o += (char)(0x80 | ((cp >> 6) & 0x3F)), o += (char)(0x80 | (cp & 0x3F));
          break;
        }
        default: o += e;
      }
    }
  }
  Json value() {
    Json v;
    const char c = peek();
    if (c == '{') {
      v.kind = Json::Object;
      ++i_;
      if (peek() == '}') return ++i_, v;
      while (true) {
        std::string k = string();
        expect(':');
        v.obj.emplace_back(std::move(k), value());
        if (peek() == ',') { ++i_; continue; }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      ++i_;
      if (peek() == ']') return ++i_, v;
      while (true) {
        v.arr.push_back(value());
        if (peek() == ',') { ++i_; continue; }
        expect(']');
        return v;
      }
    }
    if (c == '"') return v.kind = Json::String, v.str = string(), v;
    if (s_.compare(i_, 4, "true") == 0) return i_ += 4, v.kind = Json::Bool, v.num = 1, v;
    if (s_.compare(i_, 5, "false") == 0) return i_ += 5, v.kind = Json::Bool, v;
    if (s_.compare(i_, 4, "null") == 0) return i_ += 4, v;
    size_t used = 0;
    try {
      v.num = std::stod(s_.substr(i_, 32), &used);
    } catch (...) {
      fail("expected a value");
    }
    i_ += used;
    v.kind = Json::Number;
    return v;
  }
  const std::string& s_;
  std::string file_;
  size_t i_ = 0;
};
}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> host;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (auto& [k, v] : metadata) header += (first ? "" : ",") + fmt::format("\"{}\":\"{}\"", json_escape(k), json_escape(v)), first = false;
    header += "}";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    NT_CHECK(t.defined(), "save_safetensors: tensor '{}' is undefined", name);
    for (size_t j = 0; j < i; ++j) NT_CHECK(tensors[j].first != name, "save_safetensors: name '{}' appears twice", name);
    host.push_back(t.detach().to(kCPU).contiguous());
    const uint64_t bytes = (uint64_t)t.numel() * t.element_size();
    std::string shape;
    for (int64_t d = 0; d < t.dim(); ++d) shape += (d ? "," : "") + std::to_string(t.size(d));
    header += fmt::format("{}\"{}\":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                          header.size() > 1 ? "," : "", json_escape(name), st_dtype(t.dtype()), shape, offset, offset + bytes);
    offset += bytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';  // data starts 8-byte aligned, as the reference implementation does

  const std::string tmp = fmt::format("{}.tmp.{}", path, (long)getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  NT_CHECK(fd >= 0, "save_safetensors: cannot create '{}': {}", tmp, std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0) {
        const std::string err = std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error(fmt::format("save_safetensors: writing '{}' failed: {} ('{}' is unchanged)", tmp, err, path));
      }
      c += w, n -= (size_t)w;
    }
  };
  uint64_t n = header.size();
  unsigned char len[8];
  for (int b = 0; b < 8; ++b) len[b] = (unsigned char)(n >> (8 * b));
  write_all(len, 8);
  write_all(header.data(), header.size());
  for (const Tensor& t : host) write_all(t.data_ptr(), (size_t)t.numel() * t.element_size());
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(fmt::format("save_safetensors: flushing '{}' failed: {} ('{}' is unchanged)", tmp, std::strerror(errno), path));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw Error(fmt::format("save_safetensors: renaming '{}' to '{}' failed: {}", tmp, path, err));
  }
}

const Tensor* SafetensorsFile::find(const std::string& name) const {
  for (auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  NT_CHECK(in.good(), "load_safetensors: cannot open '{}'", path);
  const uint64_t size = (uint64_t)in.tellg();
  NT_CHECK(size >= 8, "load_safetensors: '{}' is truncated ({} bytes, shorter than the 8-byte header length)", path, size);
  in.seekg(0);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= (uint64_t)len[b] << (8 * b);
  NT_CHECK(n <= size - 8 && n <= (100u << 20), "load_safetensors: '{}' is corrupt or truncated: header length {} but the file has {} bytes",
           path, n, size);
  std::string header(n, '\0');
  in.read(header.data(), (std::streamsize)n);
  const Json root = JsonParser(header, path).parse();
  NT_CHECK(root.kind == Json::Object, "load_safetensors: '{}': the header is not a JSON object", path);
  const uint64_t data_start = 8 + n, data_size = size - data_start;
  SafetensorsFile f;
  for (auto& [name, e] : root.obj) {
    if (name == "__metadata__") {
      for (auto& [k, v] : e.obj) f.metadata[k] = v.str;
      continue;
    }
    const Json *dt = nullptr, *shape = nullptr, *offs = nullptr;
    for (auto& [k, v] : e.obj) {
      if (k == "dtype") dt = &v;
      else if (k == "shape") shape = &v;
      else if (k == "data_offsets") offs = &v;
    }
    NT_CHECK(dt && shape && offs && offs->arr.size() == 2, "load_safetensors: '{}': entry '{}' lacks dtype, shape or data_offsets", path, name);
    DType t;
    NT_CHECK(parse_dtype(dt->str, t), "load_safetensors: '{}': tensor '{}' has unsupported dtype '{}'", path, name, dt->str);
    Shape s;
    for (auto& d : shape->arr) s.push_back((int64_t)d.num);
    const uint64_t b = (uint64_t)offs->arr[0].num, e2 = (uint64_t)offs->arr[1].num;
    NT_CHECK(b <= e2 && e2 <= data_size, "load_safetensors: '{}' is truncated or corrupt: tensor '{}' spans bytes {}..{} of {}",
             path, name, b, e2, data_size);
    NT_CHECK(e2 - b == (uint64_t)shape_numel(s) * dtype_size(t),
             "load_safetensors: '{}': tensor '{}' has {} bytes, but shape {} of {} needs {}", path, name, e2 - b,
             shape_str(s), dtype_name(t), shape_numel(s) * dtype_size(t));
    Tensor x = empty(s, t);
    in.seekg((std::streamoff)(data_start + b));
    in.read(static_cast<char*>(x.data_ptr()), (std::streamsize)(e2 - b));
    NT_CHECK(in.good(), "load_safetensors: reading tensor '{}' from '{}' failed", name, path);
    f.tensors.emplace_back(name, x);
  }
  return f;
}

void load_parameters(Module& module, const SafetensorsFile& file) {
  std::vector<std::string> problems;
  const auto params = module.named_parameters();
  for (auto& [name, p] : params) {
    const Tensor* t = file.find(name);
    if (!t) problems.push_back(fmt::format("missing '{}' (shape {}, {})", name, shape_str(p.shape()), dtype_name(p.dtype())));
    else if (t->shape() != p.shape())
      problems.push_back(fmt::format("'{}': shape {} in the file, {} in the model", name, shape_str(t->shape()), shape_str(p.shape())));
    else if (t->dtype() != p.dtype())
      problems.push_back(fmt::format("'{}': dtype {} in the file, {} in the model", name, dtype_name(t->dtype()), dtype_name(p.dtype())));
  }
  for (auto& [name, t] : file.tensors) {
    bool known = false;
    for (auto& [n, p] : params) known |= n == name;
    if (!known) problems.push_back(fmt::format("unexpected '{}' (shape {})", name, shape_str(t.shape())));
  }
  if (!problems.empty()) {
    std::string msg = fmt::format("load_parameters: {} mismatch(es) between the file and the model:", problems.size());
    for (auto& p : problems) msg += "\n  " + p;
    throw Error(msg);
  }
  autograd::NoGradGuard no_grad;
  for (auto& [name, p] : params) Tensor(p).copy_(*file.find(name));
}

}  // namespace nt::nn
