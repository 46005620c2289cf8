// A Ferry repository on a local (or mounted) file system: its configuration
// plus the two stores behind interfaces (chunk_store.h, point_store.h).
//
//   <dir>/ferry-repository.json   config; "format" is the versioned magic
//   <dir>/chunks/<3 hex>/<64 hex> chunk files (chunk_store.h)
//   <dir>/quarantine/             chunks found damaged, moved aside
//   <dir>/points/<id>/            committed restore points: manifest.json
//                                 plus one fixed index per disk
//   <dir>/staging/                restore points being written (point_store.h)
//
// See docs/repository-format.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/common/chunk_store.h"
#include "ferry/common/file_util.h"
#include "ferry/common/manifest.h"
#include "ferry/common/point_store.h"

namespace ferry {

// A new restore point id: sorts by creation time to the microsecond, with a
// random suffix (20261122T034210.123456Z-1a2b3c). The coordinator reserves
// one per VM per session so that every disk task writes into the same point.
std::string NewPointId();

inline constexpr char kRepositoryFamily[] = "ferry-repository";
// v2: v2 manifests, staging that outlives its writers, quarantine. Written by
// init; a v1 repository is upgraded when it is first written to, so Ferry 0.1
// refuses it instead of removing staged points it does not understand.
inline constexpr int kRepositoryVersion = 2;
// v3: an encrypted repository (docs/encryption.md), written by init --encrypt.
// A plain repository stays v2, bit for bit; a Ferry that knows only v2
// refuses a v3 repository ("newer format") instead of misreading its chunks.
inline constexpr int kEncryptedRepositoryVersion = 3;
inline constexpr int kNewestRepositoryVersion = 3;
// Chosen by measurement (docs/benchmarks.md): see kDefaultChunkSize's note there.
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;

struct RepositoryConfig {
  int format_version = kRepositoryVersion;  // as read
  std::string id;  // random, 32 hex digits
  uint32_t chunk_size = kDefaultChunkSize;
  int zstd_level = 1;
  SyncLevel sync_level = SyncLevel::kFilesystem;
  std::string created_at;
  // Encrypted repository: the fingerprint of its key (repository_key.h), and
  // "encryption" in ferry-repository.json; "" for a plain repository.
  std::string key_fingerprint;
  bool encrypted() const { return !key_fingerprint.empty(); }
};

// Checks a chunk size given by a user: a power of two from 64 KiB to 16 MiB.
// Throws kBadInput naming the value.
void ValidateChunkSize(uint64_t chunk_size);
// The one check of a configuration, by init and on every open: chunk size
// and zstd level (-7..19). Throws kBadInput naming the value.
void ValidateRepositoryConfig(const RepositoryConfig& config);

// ferry-repository.json, wherever it is kept (a directory, a bucket):
// `version` is the format written. Reading checks the format (kBadInput for
// one that is not a Ferry repository's or is newer, naming `location`) and
// every value (kCorrupt naming `source`).
std::string RepositoryConfigToJson(const RepositoryConfig& config, int version);
RepositoryConfig RepositoryConfigFromJson(const std::string& text, const std::string& location,
                                         const std::string& source);

// A repository, wherever it is: a local directory (Open) or a repository
// service on another machine (ferry/rpc/repository_service.h). Backup,
// restore and verify take a Repository& and do not care which.
class Repository {
 public:
  // Creates a repository in `dir` (created if missing; must be empty).
  static void Init(const std::string& dir, const RepositoryConfig& config);
  // Opens the repository in a local directory. Throws kNotFound if `dir`
  // does not exist, kBadInput if it is not a Ferry repository or is of a
  // newer format, kCorrupt if its configuration is damaged or out of range.
  static std::unique_ptr<Repository> Open(const std::string& dir);

  virtual ~Repository() = default;
  // Where it is, for messages and records: its directory, or the service
  // address (ferry+tls://host:port/name).
  virtual const std::string& location() const = 0;
  virtual const RepositoryConfig& config() const = 0;
  virtual ChunkStore& chunks() = 0;
  virtual ChunkReader& chunk_reader() = 0;
  virtual PointStore& points() = 0;
  virtual const PointStore& points() const = 0;
  // Before a write: checks the repository is writable (kEnvironment) and
  // upgrades a v1 configuration to v2.
  virtual void PrepareForWriting() = 0;
};

}  // namespace ferry
