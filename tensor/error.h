// The one exception type of the library, and a check macro whose message names what was expected.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace nt {
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace nt

// NT_CHECK(cond, "fmt string", args...): throw nt::Error with the formatted message when cond is false.
#define NT_CHECK(cond, ...)                                     \
  do {                                                          \
    if (!(cond)) throw ::nt::Error(::fmt::format(__VA_ARGS__)); \
  } while (0)
