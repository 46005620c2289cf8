// A crash-consistent point-in-time view of a running QEMU VM's disks, taken
// through QMP by fleecing (docs/architecture.md, "Snapshots"):
//
//   for each disk: a temporary qcow2 overlay whose backing is the disk's node,
//   then, for all disks in ONE transaction, blockdev-backup sync=none from the
//   disk into its overlay (copy-before-write: a guest write first copies the
//   old data into the overlay), then an NBD export of each overlay.
//
// Everything Ferry adds to QEMU is named "ferry-<session>-<n>-<role>", and
// the session holds <runtime dir>/<session>.lock while it lives. Release()
// removes it all (export, job, nodes, NBD server, overlay files). If the
// process dies before that, RemoveAbandonedSnapshots() (run at the start of
// every backup, and by the guardian process the CLI leaves behind) finds
// objects whose session lock is free and removes them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/common/file_util.h"
#include "ferry/worker/block_reader.h"
#include "ferry/worker/qmp_client.h"

namespace ferry::worker {

struct QmpDisk {
  std::string name;       // the device id, e.g. "virtio0" or "scsi0"
  std::string node_name;  // the block node the device reads
  std::string format;     // "qcow2", "raw", ...
  uint64_t size = 0;
  std::string filename;
};

// Disks attached to guest devices, from query-block.
std::vector<QmpDisk> ListQmpDisks(QmpClient& qmp);

struct SnapshotPaths {
  std::string runtime_dir;  // session locks and NBD sockets
  std::string scratch_dir;  // overlay files (grow with guest writes during the backup)
};

// Default directories: /run/ferry (or $FERRY_RUNTIME_DIR) and /var/tmp/ferry
// (or $FERRY_SCRATCH_DIR); created if missing.
SnapshotPaths DefaultSnapshotPaths();

// Bitmap actions of one disk, done in the snapshot's transaction.
struct SnapshotBitmaps {
  std::string start;        // bitmap to add (tracks writes after the snapshot); "" for none
  bool persistent = false;  // survive a QEMU restart (qcow2 only)
  std::string export_bitmap;  // bitmap to disable and publish on the export; "" for none
};

class FleecingSnapshot {
 public:
  struct Export {
    QmpDisk disk;
    NbdSource source;
  };

  // Takes the snapshot of `disks` (all at one instant) and exports them,
  // as session `session_id` (from NewSnapshotSessionId). On failure, removes
  // whatever it had created and throws.
  // `bitmaps` is empty or parallel to `disks`.
  static std::unique_ptr<FleecingSnapshot> Create(QmpClient& qmp, const std::vector<QmpDisk>& disks,
                                                  const SnapshotPaths& paths,
                                                  const std::string& session_id,
                                                  const std::vector<SnapshotBitmaps>& bitmaps = {});
  ~FleecingSnapshot();

  const std::string& session_id() const { return session_id_; }
  const std::vector<Export>& exports() const { return exports_; }

  // Removes everything this snapshot added. Never throws; logs failures.
  // Returns false if something could not be removed.
  bool Release();

 private:
  FleecingSnapshot(QmpClient& qmp, SnapshotPaths paths, std::string session_id, FileLock lock);

  QmpClient& qmp_;
  SnapshotPaths paths_;
  std::string session_id_;
  FileLock lock_;
  std::vector<Export> exports_;
  bool released_ = false;
};

// A fresh session id: 8 hex digits.
std::string NewSnapshotSessionId();

// The lock a live session holds (flock); free or missing once it is gone.
std::string SessionLockPath(const SnapshotPaths& paths, const std::string& session_id);

// Removes every object of session `session_id` from QEMU and its files.
// Returns false if something could not be removed (logged).
bool RemoveSessionObjects(QmpClient& qmp, const SnapshotPaths& paths, const std::string& session_id);

// The snapshot hunter: removes objects of Ferry sessions that are no longer
// running. Returns the session ids it cleaned.
std::vector<std::string> RemoveAbandonedSnapshots(QmpClient& qmp, const SnapshotPaths& paths);

// Names of Ferry objects currently present in QEMU (exports, jobs, nodes),
// for tests and diagnostics.
std::vector<std::string> ListFerryObjects(QmpClient& qmp);

}  // namespace ferry::worker
