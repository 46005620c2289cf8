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
std::vector<InventoryEntry> QmpDirectoryInventory(const std::string& dir, std::chrono::milliseconds timeout);

// Throws when the connection itself fails (kNotFound / kEnvironment).
std::vector<InventoryEntry> LibvirtInventory(const std::string& uri);

}  // namespace ferry::worker
