#include "ferry/common/point_store.h"

#include "ferry/common/point_records.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/log.h"
#include "ferry/common/retention.h"  // FormatRfc3339

namespace json = boost::json;

namespace ferry {

// Layout (docs/repository-format.md, "Staging and commit"):
//   points/<id>/             committed: manifest.json, disk-N.fidx, config files
//   staging/<id>/            what becomes points/<id>/ at commit
//   staging/<id>.stage/      point.json (the header), disk-N.json (a finished
//                            disk's record), file-<name>.json, disk-N.lock,
//                            owner.lock (held by the process of a point
//                            staged with expiry 0)
//   staging/<id>.lock        shared by writers, exclusive for commit/removal
//   points/<id>/lock.json    the point's lock (SetLock); checksummed like a
//                            manifest
//   points/.removing-<id>/   a point being removed: hidden from List and
//                            LoadAll (dot names), deleted by the next Remove
//
// Committed points are locked with flock on their directory (opened
// read-only, so an immutable point can be locked too): shared by leases and
// SetLock, exclusive (without waiting) by Remove. Remove then renames the
// directory to its hidden name in one step and deletes that: a crash leaves
// the whole point or a hidden leftover, never half a point.

namespace {

constexpr const char* kLockFile = kPointLockFile;
constexpr char kRemovingPrefix[] = ".removing-";
constexpr char kLockSuffix[] = ".lock";
constexpr char kStageSuffix[] = ".stage";

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}


// Locks are held briefly by sweeps and commits; a writer that meets one
// waits a little rather than failing a long task for a momentary overlap.
constexpr int kLockWaitMs = 2000;

FileLock LockWithin(const std::string& path, bool create, LockMode mode, int wait_ms = kLockWaitMs) {
  for (int waited = 0;; waited += 20) {
    FileLock lock = FileLock::TryAcquire(path, create, mode);
    if (lock.held() || waited >= wait_ms) return lock;
    if (!create && !PathExists(path)) return lock;
    ::usleep(20 * 1000);
  }
}

std::string IndexFileName(size_t disk) { return "disk-" + std::to_string(disk) + ".fidx"; }


// A flock on a committed point's directory. Invalid when another process
// holds it in a conflicting mode past `wait_ms`; kNotFound when the point is
// not there (or was removed while we took it).
UniqueFd LockPointDirectory(const std::string& path, const std::string& id, LockMode mode, int wait_ms) {
  for (int waited = 0;; waited += 20) {
    int raw = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (raw < 0) {
      if (errno == ENOENT || errno == ENOTDIR) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist");
      throw ErrnoError("opening restore point " + path, errno);
    }
    UniqueFd fd(raw);
    if (::flock(fd.get(), (mode == LockMode::kShared ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0) {
      struct stat held, now;
      if (::fstat(fd.get(), &held) != 0) throw ErrnoError("stat of " + path, errno);
      if (::stat(path.c_str(), &now) != 0 || now.st_ino != held.st_ino || now.st_dev != held.st_dev) {
        throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist (it was just removed)");
      }
      return fd;
    }
    if (errno != EWOULDBLOCK) throw ErrnoError("locking restore point " + path, errno);
    if (waited >= wait_ms) return UniqueFd();
    ::usleep(20 * 1000);
  }
}

class LocalPointLease : public PointLease {
 public:
  explicit LocalPointLease(UniqueFd fd) : fd_(std::move(fd)) {}

 private:
  UniqueFd fd_;
};

// The file system's immutable flag (chattr +i): set by root on a locked
// point where the file system has it. Returns 0 or the errno of the failure.
int SetImmutableFlag(const std::string& path, bool on) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (raw < 0) return errno;
  UniqueFd fd(raw);
  int flags = 0;
  if (::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) != 0) return errno;
  int wanted = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
  if (wanted == flags) return 0;
  if (::ioctl(fd.get(), FS_IOC_SETFLAGS, &wanted) != 0) return errno;
  return 0;
}

bool HasImmutableFlag(const std::string& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (raw < 0) return false;
  UniqueFd fd(raw);
  int flags = 0;
  return ::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL) != 0;
}

