// Command lines (see args.h).
#include "control/args.h"

#include <absl/strings/str_cat.h>

#include "dataplane/strings.h"

namespace cvmgate {

bool Args::Has(std::string_view name) const {
  for (const auto& [n, v] : options) {
    if (n == name) return true;
  }
  return false;
}

std::string Args::Get(std::string_view name, std::string fallback) const {
  for (auto it = options.rbegin(); it != options.rend(); ++it) {
    if (it->first == name) return it->second;
  }
  return fallback;
}

absl::StatusOr<Args> ParseArgs(std::span<const std::string> words, const std::function<ArgKind(std::string_view)>& kind,
                               bool stop_at_positional) {
  Args out;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (word == "--") {
      out.positional.insert(out.positional.end(), words.begin() + i + 1, words.end());
      break;
    }
    if (word.rfind("--", 0) != 0 && word != "-h") {
      if (stop_at_positional) {
        out.positional.insert(out.positional.end(), words.begin() + i, words.end());
        break;
      }
      out.positional.push_back(word);
      continue;
    }
    std::string name = word == "-h" ? "help" : word.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    switch (kind(name)) {
      case ArgKind::kUnknown:
        return absl::NotFoundError(absl::StrCat("unknown flag --", name));
      case ArgKind::kSwitch:
        if (value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
        out.options.emplace_back(name, "");
        break;
      case ArgKind::kOption:
        if (!value) {
          if (i + 1 >= words.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
          value = words[++i];
        }
        out.options.emplace_back(name, *value);
        break;
    }
  }
  return out;
}

}  // namespace cvmgate
