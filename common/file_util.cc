#include "ferry/common/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "ferry/common/error.h"

namespace ferry {

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

UniqueFd OpenOrThrow(const std::string& path, int flags, int mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) throw ErrnoError("opening " + path, errno);
  return UniqueFd(fd);
}

void PwriteAll(int fd, const void* data, size_t size, uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ErrnoError("writing " + path + " at offset " + std::to_string(offset), errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

void PreadAll(int fd, void* data, size_t size, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ErrnoError("reading " + path + " at offset " + std::to_string(offset), errno);
    }
    if (n == 0) {
      throw Error(ErrorKind::kCorrupt,
                  path + " is truncated: expected data at offset " + std::to_string(offset));
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

void FsyncOrThrow(int fd, const std::string& path) {
  if (::fsync(fd) != 0) throw ErrnoError("syncing " + path, errno);
}

void FsyncDirectory(const std::string& dir) {
  UniqueFd fd = OpenOrThrow(dir, O_RDONLY | O_DIRECTORY);
  FsyncOrThrow(fd.get(), dir);
}

namespace {
std::string ParentDirectory(const std::string& path) {
  auto parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}
std::atomic<uint64_t> g_temp_counter{0};
}  // namespace

void WriteFileAtomically(const std::string& path, std::string_view contents, int mode) {
  std::string temp = path + ".tmp-" + std::to_string(::getpid()) + "-" +
                     std::to_string(g_temp_counter.fetch_add(1));
  try {
    UniqueFd fd = OpenOrThrow(temp, O_WRONLY | O_CREAT | O_EXCL, mode);
    PwriteAll(fd.get(), contents.data(), contents.size(), 0, temp);
    FsyncOrThrow(fd.get(), temp);
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw ErrnoError("renaming " + temp + " to " + path, err);
  }
  FsyncDirectory(ParentDirectory(path));
}

std::string ReadWholeFile(const std::string& path) {
  UniqueFd fd = OpenOrThrow(path, O_RDONLY);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ErrnoError("reading " + path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string ReadTokenFile(const std::string& path, const std::string& what) {
  std::string text = ReadWholeFile(path);
  const auto begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) throw Error(ErrorKind::kBadInput, what + ": " + path + " is empty");
  const auto end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void MakeDirectory(const std::string& path, int mode) {
  if (::mkdir(path.c_str(), static_cast<mode_t>(mode)) != 0 && errno != EEXIST) {
    throw ErrnoError("creating directory " + path, errno);
  }
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) throw Error(ErrorKind::kEnvironment, "removing " + path + ": " + ec.message());
}

std::vector<std::string> ListDirectory(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw ErrnoError("listing " + dir, errno);
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    names.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

FileLock FileLock::TryAcquire(const std::string& path, bool create, LockMode mode) {
  // A lock file may be unlinked by its holder (staging removal) while we wait
  // on it: a lock taken on a file that is no longer at `path` is no lock.
  for (int attempt = 0; attempt < 8; ++attempt) {
    FileLock lock;
    int raw = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (raw < 0) {
      if (!create && errno == ENOENT) return lock;
      throw ErrnoError("opening lock " + path, errno);
    }
    UniqueFd fd(raw);
    if (::flock(fd.get(), (mode == LockMode::kShared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) return lock;
      throw ErrnoError("locking " + path, errno);
    }
    struct stat held, now;
    if (::fstat(fd.get(), &held) != 0) throw ErrnoError("stat of lock " + path, errno);
    if (::stat(path.c_str(), &now) == 0 && now.st_ino == held.st_ino && now.st_dev == held.st_dev) {
      lock.fd_ = std::move(fd);
      return lock;
    }
    if (!create) return FileLock();  // removed while we took it
  }
  throw Error(ErrorKind::kRetryable, "lock " + path + " keeps being replaced");
}

FileLock FileLock::Acquire(const std::string& path, int timeout_ms, LockMode mode) {
  for (int waited = 0;; waited += 50) {
    FileLock lock = TryAcquire(path, /*create=*/true, mode);
    if (lock.held() || waited >= timeout_ms) return lock;
    ::usleep(50 * 1000);
  }
}

TempFile::TempFile(const std::string& tag) {
  const char* dir = std::getenv("TMPDIR");
  path_ = std::string(dir && *dir ? dir : "/tmp") + "/ferry-" + tag + "-XXXXXX";
  int fd = ::mkstemp(path_.data());
  if (fd < 0) throw ErrnoError("creating a temporary file in " + path_.substr(0, path_.rfind('/')), errno);
  fd_ = UniqueFd(fd);
}

TempFile::~TempFile() { ::unlink(path_.c_str()); }

}  // namespace ferry