// Every name in a directory, dot names included (but . and ..).
std::vector<std::string> ListAllNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw ErrnoError("listing " + dir, errno);
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}


class LocalStagingLease : public StagingLease {
 public:
  LocalStagingLease(StagedPointHeader header, FileLock owner) : header_(std::move(header)), owner_(std::move(owner)) {}
  const StagedPointHeader& header() const override { return header_; }

 private:
  StagedPointHeader header_;
  FileLock owner_;  // held for points that expire with their process
};

class LocalDiskWriter : public DiskWriter {
 public:
  LocalDiskWriter(std::string disk, std::string index_file, std::string index_path, std::string record_path,
                  std::string staging_dir, FileLock point_lock, FileLock disk_lock)
      : disk_(std::move(disk)),
        index_file_(std::move(index_file)),
        index_path_(std::move(index_path)),
        record_path_(std::move(record_path)),
        staging_dir_(std::move(staging_dir)),
        point_lock_(std::move(point_lock)),
        disk_lock_(std::move(disk_lock)) {}

  const std::string& index_path() const override { return index_path_; }
  const std::string& index_file() const override { return index_file_; }

  void Finish(DiskRecord record) override {
    record.name = disk_;
    record.index_file = index_file_;
    // The index itself was fsynced by FixedIndexWriter::Finish; its name now.
    FsyncDirectory(staging_dir_);
    WriteFileAtomically(record_path_, DiskRecordToJson(record));
  }

 private:
  std::string disk_, index_file_, index_path_, record_path_, staging_dir_;
  FileLock point_lock_, disk_lock_;
};

class LocalPointStore : public PointStore {
 public:
  LocalPointStore(std::string repo_dir, ChunkStore& chunks)
      : dir_(std::move(repo_dir)), points_(dir_ + "/points"), staging_(dir_ + "/staging"), checks_(dir_ + "/checks"),
        chunks_(chunks) {}

  std::vector<std::string> List() const override {
    std::vector<std::string> ids;
    for (auto& name : ListDirectory(points_)) {
      if (IsValidPointId(name) && IsDirectory(points_ + "/" + name)) ids.push_back(std::move(name));
    }
    return ids;
  }

  PointListing LoadAll() const override {
    PointListing out;
    std::vector<std::string> names;
    try {
      names = ListDirectory(points_);
    } catch (const Error& e) {
      out.problems.push_back({"points", e.what()});
      return out;
    }
    for (const auto& name : names) {
      if (!IsValidPointId(name) || !IsDirectory(points_ + "/" + name)) {
        out.problems.push_back({name, points_ + "/" + name + " is not a restore point directory (a stray file?)"});
        continue;
      }
      try {
        out.points.push_back(Load(name));
      } catch (const Error& e) {
        out.problems.push_back({name, e.what()});
      }
    }
    return out;
  }

  RestorePointManifest Load(const std::string& id) const override {
    std::string path = points_ + "/" + id + "/manifest.json";
    if (!IsValidPointId(id) || !PathExists(path)) {
      throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist in " + dir_);
    }
    RestorePointManifest m;
    try {
      m = ManifestFromJson(ReadWholeFile(path), path);
    } catch (const Error& e) {
      throw e.WithContext("restore point " + id);
    }
    if (m.id != id) throw Error(ErrorKind::kCorrupt, "restore point " + id + ": manifest " + path + " names point '" + m.id + "'");
    return m;
  }

  std::unique_ptr<FixedIndexReader> OpenIndex(const std::string& id, const DiskRecord& disk) const override {
    return std::make_unique<FixedIndexReader>(points_ + "/" + id + "/" + disk.index_file, &disk.index_sha256);
  }

  std::string ReadFile(const std::string& id, const ConfigFileRecord& file) const override {
    std::string content = ReadWholeFile(points_ + "/" + id + "/" + file.name);
    if (Sha256(content.data(), content.size()) != file.sha256) {
      throw Error(ErrorKind::kCorrupt, "restore point " + id + ": configuration file " + file.name +
                                           " does not match its checksum");
    }
    return content;
  }

