// Host for a VM whose QEMU is reached directly through QMP (Proxmox-style
// hosts, standalone QEMU): fleecing snapshots and dirty bitmaps.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "ferry/worker/host.h"
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

struct QmpHostOptions {
  std::string address;                          // QMP monitor
  std::optional<std::string> expected_vm_name;  // refuse another VM
  SnapshotPaths paths;
  SnapshotGuard* guard = nullptr;
};

// The lock every Ferry process working on the VM at `qmp_address` holds
// while it talks to the VM's monitor (backups and guardians): a monitor
// serves one client at a time.
std::string QmpVmLockPath(const SnapshotPaths& paths, const std::string& qmp_address);

// Takes the VM's lock (waiting up to a minute for a guardian to finish),
// connects, removes leftovers of dead sessions
// and reads the VM's disks. Throws ferry::Error.
std::unique_ptr<Host> OpenQmpHost(const QmpHostOptions& options);

}  // namespace ferry::worker
