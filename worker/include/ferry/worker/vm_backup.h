// One backup of a running QEMU VM, reached through QMP, into a repository:
// inventory, snapshot of all selected disks at one instant, changed block
// tracking reconciled per disk, the read pipeline per disk, cleanup, commit.
// The CLI and (later) the worker daemon both run backups through this.
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/repository.h"
#include "ferry/worker/disk_backup.h"
#include "ferry/worker/qmp_client.h"
#include "ferry/worker/qmp_snapshot.h"

namespace ferry::worker {

// Something that removes a session's snapshot if this process dies before it
// does (the CLI's guardian process). Armed before the snapshot is taken,
// disarmed once it is gone.
class SnapshotGuard {
 public:
  virtual ~SnapshotGuard() = default;
  virtual void Arm(const std::string& session_id) = 0;
  virtual void Disarm() = 0;
};

struct VmBackupRequest {
  std::string qmp_address;
  std::optional<std::string> expected_vm_name;  // refuse another VM
  std::vector<std::string> disks;               // device ids; empty: all
  std::string chain = "default";                // backup chain (docs/cbt.md)
  DiskBackupOptions disk_options;
  SnapshotPaths paths;
  SnapshotGuard* guard = nullptr;
};

struct VmBackupProgress {
  std::atomic<uint64_t> bytes_total{0};  // sum of the selected disks' sizes
  std::atomic<uint64_t> bytes_before{0};  // of disks already finished
  DiskBackupProgress current;
  uint64_t done() const { return bytes_before + current.bytes_done; }
};

// Returns the committed restore point's manifest. Throws ferry::Error.
RestorePointManifest BackupQemuVm(Repository& repo, const VmBackupRequest& request,
                                  VmBackupProgress* progress);

}  // namespace ferry::worker