  std::unique_ptr<StagingLease> Stage(StagedPointHeader header) override {
    ValidatePointId(header.id);
    if (header.disks.empty()) throw Error(ErrorKind::kBadInput, "point " + header.id + ": no disks to stage");
    std::set<std::string> names(header.disks.begin(), header.disks.end());
    if (names.size() != header.disks.size()) {
      throw Error(ErrorKind::kBadInput, "point " + header.id + ": a disk is named twice");
    }
    if (PathExists(points_ + "/" + header.id)) {
      throw Error(ErrorKind::kBadInput, "restore point " + header.id + " is already committed");
    }
    for (const auto& gone : RemoveExpired()) LogInfo("removed expired staging of point " + gone);
    FileLock lock = LockWithin(LockPath(header.id), /*create=*/true, LockMode::kShared);
    if (!lock.held()) {
      throw Error(ErrorKind::kRetryable, "point " + header.id + " is being committed, discarded or removed");
    }
    if (PathExists(points_ + "/" + header.id)) {  // committed while we waited
      throw Error(ErrorKind::kBadInput, "restore point " + header.id + " is already committed");
    }
    MakeDirectory(StageDir(header.id));
    MakeDirectory(StagingDir(header.id));
    // A point that lives as long as its process: that process holds the
    // owner lock from here to its end, commit included.
    FileLock owner;
    if (header.expires_at == 0) {
      owner = FileLock::TryAcquire(OwnerLockPath(header.id));
      if (!owner.held()) {
        throw Error(ErrorKind::kRetryable, "point " + header.id + " is staged by another running process");
      }
    }
    std::string header_path = HeaderPath(header.id);
    if (PathExists(header_path)) {
      StagedPointHeader have = ReadHeader(header.id);
      if (have.vm.name != header.vm.name || have.vm.uuid != header.vm.uuid || have.chain != header.chain ||
          have.disks != header.disks) {
        throw Error(ErrorKind::kBadInput, "point " + header.id + " is staged for another VM, chain or set of disks");
      }
      if (header.expires_at > have.expires_at && have.expires_at != 0) {
        have.expires_at = header.expires_at;
        WriteFileAtomically(header_path, StagedHeaderToJson(have));
      }
      return std::make_unique<LocalStagingLease>(std::move(have), std::move(owner));
    }
    if (header.started_at.empty()) header.started_at = NowRfc3339();
    WriteFileAtomically(header_path, StagedHeaderToJson(header));
    FsyncDirectory(staging_);
    return std::make_unique<LocalStagingLease>(std::move(header), std::move(owner));
  }

  std::unique_ptr<DiskWriter> WriteDisk(const std::string& id, const std::string& disk) override {
    FileLock point_lock = SharedLockOfStaged(id);
    StagedPointHeader header = ReadHeader(id);
    auto it = std::find(header.disks.begin(), header.disks.end(), disk);
    if (it == header.disks.end()) {
      throw Error(ErrorKind::kNotFound, "staged point " + id + " has no disk '" + disk + "'");
    }
    size_t n = static_cast<size_t>(it - header.disks.begin());
    std::string base = StageDir(id) + "/disk-" + std::to_string(n);
    FileLock disk_lock = FileLock::TryAcquire(base + kLockSuffix);
    if (!disk_lock.held()) {
      throw Error(ErrorKind::kRetryable, "disk " + disk + " of point " + id + " is being written by another process");
    }
    // Written again from scratch: the old record goes first, so a writer
    // killed from here on leaves the disk "not written".
    if (::unlink((base + ".json").c_str()) == 0) FsyncDirectory(StageDir(id));
    return std::make_unique<LocalDiskWriter>(disk, IndexFileName(n), StagingDir(id) + "/" + IndexFileName(n),
                                             base + ".json", StagingDir(id), std::move(point_lock),
                                             std::move(disk_lock));
  }

