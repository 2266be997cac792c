#include "train/tokenizer.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <queue>
#include <unordered_map>

#include <fmt/ranges.h>

#include "tensor/error.h"

namespace nt::train {
namespace {

// ---- Unicode classes of GPT-2's pattern ----

// Sorted, disjoint [lo, hi] ranges above ASCII within the BMP, generated with Python 3's unicodedata (Unicode 14):
// code points of general category L* (resp. N*), with unassigned code points between two members folded in.
struct Range {
  uint32_t lo, hi;
};
constexpr Range kLetters[] = {
    {0x00AA,0x00AA}, {0x00B5,0x00B5}, {0x00BA,0x00BA}, {0x00C0,0x00D6}, {0x00D8,0x00F6}, {0x00F8,0x02C1},
    {0x02C6,0x02D1}, {0x02E0,0x02E4}, {0x02EC,0x02EC}, {0x02EE,0x02EE}, {0x0370,0x0374}, {0x0376,0x037D},
    {0x037F,0x037F}, {0x0386,0x0386}, {0x0388,0x03F5}, {0x03F7,0x0481}, {0x048A,0x0559}, {0x0560,0x0588},
    {0x05D0,0x05F2}, {0x0620,0x064A}, {0x066E,0x066F}, {0x0671,0x06D3}, {0x06D5,0x06D5}, {0x06E5,0x06E6},
    {0x06EE,0x06EF}, {0x06FA,0x06FC}, {0x06FF,0x06FF}, {0x0710,0x0710}, {0x0712,0x072F}, {0x074D,0x07A5},
    {0x07B1,0x07B1}, {0x07CA,0x07EA}, {0x07F4,0x07F5}, {0x07FA,0x07FA}, {0x0800,0x0815}, {0x081A,0x081A},
    {0x0824,0x0824}, {0x0828,0x0828}, {0x0840,0x0858}, {0x0860,0x0887}, {0x0889,0x088E}, {0x08A0,0x08C9},
    {0x0904,0x0939}, {0x093D,0x093D}, {0x0950,0x0950}, {0x0958,0x0961}, {0x0971,0x0980}, {0x0985,0x09B9},
    {0x09BD,0x09BD}, {0x09CE,0x09CE}, {0x09DC,0x09E1}, {0x09F0,0x09F1}, {0x09FC,0x09FC}, {0x0A05,0x0A39},
    {0x0A59,0x0A5E}, {0x0A72,0x0A74}, {0x0A85,0x0AB9}, {0x0ABD,0x0ABD}, {0x0AD0,0x0AE1}, {0x0AF9,0x0AF9},
    {0x0B05,0x0B39}, {0x0B3D,0x0B3D}, {0x0B5C,0x0B61}, {0x0B71,0x0B71}, {0x0B83,0x0BB9}, {0x0BD0,0x0BD0},
    {0x0C05,0x0C39}, {0x0C3D,0x0C3D}, {0x0C58,0x0C61}, {0x0C80,0x0C80}, {0x0C85,0x0CB9}, {0x0CBD,0x0CBD},
    {0x0CDD,0x0CE1}, {0x0CF1,0x0CF2}, {0x0D04,0x0D3A}, {0x0D3D,0x0D3D}, {0x0D4E,0x0D4E}, {0x0D54,0x0D56},
    {0x0D5F,0x0D61}, {0x0D7A,0x0D7F}, {0x0D85,0x0DC6}, {0x0E01,0x0E30}, {0x0E32,0x0E33}, {0x0E40,0x0E46},
    {0x0E81,0x0EB0}, {0x0EB2,0x0EB3}, {0x0EBD,0x0EC6}, {0x0EDC,0x0F00}, {0x0F40,0x0F6C}, {0x0F88,0x0F8C},
    {0x1000,0x102A}, {0x103F,0x103F}, {0x1050,0x1055}, {0x105A,0x105D}, {0x1061,0x1061}, {0x1065,0x1066},
    {0x106E,0x1070}, {0x1075,0x1081}, {0x108E,0x108E}, {0x10A0,0x10FA}, {0x10FC,0x135A}, {0x1380,0x138F},
    {0x13A0,0x13FD}, {0x1401,0x166C}, {0x166F,0x167F}, {0x1681,0x169A}, {0x16A0,0x16EA}, {0x16F1,0x1711},
    {0x171F,0x1731}, {0x1740,0x1751}, {0x1760,0x1770}, {0x1780,0x17B3}, {0x17D7,0x17D7}, {0x17DC,0x17DC},
    {0x1820,0x1884}, {0x1887,0x18A8}, {0x18AA,0x191E}, {0x1950,0x19C9}, {0x1A00,0x1A16}, {0x1A20,0x1A54},
    {0x1AA7,0x1AA7}, {0x1B05,0x1B33}, {0x1B45,0x1B4C}, {0x1B83,0x1BA0}, {0x1BAE,0x1BAF}, {0x1BBA,0x1BE5},
    {0x1C00,0x1C23}, {0x1C4D,0x1C4F}, {0x1C5A,0x1C7D}, {0x1C80,0x1CBF}, {0x1CE9,0x1CEC}, {0x1CEE,0x1CF3},
    {0x1CF5,0x1CF6}, {0x1CFA,0x1DBF}, {0x1E00,0x1FBC}, {0x1FBE,0x1FBE}, {0x1FC2,0x1FCC}, {0x1FD0,0x1FDB},
    {0x1FE0,0x1FEC}, {0x1FF2,0x1FFC}, {0x2071,0x2071}, {0x207F,0x207F}, {0x2090,0x209C}, {0x2102,0x2102},
    {0x2107,0x2107}, {0x210A,0x2113}, {0x2115,0x2115}, {0x2119,0x211D}, {0x2124,0x2124}, {0x2126,0x2126},
    {0x2128,0x2128}, {0x212A,0x212D}, {0x212F,0x2139}, {0x213C,0x213F}, {0x2145,0x2149}, {0x214E,0x214E},
    {0x2183,0x2184}, {0x2C00,0x2CE4}, {0x2CEB,0x2CEE}, {0x2CF2,0x2CF3}, {0x2D00,0x2D6F}, {0x2D80,0x2DDE},
    {0x2E2F,0x2E2F}, {0x3005,0x3006}, {0x3031,0x3035}, {0x303B,0x303C}, {0x3041,0x3096}, {0x309D,0x309F},
    {0x30A1,0x30FA}, {0x30FC,0x318E}, {0x31A0,0x31BF}, {0x31F0,0x31FF}, {0x3400,0x4DBF}, {0x4E00,0xA48C},
    {0xA4D0,0xA4FD}, {0xA500,0xA60C}, {0xA610,0xA61F}, {0xA62A,0xA66E}, {0xA67F,0xA69D}, {0xA6A0,0xA6E5},
    {0xA717,0xA71F}, {0xA722,0xA788}, {0xA78B,0xA801}, {0xA803,0xA805}, {0xA807,0xA80A}, {0xA80C,0xA822},
    {0xA840,0xA873}, {0xA882,0xA8B3}, {0xA8F2,0xA8F7}, {0xA8FB,0xA8FB}, {0xA8FD,0xA8FE}, {0xA90A,0xA925},
    {0xA930,0xA946}, {0xA960,0xA97C}, {0xA984,0xA9B2}, {0xA9CF,0xA9CF}, {0xA9E0,0xA9E4}, {0xA9E6,0xA9EF},
    {0xA9FA,0xAA28}, {0xAA40,0xAA42}, {0xAA44,0xAA4B}, {0xAA60,0xAA76}, {0xAA7A,0xAA7A}, {0xAA7E,0xAAAF},
    {0xAAB1,0xAAB1}, {0xAAB5,0xAAB6}, {0xAAB9,0xAABD}, {0xAAC0,0xAAC0}, {0xAAC2,0xAADD}, {0xAAE0,0xAAEA},
    {0xAAF2,0xAAF4}, {0xAB01,0xAB5A}, {0xAB5C,0xAB69}, {0xAB70,0xABE2}, {0xAC00,0xD7FB}, {0xF900,0xFB1D},
    {0xFB1F,0xFB28}, {0xFB2A,0xFBB1}, {0xFBD3,0xFD3D}, {0xFD50,0xFDC7}, {0xFDF0,0xFDFB}, {0xFE70,0xFEFC},
    {0xFF21,0xFF3A}, {0xFF41,0xFF5A}, {0xFF66,0xFFDC},
};
constexpr Range kNumbers[] = {
    {0x00B2,0x00B3}, {0x00B9,0x00B9}, {0x00BC,0x00BE}, {0x0660,0x0669}, {0x06F0,0x06F9}, {0x07C0,0x07C9},
    {0x0966,0x096F}, {0x09E6,0x09EF}, {0x09F4,0x09F9}, {0x0A66,0x0A6F}, {0x0AE6,0x0AEF}, {0x0B66,0x0B6F},
    {0x0B72,0x0B77}, {0x0BE6,0x0BF2}, {0x0C66,0x0C6F}, {0x0C78,0x0C7E}, {0x0CE6,0x0CEF}, {0x0D58,0x0D5E},
    {0x0D66,0x0D78}, {0x0DE6,0x0DEF}, {0x0E50,0x0E59}, {0x0ED0,0x0ED9}, {0x0F20,0x0F33}, {0x1040,0x1049},
    {0x1090,0x1099}, {0x1369,0x137C}, {0x16EE,0x16F0}, {0x17E0,0x17F9}, {0x1810,0x1819}, {0x1946,0x194F},
    {0x19D0,0x19DA}, {0x1A80,0x1A99}, {0x1B50,0x1B59}, {0x1BB0,0x1BB9}, {0x1C40,0x1C49}, {0x1C50,0x1C59},
    {0x2070,0x2070}, {0x2074,0x2079}, {0x2080,0x2089}, {0x2150,0x2182}, {0x2185,0x2189}, {0x2460,0x249B},
    {0x24EA,0x24FF}, {0x2776,0x2793}, {0x2CFD,0x2CFD}, {0x3007,0x3007}, {0x3021,0x3029}, {0x3038,0x303A},
    {0x3192,0x3195}, {0x3220,0x3229}, {0x3248,0x324F}, {0x3251,0x325F}, {0x3280,0x3289}, {0x32B1,0x32BF},
    {0xA620,0xA629}, {0xA6E6,0xA6EF}, {0xA830,0xA835}, {0xA8D0,0xA8D9}, {0xA900,0xA909}, {0xA9D0,0xA9D9},
    {0xA9F0,0xA9F9}, {0xAA50,0xAA59}, {0xABF0,0xABF9}, {0xFF10,0xFF19},
};

enum Cls : uint8_t { kOther, kLetter, kNumber, kSpace };
constexpr uint32_t kBad = 0xFFFFFFFF;  // a byte that does not start a valid UTF-8 sequence

template <size_t N> bool in_ranges(const Range (&r)[N], uint32_t cp) {
  const Range* it = std::upper_bound(r, r + N, cp, [](uint32_t c, const Range& x) { return c < x.lo; });
  return it != r && cp <= (it - 1)->hi;
}

Cls classify(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp | 0x20) - 'a' < 26) return kLetter;
    if (cp - '0' < 10) return kNumber;
    return cp == ' ' || (cp >= 9 && cp <= 13) ? kSpace : kOther;
  }
  if (cp == kBad) return kOther;
  if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
      cp == 0x202F || cp == 0x205F || cp == 0x3000)
    return kSpace;
  if (cp >= 0x10000) return cp >= 0x20000 && cp <= 0x323AF ? kLetter : cp >= 0x1D7CE && cp <= 0x1D7FF ? kNumber : kOther;
  return in_ranges(kLetters, cp) ? kLetter : in_ranges(kNumbers, cp) ? kNumber : kOther;
}

