// How every cvmgate command line is read: the daemon's flags, `cvmgate probe`,
// cvmgatectl and the bench programs. An option is "--name=value" or
// "--name value"; a switch is "--name" alone and takes no value; "-h" is
// "--help"; "--" ends the options; any other word is positional.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <absl/status/statusor.h>

namespace cvmgate {

enum class ArgKind { kUnknown, kSwitch, kOption };

struct Args {
  // In command-line order; a switch's value is empty.
  std::vector<std::pair<std::string, std::string>> options;
  std::vector<std::string> positional;

  bool Has(std::string_view name) const;
  // The last value given for `name`, else `fallback`.
  std::string Get(std::string_view name, std::string fallback = "") const;
};

// `kind` says what each name is; an unknown one is an error ("unknown flag
// --name", NotFound so that a caller may word it its own way), as are a switch given a value and an option without one. With
// `stop_at_positional`, reading ends at the first positional word and the
// rest is positional as it is (a verb and its own arguments).
absl::StatusOr<Args> ParseArgs(std::span<const std::string> words, const std::function<ArgKind(std::string_view)>& kind,
                               bool stop_at_positional = false);

}  // namespace cvmgate
