// Crash-safe file replacement: a reader sees the old file or the new one, never half of one.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace cvmgate {

// Writes `contents` to a temporary file beside `path`, fsyncs it, renames it
// over `path` and fsyncs the directory, so an acknowledged write survives a
// crash or power loss at any moment.
absl::Status WriteFileDurably(const std::string& path, const std::string& contents);

}  // namespace cvmgate