// The code point at s[i] and its length; an invalid, overlong or truncated sequence is a single kBad byte.
size_t utf8_at(std::string_view s, size_t i, uint32_t& cp) {
  const uint8_t c = (uint8_t)s[i];
  cp = kBad;
  if (c < 0x80) return cp = c, 1;
  size_t len;
  uint32_t v, min;
  if ((c & 0xE0) == 0xC0) len = 2, v = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0) len = 3, v = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0) len = 4, v = c & 0x07, min = 0x10000;
  else return 1;
  if (i + len > s.size()) return 1;
  for (size_t k = 1; k < len; ++k) {
    const uint8_t d = (uint8_t)s[i + k];
    if ((d & 0xC0) != 0x80) return 1;
    v = v << 6 | (d & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) return 1;
  cp = v;
  return len;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | cp >> 6), out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | cp >> 12), out += (char)(0x80 | (cp >> 6 & 0x3F)), out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | cp >> 18), out += (char)(0x80 | (cp >> 12 & 0x3F)), out += (char)(0x80 | (cp >> 6 & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

// For messages: bytes with the unprintable ones as \xNN, cut at 40 bytes.
std::string show(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 40; ++i) {
    const uint8_t c = (uint8_t)s[i];
    out += c >= 0x20 && c < 0x7F && c != '\\' ? std::string(1, (char)c) : fmt::format("\\x{:02x}", c);
  }
  return s.size() > 40 ? out + "..." : out;
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  NT_CHECK(in.good(), "tokenizer: cannot open {} '{}'", what, path);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  NT_CHECK(!in.bad(), "tokenizer: reading {} '{}' failed", what, path);
  return data;
}

// Calls on_text for the pieces of text between special strings and on_special(id) for each special found (the
// longest one where several start at the same byte). specials: (string, id), longest first.
template <class T, class S>
void split_specials(std::string_view text, const std::vector<std::pair<std::string, int32_t>>& specials, T&& on_text,
                    S&& on_special) {
  std::array<bool, 256> first{};
  for (const auto& sp : specials) first[(uint8_t)sp.first[0]] = true;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!first[(uint8_t)text[i]]) continue;
    for (const auto& [s, id] : specials) {
      if (text.compare(i, s.size(), s) != 0) continue;
      if (i > start) on_text(text.substr(start, i - start));
      on_special(id);
      start = i + s.size(), i = start - 1;
      break;
    }
  }
  if (start < text.size()) on_text(text.substr(start));
}

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view s) {
  std::vector<std::string_view> out;
  const size_t n = s.size();
  auto cls_at = [&](size_t i, size_t& len) {
    uint32_t cp;
    len = utf8_at(s, i, cp);
    return classify(cp);
  };
  auto run_end = [&](size_t i, Cls c) {  // end of the run of class c starting at i
    size_t len;
    while (i < n && cls_at(i, len) == c) i += len;
    return i;
  };
  size_t i = 0;
  while (i < n) {
    size_t j = 0;
    if (s[i] == '\'') {
      for (std::string_view c : {"s", "t", "re", "ve", "m", "ll", "d"})
        if (s.substr(i + 1, c.size()) == c) {
          j = i + 1 + c.size();
          break;
        }
    }
    size_t len, len1;
    const Cls c = cls_at(i, len);
    if (!j && s[i] == ' ' && i + 1 < n) {  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+" with their space
      const Cls c1 = cls_at(i + 1, len1);
      if (c1 != kSpace) j = run_end(i + 1, c1);
    }
    if (!j && c != kSpace) j = run_end(i, c);
    if (!j) {
      // A whitespace run: all of it at the end of the text (\s+(?!\S)); before other text all but its last code
      // point (\s+(?!\S) backtracks so the next word keeps its leading space); a lone one is itself (\s+).
      size_t last = i, k = i;
      while (k < n && cls_at(k, len) == kSpace) last = k, k += len;
      j = k == n || last == i ? k : last;
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

struct Tokenizer::Tables {
  std::unordered_map<uint64_t, int32_t> rank;           // (left, right) -> merge rank
  std::unordered_map<std::string, int32_t> ids;         // bytes -> non-special id
  std::vector<std::pair<std::string, int32_t>> specials;  // longest first
  std::mutex mu;
  std::unordered_map<std::string, std::vector<int32_t>> cache;  // word -> ids
};

void Tokenizer::finish(const std::string& where) {
  const int64_t V = (int64_t)tokens_.size();
  NT_CHECK(V >= 256 && V < INT32_MAX, "{}: {} tokens; the 256 byte tokens are the minimum", where, V);
  auto t = std::make_shared<Tables>();
  special_flag_.assign(V, 0);
  for (size_t i = 0; i < special_ids_.size(); ++i) {
    const int32_t id = special_ids_[i];
    NT_CHECK(id >= 0 && id < V, "{}: special token {} has id {}, outside the vocabulary of {}", where, i, id, V);
    NT_CHECK(!special_flag_[id], "{}: token {} is listed twice as a special token", where, id);
    NT_CHECK(!tokens_[id].empty(), "{}: special token {} (id {}) is empty", where, i, id);
    for (const auto& [s, other] : t->specials)
      NT_CHECK(s != tokens_[id], "{}: special tokens {} and {} are both '{}'", where, other, id, show(s));
    special_flag_[id] = 1;
    t->specials.emplace_back(tokens_[id], id);
  }
  std::stable_sort(t->specials.begin(), t->specials.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  for (int32_t id = 0; id < V; ++id) {
    if (special_flag_[id]) continue;
    NT_CHECK(!tokens_[id].empty(), "{}: token {} is empty", where, id);
    const auto [it, fresh] = t->ids.emplace(tokens_[id], id);
    NT_CHECK(fresh, "{}: tokens {} and {} are both '{}'", where, it->second, id, show(tokens_[id]));
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = t->ids.find(std::string(1, (char)b));
    NT_CHECK(it != t->ids.end(), "{}: byte 0x{:02x} has no token, so not every text could be encoded", where, b);
    byte_ids_[b] = it->second;
  }
  for (size_t r = 0; r < merges_.size(); ++r) {
    const Merge m = merges_[r];
    for (int32_t id : {m.left, m.right, m.result})
      NT_CHECK(id >= 0 && id < V && !special_flag_[id], "{}: merge {} uses id {}, which is {}", where, r, id,
               id >= 0 && id < V ? "a special token" : fmt::format("outside the vocabulary of {}", V));
    NT_CHECK(tokens_[m.result] == tokens_[m.left] + tokens_[m.right],
             "{}: merge {} joins tokens {} + {} ('{}' + '{}') into token {}, which is '{}'", where, r, m.left, m.right,
             show(tokens_[m.left]), show(tokens_[m.right]), m.result, show(tokens_[m.result]));
    const auto [it, fresh] = t->rank.emplace(pair_key(m.left, m.right), (int32_t)r);
    NT_CHECK(fresh, "{}: merge {} repeats merge {} ({} + {})", where, r, it->second, m.left, m.right);
  }
  t_ = std::move(t);
}

void Tokenizer::encode_word(std::string_view w, std::vector<int32_t>& out) const {
  const int32_t n = (int32_t)w.size();
  if (n == 1) return out.push_back(byte_ids_[(uint8_t)w[0]]);
  {
    std::lock_guard lock(t_->mu);
    if (auto it = t_->cache.find(std::string(w)); it != t_->cache.end())
      return out.insert(out.end(), it->second.begin(), it->second.end()), void();
  }
  // Symbols form a linked list over the byte positions; a heap holds (rank, position) of candidate pairs, checked
  // when popped. All occurrences of one pair are merged (left to right) before the pairs they form are queued, as in
  // GPT-2's loop, which merges every occurrence of the best pair and then looks for the next best.
  std::vector<int32_t> id(n), next(n), prev(n);
  for (int32_t i = 0; i < n; ++i) id[i] = byte_ids_[(uint8_t)w[i]], next[i] = i + 1, prev[i] = i - 1;
  using Cand = std::pair<int32_t, int32_t>;
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t p) {
    if (p < 0 || next[p] >= n) return;
    if (auto it = t_->rank.find(pair_key(id[p], id[next[p]])); it != t_->rank.end()) heap.push({it->second, p});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  std::vector<int32_t> merged;
  while (!heap.empty()) {
    const int32_t r = heap.top().first;
    const Merge m = merges_[r];
    merged.clear();
    for (; !heap.empty() && heap.top().first == r; heap.pop()) {
      const int32_t p = heap.top().second, q = next[p];
      if (id[p] != m.left || q >= n || id[q] != m.right) continue;  // stale: p or its neighbour changed
      id[p] = m.result, id[q] = -1, next[p] = next[q];
      if (next[q] < n) prev[next[q]] = p;
      merged.push_back(p);
    }
    for (int32_t p : merged) push(prev[p]), push(p);
  }
  std::vector<int32_t> ids;
  for (int32_t p = 0; p < n; p = next[p]) ids.push_back(id[p]);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard lock(t_->mu);
  if (t_->cache.size() >= (1u << 20)) t_->cache.clear();  // bounds the memory on endless streams of new words
  t_->cache.emplace(std::string(w), std::move(ids));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_specials) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3);
  auto plain = [&](std::string_view part) {
    for (std::string_view w : pretokenize(part)) encode_word(w, out);
  };
  if (allow_specials) split_specials(text, t_->specials, plain, [&](int32_t id) { out.push_back(id); });
  else plain(text);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    NT_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "tokenizer: decode: id {} at position {} is outside the vocabulary of {}",
             ids[i], i, vocab_size());
    out += tokens_[ids[i]];
  }
  return out;
}

