#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <map>
#include <optional>
#include <ranges>
#include <set>
#include <sstream>

#include "tensor/error.h"

namespace fs = std::filesystem;

namespace nt::train {

// A note on yaml-cpp: Node handles share their data, and `a = b` on a handle that already refers to a node writes b
// into that node (it does not rebind a). Walking down the tree therefore rebinds with reset(), and values taken
// from other trees are cloned before they are stored.
struct Config::Impl {
  YAML::Node tree{YAML::NodeType::Map};
  std::map<std::string, std::string> origin;  // leaf key -> the file or override that set it
  std::vector<std::pair<std::string, std::string>> choices;
  std::string header;                          // the comment dump() starts with
  std::set<std::string> read;
};

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t pos; (pos = s.find(sep, start)) != std::string::npos; start = pos + 1) out.push_back(s.substr(start, pos - start));
  out.push_back(s.substr(start));
  return out;
}

template <class Range> std::string join(const Range& xs, const std::string& sep = ", ") {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : sep) + std::string(x);
  return out;
}

std::string sub(const std::string& section, const std::string& name) { return section.empty() ? name : section + "." + name; }
std::string parent(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? "" : key.substr(0, dot);
}
std::string keys_in(const std::string& section) { return section.empty() ? "top-level keys" : "keys in " + section; }

std::optional<YAML::Node> child(const YAML::Node& n, const std::string& name) {
  if (n.IsMap())
    for (auto kv : n)
      if (kv.first.Scalar() == name) return kv.second;
  return std::nullopt;
}

std::optional<YAML::Node> find(const YAML::Node& root, const std::string& key) {
  YAML::Node n = root;
  for (const std::string& name : split(key, '.')) {
    const auto c = child(n, name);
    if (!c) return std::nullopt;
    n.reset(*c);
  }
  return n;
}

// The deepest existing section on the way to key, e.g. ("training", its node) for training.stpes.
std::pair<std::string, YAML::Node> deepest_section(const YAML::Node& root, const std::string& key) {
  YAML::Node n = root;
  std::string at;
  for (const std::string& name : split(parent(key), '.')) {
    const auto c = child(n, name);
    if (name.empty() || !c || !c->IsMap()) break;
    n.reset(*c), at = sub(at, name);
  }
  return {at, n};
}

std::string names(const YAML::Node& section) {
  std::vector<std::string> out;
  if (section.IsMap())
    for (auto kv : section) out.push_back(kv.first.Scalar());
  return out.empty() ? "(none)" : join(out);
}

void leaves(const YAML::Node& n, const std::string& key, std::vector<std::string>& out) {
  if (n.IsMap())
    for (auto kv : n) leaves(kv.second, sub(key, kv.first.Scalar()), out);
  else
    out.push_back(key);
}

void mark(Config::Impl& s, const YAML::Node& n, const std::string& key, const std::string& from) {
  std::vector<std::string> ks;
  leaves(n, key, ks);
  for (const std::string& k : ks) s.origin[k] = from;
}

// Deep merge: sections merge key by key, anything else replaces what was there.
void merge(Config::Impl& s, YAML::Node dst, const YAML::Node& src, const std::string& section, const std::string& from) {
  for (auto kv : src) {
    const std::string name = kv.first.Scalar(), key = sub(section, name);
    if (const auto d = child(dst, name); d && d->IsMap() && kv.second.IsMap())
      merge(s, *d, kv.second, key, from);
    else
      dst[name] = YAML::Clone(kv.second), mark(s, kv.second, key, from);
  }
}

YAML::Node load_map(const std::string& path) {
  NT_CHECK(fs::is_regular_file(path), "config: no file {}", path);
  YAML::Node n;
  try {
    n = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw Error(fmt::format("config: {}: {}", path, e.what()));
  }
  if (n.IsNull()) return YAML::Node(YAML::NodeType::Map);  // an empty file
  NT_CHECK(n.IsMap(), "config: {} must be a mapping of keys to values", path);
  return n;
}

