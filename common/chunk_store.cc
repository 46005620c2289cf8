#include "ferry/common/chunk_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "ferry/common/error.h"

namespace ferry {

namespace {
constexpr size_t kPrefixLength = 3;
std::atomic<uint64_t> g_temp_counter{0};
}  // namespace

ChunkStore::ChunkStore(std::string chunks_dir, SyncLevel sync_level)
    : dir_(std::move(chunks_dir)), sync_level_(sync_level) {
  dir_fd_ = OpenOrThrow(dir_, O_RDONLY | O_DIRECTORY);
}

std::string ChunkStore::PathFor(const Digest& digest) const {
  std::string hex = digest.Hex();
  return dir_ + "/" + hex.substr(0, kPrefixLength) + "/" + hex;
}

bool ChunkStore::Contains(const Digest& digest) const {
  std::string hex = digest.Hex();
  std::string rel = hex.substr(0, kPrefixLength) + "/" + hex;
  struct stat st;
  return ::fstatat(dir_fd_.get(), rel.c_str(), &st, 0) == 0;
}

bool ChunkStore::Insert(const Digest& digest, std::span<const uint8_t> encoded) {
  std::string hex = digest.Hex();
  std::string prefix = hex.substr(0, kPrefixLength);
  std::string rel = prefix + "/" + hex;
  std::string path = dir_ + "/" + rel;

  if (::mkdirat(dir_fd_.get(), prefix.c_str(), 0755) == 0) {
    if (sync_level_ == SyncLevel::kFile) FsyncOrThrow(dir_fd_.get(), dir_);
  } else if (errno != EEXIST) {
    throw ErrnoError("creating chunk directory " + dir_ + "/" + prefix, errno);
  }
  UniqueFd prefix_fd(::openat(dir_fd_.get(), prefix.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!prefix_fd.valid()) throw ErrnoError("opening chunk directory " + dir_ + "/" + prefix, errno);

  auto write_and_sync = [&](int fd, const std::string& name) {
    PwriteAll(fd, encoded.data(), encoded.size(), 0, name);
    if (sync_level_ == SyncLevel::kFile) FsyncOrThrow(fd, name);
  };

  bool inserted = true;
  UniqueFd fd(::openat(prefix_fd.get(), ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644));
  if (fd.valid()) {
    write_and_sync(fd.get(), "new chunk " + path);
    std::string proc = "/proc/self/fd/" + std::to_string(fd.get());
    if (::linkat(AT_FDCWD, proc.c_str(), prefix_fd.get(), hex.c_str(), AT_SYMLINK_FOLLOW) != 0) {
      if (errno != EEXIST) throw ErrnoError("linking chunk " + path, errno);
      inserted = false;  // another writer stored the same chunk first
    }
  } else if (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL) {
    std::string temp = "." + hex + ".tmp-" + std::to_string(::getpid()) + "-" +
                       std::to_string(g_temp_counter.fetch_add(1));
    UniqueFd tfd(::openat(prefix_fd.get(), temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                          0644));
    if (!tfd.valid()) throw ErrnoError("creating " + dir_ + "/" + prefix + "/" + temp, errno);
    try {
      write_and_sync(tfd.get(), dir_ + "/" + prefix + "/" + temp);
    } catch (...) {
      ::unlinkat(prefix_fd.get(), temp.c_str(), 0);
      throw;
    }
    if (::renameat(prefix_fd.get(), temp.c_str(), prefix_fd.get(), hex.c_str()) != 0) {
      int err = errno;
      ::unlinkat(prefix_fd.get(), temp.c_str(), 0);
      throw ErrnoError("renaming chunk into " + path, err);
    }
  } else {
    throw ErrnoError("creating chunk file in " + dir_ + "/" + prefix, errno);
  }
  if (inserted && sync_level_ == SyncLevel::kFile) FsyncOrThrow(prefix_fd.get(), dir_ + "/" + prefix);
  return inserted;
}

void ChunkStore::ReadEncoded(const Digest& digest, std::vector<uint8_t>* encoded) const {
  std::string path = PathFor(digest);
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) {
    if (errno == ENOENT) throw Error(ErrorKind::kCorrupt, "chunk " + path + " is missing");
    throw ErrnoError("opening chunk " + path, errno);
  }
  UniqueFd fd(raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw ErrnoError("stat of chunk " + path, errno);
  encoded->resize(static_cast<size_t>(st.st_size));
  PreadAll(fd.get(), encoded->data(), encoded->size(), 0, path);
}

void ChunkStore::Sync() {
  if (::syncfs(dir_fd_.get()) != 0) throw ErrnoError("syncing the file system of " + dir_, errno);
}

}  // namespace ferry
