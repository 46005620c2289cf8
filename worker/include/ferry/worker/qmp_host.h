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
// disarmed once it is gone. `vm_key` is the QemuProcessKey of the VM: the
// guardian takes that VM's lock, and leaves QEMU alone if it finds another
// QEMU process behind the monitor.
class SnapshotGuard {
 public:
  virtual ~SnapshotGuard() = default;
  virtual void Arm(const std::string& session_id, const std::string& vm_key) = 0;
  virtual void Disarm() = 0;
};

struct QmpHostOptions {
  std::string address;                          // QMP monitor
  std::optional<std::string> expected_vm_name;  // refuse another VM
  SnapshotPaths paths;
  // Set: snapshots export over TCP with per-session TLS-PSK, for disk tasks
  // on other hosts (NbdExportNetwork); unset: a unix socket, this host only.
  std::optional<NbdExportNetwork> export_tcp;
  SnapshotGuard* guard = nullptr;
  // How long to wait for the VM's lock (and for the monitor's greeting when
  // another client holds it); -1: $FERRY_VM_LOCK_WAIT seconds, default 60.
  int lock_wait_ms = -1;
};

// The lock every Ferry process working on a VM holds while it changes the
// VM's block graph (backups and guardians), keyed by the VM's QEMU process
// (QemuProcessKey), not by the monitor: a VM may have several monitors, and
// two backups through two of them would collide inside QEMU.
std::string QmpVmLockPath(const SnapshotPaths& paths, const std::string& vm_key);

// Takes that lock, waiting up to `wait_ms`, and records this process in it
// as `holder` (e.g. "backup through unix:/run/vm1.qmp"), connected to the
// monitor `qmp_address`, for the error message of whoever waits next. An
// invalid lock if it stays taken.
FileLock AcquireVmLock(const SnapshotPaths& paths, const std::string& vm_key, int wait_ms,
                       const std::string& holder, const std::string& qmp_address);
// "ferry process <pid> (<holder>)" for the live process holding the VM's
// lock, "another ferry process ..." if its holder is unknown, "" if free.
std::string VmLockHolder(const SnapshotPaths& paths, const std::string& vm_key);

// Connects (a second client of a monitor waits for the first to leave),
// takes the VM's lock (waiting for another backup or a guardian to finish),
// removes leftovers of dead sessions and reads the VM's disks. Throws
// ferry::Error; kRetryable when the VM or its monitor stays busy.
std::unique_ptr<Host> OpenQmpHost(const QmpHostOptions& options);

}  // namespace ferry::worker