std::vector<std::string> available(const fs::path& group_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(group_dir, ec))
    if (e.path().extension() == ".yaml") out.push_back(e.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

struct Override {
  std::string text, key, value;
  bool add = false;
};

Override parse_override(const std::string& text) {
  const auto eq = text.find('=');
  NT_CHECK(eq != std::string::npos, "config: overrides are group=choice, key=value or +key=value, got '{}'", text);
  Override o{text, text.substr(0, eq), text.substr(eq + 1)};
  o.add = o.key.starts_with('+');
  o.key.erase(0, o.key.find_first_not_of('+'));  // Hydra's ++key (set or add) is what + does here
  for (const std::string& name : split(o.key, '.'))
    NT_CHECK(!name.empty(), "config: '{}' has no key name before '=' or an empty part in it", text);
  return o;
}

// `steps=50` -> training.steps: other keys with the same last name.
std::string did_you_mean(const YAML::Node& tree, const std::string& key) {
  std::vector<std::string> all, alike;
  leaves(tree, "", all);
  const std::string last = split(key, '.').back();
  for (const std::string& k : all)
    if (k != key && split(k, '.').back() == last) alike.push_back(k);
  return alike.empty() ? "" : fmt::format(" (did you mean {}?)", join(alike, " or "));
}

void set(Config::Impl& s, const Override& o) {
  const std::vector<std::string> path = split(o.key, '.');
  YAML::Node n = s.tree;
  std::string at;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    if (!child(n, path[i])) {
      NT_CHECK(o.add, "config: unknown key '{}' in '{}'{}; valid {}: {} (+{} adds a key)", sub(at, path[i]), o.text,
               did_you_mean(s.tree, o.key), keys_in(at), names(n), o.text);
      n[path[i]] = YAML::Node(YAML::NodeType::Map);
    }
    const YAML::Node c = *child(n, path[i]);
    at = sub(at, path[i]);
    NT_CHECK(c.IsMap(), "config: cannot set '{}': {} is a value, not a section", o.key, at);
    n.reset(c);
  }
  const auto old = child(n, path.back());
  NT_CHECK(old || o.add, "config: unknown key '{}' in '{}'{}; valid {}: {} (+{} adds a key)", o.key, o.text,
           did_you_mean(s.tree, o.key), keys_in(at), names(n), o.text);
  YAML::Node v;
  try {
    v = YAML::Load(o.value);
  } catch (const YAML::Exception& e) {
    throw Error(fmt::format("config: the value of {} in '{}' is not valid YAML: {}", o.key, o.text, e.msg));
  }
  NT_CHECK(!old || !old->IsMap() || v.IsMap(), "config: {} is a section, not a value; its keys: {} (set one, e.g. {}.{}=...)",
           o.key, names(*old), o.key, old->size() ? old->begin()->first.Scalar() : "key");
  n[path.back()] = v;
  mark(s, v, o.key, fmt::format("override '{}'", o.text));
}

std::string describe(const YAML::Node& n) {
  if (n.IsNull()) return "null";
  if (n.IsMap()) return fmt::format("a section with keys {}", names(n));
  if (n.IsSequence()) return "a list";
  return fmt::format("'{}'", n.Scalar());
}

// Written node by node, not with yaml-cpp's Node output, so that quoted strings stay quoted ("null" or "true" as
// text would otherwise come back as null or a bool).
void emit(YAML::Emitter& e, const YAML::Node& n) {
  if (n.IsMap()) {
    e << YAML::BeginMap;
    for (auto kv : n) {
      e << YAML::Key << kv.first.Scalar() << YAML::Value;
      emit(e, kv.second);
    }
    e << YAML::EndMap;
  } else if (n.IsSequence()) {
    e << YAML::Flow << YAML::BeginSeq;
    for (auto x : n) emit(e, x);
    e << YAML::EndSeq;
  } else if (n.IsScalar()) {
    if (n.Tag() == "!") e << YAML::DoubleQuoted;
    e << n.Scalar();
  } else {
    e << YAML::Null;
  }
}

}  // namespace