std::optional<int32_t> Tokenizer::find_special(std::string_view name) const {
  for (int32_t id : special_ids_)
    if (tokens_[id] == name || (tokens_[id].size() == name.size() + 4 && tokens_[id].starts_with("<|") &&
                                tokens_[id].ends_with("|>") && tokens_[id].compare(2, name.size(), name) == 0))
      return id;
  return std::nullopt;
}

int32_t Tokenizer::special(std::string_view name) const {
  if (auto id = find_special(name)) return *id;
  throw Error(fmt::format("tokenizer: no special token '{}'; the known ones are {}", name, fmt::join(specials(), ", ")));
}

std::vector<std::string> Tokenizer::specials() const {
  std::vector<std::string> out;
  for (int32_t id : special_ids_) out.push_back(tokens_[id]);
  return out;
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && special_flag_[id]; }

std::optional<int32_t> Tokenizer::token_id(std::string_view bytes) const {
  const auto it = t_->ids.find(std::string(bytes));
  return it == t_->ids.end() ? std::nullopt : std::optional<int32_t>(it->second);
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  NT_CHECK(id >= 0 && id < vocab_size(), "tokenizer: id {} is outside the vocabulary of {}", id, vocab_size());
  return tokens_[id];
}

// ---- training ----

Tokenizer Tokenizer::train(const std::vector<std::string>& texts, int64_t vocab_size,
                           const std::vector<std::string>& specials, bool progress) {
  const int64_t n_merges = vocab_size - 256 - (int64_t)specials.size();
  NT_CHECK(n_merges >= 0 && vocab_size < INT32_MAX, "tokenizer: train: vocab_size {} is too small for the 256 byte tokens and {} specials",
           vocab_size, specials.size());
  std::vector<std::pair<std::string, int32_t>> sp;
  for (size_t i = 0; i < specials.size(); ++i) {
    NT_CHECK(!specials[i].empty(), "tokenizer: train: special token {} is empty", i);
    sp.emplace_back(specials[i], (int32_t)i);
  }
  std::stable_sort(sp.begin(), sp.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });

  // Each distinct word once, with its count; special strings are cut out so no merge learns them.
  std::unordered_map<std::string_view, int64_t> freq;
  int64_t n_words = 0;
  for (const std::string& text : texts)
    split_specials(text, sp, [&](std::string_view part) {
      for (std::string_view w : pretokenize(part)) ++freq[w], ++n_words;
    }, [](int32_t) {});
  struct Word {
    std::vector<int32_t> ids;
    int64_t n;
  };
  std::vector<Word> words;
  for (const auto& [w, c] : freq)
    if (w.size() >= 2) words.push_back({std::vector<int32_t>((const uint8_t*)w.data(), (const uint8_t*)w.data() + w.size()), c});
  if (progress) fmt::print(stderr, "tokenizer: {} words, {} distinct, from {} texts\n", n_words, freq.size(), texts.size());
  freq.clear();

  // Pair counts over all words, and for each pair the words that have (or had) it.
  std::unordered_map<uint64_t, int64_t> count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  auto note = [&](uint64_t k, int32_t wi) {
    auto& v = where[k];
    if (v.empty() || v.back() != wi) v.push_back(wi);
  };
  for (int32_t wi = 0; wi < (int32_t)words.size(); ++wi)
    for (size_t i = 0; i + 1 < words[wi].ids.size(); ++i) {
      const uint64_t k = pair_key(words[wi].ids[i], words[wi].ids[i + 1]);
      count[k] += words[wi].n, note(k, wi);
    }
  // Max-heap on (count, then the smaller pair); entries whose count has changed since are skipped when popped.
  struct Entry {
    int64_t n;
    uint64_t key;
    bool operator<(const Entry& o) const { return n != o.n ? n < o.n : key > o.key; }
  };
  std::priority_queue<Entry> heap;
  for (const auto& [k, c] : count) heap.push({c, k});

  Tokenizer tk;
  for (int b = 0; b < 256; ++b) tk.tokens_.emplace_back(1, (char)b);
  std::vector<int32_t> stamp(words.size(), -1), merged;
  std::unordered_map<uint64_t, int64_t> delta;
  while ((int64_t)tk.merges_.size() < n_merges && !heap.empty()) {
    const Entry e = heap.top();
    heap.pop();
    if (auto it = count.find(e.key); it == count.end() || it->second != e.n) continue;
    const int32_t a = (int32_t)(e.key >> 32), b = (int32_t)(e.key & 0xFFFFFFFF), id = (int32_t)tk.tokens_.size();
    tk.merges_.push_back({a, b, id});
    tk.tokens_.push_back(tk.tokens_[a] + tk.tokens_[b]);
    delta.clear();
    const std::vector<int32_t> list = std::move(where[e.key]);
    where.erase(e.key);
    for (int32_t wi : list) {
      if (stamp[wi] == id) continue;
      stamp[wi] = id;
      std::vector<int32_t>& ids = words[wi].ids;
      merged.clear();
      for (size_t i = 0; i < ids.size();) {
        if (i + 1 < ids.size() && ids[i] == a && ids[i + 1] == b) merged.push_back(id), i += 2;
        else merged.push_back(ids[i++]);
      }
      if (merged.size() == ids.size()) continue;
      // The word's pairs change only around the merged symbols; old out, new in, netted in delta.
      for (size_t i = 0; i + 1 < ids.size(); ++i) delta[pair_key(ids[i], ids[i + 1])] -= words[wi].n;
      for (size_t i = 0; i + 1 < merged.size(); ++i) {
        const uint64_t k = pair_key(merged[i], merged[i + 1]);
        delta[k] += words[wi].n;
        if (merged[i] == id || merged[i + 1] == id) note(k, wi);
      }
      ids.swap(merged);
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      const int64_t c = count[k] += d;
      if (c > 0) heap.push({c, k});
      else count.erase(k);
    }
    if (progress && (tk.merges_.size() % 1000 == 0 || (int64_t)tk.merges_.size() == n_merges))
      fmt::print(stderr, "tokenizer: merge {}/{}: '{}' (count {})\n", tk.merges_.size(), n_merges, show(tk.tokens_.back()), e.n);
  }
  if (progress && (int64_t)tk.merges_.size() < n_merges)
    fmt::print(stderr, "tokenizer: the corpus has no more pairs after {} merges\n", tk.merges_.size());
  for (const std::string& s : specials) tk.special_ids_.push_back((int32_t)tk.tokens_.size()), tk.tokens_.push_back(s);
  tk.finish("tokenizer: train");
  return tk;
}

