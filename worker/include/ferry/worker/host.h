// The hypervisor behind one interface (docs/architecture.md, "Hosts"): a
// backup task does not care whether the VM runs under plain QEMU reached by
// QMP (Proxmox-style hosts) or under libvirt (oVirt/OLVM, plain KVM).
//
// A Host is bound to one VM. It reports the VM and its disks, its
// configuration, the changed-block-tracking state of a chain, and begins a
// backup that gives one NBD export per disk (with the chain's changes
// published when the plan is incremental).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ferry/common/manifest.h"
#include "ferry/worker/block_reader.h"
#include "ferry/worker/cbt.h"

namespace ferry::worker {

struct HostDisk {
  std::string name;      // what the hypervisor calls it: QMP device id, libvirt target dev
  std::string format;    // qcow2, raw, ...
  uint64_t size = 0;
  std::string identity;  // the image behind it (file name), to notice a swap
  bool cbt_capable = true;  // false: every backup reads it in full (reason below)
  std::string no_cbt_reason;
};

struct HostVm {
  VmIdentity identity;
  std::string state;  // "running", "paused", "shut off", ...
  std::vector<HostDisk> disks;
};

// A file of the VM's configuration kept with each restore point.
struct VmConfigFile {
  std::string kind;     // "libvirt-domain-xml", "qemu-command-line", "uefi-nvram", "tpm-state"
  std::string name;     // file name inside the point
  std::string content;
  std::string origin;   // where it came from (a path), for restore
};

struct ExportedDisk {
  HostDisk disk;
  NbdSource source;
  // The plan as carried out: a host may have to fall back (libvirt refusing
  // an incremental) or keep the chain's bitmap (a shut-off VM). Recorded in
  // the restore point.
  CbtPlan plan;
};

// A begun backup: the disks' point-in-time exports.
class HostBackup {
 public:
  virtual ~HostBackup() = default;
  virtual const std::vector<ExportedDisk>& exports() const = 0;
  // Ends the backup: exports and snapshot go. Never throws; false if
  // something could not be removed (logged). Idempotent.
  virtual bool End() = 0;
  // After End(): commit (success) or roll back (failure) the chain's CBT
  // state so the next run sees every change. Never throws.
  virtual void FinishCbt(bool success) = 0;
};

class Host {
 public:
  virtual ~Host() = default;
  virtual std::string description() const = 0;
  virtual const HostVm& vm() const = 0;
  virtual std::vector<VmConfigFile> CaptureConfig() = 0;
  // The chain's bitmaps (or checkpoints) of one disk now.
  virtual std::vector<BitmapState> ChainBitmaps(const HostDisk& disk, const std::string& chain_id) = 0;
  // Drops bitmaps (checkpoints) of the chain that the plan found stale.
  virtual void DropChainBitmaps(const HostDisk& disk, const std::vector<std::string>& names) = 0;
  // Takes one crash-consistent snapshot of `disks` and exports them; each
  // plan says which bitmap to start and, when incremental, which to publish.
  virtual std::unique_ptr<HostBackup> BeginBackup(const std::vector<HostDisk>& disks,
                                                  const std::vector<CbtPlan>& plans) = 0;
};

}  // namespace ferry::worker