  ConfigFileRecord AddFile(const std::string& id, const std::string& kind, const std::string& name,
                           const std::string& content, const std::string& origin) override {
    CheckPointFileName(name);
    FileLock point_lock = SharedLockOfStaged(id);
    WriteFileAtomically(StagingDir(id) + "/" + name, content);
    ConfigFileRecord rec{kind, name, origin, Sha256(content.data(), content.size())};
    WriteFileAtomically(StageDir(id) + "/file-" + name + ".json", ConfigFileRecordToJson(rec));
    return rec;
  }

  RestorePointManifest Commit(const std::string& id) override {
    ChunkStore& chunks = chunks_;
    ValidatePointId(id);
    FileLock lock = LockWithin(LockPath(id), /*create=*/false, LockMode::kExclusive);
    if (!lock.held()) {
      if (PathExists(points_ + "/" + id)) return Load(id);
      if (!PathExists(LockPath(id))) throw Error(ErrorKind::kNotFound, "point " + id + " is not staged");
      throw Error(ErrorKind::kRetryable, "point " + id +
                                             " cannot be committed yet: a disk of it is being written (or another "
                                             "process is staging, committing or discarding it)");
    }
    if (PathExists(points_ + "/" + id)) {  // committed before a crash cut the cleanup short
      RemoveStagingLocked(id);
      return Load(id);
    }
    StagedPointHeader header = ReadHeader(id);
    std::vector<DiskRecord> disks;
    std::string not_written;
    for (size_t i = 0; i < header.disks.size(); ++i) {
      std::string record = StageDir(id) + "/disk-" + std::to_string(i) + ".json";
      if (!PathExists(record)) {
        not_written += (not_written.empty() ? "" : ", ") + header.disks[i];
        continue;
      }
      disks.push_back(DiskRecordFromJson(ReadWholeFile(record), record, header.disks[i]));
    }
    if (!not_written.empty()) {
      throw Error(ErrorKind::kNotFound, "point " + id + " cannot be committed: disk(s) " + not_written +
                                            " not written (or their task was cut off); write them again");
    }
    for (const auto& d : disks) {
      CheckIndexAgainstStore(id, d, FixedIndexReader(StagingDir(id) + "/" + d.index_file, &d.index_sha256), chunks);
    }
    std::vector<ConfigFileRecord> files;
    for (const auto& name : ListDirectory(StageDir(id))) {
      if (!name.starts_with("file-") || !name.ends_with(".json")) continue;
      std::string path = StageDir(id) + "/" + name;
      for (auto& f : ConfigFileRecordsFromJson(ReadWholeFile(path), path)) files.push_back(std::move(f));
    }
    RestorePointManifest m = AssembleManifest(header, std::move(disks), std::move(files));
    chunks.Sync();
    const std::string staged = StagingDir(id);
    WriteFileAtomically(staged + "/manifest.json", ManifestToJson(m));
    FsyncDirectory(staged);
    if (::rename(staged.c_str(), (points_ + "/" + id).c_str()) != 0) {
      throw ErrnoError("committing restore point " + id + " (renaming " + staged + ")", errno);
    }
    // Committed: what fails from here is logged, never reported as a failed
    // commit (the next commit or sweep finishes the cleanup).
    try {
      FsyncDirectory(points_);
      RemoveStagingLocked(id);
    } catch (const std::exception& e) {
      LogWarning("restore point " + id + " is committed, but cleaning up its staging failed: " + e.what());
    }
    return m;
  }

  void Discard(const std::string& id) override {
    ValidatePointId(id);
    FileLock lock = LockWithin(LockPath(id), /*create=*/true, LockMode::kExclusive);
    if (!lock.held()) {
      throw Error(ErrorKind::kRetryable, "point " + id +
                                             " cannot be discarded now: a disk of it is being written (or another "
                                             "process is staging or committing it)");
    }
    if (PathExists(points_ + "/" + id)) {
      RemoveStagingLocked(id);
      throw Error(ErrorKind::kBadInput, "restore point " + id + " is committed; it is not discarded");
    }
    RemoveStagingLocked(id);
  }

