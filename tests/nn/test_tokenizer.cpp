// The byte-level BPE tokenizer: GPT-2's word split, round trips on any bytes, training (hand-checked merges,
// determinism, requested size), specials, save/load with corrupt files, and GPT-2's own vocabulary giving the ids of
// its reference tokenizer (needs data/gpt2: scripts/fetch_gpt2_vocab.sh).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "tensor/error.h"
#include "train/tokenizer.h"

using nt::train::Tokenizer;
namespace fs = std::filesystem;

namespace {

// CHECKs that fn throws nt::Error whose message contains every one of parts.
template <class F> void expect_error(F&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    FAIL_CHECK("expected an nt::Error, nothing was thrown");
  } catch (const nt::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) CHECK_MESSAGE(msg.find(p) != std::string::npos, "message '" << msg << "' lacks '" << p << "'");
  }
}

std::vector<std::string> words_of(std::string_view s) {
  std::vector<std::string> out;
  for (auto w : nt::train::pretokenize(s)) out.emplace_back(w);
  return out;
}

// Random bytes, biased towards the interesting ones: spaces, apostrophes, letters, UTF-8 lead and continuation
// bytes, and the pieces of special-token strings.
std::string random_bytes(std::mt19937& rng, size_t n) {
  static const std::string pool = " \t\n'sdtlm<|>eos aA1.";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t r = rng();
    s += r % 3 == 0 ? pool[(r >> 8) % pool.size()] : r % 3 == 1 ? (char)(0x80 + (r >> 8) % 0x80) : (char)(r >> 8);
  }
  return s;
}

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> texts = [] {
    std::vector<std::string> t;
    const char* lines[] = {"The quick brown fox jumps over the lazy dog. ", "It's the dog's bone, isn't it? ",
                           "Numbers like 1234 and 2024 appear in 10 texts. ", "Les élèves ont étudié à l'école. ",
                           "Ελληνικά και русский текст, 日本語も。\n", "  indented\tcode(x, y) == 42;\n"};
    for (int i = 0; i < 40; ++i) t.push_back(std::string(lines[i % 6]) + lines[(i * 7 + 3) % 6] + lines[(i * 5 + 1) % 6]);
    return t;
  }();
  return texts;
}

const Tokenizer& trained() {
  static const Tokenizer tk = Tokenizer::train(corpus(), 400);
  return tk;
}

std::string gpt2_dir() {
  if (const char* d = std::getenv("NT_GPT2_DIR")) return d;
  fs::path p = "data/gpt2";
  for (int up = 0; up <= 3; ++up, p = ".." / p)
    if (fs::exists(p / "encoder.json") && fs::exists(p / "vocab.bpe")) return p.string();
  return "";
}

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

}  // namespace

TEST_CASE("tokenizer: GPT-2's word split") {
  using V = std::vector<std::string>;
  CHECK(words_of("Hello world") == V{"Hello", " world"});
  CHECK(words_of("don't we'll I'M") == V{"don", "'t", " we", "'ll", " I", "'", "M"});
  CHECK(words_of("a   b") == V{"a", "  ", " b"});         // \s+(?!\S) leaves the last space to the word
  CHECK(words_of("x \n\ny") == V{"x", " \n", "\n", "y"});
  CHECK(words_of("end  ") == V{"end", "  "});
  CHECK(words_of("pi=3.14!!") == V{"pi", "=", "3", ".", "14", "!!"});
  CHECK(words_of(" 42 ...?") == V{" 42", " ...?"});
  CHECK(words_of("héllo wörld ½x") == V{"héllo", " wörld", " ½", "x"});
  CHECK(words_of("日本語のテキスト 中文") == V{"日本語のテキスト", " 中文"});
  CHECK(words_of("\xff\xfe" "ab\xc3") == V{"\xff\xfe", "ab", "\xc3"});  // invalid UTF-8 counts as "other"
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    const std::string s = random_bytes(rng, rng() % 64);
    std::string joined;
    bool nonempty = true;
    for (auto w : nt::train::pretokenize(s)) nonempty &= !w.empty(), joined += w;
    CHECK(nonempty);
    CHECK(joined == s);
  }
}

