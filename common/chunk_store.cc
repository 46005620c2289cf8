#include "ferry/common/chunk_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/ids.h"
#include "ferry/common/log.h"

namespace ferry {

namespace {

class DirectUpload final : public ChunkUpload {
 public:
  explicit DirectUpload(ChunkStore& store) : store_(store) {}
  void Add(const Digest& digest, std::span<const uint8_t> encoded) override {
    const bool stored = store_.Insert(digest, encoded);
    std::lock_guard lock(mu_);
    stats_.sent_bytes += encoded.size();
    if (stored) {
      ++stats_.stored_chunks;
      stats_.stored_bytes += encoded.size();
    } else {
      ++stats_.present_chunks;
    }
  }
  ChunkUploadStats Finish() override {
    std::lock_guard lock(mu_);
    return stats_;
  }

 private:
  ChunkStore& store_;
  std::mutex mu_;
  ChunkUploadStats stats_;
};

}  // namespace

std::unique_ptr<ChunkUpload> ChunkStore::StartUpload() { return std::make_unique<DirectUpload>(*this); }

namespace {
constexpr size_t kPrefixLength = 3;
std::atomic<uint64_t> g_temp_counter{0};

std::string RelativePath(const std::string& hex) { return hex.substr(0, kPrefixLength) + "/" + hex; }

// The quarantined copies of `hex`, if any ("" when none).
std::string FindQuarantined(const std::string& quarantine_dir, const std::string& hex) {
  DIR* d = ::opendir(quarantine_dir.c_str());
  if (!d) return "";
  std::string found;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind(hex, 0) == 0) found = quarantine_dir + "/" + name;
  }
  ::closedir(d);
  return found;
}
}  // namespace

namespace {

// Decodes with `decode`; a chunk failing a check is quarantined. Returns the
// plain size, checked against `length` after the digest matched.
template <typename Decode>
size_t FetchChecked(ChunkReader& reader, const Digest& digest, uint32_t length, std::vector<uint8_t>* encoded,
                    Decode&& decode) {
  reader.Read(digest, encoded);  // missing: kCorrupt, nothing to quarantine
  size_t n;
  try {
    n = decode();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kCorrupt) throw;
    std::string moved = reader.Quarantine(digest, e.what());
    if (moved.empty()) throw;
    throw Error(ErrorKind::kCorrupt, std::string(e.what()) + " (moved to " + moved + ")");
  }
  // The chunk matched its digest: a length the index does not expect is the
  // index's fault, and the chunk stays (other points may need it).
  if (n != length) {
    throw Error(ErrorKind::kCorrupt, "chunk " + reader.Describe(digest) + " holds " + std::to_string(n) +
                                         " bytes, the index expects " + std::to_string(length));
  }
  return n;
}

}  // namespace

void FetchChunk(ChunkReader& reader, ChunkDecoder& decoder, const Digest& digest, uint32_t length,
                std::vector<uint8_t>* encoded, std::vector<uint8_t>* plain) {
  FetchChecked(reader, digest, length, encoded, [&] {
    decoder.Decode(*encoded, &digest, reader.Describe(digest), plain);
    return plain->size();
  });
}

void FetchChunkInto(ChunkReader& reader, ChunkDecoder& decoder, const Digest& digest, uint32_t length,
                    std::vector<uint8_t>* encoded, std::span<uint8_t> out) {
  FetchChecked(reader, digest, length, encoded,
               [&] { return decoder.DecodeInto(*encoded, &digest, reader.Describe(digest), out); });
}

void FetchChunkFraming(ChunkReader& reader, const Digest& digest, uint32_t length, std::vector<uint8_t>* encoded) {
  FetchChecked(reader, digest, length, encoded, [&] {
    ChunkFrame f = CheckChunkFraming(*encoded, reader.Describe(digest));
    if (!f.encrypted()) {
      throw Error(ErrorKind::kCorrupt, "chunk " + reader.Describe(digest) + " is not encrypted, in an encrypted repository");
    }
    return static_cast<size_t>(f.plain_size);
  });
}