  std::vector<std::string> RemoveExpired() override {
    std::vector<std::string> removed;
    for (const auto& id : ListStaged()) {
      try {
        if (!Removable(id)) continue;
        // Decided again under the exclusive lock: a Stage may have finished
        // between the first look and the lock.
        FileLock lock = FileLock::TryAcquire(LockPath(id), /*create=*/true);
        if (!lock.held() || !Removable(id)) continue;  // being written, or no longer removable
        FileLock owner = FileLock::TryAcquire(OwnerLockPath(id), /*create=*/false);
        if (!owner.held() && PathExists(OwnerLockPath(id))) continue;
        bool committed = PathExists(points_ + "/" + id);
        RemoveStagingLocked(id);
        if (!committed) removed.push_back(id);
      } catch (const std::exception& e) {
        LogWarning("staging of point " + id + " left as it is: " + e.what());  // one bad entry stops nobody
      }
    }
    return removed;
  }

  std::map<std::string, PointCheck> LoadChecks() const override {
    std::map<std::string, PointCheck> out;
    if (!PathExists(checks_)) return out;
    std::vector<std::string> committed = List();
    std::set<std::string> ids(committed.begin(), committed.end());
    for (const auto& name : ListDirectory(checks_)) {
      if (!name.ends_with(".json")) continue;
      std::string id = name.substr(0, name.size() - 5);
      if (!ids.count(id)) continue;  // a point removed since
      std::string path = checks_ + "/" + name;
      try {
        PointCheck c = PointCheckFromJson(ReadWholeFile(path), path);
        if (c.point != id) throw Error(ErrorKind::kCorrupt, "check record " + path + " names point '" + c.point + "'");
        out.emplace(id, std::move(c));
      } catch (const Error& e) {
        LogWarning(std::string(e.what()) + "; the point counts as never checked");
      }
    }
    return out;
  }

  void RecordCheck(const PointCheck& check) override {
    ValidatePointId(check.point);
    if (!PathExists(points_ + "/" + check.point + "/manifest.json")) {
      throw Error(ErrorKind::kNotFound, "restore point '" + check.point + "' does not exist in " + dir_);
    }
    if (!PathExists(checks_)) MakeDirectory(checks_, 0755);
    WriteFileAtomically(checks_ + "/" + check.point + ".json", PointCheckToJson(check));
  }

  std::vector<std::string> ListStaged() const override {
    std::set<std::string> ids;
    if (!PathExists(staging_)) return {};
    for (const auto& name : ListDirectory(staging_)) {
      std::string id = name;
      if (id.ends_with(kLockSuffix)) id.resize(id.size() - sizeof kLockSuffix + 1);
      else if (id.ends_with(kStageSuffix)) id.resize(id.size() - sizeof kStageSuffix + 1);
      if (IsValidPointId(id)) ids.insert(id);
    }
    return {ids.begin(), ids.end()};
  }

  std::unique_ptr<PointLease> Lease(const std::string& id) const override {
    ValidatePointId(id);
    UniqueFd fd = LockPointDirectory(points_ + "/" + id, id, LockMode::kShared, kLockWaitMs);
    if (!fd.valid()) throw Error(ErrorKind::kRetryable, "restore point " + id + " is being removed");
    return std::make_unique<LocalPointLease>(std::move(fd));
  }

  std::optional<PointLock> ReadLock(const std::string& id) const override {
    ValidatePointId(id);
    const std::string dir = points_ + "/" + id;
    if (!IsDirectory(dir)) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist in " + dir_);
    const std::string path = dir + "/" + kLockFile;
    if (!PathExists(path)) return std::nullopt;
    return PointLockFromJson(ReadWholeFile(path), id, path);
  }

