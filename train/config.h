// Hydra-style configs: YAML files composed from groups (configs/model/small.yaml lands under `model`), command-line
// overrides, typed reads that name the key on a bad value, and a final check that every key in the tree was read,
// so a misspelt or stale key is an error rather than a silently ignored setting.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace nt::train {

class Config {
 public:
  // <dir>/<root>.yaml: each entry of its `defaults:` list (`- model: small`) loads <dir>/model/small.yaml under the
  // key `model` (a group `a/b` under `a.b`), in list order; the root's own keys are merged on top. Then overrides:
  //   group=choice   another file for a group of the defaults list; +group=choice also adds a group
  //   a.b.c=value    sets an existing key; the value is read as YAML (3e-4, true, "text", [1, 2]; empty is null)
  //   +a.b.c=value   sets a key, adding it (and missing sections) when absent
  // Group choices are settled before composing, the last one per group winning (so a program can put its own
  // choices ahead of the user's); key overrides then apply in order. Every error is an nt::Error that starts with
  // "config: ", names the key and lists the valid keys or choices.
  static Config compose(const std::string& dir, const std::string& root, const std::vector<std::string>& overrides = {});
  // A config from YAML text, e.g. a run's saved config.yaml; `origin` names it in errors.
  static Config parse(const std::string& yaml, const std::string& origin = "<yaml>");

  Config(Config&&) noexcept;
  Config& operator=(Config&&) noexcept;
  ~Config();

  // Typed reads of a value by dotted key. Each records the key as used (also through const: reading is not a
  // change of the config), so check_all_read() can tell the keys the program knows from the ones it does not.
  int64_t get_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  bool get_bool(const std::string& key) const;  // true or false
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::vector<std::string>& allowed) const;  // one of allowed
  bool is_null(const std::string& key) const;  // `key: null`, `key: ~`, `key:` or an empty override; a read too
  bool has(const std::string& key) const;      // not a read

  // Throws one line per key the program never read, naming the file or override it came from and the keys the
  // program did read in that section. Call it after reading everything, before starting work.
  void check_all_read() const;
  // The resolved tree as YAML, headed by a comment with the root file, choices and overrides; parse() reads it
  // back (and dumping that again gives the same text).
  std::string dump() const;
  // The (group, choice) pairs in composition order.
  const std::vector<std::pair<std::string, std::string>>& choices() const;

  struct Impl;  // defined in config.cpp, so that yaml-cpp stays out of this header

 private:
  Config();
  std::unique_ptr<Impl> impl_;
};

}  // namespace nt::train
