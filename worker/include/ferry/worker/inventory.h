// What runs on this host: the inventory a worker reports to the coordinator
// (WorkerSession.reportInventory), read from the host itself.
//
//   QmpDirectoryInventory  a directory of QMP monitor sockets, one per VM
//                          (Proxmox-style: <vmid>.qmp); each is asked for the
//                          VM's name, UUID, state and disks, then left.
//   LibvirtInventory       every domain of a libvirt connection.
//
// One bad entry (a stale socket, a monitor busy with a backup, a domain that
// vanished meanwhile) is an entry with a problem, never a failed inventory.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ferry/worker/host.h"

namespace ferry::worker {

struct InventoryEntry {
  std::string source;        // the socket path, or "<uri> domain <name>"
  std::optional<HostVm> vm;  // absent when `problem` says why
  std::string problem;
  bool busy = false;  // the problem is a monitor busy with another client: the VM is there
};

// Sockets in `dir` (sorted by name); each monitor is given `timeout` to greet
// (a monitor serves one client: one that is busy is reported as such).
// `forwarded`: the sockets are a forwarder's (QmpMonitorDirectory::
// forwarded), so a connection closed before the greeting is a busy monitor too.
std::vector<InventoryEntry> QmpDirectoryInventory(const std::string& dir, std::chrono::milliseconds timeout,
                                                  bool forwarded = false);

// Where a worker finds its host's QMP monitors: a directory of sockets here
// (LocalQmpMonitorDirectory), or a local mirror of the host's directory
// whose sockets are forwarded over SSH (SshHost, ssh_host.h).
class QmpMonitorDirectory {
 public:
  virtual ~QmpMonitorDirectory() = default;
  // For messages: the directory, or where it is mirrored from.
  virtual std::string description() const = 0;
  // Brings the local directory up to date with the host (a mirror: adds
  // and removes sockets as VMs come and go, reconnecting if need be) and
  // returns it, for QmpDirectoryInventory and for QmpClient addresses.
  // Throws when the host cannot be reached: kRetryable when that may pass,
  // kEnvironment when the operator must act (a refused key, say).
  virtual std::string Refresh() = 0;
  // Whether the sockets are a forwarder's: a monitor busy with another
  // client is then not silent but closes the connection (the forwarder's
  // own connection to it got nowhere). Refresh lists only monitors of live
  // VMs, so such a close means busy, not gone.
  virtual bool forwarded() const { return false; }
};

std::shared_ptr<QmpMonitorDirectory> LocalQmpMonitorDirectory(const std::string& dir);

// Throws when the connection itself fails (kNotFound / kEnvironment).
std::vector<InventoryEntry> LibvirtInventory(const std::string& uri);

}  // namespace ferry::worker
