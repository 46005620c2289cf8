// Restore points, committed and being written, shaped for the coordinator's
// model (docs/repository-format.md, "Staging and commit"): the coordinator
// reserves a point id, hands one task per disk to possibly different workers,
// then a release that commits or discards the point.
//
//   Stage(header)        creates staging for a caller-given id (idempotent:
//                        every disk task of the point may call it)
//   WriteDisk(id, disk)  one disk's index, written by any process; its record
//                        is durable in staging when DiskWriter::Finish returns
//   AddFile(id, ...)     a configuration file of the VM
//   Commit(id)           checks every expected disk is present and every chunk
//                        they reference is in the chunk store, then makes the
//                        point visible in one rename; idempotent
//   Discard(id)          removes the staging
//   RemoveExpired()      removes staging whose expiry has passed and that no
//                        process is writing
//
// Staging is never removed merely because no process holds it: a point's disk
// tasks run one after another on different workers, with nothing held between
// them. It goes on Commit, Discard, or expiry. A header whose expiry is 0
// expires as soon as no process holds it (a single `ferry backup` run, whose
// staging is worthless once the process is gone).
//
// Locking (flock on staging/<id>.lock): Stage and disk writers hold it shared,
// Commit, Discard and expiry take it exclusively without waiting, so a point is
// never committed or removed while a disk of it is being written. Each disk
// also has its own exclusive lock, so two processes never write one disk. A
// point staged with expiry 0 has an owner lock too, held by the StagingLease
// until its process lets go (or dies); only then may it expire.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/common/chunk_store.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/manifest.h"

namespace ferry {

// What a staged point is: fixed when it is staged, checked by every Stage call.
struct StagedPointHeader {
  std::string id;
  VmIdentity vm;
  std::string chain;
  std::string started_at;          // RFC 3339; set by Stage when empty
  std::vector<std::string> disks;  // expected disk names, in manifest order
  int64_t expires_at = 0;          // Unix seconds; 0: when no process holds it
};

// A bad entry of points/ (stray file, unreadable manifest), for listings.
struct PointProblem {
  std::string entry;  // the name in points/
  std::string message;
};

struct PointListing {
  std::vector<RestorePointManifest> points;  // oldest first
  std::vector<PointProblem> problems;
};

// Returned by Stage. For a point staged with expiry 0 it holds the owner lock:
// the staging stays while the lease lives (commit and discard still work).
class StagingLease {
 public:
  virtual ~StagingLease() = default;
  virtual const StagedPointHeader& header() const = 0;
};

// One disk of a staged point being written. Destroying it unfinished leaves
// no record: the disk counts as not written.
class DiskWriter {
 public:
  virtual ~DiskWriter() = default;
  // Where the pipeline writes the disk's fixed index (FixedIndexWriter).
  virtual const std::string& index_path() const = 0;
  // The record's index_file, as it will be in the manifest.
  virtual const std::string& index_file() const = 0;
  // Records the disk (index_file and the index's SHA-256 filled in from the
  // written index). Durable when it returns.
  virtual void Finish(DiskRecord record) = 0;
};

class PointStore {
 public:
  virtual ~PointStore() = default;

  // Committed point ids (the directories of points/), oldest first, without
  // reading their manifests: Load() tells which are damaged.
  virtual std::vector<std::string> List() const = 0;
  // Every readable point plus one problem per bad entry.
  virtual PointListing LoadAll() const = 0;
  // Throws kNotFound for an unknown id, kCorrupt for a damaged manifest.
  virtual RestorePointManifest Load(const std::string& id) const = 0;
  // A disk's index of a committed point, checked against the manifest.
  virtual std::unique_ptr<FixedIndexReader> OpenIndex(const std::string& id, const DiskRecord& disk) const = 0;
  // A configuration file of a committed point, checked against its SHA-256.
  virtual std::string ReadFile(const std::string& id, const ConfigFileRecord& file) const = 0;

  // Creates staging for `header.id`, or joins it if it exists with the same
  // VM, chain and disks (kBadInput if they differ, or if the id is committed).
  // Also removes expired staging of other points.
  virtual std::unique_ptr<StagingLease> Stage(StagedPointHeader header) = 0;
  // kNotFound if `id` is not staged or `disk` is not one of its disks,
  // kBadInput if it is committed, kRetryable if another process is writing
  // that disk or the point is being committed (after a wait of up to 2 s). A disk written before is written again from scratch.
  virtual std::unique_ptr<DiskWriter> WriteDisk(const std::string& id, const std::string& disk) = 0;
  virtual ConfigFileRecord AddFile(const std::string& id, const std::string& kind, const std::string& name,
                                   const std::string& content, const std::string& origin) = 0;
  // Commits: every expected disk must have been written (else kNotFound
  // naming the disks), no disk may be being written (kRetryable), and every
  // chunk the indexes reference must be in `chunks` (else kRetryable naming
  // the first missing chunk: writing the disk again stores it). Committing an
  // already committed point returns its manifest.
  virtual RestorePointManifest Commit(const std::string& id) = 0;
  // Removes a staged point. kBadInput for a committed one; nothing staged: no-op.
  virtual void Discard(const std::string& id) = 0;
  // Ids of the removed staging.
  virtual std::vector<std::string> RemoveExpired() = 0;
  // Staged ids, for diagnostics and tests.
  virtual std::vector<std::string> ListStaged() const = 0;
};

// The local directory implementation: <repo>/points and <repo>/staging,
// committing against `chunks` (which must outlive it).
std::unique_ptr<PointStore> OpenLocalPointStore(const std::string& repo_dir, ChunkStore& chunks);

// Checks a caller-given point id: 1 to 64 of [0-9A-Za-z.-], not starting
// with a dot, not ending in ".lock" or ".stage" (staging's own names).
// Throws kBadInput naming it.
void ValidatePointId(const std::string& id);

}  // namespace ferry