// ---- saving and loading ----

void Tokenizer::save(const std::string& path) const {
  static const char* hex = "0123456789abcdef";
  std::string s = fmt::format("nt-bpe 1\ntokens {}\n", tokens_.size());
  for (const std::string& t : tokens_) {
    for (uint8_t c : t) s += hex[c >> 4], s += hex[c & 15];
    s += '\n';
  }
  s += fmt::format("merges {}\n", merges_.size());
  for (const Merge& m : merges_) s += fmt::format("{} {} {}\n", m.left, m.right, m.result);
  s += fmt::format("specials {}\n", special_ids_.size());
  for (int32_t id : special_ids_) s += fmt::format("{}\n", id);
  s += "end\n";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    NT_CHECK(out.good(), "tokenizer: cannot write '{}'", tmp);
    out.write(s.data(), (std::streamsize)s.size());
    out.close();
    NT_CHECK(out.good(), "tokenizer: writing '{}' failed (disk full?)", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  NT_CHECK(!ec, "tokenizer: cannot rename '{}' to '{}': {}", tmp, path, ec.message());
}

namespace {
// The lines of a saved tokenizer, with errors naming the file and the line.
struct Lines {
  std::string_view data;
  const std::string& path;
  size_t pos = 0;
  int64_t line = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("tokenizer: '{}' line {}: {}", path, line, what));
  }
  std::string_view next(std::string_view what) {
    const size_t e = data.find('\n', pos);
    if (e == std::string_view::npos)
      throw Error(fmt::format("tokenizer: '{}' is truncated: it ends after line {}, where {} was expected", path,
                              line, what));
    ++line;
    const std::string_view l = data.substr(pos, e - pos);
    pos = e + 1;
    return l;
  }
  int64_t number(std::string_view s, std::string_view l) const {
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || s.empty()) fail(fmt::format("'{}' is not a number", show(l)));
    return v;
  }
  // "key N" with 0 <= N <= limit
  int64_t header(std::string_view key, int64_t limit) {
    const std::string_view l = next(fmt::format("'{} N'", key));
    if (!l.starts_with(key) || l.size() <= key.size() || l[key.size()] != ' ')
      fail(fmt::format("expected '{} N', found '{}'", key, show(l)));
    const int64_t n = number(l.substr(key.size() + 1), l);
    if (n < 0 || n > limit) fail(fmt::format("{} {} is impossible here (at most {})", key, n, limit));
    return n;
  }
  std::vector<int64_t> numbers(std::string_view what, size_t k) {
    const std::string_view l = next(what);
    std::vector<int64_t> v;
    for (size_t s = 0; s <= l.size();) {
      const size_t e = std::min(l.find(' ', s), l.size());
      v.push_back(number(l.substr(s, e - s), l));
      s = e + 1;
    }
    if (v.size() != k) fail(fmt::format("expected {}, found '{}'", what, show(l)));
    return v;
  }
};
}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string data = read_file(path, "tokenizer file");
  Lines in{data, path};
  if (in.next("the header 'nt-bpe 1'") != "nt-bpe 1")
    in.fail("not a tokenizer saved by nt::train::Tokenizer (the first line must be 'nt-bpe 1')");
  Tokenizer tk;
  const int64_t V = in.header("tokens", std::min<int64_t>(data.size(), INT32_MAX - 1));
  for (int64_t i = 0; i < V; ++i) {
    const std::string_view l = in.next(fmt::format("token {} in hex", i));
    std::string t;
    auto nibble = [&](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      in.fail(fmt::format("token {}: '{}' is not lowercase hex", i, show(l)));
    };
    if (l.size() % 2) in.fail(fmt::format("token {}: '{}' has an odd number of hex digits", i, show(l)));
    for (size_t k = 0; k < l.size(); k += 2) t += (char)(nibble(l[k]) << 4 | nibble(l[k + 1]));
    tk.tokens_.push_back(std::move(t));
  }
  const int64_t M = in.header("merges", V);
  for (int64_t r = 0; r < M; ++r) {
    const auto v = in.numbers(fmt::format("merge {} as 'left right result'", r), 3);
    for (int64_t id : v)
      if (id < 0 || id >= V) in.fail(fmt::format("merge {} uses id {}, outside the vocabulary of {}", r, id, V));
    tk.merges_.push_back({(int32_t)v[0], (int32_t)v[1], (int32_t)v[2]});
  }
  const int64_t K = in.header("specials", V);
  for (int64_t i = 0; i < K; ++i) {
    const int64_t id = in.numbers(fmt::format("the id of special {}", i), 1)[0];
    if (id < 0 || id >= V) in.fail(fmt::format("special {} has id {}, outside the vocabulary of {}", i, id, V));
    tk.special_ids_.push_back((int32_t)id);
  }
  if (in.next("'end'") != "end") in.fail("expected 'end' after the special tokens");
  if (in.pos != data.size()) in.fail("unexpected data after 'end'");
  tk.finish(fmt::format("tokenizer: '{}'", path));
  return tk;
}