Config::Config() : impl_(std::make_unique<Impl>()) {}
Config::Config(Config&&) noexcept = default;
Config& Config::operator=(Config&&) noexcept = default;
Config::~Config() = default;

Config Config::compose(const std::string& dir, const std::string& root, const std::vector<std::string>& overrides) {
  Config c;
  Impl& s = *c.impl_;
  const fs::path base(dir);
  const std::string root_file = (base / (root + ".yaml")).string();
  YAML::Node top = load_map(root_file);
  if (const auto defaults = child(top, "defaults")) {
    NT_CHECK(defaults->IsSequence(), "config: {}: defaults must be a list of 'group: choice' entries", root_file);
    for (auto e : *defaults) {
      NT_CHECK(e.IsMap() && e.size() == 1 && e.begin()->second.IsScalar(),
               "config: {}: a defaults entry must be 'group: choice', got {}", root_file, describe(e));
      s.choices.emplace_back(e.begin()->first.Scalar(), e.begin()->second.Scalar());
    }
    top.remove("defaults");
  }

  std::vector<Override> keys;
  for (const std::string& text : overrides) {
    Override o = parse_override(text);
    if (o.key.find('.') != std::string::npos || !fs::is_directory(base / o.key)) {
      keys.push_back(std::move(o));
      continue;
    }
    auto it = std::find_if(s.choices.begin(), s.choices.end(), [&](auto& gc) { return gc.first == o.key; });
    NT_CHECK(it != s.choices.end() || o.add, "config: group '{}' is not in the defaults list of {} (+{} adds it); groups there: {}",
             o.key, root_file, o.text, join(s.choices | std::views::keys));
    if (it == s.choices.end())
      s.choices.emplace_back(o.key, o.value);
    else
      it->second = o.value;
  }

  std::string chosen;
  for (const auto& [group, choice] : s.choices) {
    const fs::path file = base / group / (choice + ".yaml");
    NT_CHECK(fs::is_regular_file(file), "config: unknown {} '{}'; available: {} (the .yaml files in {})", group, choice,
             join(available(base / group)), (base / group).string());
    // The group's section: a/b lands under a.b.
    YAML::Node section = s.tree;
    for (const std::string& name : split(group, '/')) {
      if (const auto c = child(section, name); !c || !c->IsMap()) section[name] = YAML::Node(YAML::NodeType::Map);
      section.reset(*child(section, name));
    }
    std::string dotted = group;
    std::replace(dotted.begin(), dotted.end(), '/', '.');
    merge(s, section, load_map(file.string()), dotted, file.string());
    chosen += fmt::format(" {}={}", group, choice);
  }
  merge(s, s.tree, top, "", root_file);
  for (const Override& o : keys) set(s, o);
  s.header = fmt::format("# {}:{}{}\n", root_file, chosen, overrides.empty() ? "" : " | overrides: " + join(overrides, " "));
  return c;
}

Config Config::parse(const std::string& yaml, const std::string& origin) {
  Config c;
  Impl& s = *c.impl_;
  YAML::Node n;
  try {
    n = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw Error(fmt::format("config: {}: {}", origin, e.what()));
  }
  NT_CHECK(n.IsNull() || n.IsMap(), "config: {} must be a mapping of keys to values", origin);
  if (n.IsMap()) merge(s, s.tree, n, "", origin);
  // Keep the leading comment, so a dumped config read back dumps to the same text.
  std::istringstream lines(yaml);
  for (std::string line; std::getline(lines, line) && line.starts_with('#');) s.header += line + "\n";
  if (s.header.empty()) s.header = fmt::format("# {}\n", origin);
  return c;
}

bool Config::has(const std::string& key) const { return find(impl_->tree, key).has_value(); }

