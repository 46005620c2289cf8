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
// And for committed points (docs/repository-format.md, "Removal, leases and
// locks"):
//
//   Lease(id)            a read lease: restore, verify and an incremental
//                        backup reading its previous point hold one
//   SetLock(id, ...)     locks a point against removal until a time (extend
//                        only; never shortened or lifted early)
//   Remove(id, now)      removes a point that is neither leased nor locked,
//                        all or nothing across a crash
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
//
// Committed points (flock on the directory points/<id> itself, so nothing is
// written into a point to read it): a lease holds it shared; Remove takes it
// exclusively without waiting, so a point is never removed while it is read.
// SetLock holds it shared too, so a lock and a removal never cross.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/chunk_store.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/manifest.h"
#include "ferry/common/point_check.h"

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

// A point's lock (points/<id>/lock.json): it cannot be removed before
// locked_until.
struct PointLock {
  int64_t locked_until = 0;  // Unix seconds
  int64_t set_at = 0;        // Unix seconds, when it was last set or extended
  std::string reason;        // at most 1024 bytes
};

// Held by a reader of a committed point: while it lives, Remove refuses the
// point (kRetryable).
class PointLease {
 public:
  virtual ~PointLease() = default;
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

  // A read lease on a committed point. kNotFound for an unknown id (or one
  // being removed), kRetryable if a removal holds it past a 2 s wait.
  virtual std::unique_ptr<PointLease> Lease(const std::string& id) const = 0;
  // The point's lock, expired or not; nullopt when it has none. kNotFound for
  // an unknown point, kCorrupt for a damaged lock file.
  virtual std::optional<PointLock> ReadLock(const std::string& id) const = 0;
  // Locks the point until `locked_until` (Unix seconds, after `now`), or
  // extends its lock; kBadInput if that would end an unexpired lock earlier
  // (the lock stays as it was). `reason` replaces the old one when given.
  // Where the process may (root, a file system with the flag), the point's
  // files and directory also get the immutable flag. Returns the lock as set.
  virtual PointLock SetLock(const std::string& id, int64_t locked_until, const std::string& reason,
                            int64_t now) = 0;
  // Removes a committed point (its chunks stay, for garbage collection).
  // kNotFound for an unknown id; kBadInput if it is locked after `now`
  // (naming the lock's end); kRetryable if it is in use (a lease is held).
  // A crash at any moment leaves the whole point or none of it visible.
  virtual void Remove(const std::string& id, int64_t now) = 0;

  // The last health check of every committed point that has one, by point
  // id. A record that cannot be read counts as none (the point is then
  // checked in full next time), and is logged.
  virtual std::map<std::string, PointCheck> LoadChecks() const = 0;
  // Replaces the last check of `check.point` (kNotFound: no such point).
  // Durable when it returns.
  virtual void RecordCheck(const PointCheck& check) = 0;
};

// The local directory implementation: <repo>/points and <repo>/staging,
// committing against `chunks` (which must outlive it).
std::unique_ptr<PointStore> OpenLocalPointStore(const std::string& repo_dir, ChunkStore& chunks);

// Checks a caller-given point id: 1 to 64 of [0-9A-Za-z.-], not starting
// with a dot, not ending in ".lock" or ".stage" (staging's own names).
// Throws kBadInput naming it.
void ValidatePointId(const std::string& id);

}  // namespace ferry