namespace {
// encoder.json is one flat JSON object, token string -> id; this reads exactly that: strings with every JSON escape
// (\uXXXX and surrogate pairs included), integer values.
struct FlatJson {
  std::string_view s;
  const std::string& path;
  size_t i = 0;

  [[noreturn]] void fail(std::string_view what) const {
    const int64_t line = 1 + std::count(s.begin(), s.begin() + (ptrdiff_t)std::min(i, s.size()), '\n');
    throw Error(fmt::format("tokenizer: '{}' is not a JSON object of string -> integer: {} at line {} (byte {})", path,
                            what, line, i));
  }
  bool eat(char c) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
    return i < s.size() && s[i] == c ? (++i, true) : false;
  }
  void expect(char c) {
    if (!eat(c)) fail(i < s.size() ? fmt::format("expected '{}', found '{}'", c, s[i]) : fmt::format("expected '{}', found the end", c));
  }
  uint32_t hex4() {
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k, ++i) {
      const char c = i < s.size() ? s[i] : 0;
      const int d = c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
      if (d < 0) fail("bad \\u escape");
      v = v << 4 | (uint32_t)d;
    }
    return v;
  }
  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (i >= s.size()) fail("unterminated string");
      const char c = s[i++];
      if (c == '"') return out;
      if ((uint8_t)c < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      const char e = i < s.size() ? s[i++] : 0;
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xDC00 && cp < 0xE000) fail("unpaired low surrogate");
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (s.substr(i, 2) != "\\u") fail("unpaired high surrogate");
            i += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("high surrogate not followed by a low one");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
  int64_t integer() {
    eat(' ');
    const size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(s.data() + start, s.data() + i, v);
    if (ec != std::errc() || p != s.data() + i || (i < s.size() && (s[i] == '.' || s[i] == 'e' || s[i] == 'E')))
      fail("expected an integer");
    return v;
  }
  std::vector<std::pair<std::string, int64_t>> object() {
    std::vector<std::pair<std::string, int64_t>> out;
    expect('{');
    if (!eat('}')) {
      do {
        std::string k = string();
        expect(':');
        out.emplace_back(std::move(k), integer());
      } while (eat(','));
      expect('}');
    }
    eat(' ');
    if (i != s.size()) fail("unexpected data after the object");
    return out;
  }
};
}  // namespace

