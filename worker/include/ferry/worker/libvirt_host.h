// Host for VMs run by libvirt (oVirt/OLVM hosts, plain KVM), over any
// libvirt URI (qemu:///system, qemu+ssh://, qemu+tls://).
//
// Running domains: pull-mode backups (virDomainBackupBegin) with one
// checkpoint per run, named like the chain's bitmaps (docs/cbt.md), so libvirt
// keeps the bitmaps and Ferry reconciles its checkpoints with the repository.
// Shut-off domains: each image read through a read-only qemu-nbd whose image
// lock keeps the domain from starting meanwhile; qcow2 disks use the
// persistent bitmap of the chain's checkpoint for an incremental.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "ferry/common/repository.h"
#include "ferry/worker/disk_restore.h"
#include "ferry/worker/host.h"
#include "ferry/worker/qmp_snapshot.h"

namespace ferry::worker {

struct LibvirtHostOptions {
  std::string uri;  // e.g. qemu:///system
  std::string vm;   // domain name or UUID
  SnapshotPaths paths;
};

// Connects and reads the domain. Aborts a backup job a dead Ferry run left
// on the domain. Throws ferry::Error (kNotFound for an unknown domain).
std::unique_ptr<Host> OpenLibvirtHost(const LibvirtHostOptions& options);

struct LibvirtRestoreOptions {
  std::string uri;
  std::string point_id;
  std::string name;        // new domain name; empty: "<original>-restored"
  std::string directory;   // where the disk images go
  std::string pool;        // or: a directory-backed libvirt storage pool
  std::string format = "qcow2";
  bool keep_macs = false;  // keep the NICs' MAC addresses
  bool overwrite = false;  // replace the original domain (powered off first)
  const std::atomic<bool>* cancel = nullptr;
  DiskRestoreProgress* progress = nullptr;  // summed over the disks restored
};

// Restores a whole VM from a point made on a libvirt host: disks (thin),
// UEFI NVRAM, and the domain definition, as a new domain (new name and UUID,
// new MACs) or over the original. Returns the domain's name.
std::string RestoreLibvirtVm(Repository& repo, const LibvirtRestoreOptions& options);

// Restores one disk of a point into an existing, shut-off libvirt domain:
// the image behind `target_disk` is rebuilt beside it (same format, thin)
// and renamed over it. Refuses while the domain runs.
void RestoreDiskIntoLibvirtVm(Repository& repo, const std::string& uri, const std::string& vm,
                              const std::string& point_id, const std::string& disk,
                              const std::string& target_disk, const std::atomic<bool>* cancel,
                              DiskRestoreProgress* progress = nullptr);

}  // namespace ferry::worker
