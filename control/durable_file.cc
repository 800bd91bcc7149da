// Crash-safe file replacement: temp file, fsync, rename, fsync of the directory.
#include "control/durable_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>

namespace cvmgate {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

absl::Status WriteFileDurably(const std::string& path, const std::string& contents) {
  std::string dir = ".";
  if (size_t slash = path.rfind('/'); slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    Fd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) return Errno("cannot create", tmp);
    size_t off = 0;
    while (off < contents.size()) {
      ssize_t n = write(fd.get(), contents.data() + off, contents.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        auto s = Errno("cannot write", tmp);
        unlink(tmp.c_str());
        return s;
      }
      off += n;
    }
    if (fsync(fd.get()) != 0) {
      auto s = Errno("cannot fsync", tmp);
      unlink(tmp.c_str());
      return s;
    }
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    auto s = Errno("cannot rename over", path);
    unlink(tmp.c_str());
    return s;
  }
  // The rename itself is durable only once the directory entry is on disk.
  Fd dfd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid()) return Errno("cannot open directory", dir);
  if (fsync(dfd.get()) != 0) return Errno("cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

absl::StatusOr<Fd> LockBeside(const std::string& path) {
  const std::string lock = absl::StrCat(path, ".lock");
  Fd fd(open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid() && errno == ENOENT) {
    if (size_t slash = path.rfind('/'); slash != std::string::npos && slash > 0) {
      mkdir(path.substr(0, slash).c_str(), 0700);
      fd.reset(open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    }
  }
  if (!fd.valid()) return Errno("cannot create the lock file", lock);
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char pid[32] = {};
    ssize_t n = pread(fd.get(), pid, sizeof(pid) - 1, 0);
    if (err != EWOULDBLOCK) {
      errno = err;
      return Errno("cannot lock", lock);
    }
    std::string holder(absl::StripAsciiWhitespace(n > 0 ? absl::string_view(pid, static_cast<size_t>(n)) : ""));
    return absl::FailedPreconditionError(absl::StrCat(
        "state file ", path, " is in use by another cvmgate", holder.empty() ? "" : absl::StrCat(" (pid ", holder, ")"),
        ", which holds ", lock, ": stop it first, or give this one its own --state"));
  }
  std::string me = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) != 0 || pwrite(fd.get(), me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    return Errno("cannot write", lock);
  }
  return fd;
}

}  // namespace cvmgate