namespace {
YAML::Node value_of(Config::Impl& s, const std::string& key) {
  const auto n = find(s.tree, key);
  if (!n) {
    const auto [at, section] = deepest_section(s.tree, key);
    throw Error(fmt::format("config: missing key '{}'{}; {} are: {}", key, did_you_mean(s.tree, key), keys_in(at), names(section)));
  }
  s.read.insert(key);
  return *n;
}
}  // namespace

bool Config::is_null(const std::string& key) const { return value_of(*impl_, key).IsNull(); }

std::string Config::get_string(const std::string& key) const {
  const YAML::Node n = value_of(*impl_, key);
  NT_CHECK(n.IsScalar(), "config: {} must be a string, got {}", key, describe(n));
  return n.Scalar();
}

std::string Config::get_string(const std::string& key, const std::vector<std::string>& allowed) const {
  const YAML::Node n = value_of(*impl_, key);
  NT_CHECK(n.IsScalar() && std::find(allowed.begin(), allowed.end(), n.Scalar()) != allowed.end(),
           "config: {} must be one of {}, got {}", key, join(allowed), describe(n));
  return n.Scalar();
}

int64_t Config::get_int(const std::string& key) const {
  const YAML::Node n = value_of(*impl_, key);
  int64_t v = 0;
  if (n.IsScalar()) {
    const std::string& t = n.Scalar();
    const char* first = t.data() + (t.starts_with('+') ? 1 : 0);
    const auto [end, ec] = std::from_chars(first, t.data() + t.size(), v);
    if (ec == std::errc() && end == t.data() + t.size() && !t.empty()) return v;
  }
  throw Error(fmt::format("config: {} must be an integer, got {}", key, describe(n)));
}

double Config::get_double(const std::string& key) const {
  const YAML::Node n = value_of(*impl_, key);
  double v = 0;
  if (n.IsScalar()) {
    const std::string& t = n.Scalar();
    const char* first = t.data() + (t.starts_with('+') ? 1 : 0);
    const auto [end, ec] = std::from_chars(first, t.data() + t.size(), v);
    if (ec == std::errc() && end == t.data() + t.size() && !t.empty()) return v;
  }
  throw Error(fmt::format("config: {} must be a number, got {}", key, describe(n)));
}

bool Config::get_bool(const std::string& key) const {
  const YAML::Node n = value_of(*impl_, key);
  if (n.IsScalar()) {
    const std::string& t = n.Scalar();
    if (t == "true" || t == "True" || t == "TRUE") return true;
    if (t == "false" || t == "False" || t == "FALSE") return false;
  }
  throw Error(fmt::format("config: {} must be true or false, got {}", key, describe(n)));
}

void Config::check_all_read() const {
  const Impl& s = *impl_;
  std::vector<std::string> all, errors;
  leaves(s.tree, "", all);
  for (const std::string& key : all) {
    if (s.read.count(key)) continue;
    // The nearest enclosing section the program read anything in, and the names it read there.
    std::string at = key;
    std::set<std::string> known;
    do {
      at = parent(at);
      for (const std::string& r : s.read)
        if (at.empty() || r.starts_with(at + ".")) known.insert(split(at.empty() ? r : r.substr(at.size() + 1), '.')[0]);
    } while (known.empty() && !at.empty());
    const auto from = s.origin.find(key);
    errors.push_back(fmt::format("config: unknown key '{}' (from {}); valid {}: {}", key,
                                 from == s.origin.end() ? "?" : from->second, keys_in(at), known.empty() ? "(none read)" : join(known)));
  }
  NT_CHECK(errors.empty(), "{}", join(errors, "\n"));
}

std::string Config::dump() const {
  YAML::Emitter e;
  e.SetNullFormat(YAML::LowerNull);
  emit(e, impl_->tree);
  return impl_->header + e.c_str() + "\n";
}

const std::vector<std::pair<std::string, std::string>>& Config::choices() const { return impl_->choices; }

}  // namespace nt::train