  PointLock SetLock(const std::string& id, int64_t locked_until, const std::string& reason, int64_t now) override {
    ValidatePointId(id);
    const std::string dir = points_ + "/" + id;
    UniqueFd lease = LockPointDirectory(dir, id, LockMode::kShared, kLockWaitMs);
    if (!lease.valid()) throw Error(ErrorKind::kRetryable, "restore point " + id + " is being removed");
    PointLock lock = NextPointLock(id, ReadLock(id), locked_until, reason, now);
    const std::string path = dir + "/" + kLockFile;
    // An immutable point takes no new file: the flags come off the directory
    // and the old lock for the write, and go back on with the new lock.
    if (HasImmutableFlag(dir)) {
      if (int err = SetImmutableFlag(dir, false)) throw ErrnoError("clearing the immutable flag of " + dir, err);
      SetImmutableFlag(path, false);
    }
    WriteFileAtomically(path, PointLockToJson(id, lock));
    FsyncDirectory(dir);
    if (::geteuid() == 0) SetPointImmutable(id, true);
    return lock;
  }

  void Remove(const std::string& id, int64_t now) override {
    ValidatePointId(id);
    RemoveLeftovers();
    const std::string dir = points_ + "/" + id;
    if (!IsDirectory(dir)) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist in " + dir_);
    UniqueFd held = LockPointDirectory(dir, id, LockMode::kExclusive, 0);
    if (!held.valid()) {
      throw Error(ErrorKind::kRetryable, "restore point " + id + " is in use by a restore, verify or backup (or being "
                                         "locked); it is not removed");
    }
    std::optional<PointLock> lock;
    try {
      lock = ReadLock(id);
    } catch (const Error& e) {
      throw e.WithContext("restore point " + id + " is not removed: its lock cannot be read");
    }
    CheckNotLocked(id, lock, now);
    SetPointImmutable(id, false);
    const std::string hidden = points_ + "/" + kRemovingPrefix + id;
    if (::rename(dir.c_str(), hidden.c_str()) != 0) throw ErrnoError("removing restore point " + id + " (renaming " + dir + ")", errno);
    FsyncDirectory(points_);
    // Gone from here on; what fails now is a leftover for the next Remove.
    ::unlink((checks_ + "/" + id + ".json").c_str());  // its last check, if any
    try {
      RemoveTree(hidden);
      FsyncDirectory(points_);
    } catch (const std::exception& e) {
      LogWarning("restore point " + id + " is removed, but deleting " + hidden + " failed: " + e.what());
    }
  }

 private:
  // Sets or clears the immutable flag on a point's files and directory (the
  // directory last when setting, first when clearing). Setting is best
  // effort (root on a file system with the flag; logged once otherwise);
  // clearing a flag that is set and cannot be cleared throws kEnvironment.
  void SetPointImmutable(const std::string& id, bool on) {
    const std::string dir = points_ + "/" + id;
    if (!on && HasImmutableFlag(dir)) {
      if (int err = SetImmutableFlag(dir, false)) {
        throw ErrnoError("restore point " + id + " has the file system's immutable flag (chattr +i) and it cannot be "
                         "cleared (only root can); clearing it on " + dir, err);
      }
    }
    for (const auto& name : ListAllNames(dir)) {
      const std::string path = dir + "/" + name;
      if (on) {
        if (int err = SetImmutableFlag(path, true)) return ImmutableUnavailable(dir, err);
      } else if (HasImmutableFlag(path)) {
        if (int err = SetImmutableFlag(path, false)) throw ErrnoError("clearing the immutable flag of " + path, err);
      }
    }
    if (on) {
      if (int err = SetImmutableFlag(dir, true)) ImmutableUnavailable(dir, err);
    }
  }

  void ImmutableUnavailable(const std::string& dir, int err) {
    if (!immutable_warned_) {
      LogInfo("the file system's immutable flag is not available for " + dir + " (" + std::strerror(err) +
              "); points are locked by their lock file only");
      immutable_warned_ = true;
    }
  }

  // Points whose removal was cut short (points/.removing-<id>/).
  void RemoveLeftovers() {
    for (const auto& name : ListAllNames(points_)) {
      if (!name.starts_with(kRemovingPrefix)) continue;
      const std::string path = points_ + "/" + name;
      try {
        // A crash between clearing flags and the rename cannot leave flags
        // here, but a directory renamed by hand could have them.
        SetImmutableFlag(path, false);
        for (const auto& f : ListAllNames(path)) SetImmutableFlag(path + "/" + f, false);
        RemoveTree(path);
        LogInfo("removed " + path + " (a restore point removal cut short)");
      } catch (const std::exception& e) {
        LogWarning("leftover " + path + " not removed: " + e.what());
      }
    }
  }

