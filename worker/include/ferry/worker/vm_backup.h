// One backup of one VM into a repository, whatever the hypervisor (host.h):
// select disks, reconcile each disk's changed-block tracking with the chain's
// last restore point, snapshot all selected disks at one instant, run the read
// pipeline per disk, end the snapshot, commit the point with the VM's
// configuration, then commit (or, on failure, roll back) the chain's CBT state.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "ferry/common/repository.h"
#include "ferry/worker/disk_backup.h"
#include "ferry/worker/host.h"

namespace ferry::worker {

struct VmBackupRequest {
  std::vector<std::string> disks;          // disk names to back up; empty: all
  std::vector<std::string> exclude_disks;  // disk names to leave out
  std::string chain = "default";           // backup chain (docs/cbt.md)
  std::string point_id;                    // "" for a new one (NewPointId)
  DiskBackupOptions disk_options;
};

struct VmBackupProgress {
  std::atomic<uint64_t> bytes_total{0};   // sum of the selected disks' sizes
  std::atomic<uint64_t> bytes_before{0};  // of disks already finished
  DiskBackupProgress current;
  uint64_t done() const { return bytes_before + current.bytes_done; }
};

// Returns the committed restore point's manifest. Throws ferry::Error.
RestorePointManifest BackupVm(Repository& repo, Host& host, const VmBackupRequest& request,
                              VmBackupProgress* progress);

}  // namespace ferry::worker
