// One backup of one VM into a repository, whatever the hypervisor (host.h),
// cut along the coordinator's protocol (docs/worker-protocol.md) into the
// three steps its work items are, so the standalone `ferry backup` and the
// worker daemon run one backup path:
//
//   TakeVmSnapshot   on the VM's host: select disks, reconcile each disk's
//                    changed-block tracking with the chain's last restore
//                    point, stage the point, store the VM's configuration,
//                    snapshot all selected disks at one instant and export
//                    them. Returns the snapshot, held until released, and one
//                    DiskTask per disk.
//   BackupDiskTask   on any worker that can reach the export: the read
//                    pipeline for one disk, into the staged point.
//   VmSnapshot::Release  on the snapshot's holder: end the snapshot, commit
//                    (or discard) the point, then commit (or roll back) the
//                    chain's CBT state.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "ferry/common/point_store.h"
#include "ferry/common/repository.h"
#include "ferry/worker/disk_backup.h"
#include "ferry/worker/host.h"

namespace ferry::worker {

struct VmSnapshotRequest {
  std::vector<std::string> disks;          // disk names to back up; empty: all
  std::vector<std::string> exclude_disks;  // disk names to leave out
  std::string chain = "default";           // backup chain (docs/cbt.md)
  std::string point_id;                    // "" for a new one (NewPointId)
  // When the staged point may be removed if never released (Unix seconds);
  // 0: with this process (the standalone CLI).
  int64_t expires_at = 0;
};

// Everything a worker needs to back up one disk of a snapshot: what travels
// in the protocol's disk work item.
struct DiskTask {
  std::string point_id;
  HostDisk disk;
  NbdSource source;            // the snapshot's export of this disk
  CbtPlan plan;                // as the host carried it out
  std::string previous_point;  // incremental: the point whose index supplies unchanged chunks
};

// A disk task as the protocol carries it: the snapshot's worker reports it
// with each export (DiskExport.readPlan), the coordinator hands it verbatim to
// the disk's worker (DiskWork.readPlan). JSON, format "ferry-read-plan-v1"
// (docs/worker-protocol.md, "Read plans").
std::string ReadPlanToJson(const DiskTask& task);
// Throws kBadInput naming the member that is missing or wrong; kBadInput for
// a newer format.
DiskTask ReadPlanFromJson(const std::string& json);

class VmSnapshot {
 public:
  virtual ~VmSnapshot() = default;  // unreleased: released as Release(false)
  virtual const std::string& point_id() const = 0;
  virtual const std::vector<DiskTask>& disk_tasks() const = 0;
  // Ends the snapshot, then commits the point (every disk task must have
  // finished) or discards it, then finishes the chain's CBT state. Returns
  // the committed manifest (empty when not committing). Throws when the
  // commit fails; the CBT state is then rolled back.
  virtual RestorePointManifest Release(bool commit) = 0;
};

// `host` must outlive the snapshot. Throws ferry::Error.
std::unique_ptr<VmSnapshot> TakeVmSnapshot(Repository& repo, Host& host, const VmSnapshotRequest& request);

// Backs up one disk task into its staged point; the disk's record is durable
// when it returns. Throws ferry::Error naming the disk.
DiskRecord BackupDiskTask(Repository& repo, const DiskTask& task, const DiskBackupOptions& options,
                          DiskBackupProgress* progress);

struct VmBackupRequest : VmSnapshotRequest {
  DiskBackupOptions disk_options;
};

struct VmBackupProgress {
  std::atomic<uint64_t> bytes_total{0};   // sum of the selected disks' sizes
  std::atomic<uint64_t> bytes_before{0};  // of disks already finished
  DiskBackupProgress current;
  uint64_t done() const { return bytes_before + current.bytes_done; }
};

// The three steps in one process, one disk after another. Returns the
// committed restore point's manifest. Throws ferry::Error.
RestorePointManifest BackupVm(Repository& repo, Host& host, const VmBackupRequest& request,
                              VmBackupProgress* progress);

}  // namespace ferry::worker