TEST_CASE("tokenizer: training merges the most frequent pair, ties to the smaller pair") {
  // "aaab aaab" splits into "aaab" and " aaab". Pair counts: (a,a) 4, (a,b) 2, ( ,a) 1 -> "aa". Then (aa,a) and
  // (a,b) both count 2: the tie goes to the smaller ids, (97,98) -> "ab". Then (aa,ab) 2 -> "aaab", then ( ,aaab).
  const Tokenizer tk = Tokenizer::train({"aaab aaab"}, 300);
  REQUIRE(tk.num_merges() == 4);  // no pair is left after these: the vocabulary stops short of 300
  const auto& m = tk.merges();
  CHECK((m[0].left == 'a' && m[0].right == 'a' && m[0].result == 256));
  CHECK((m[1].left == 'a' && m[1].right == 'b' && m[1].result == 257));
  CHECK((m[2].left == 256 && m[2].right == 257 && m[2].result == 258));
  CHECK((m[3].left == ' ' && m[3].right == 258 && m[3].result == 259));
  CHECK(tk.vocab_size() == 256 + 4 + 4);
  CHECK(tk.token_bytes(259) == " aaab");
  CHECK(tk.encode("aaab aaab") == std::vector<int32_t>{258, 259});
  CHECK(tk.encode("aab") == std::vector<int32_t>{256, 'b'});  // "aa" ranks before "ab"
  CHECK(tk.special("bos") == 260);
  CHECK(tk.special("<|fill|>") == 263);
}

TEST_CASE("tokenizer: training gives the requested size, deterministically, and never learns specials") {
  const Tokenizer& a = trained();
  CHECK(a.vocab_size() == 400);
  const Tokenizer b = Tokenizer::train(corpus(), 400);
  CHECK(a.merges().size() == b.merges().size());
  for (int32_t id = 0; id < a.vocab_size(); ++id) CHECK(a.token_bytes(id) == b.token_bytes(id));
  CHECK(a.encode(corpus()[3]).size() < corpus()[3].size() / 2);  // merges compress the text they were learned on
  std::vector<std::string> texts(50, "<|eos|>ab ab<|eos|>");
  const Tokenizer c = Tokenizer::train(texts, 300);
  for (int32_t id = 256; id < c.vocab_size(); ++id)
    if (!c.is_special(id)) CHECK(c.token_bytes(id).find('|') == std::string::npos);
  expect_error([] { Tokenizer::train({"x"}, 100); }, {"vocab_size 100", "256"});
}

TEST_CASE("tokenizer: encode then decode gives back any bytes") {
  const Tokenizer& tk = trained();
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) {
    const std::string s = random_bytes(rng, rng() % 200);
    CHECK(tk.decode(tk.encode(s)) == s);
    CHECK(tk.decode(tk.encode(s, false)) == s);
  }
  const std::string u = "Ünïcödé: Ελληνικά, русский, 日本語, 한국어, emoji 😀👍🏽, ½ ² ①, tabs\t\tand  spaces  ";
  CHECK(tk.decode(tk.encode(u)) == u);
  for (const auto& t : corpus()) CHECK(tk.decode(tk.encode(t)) == t);
}

TEST_CASE("tokenizer: special tokens") {
  const Tokenizer& tk = trained();
  CHECK(tk.specials() == std::vector<std::string>{"<|bos|>", "<|eos|>", "<|pad|>", "<|fill|>"});
  const int32_t bos = tk.special("bos"), eos = tk.special("<|eos|>");
  CHECK(bos == 396);
  CHECK(eos == 397);
  CHECK(tk.is_special(eos));
  CHECK(!tk.is_special(65));
  const auto ids = tk.encode("<|bos|>hi there<|eos|><|eos|>");
  REQUIRE(ids.size() >= 4);
  CHECK(ids.front() == bos);
  CHECK(ids[ids.size() - 2] == eos);
  CHECK(ids.back() == eos);
  CHECK(tk.decode(std::vector<int32_t>(ids.begin() + 1, ids.end() - 2)) == "hi there");
  const auto plain = tk.encode("<|bos|>hi", false);
  for (int32_t id : plain) CHECK(!tk.is_special(id));
  CHECK(tk.decode(plain) == "<|bos|>hi");
  CHECK(!tk.find_special("unk"));
  CHECK(tk.token_id("a") == std::optional<int32_t>('a'));
  CHECK(!tk.token_id("<|bos|>"));
  expect_error([&] { tk.special("unk"); }, {"'unk'", "<|bos|>", "<|fill|>"});
  expect_error([&] { tk.decode({1, 400}); }, {"id 400", "position 1", "vocabulary of 400"});
  expect_error([&] { tk.decode({-1}); }, {"id -1"});
}

