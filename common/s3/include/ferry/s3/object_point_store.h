// Restore points as objects in a bucket (docs/object-storage.md, "Points"):
//
//   <prefix>points/<id>/manifest.json     written last at commit: a point
//                                         exists exactly when this object does
//   <prefix>points/<id>/disk-N-<tok>.fidx a disk's index, uploaded by its writer
//   <prefix>points/<id>/<file>            a configuration file of the VM
//   <prefix>points/<id>/lock.json         the point's lock (point_records.h)
//   <prefix>points/<id>/check.json        its last health check
//   <prefix>staging/<id>/point.json       the staged header
//   <prefix>staging/<id>/disk-N.json      a finished disk's record (names its index)
//   <prefix>staging/<id>/file-<name>.json a configuration file's record
//   <prefix>leases/<id>/<random>.json     read leases of a committed point
//   <prefix>leases/<id>/removing.json     a removal in progress
//
// Object stores have no rename and no file locks, so the local store's
// steps change shape, not meaning:
//   - commit writes manifest.json after every index and file it names is
//     stored and every chunk they reference is present; a kill before that
//     leaves a staged point, after it a committed one (its staging records
//     are cleaned by the next commit or sweep);
//   - a rewritten disk gets a new index name (the random <tok>), so a
//     writer killed mid-upload never damages an index a record names;
//   - a committed point's readers hold lease objects, refreshed while they
//     live; removal writes removing.json, then lists the leases: with the
//     store's read-after-write consistency (AWS S3 since 2020, Ceph RGW) a
//     reader and a removal that overlap see each other, and one of them
//     backs off;
//   - staging with expiry 0 ("while its process lives") cannot tell a live
//     process elsewhere from a dead one, so it expires after
//     kProcessStagingSeconds instead;
//   - two processes writing one disk at once is not detected (no
//     conditional writes in every store): the coordinator never assigns a
//     disk twice at once, and the last record written wins, whole;
//   - in a bucket with S3 Object Lock, SetLock also sets the retention of
//     every object of the point (manifest, indexes, configuration files,
//     lock.json) and of every chunk its indexes reference to the lock's end,
//     in `lock_mode`, never shortening one (a chunk shared with a point
//     locked longer keeps its later end). Retention goes on first and
//     lock.json last, so a lock that is recorded is in force. A DELETE then
//     only adds a delete marker: the locked versions stay and can be made
//     current again (docs/object-storage.md, "Object Lock"). Without Object
//     Lock, the lock is lock.json only (logged once).
#pragma once

#include <memory>
#include <string>

#include "ferry/common/chunk_store.h"
#include "ferry/common/point_store.h"
#include "ferry/s3/client.h"

namespace ferry::s3 {

inline constexpr int64_t kProcessStagingSeconds = 24 * 3600;
inline constexpr int64_t kReadLeaseSeconds = 3600;  // refreshed every third of it while held

// PUT ?retention requests SetLock keeps in flight at once.
inline constexpr int kRetentionsInFlight = 8;

struct ObjectLockOptions {
  // The retention mode SetLock uses when the bucket has Object Lock.
  RetentionMode mode = RetentionMode::kCompliance;
  // SetLock refuses (kEnvironment) rather than writing lock.json alone when
  // the bucket has no Object Lock (the location's object-lock=on).
  bool required = false;
};

// `bucket` and `chunks` must outlive the store. `prefix` is "" or ends in '/'.
std::unique_ptr<PointStore> OpenObjectPointStore(Bucket& bucket, std::string prefix, ChunkStore& chunks,
                                                 ObjectLockOptions lock_options = {});

}  // namespace ferry::s3