LocalChunkStore::LocalChunkStore(std::string chunks_dir, std::string quarantine_dir, SyncLevel sync_level)
    : dir_(std::move(chunks_dir)), quarantine_dir_(std::move(quarantine_dir)), sync_level_(sync_level) {
  int fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) open_errno_ = errno;
  dir_fd_ = UniqueFd(fd);
}

int LocalChunkStore::DirFd() const {
  if (!dir_fd_.valid()) {
    if (open_errno_ == ENOENT) {
      throw Error(ErrorKind::kCorrupt, "the repository's chunk directory " + dir_ + " is missing");
    }
    throw ErrnoError("opening chunk directory " + dir_, open_errno_);
  }
  return dir_fd_.get();
}

std::string LocalChunkStore::PathFor(const Digest& digest) const { return dir_ + "/" + RelativePath(digest.Hex()); }

namespace {
// The name a garbage collection gives a chunk between deciding to remove it
// and removing it (docs/gc.md, "Sweep"): chunks/<3 hex>/.gc-<64 hex>.
std::string DoomedRelativePath(const std::string& hex) { return hex.substr(0, kPrefixLength) + "/.gc-" + hex; }

// Marks a chunk in use now (docs/gc.md): its mtime is what garbage collection
// compares with its cutoff. Both times set to now, so write access (not
// ownership) suffices. Returns errno (0 on success).
int TouchChunk(int dir_fd, const std::string& rel) {
  return ::utimensat(dir_fd, rel.c_str(), nullptr, 0) == 0 ? 0 : errno;
}

// A chunk a garbage collection is removing right now (renamed to its doomed
// name, not yet unlinked) is linked back under its own name and so stays:
// whoever looks for a chunk and misses it rescues it. Returns whether the
// chunk is there now.
bool RescueFromSweep(int dir_fd, const std::string& hex) {
  std::string rel = RelativePath(hex);
  if (::linkat(dir_fd, DoomedRelativePath(hex).c_str(), dir_fd, rel.c_str(), 0) == 0 || errno == EEXIST) {
    LogInfo("chunk " + hex + " was being removed by a garbage collection; kept");
    return true;
  }
  return false;
}
}  // namespace

void LocalChunkStore::FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) {
  const int dir_fd = DirFd();
  for (size_t i = 0; i < digests.size(); ++i) {
    std::string hex = digests[i].Hex();
    std::string rel = RelativePath(hex);
    // The existence check and the "in use" mark in one call: a chunk a backup
    // relies on is never older than a garbage collection's cutoff.
    int err = TouchChunk(dir_fd, rel);
    if ((err == ENOENT || err == ENOTDIR) && RescueFromSweep(dir_fd, hex)) err = TouchChunk(dir_fd, rel);
    if (err == ENOENT || err == ENOTDIR) {
      missing->push_back(i);
      continue;
    }
    if (err != 0) throw ErrnoError("marking chunk " + dir_ + "/" + rel + " as in use", err);
    struct stat st;
    if (::fstatat(dir_fd, rel.c_str(), &st, 0) != 0) {
      if (errno != ENOENT && errno != ENOTDIR) throw ErrnoError("stat of chunk " + dir_ + "/" + rel, errno);
      missing->push_back(i);  // quarantined between the two calls
    } else if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < kChunkHeaderSize) {
      // Truncated or not a file: damaged for certain, found without a read.
      Quarantine(digests[i], "chunk file of " + std::to_string(st.st_size) + " bytes is shorter than its header");
      missing->push_back(i);
    }
  }
}

