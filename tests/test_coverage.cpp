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
