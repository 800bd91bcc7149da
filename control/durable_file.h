// Crash-safe file replacement: a reader sees the old file or the new one, never half of one.
#pragma once

#include <string>

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include "dataplane/fd.h"

namespace cvmgate {

// Writes `contents` to a temporary file beside `path`, fsyncs it, renames it
// over `path` and fsyncs the directory, so an acknowledged write survives a
// crash or power loss at any moment.
absl::Status WriteFileDurably(const std::string& path, const std::string& contents);

// A small file's contents without surrounding whitespace (a key, a token).
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);

// Takes an advisory lock (flock) on `path`.lock, creating it (and a missing
// parent directory) when needed, and writes this process's pid into it. The
// returned descriptor holds the lock while it is open, and the process's end
// releases it however it ends; a lock held elsewhere is an error naming the pid
// that holds it.
absl::StatusOr<Fd> LockBeside(const std::string& path);

}  // namespace cvmgate