TEST_CASE("tokenizer: save and load") {
  const fs::path dir = fs::temp_directory_path() / "nt_tokenizer_test";
  fs::create_directories(dir);
  const std::string path = (dir / "tok.txt").string();
  const Tokenizer& tk = trained();
  tk.save(path);
  CHECK(!fs::exists(path + ".tmp"));
  const Tokenizer back = Tokenizer::load(path);
  CHECK(back.vocab_size() == tk.vocab_size());
  CHECK(back.specials() == tk.specials());
  CHECK(back.special("pad") == tk.special("pad"));
  for (const auto& t : corpus()) CHECK(back.encode(t) == tk.encode(t));
  std::mt19937 rng(5);
  for (int i = 0; i < 50; ++i) {
    const std::string s = random_bytes(rng, 100);
    CHECK(back.encode(s) == tk.encode(s));
  }

  std::ifstream in(path, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string bad = (dir / "bad.txt").string();
  write(bad, good.substr(0, good.size() / 2));
  expect_error([&] { Tokenizer::load(bad); }, {bad, "truncated"});
  write(bad, good.substr(0, good.size() - 4));  // just the final "end" is missing
  expect_error([&] { Tokenizer::load(bad); }, {bad, "truncated"});
  write(bad, "nt-bpe 2\n" + good.substr(9));
  expect_error([&] { Tokenizer::load(bad); }, {bad, "line 1", "nt-bpe 1"});
  std::string s = good;
  s.replace(s.find("\n61\n"), 4, "\n6z\n");  // the token of byte 'a'
  write(bad, s);
  expect_error([&] { Tokenizer::load(bad); }, {bad, "line 100", "hex"});
  s = good;
  const size_t m = s.find("merges");
  const size_t l = s.find('\n', m) + 1, e = s.find('\n', l);
  s.replace(l, e - l, s.substr(l, s.find(' ', l) - l) + " 1 2");  // the first merge: wrong parts for its result
  write(bad, s);
  expect_error([&] { Tokenizer::load(bad); }, {bad, "merge 0"});
  write(bad, good + "extra\n");
  expect_error([&] { Tokenizer::load(bad); }, {bad, "after 'end'"});
  expect_error([&] { Tokenizer::load((dir / "missing.txt").string()); }, {"cannot open", "missing.txt"});
  fs::remove_all(dir);
}

TEST_CASE("tokenizer: GPT-2 format from a small hand-made vocabulary") {
  // Every byte as GPT-2's printable stand-in, written as \u escapes, then "Ġt" (" t") and <|endoftext|>.
  const fs::path dir = fs::temp_directory_path() / "nt_tokenizer_gpt2_small";
  fs::create_directories(dir);
  std::string json = "{";
  for (int b = 0, n = 0; b < 256; ++b) {
    const bool shown = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    json += fmt::format("\"\\u{:04x}\": {}, ", shown ? b : 256 + n++, b);
  }
  json += "\"\\u0120t\": 256,\n \"<|endoftext|>\": 257}\n";
  const std::string enc = (dir / "encoder.json").string(), bpe = (dir / "vocab.bpe").string();
  write(enc, json);
  write(bpe, "#version: 0.2\n\xc4\xa0 t\n");
  const Tokenizer tk = Tokenizer::load_gpt2(enc, bpe);
  CHECK(tk.vocab_size() == 258);
  CHECK(tk.encode(" t\n t<|endoftext|>") == std::vector<int32_t>{256, 10, 256, 257});
  CHECK(tk.special("endoftext") == 257);
  write(enc, "{\"\\ud83d\\ude00\": 0}");  // a surrogate pair: U+1F600, not in GPT-2's byte alphabet
  expect_error([&] { Tokenizer::load_gpt2(enc, bpe); }, {enc, "\\xf0\\x9f\\x98\\x80", "alphabet"});
  write(enc, "{\"a\": 0, \"b\" 1}");
  expect_error([&] { Tokenizer::load_gpt2(enc, bpe); }, {enc, "expected ':'", "line 1"});
  write(enc, json);
  write(bpe, "#version: 0.2\n\xc4\xa0 q\n");
  expect_error([&] { Tokenizer::load_gpt2(enc, bpe); }, {bpe, "line 2", "' q' is not a token"});
  fs::remove_all(dir);
}

TEST_CASE("tokenizer: GPT-2's vocabulary gives the reference tokenizer's ids") {
  const std::string dir = gpt2_dir();
  if (dir.empty())
    FAIL("GPT-2's vocabulary was not found: set NT_GPT2_DIR or run scripts/fetch_gpt2_vocab.sh (it writes data/gpt2)");
  const Tokenizer tk = Tokenizer::load_gpt2(dir + "/encoder.json", dir + "/vocab.bpe");
  CHECK(tk.vocab_size() == 50257);
  CHECK(tk.num_merges() == 50000);
  CHECK(tk.special("<|endoftext|>") == 50256);
  const std::string text =
    "Hello world! It's a test: we're sure they've said I'm fine, you'll see, he'd agree; don't    stop.\n"
    "Numbers: 3.14159, 2,718 and 1,000,000 -- or 42nd street #7 (call 555-0199)...?!\n"
    "\tTabs\tand  double  spaces   here;   trailing spaces   \n"
    "Café naïve façade résumé Straße Ærø — «quotes» “smart” ‘single’ € £ ¥ ½ ² Ωmega µs\n"
    "Ελληνικά κείμενο, русский текст, 日本語のテキスト カタカナ, 中文文本, 한국어 텍스트.\n"
    "\n"
    "Multiple\n"
    "\n"
    "\n"
    "blank lines and CAPS WON'T BREAK'EM; x=y+z*2^8 <html><br/></html> ~!@#$%^&*()_+\n"
    "The end  \t ";
  // The ids of npm's gpt-3-encoder 1.1.4 (a port of GPT-2's encoder.py) for the text above, from
  //   node -e "console.log(require('./package/Encoder.js').encode(require('fs').readFileSync('text.txt','utf8')).join(', '))"
  const std::vector<int32_t> expected = {
    15496, 995, 0, 632, 338, 257, 1332, 25, 356, 821, 1654, 484, 1053, 531, 314, 1101, 3734, 11, 345, 1183, 766, 11,
    339, 1549, 4236, 26, 836, 470, 220, 220, 220, 2245, 13, 198, 49601, 25, 513, 13, 1415, 19707, 11, 362, 11, 45720,
    290, 352, 11, 830, 11, 830, 1377, 393, 5433, 358, 4675, 1303, 22, 357, 13345, 44717, 12, 486, 2079, 26513, 12248,
    198, 197, 51, 8937, 197, 392, 220, 4274, 220, 9029, 220, 220, 994, 26, 220, 220, 25462, 9029, 220, 220, 220, 198,
    34, 1878, 2634, 41492, 24685, 16175, 671, 40560, 16345, 2634, 15195, 39683, 68, 6184, 228, 81, 24172, 851, 21110,
    421, 6421, 17730, 564, 250, 27004, 447, 251, 564, 246, 29762, 447, 247, 10432, 4248, 38221, 25208, 1587, 110,
    7377, 102, 13731, 31324, 82, 198, 138, 243, 39377, 39377, 138, 115, 26180, 29945, 43000, 138, 105, 7377, 118,
    30950, 138, 107, 34703, 30950, 26180, 26517, 11, 220, 21169, 35072, 21727, 21727, 31583, 18849, 140, 117, 220,
    20375, 16843, 31583, 21727, 20375, 11, 10545, 245, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 17433,
    104, 23376, 21763, 26229, 11, 220, 40792, 23877, 229, 23877, 229, 17312, 105, 11, 220, 47991, 250, 166, 113, 255,
    168, 244, 112, 220, 169, 227, 235, 168, 232, 97, 169, 232, 116, 13, 198, 198, 31217, 628, 198, 27190, 3951, 290,
    20176, 50, 370, 1340, 6, 51, 29377, 10206, 6, 3620, 26, 2124, 28, 88, 10, 89, 9, 17, 61, 23, 1279, 6494, 6927,
    1671, 14, 12240, 6494, 29, 5299, 0, 31, 29953, 4, 61, 5, 9, 3419, 62, 10, 198, 464, 886, 220, 220, 197, 220,
  };
  const std::vector<int32_t> ids = tk.encode(text);
  CHECK(ids == expected);
  for (size_t i = 0; i < std::min(ids.size(), expected.size()); ++i)
    if (ids[i] != expected[i]) {
      FAIL_CHECK("first difference at position " << i << ": " << ids[i] << " vs " << expected[i]);
      break;
    }
  CHECK(tk.decode(ids) == text);
  const fs::path saved = fs::temp_directory_path() / "nt_tokenizer_gpt2.txt";
  tk.save(saved.string());
  CHECK(Tokenizer::load(saved.string()).encode(text) == expected);
  fs::remove(saved);
  CHECK(tk.encode("Hello<|endoftext|>") == std::vector<int32_t>{15496, 50256});
  CHECK(tk.encode("<|endoftext|>", false).size() > 1);
  std::mt19937 rng(11);
  for (int i = 0; i < 100; ++i) {
    const std::string s = random_bytes(rng, rng() % 200);
    CHECK(tk.decode(tk.encode(s)) == s);
  }
}
