// Small POSIX helpers with Ferry's error policy: every failure is a
// ferry::Error naming the file and the operation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>
#include <string_view>

namespace ferry {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = other.Release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset();

 private:
  int fd_ = -1;
};

// open(2) that throws ErrnoError("opening <path>") on failure.
UniqueFd OpenOrThrow(const std::string& path, int flags, int mode = 0644);

// Writes all of `size` bytes at `offset`, retrying short writes and EINTR.
void PwriteAll(int fd, const void* data, size_t size, uint64_t offset, const std::string& path);
// Reads exactly `size` bytes at `offset`; a short read (file too small) is kCorrupt.
void PreadAll(int fd, void* data, size_t size, uint64_t offset, const std::string& path);

void FsyncOrThrow(int fd, const std::string& path);
void FsyncDirectory(const std::string& dir);

// Writes `contents` to `path` so that a crash at any moment leaves either the
// old file or the complete new one: temp file in the same directory, fsync,
// rename, directory fsync. `mode` is the new file's (a key file: 0600).
void WriteFileAtomically(const std::string& path, std::string_view contents, int mode = 0644);

std::string ReadWholeFile(const std::string& path);
// A secret kept in a file (a token): its text without surrounding whitespace.
// kBadInput naming `what` and the file when it is empty; the read's error
// (kNotFound, kEnvironment) when it cannot be read. Never logs the content.
std::string ReadTokenFile(const std::string& path, const std::string& what);

bool PathExists(const std::string& path);
// mkdir that tolerates EEXIST; throws on any other failure.
void MakeDirectory(const std::string& path, int mode = 0755);
// The names in a directory, sorted, without those starting with a dot.
std::vector<std::string> ListDirectory(const std::string& dir);
// Removes a file tree; missing paths are fine.
void RemoveTree(const std::string& path);

enum class LockMode { kExclusive, kShared };

// A flock(2) on a file (exclusive unless asked for shared), held for the
// object's lifetime. The kernel
// drops it when the process dies, which is what lets a later run tell a
// crashed writer's leftovers from a live writer's work in progress.
class FileLock {
 public:
  // Returns a held lock, or an invalid one if another process holds it (or,
  // without `create`, if the file does not exist).
  // A lock whose file was unlinked or replaced while it was being taken is
  // not held (the holder removed it, e.g. with the staging it guarded).
  static FileLock TryAcquire(const std::string& path, bool create = true,
                             LockMode mode = LockMode::kExclusive);
  // Waits up to `timeout_ms` for the lock; an invalid lock if it stays taken.
  static FileLock Acquire(const std::string& path, int timeout_ms,
                          LockMode mode = LockMode::kExclusive);
  bool held() const { return fd_.valid(); }

 private:
  UniqueFd fd_;
};

// A file under $TMPDIR (else /tmp), e.g. a disk index on its way to or from
// a remote store; removed when this goes. `tag` goes into its name.
class TempFile {
 public:
  explicit TempFile(const std::string& tag = "index");
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }

 private:
  std::string path_;
  UniqueFd fd_;
};

}  // namespace ferry