bool LocalChunkStore::Insert(const Digest& digest, std::span<const uint8_t> encoded) {
  const int dir_fd = DirFd();
  std::string hex = digest.Hex();
  std::string prefix = hex.substr(0, kPrefixLength);
  std::string path = dir_ + "/" + RelativePath(hex);

  if (::mkdirat(dir_fd, prefix.c_str(), 0755) == 0) {
    if (sync_level_ == SyncLevel::kFile) FsyncOrThrow(dir_fd, dir_);
  } else if (errno != EEXIST) {
    throw ErrnoError("creating chunk directory " + dir_ + "/" + prefix, errno);
  }
  UniqueFd prefix_fd(::openat(dir_fd, prefix.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
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
    UniqueFd tfd(::openat(prefix_fd.get(), temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!tfd.valid()) throw ErrnoError("creating " + dir_ + "/" + prefix + "/" + temp, errno);
    try {
      write_and_sync(tfd.get(), dir_ + "/" + prefix + "/" + temp);
    } catch (...) {
      ::unlinkat(prefix_fd.get(), temp.c_str(), 0);
      throw;
    }
    // link, not rename: never replace a chunk another writer stored meanwhile.
    if (::linkat(prefix_fd.get(), temp.c_str(), prefix_fd.get(), hex.c_str(), 0) != 0) {
      int err = errno;
      ::unlinkat(prefix_fd.get(), temp.c_str(), 0);
      if (err != EEXIST) throw ErrnoError("linking chunk into " + path, err);
      inserted = false;
    } else {
      ::unlinkat(prefix_fd.get(), temp.c_str(), 0);
    }
  } else {
    throw ErrnoError("creating chunk file in " + dir_ + "/" + prefix, errno);
  }
  if (inserted && sync_level_ == SyncLevel::kFile) FsyncOrThrow(prefix_fd.get(), dir_ + "/" + prefix);
  // Present already: in use from now on, as FindMissing would have marked it.
  if (!inserted) {
    if (int err = TouchChunk(prefix_fd.get(), hex)) throw ErrnoError("marking chunk " + path + " as in use", err);
  }
  return inserted;
}

void LocalChunkStore::Read(const Digest& digest, std::vector<uint8_t>* encoded) {
  std::string path = PathFor(digest);
  int raw = ::openat(DirFd(), RelativePath(digest.Hex()).c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0 && errno == ENOENT && RescueFromSweep(DirFd(), digest.Hex())) {
    raw = ::openat(DirFd(), RelativePath(digest.Hex()).c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (raw < 0) {
    if (errno == ENOENT) {
      std::string q = FindQuarantined(quarantine_dir_, digest.Hex());
      throw Error(ErrorKind::kCorrupt,
                  "chunk " + path + " is missing" + (q.empty() ? "" : " (found damaged earlier, quarantined as " + q + ")"));
    }
    throw ErrnoError("opening chunk " + path, errno);
  }
  UniqueFd fd(raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw ErrnoError("stat of chunk " + path, errno);
  encoded->resize(static_cast<size_t>(st.st_size));
  PreadAll(fd.get(), encoded->data(), encoded->size(), 0, path);
}

std::string LocalChunkStore::Quarantine(const Digest& digest, const std::string& reason) {
  std::string hex = digest.Hex();
  std::string from = PathFor(digest);
  std::string to = quarantine_dir_ + "/" + hex + "." + FormatUtcNow("%Y%m%dT%H%M%SZ") + "-" + RandomHex(4);
  try {
    MakeDirectory(quarantine_dir_, 0755);
    if (::rename(from.c_str(), to.c_str()) != 0) {
      if (errno == ENOENT) return "";  // already moved (another verify) or missing
      throw ErrnoError("moving " + from + " to " + to, errno);
    }
    FsyncDirectory(quarantine_dir_);
  } catch (const std::exception& e) {
    LogWarning("cannot quarantine damaged chunk " + hex + ": " + e.what());
    return "";
  }
  LogWarning("quarantined damaged chunk " + hex + " as " + to + ": " + reason);
  return to;
}

void LocalChunkStore::Sync() {
  if (::syncfs(DirFd()) != 0) throw ErrnoError("syncing the file system of " + dir_, errno);
}

}  // namespace ferry
