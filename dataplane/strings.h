// String glue: Debian's abseil is built with its own absl::string_view, distinct from std::string_view.
#pragma once

#include <string_view>

#include <absl/strings/string_view.h>

namespace cvmgate {

inline absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace cvmgate
