// Logging: one line per event on stderr, prefixed `cvmgate: `, written with one write() so threads never interleave.
#pragma once

#include <unistd.h>

#include <string>
#include <string_view>

#include <absl/strings/str_cat.h>
#include "dataplane/strings.h"

namespace cvmgate {
namespace log_internal {
template <typename T>
const T& Piece(const T& v) {
  return v;
}
inline absl::string_view Piece(std::string_view v) { return AbslView(v); }
}  // namespace log_internal

template <typename... Args>
void Log(const Args&... args) {
  std::string line = absl::StrCat("cvmgate: ", log_internal::Piece(args)..., "\n");
  (void)!write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace cvmgate