Tokenizer Tokenizer::load_gpt2(const std::string& encoder_json, const std::string& vocab_bpe) {
  // GPT-2 writes each byte as a printable character: the printable Latin-1 ones as themselves, the rest (controls,
  // space, DEL, NBSP, soft hyphen) as U+0100 + their rank among those, so token strings show no blanks.
  std::array<int, 0x144> byte_of;
  byte_of.fill(-1);
  for (int b = 0, n = 0; b < 256; ++b)
    byte_of[(b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE ? b : 256 + n++] = b;
  auto to_bytes = [&](std::string_view u, const std::string& file, std::string_view ctx) {
    std::string out;
    for (size_t i = 0; i < u.size();) {
      uint32_t cp;
      i += utf8_at(u, i, cp);
      NT_CHECK(cp < byte_of.size() && byte_of[cp] >= 0, "tokenizer: '{}': {} '{}' has a character outside GPT-2's byte alphabet",
               file, ctx, show(u));
      out += (char)byte_of[cp];
    }
    return out;
  };
  const std::string json = read_file(encoder_json, "GPT-2 encoder");
  const auto entries = FlatJson{json, encoder_json}.object();
  Tokenizer tk;
  tk.tokens_.resize(entries.size());
  std::vector<uint8_t> seen(entries.size());
  std::unordered_map<std::string, int32_t> ids;
  for (const auto& [key, id] : entries) {
    NT_CHECK(id >= 0 && id < (int64_t)entries.size() && !seen[id], "tokenizer: '{}': id {} of '{}' is {} (the {} ids must be 0..{})",
             encoder_json, id, show(key), id >= 0 && id < (int64_t)entries.size() ? "repeated" : "out of range",
             entries.size(), entries.size() - 1);
    seen[id] = 1;
    if (key == "<|endoftext|>") {
      tk.tokens_[id] = key, tk.special_ids_.push_back((int32_t)id);
      continue;
    }
    tk.tokens_[id] = to_bytes(key, encoder_json, "token");
    NT_CHECK(ids.emplace(tk.tokens_[id], (int32_t)id).second, "tokenizer: '{}': token '{}' appears twice", encoder_json, show(key));
  }
  NT_CHECK(!tk.special_ids_.empty(), "tokenizer: '{}' has no '<|endoftext|>' token", encoder_json);

  const std::string bpe = read_file(vocab_bpe, "GPT-2 merges file");
  size_t pos = 0;
  for (int64_t line = 1; pos < bpe.size(); ++line) {
    size_t e = bpe.find('\n', pos);
    if (e == std::string::npos) e = bpe.size();
    std::string_view l(bpe.data() + pos, e - pos);
    pos = e + 1;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty() || (line == 1 && l.starts_with("#version"))) continue;
    const size_t sp = l.find(' ');
    NT_CHECK(sp != std::string_view::npos && sp > 0 && sp + 1 < l.size() && l.find(' ', sp + 1) == std::string_view::npos,
             "tokenizer: '{}' line {}: expected two tokens separated by a space, found '{}'", vocab_bpe, line, show(l));
    const std::string a = to_bytes(l.substr(0, sp), vocab_bpe, fmt::format("line {}", line));
    const std::string b = to_bytes(l.substr(sp + 1), vocab_bpe, fmt::format("line {}", line));
    int32_t m[3];
    const std::string parts[3] = {a, b, a + b};
    for (int k = 0; k < 3; ++k) {
      const auto it = ids.find(parts[k]);
      NT_CHECK(it != ids.end(), "tokenizer: '{}' line {}: '{}' is not a token of '{}'", vocab_bpe, line, show(parts[k]),
               encoder_json);
      m[k] = it->second;
    }
    tk.merges_.push_back({m[0], m[1], m[2]});
  }
  tk.finish(fmt::format("tokenizer: GPT-2 vocabulary '{}' + '{}'", encoder_json, vocab_bpe));
  return tk;
}

}  // namespace nt::train
