// Every differentiable op registered in the library must have a gradient-check test (GRADCHECK_TEST).
#include "test_util.h"

using namespace nt;

TEST_CASE("every differentiable op has a gradient check") {
  int differentiable = 0;
  for (const OpKind& k : registered_ops()) {
    if (!k.differentiable) continue;
    ++differentiable;
    CHECK_MESSAGE(test::gradchecked_ops().count(k.name) == 1, "op '" << k.name << "' has no GRADCHECK_TEST");
  }
  CHECK(differentiable >= 45);
}

#ifdef NT_SOURCE_DIR
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

// docs/env.md lists every environment variable users can set: each NT_* name a source file passes to getenv or
// env_is must have its row there (a new switch without one fails here).
TEST_CASE("every NT_ environment variable the sources read is documented in docs/env.md") {
  namespace fs = std::filesystem;
  const fs::path root(NT_SOURCE_DIR);
  auto read = [](const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  const std::string doc = read(root / "docs" / "env.md");
  REQUIRE_MESSAGE(!doc.empty(), "docs/env.md is missing or empty");
  const std::regex use(R"re((getenv|env_is)\("(NT_[A-Z0-9_]+)")re");
  std::set<std::string> names;
  for (const char* dir : {"tensor", "autograd", "ops", "cuda", "nn", "nsa", "moe", "dist", "train", "examples", "tests"})
    for (const auto& e : fs::recursive_directory_iterator(root / dir)) {
      const std::string ext = e.path().extension().string();
      if (!e.is_regular_file() || (ext != ".cpp" && ext != ".cu" && ext != ".h" && ext != ".cuh")) continue;
      if (e.path().filename() == "test_coverage.cpp") continue;  // this file's own pattern
      const std::string text = read(e.path());
      for (std::sregex_iterator it(text.begin(), text.end(), use), end; it != end; ++it) names.insert((*it)[2].str());
    }
  CHECK(names.size() >= 20);  // the scan found the sources
  for (const std::string& n : names)
    CHECK_MESSAGE(doc.find("`" + n + "`") != std::string::npos, n << " is read by the sources but has no row in docs/env.md");
}
#endif
