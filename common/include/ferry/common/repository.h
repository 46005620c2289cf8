// A Ferry repository on a local (or mounted) file system.
//
//   <dir>/ferry-repository.json   config; "format" is the versioned magic
//   <dir>/chunks/<3 hex>/<64 hex> chunk files (chunk_store.h)
//   <dir>/points/<id>/            committed restore points: manifest.json
//                                 plus one fixed index per disk
//   <dir>/staging/<id>/           restore points being written
//   <dir>/staging/<id>.lock       held (flock) by the writer of <id>
//
// A restore point becomes visible in one rename(2) of its complete staging
// directory into points/, after every chunk it references and its indexes are
// durable. A writer that dies leaves only a staging directory, which the next
// writer removes once it can take that directory's lock. See
// docs/repository-format.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/common/chunk_store.h"
#include "ferry/common/file_util.h"
#include "ferry/common/manifest.h"

namespace ferry {

// A new restore point id: sorts by creation time to the microsecond, with a
// random suffix (20261122T034210.123456Z-1a2b3c). The coordinator reserves
// one per VM per session so that every disk task writes into the same point.
std::string NewPointId();

inline constexpr char kRepositoryFormat[] = "ferry-repository-v1";
// Chosen by measurement (docs/benchmarks.md): see kDefaultChunkSize's note there.
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;

struct RepositoryConfig {
  std::string id;  // random, 32 hex digits
  uint32_t chunk_size = kDefaultChunkSize;
  int zstd_level = 1;
  SyncLevel sync_level = SyncLevel::kFilesystem;
  std::string created_at;
};

// Checks a chunk size given by a user: a power of two from 64 KiB to 16 MiB.
// Throws kBadInput naming the value.
void ValidateChunkSize(uint64_t chunk_size);

class PointWriter;

class Repository {
 public:
  // Creates a repository in `dir` (created if missing; must be empty).
  static void Init(const std::string& dir, const RepositoryConfig& config);
  // Opens an existing repository. Throws kNotFound if `dir` does not exist,
  // kBadInput if it is not a Ferry repository.
  static std::unique_ptr<Repository> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const RepositoryConfig& config() const { return config_; }
  ChunkStore& chunks() { return *chunks_; }

  // Committed restore points, oldest first.
  std::vector<std::string> ListPoints() const;
  // Throws kNotFound for an unknown id, kCorrupt for a damaged manifest.
  RestorePointManifest LoadPoint(const std::string& id) const;
  std::string IndexPath(const std::string& point_id, const DiskRecord& disk) const;
  // A file of a committed point (e.g. a configuration file).
  std::string PointFilePath(const std::string& point_id, const std::string& file_name) const;

  // Starts a new restore point. Removes staging directories left by writers
  // that died. Throws kEnvironment if the repository is not writable.
  std::unique_ptr<PointWriter> BeginPoint();

 private:
  Repository(std::string dir, RepositoryConfig config);
  void RemoveAbandonedStaging();

  std::string dir_;
  RepositoryConfig config_;
  std::unique_ptr<ChunkStore> chunks_;
};

// A restore point under construction. Destroying it uncommitted removes it.
class PointWriter {
 public:
  PointWriter(Repository* repo, std::string id);
  ~PointWriter();
  PointWriter(const PointWriter&) = delete;
  PointWriter& operator=(const PointWriter&) = delete;

  const std::string& id() const { return id_; }
  // Path for the index file of the disk-th disk; the name goes into the
  // DiskRecord's index_file.
  std::string IndexFileName(size_t disk) const;
  std::string StagingPath(const std::string& file_name) const;
  // Stores a file with the point (fsynced at Commit) and returns its record.
  ConfigFileRecord AddFile(const std::string& kind, const std::string& name, const std::string& content,
                           const std::string& origin);

  // Makes the point visible: syncs chunks and indexes, writes the manifest,
  // renames the staging directory into points/. `manifest.id` is set here.
  void Commit(RestorePointManifest manifest);

 private:
  Repository* repo_;
  std::string id_;
  std::string staging_dir_;
  FileLock lock_;
  bool committed_ = false;
};

}  // namespace ferry