  std::string StagingDir(const std::string& id) const { return staging_ + "/" + id; }
  std::string StageDir(const std::string& id) const { return staging_ + "/" + id + kStageSuffix; }
  std::string LockPath(const std::string& id) const { return staging_ + "/" + id + kLockSuffix; }
  std::string HeaderPath(const std::string& id) const { return StageDir(id) + "/point.json"; }
  std::string OwnerLockPath(const std::string& id) const { return StageDir(id) + "/owner.lock"; }

  StagedPointHeader ReadHeader(const std::string& id) const {
    std::string path = HeaderPath(id);
    if (!PathExists(path)) throw Error(ErrorKind::kNotFound, "point " + id + " is not staged");
    StagedPointHeader h = StagedHeaderFromJson(ReadWholeFile(path), path);
    if (h.id != id) throw Error(ErrorKind::kCorrupt, "staged point header " + path + " names point '" + h.id + "'");
    return h;
  }

  // Whether the staging of `id` may go now, without taking its lock: it is
  // committed already (leftovers), or it has expired and, if process-bound,
  // its owner is gone. Never touches the point lock, so live writers of a
  // process-bound point are not disturbed by other writers' sweeps.
  bool Removable(const std::string& id) const {
    if (PathExists(points_ + "/" + id)) return true;
    if (PathExists(HeaderPath(id))) {
      int64_t expires_at = ReadHeader(id).expires_at;
      if (expires_at > 0) return expires_at <= static_cast<int64_t>(::time(nullptr));
      FileLock owner = FileLock::TryAcquire(OwnerLockPath(id), /*create=*/false);
      return owner.held() || !PathExists(OwnerLockPath(id));
    }
    // No header: a Stage cut short (or in progress: it holds the point lock
    // shared, so the exclusive lock will not be had), or Ferry 0.1's staging.
    return true;
  }

  FileLock SharedLockOfStaged(const std::string& id) const {
    ValidatePointId(id);
    FileLock lock = LockWithin(LockPath(id), /*create=*/false, LockMode::kShared);
    if (lock.held() && PathExists(points_ + "/" + id)) {
      throw Error(ErrorKind::kBadInput, "restore point " + id + " is already committed");
    }
    if (lock.held() && PathExists(HeaderPath(id))) return lock;
    if (PathExists(points_ + "/" + id)) throw Error(ErrorKind::kBadInput, "restore point " + id + " is already committed");
    if (!PathExists(LockPath(id)) || !PathExists(HeaderPath(id))) {
      throw Error(ErrorKind::kNotFound, "point " + id + " is not staged (stage it first)");
    }
    throw Error(ErrorKind::kRetryable, "point " + id + " is being committed or discarded");
  }

  // With the point's lock held exclusively. The records go first: a kill
  // midway leaves either a point that is still staged and whole, or data
  // without records, which the next sweep removes.
  void RemoveStagingLocked(const std::string& id) {
    RemoveTree(StageDir(id));
    RemoveTree(StagingDir(id));
    ::unlink(LockPath(id).c_str());
    FsyncDirectory(staging_);
  }

  std::string dir_, points_, staging_, checks_;
  ChunkStore& chunks_;
  bool immutable_warned_ = false;
};

}  // namespace

void ValidatePointId(const std::string& id) {
  if (!IsValidPointId(id)) {
    throw Error(ErrorKind::kBadInput,
                "'" + id + "' is not a restore point id (1 to 64 of 0-9 A-Z a-z . -, not ending in .lock or .stage)");
  }
}

std::unique_ptr<PointStore> OpenLocalPointStore(const std::string& repo_dir, ChunkStore& chunks) {
  return std::make_unique<LocalPointStore>(repo_dir, chunks);
}

}  // namespace ferry
