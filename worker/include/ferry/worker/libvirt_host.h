// Host for VMs run by libvirt (oVirt/OLVM hosts, plain KVM), over any
// libvirt URI (qemu:///system, qemu+ssh://, qemu+libssh://, qemu+tls://).
//
// Running domains: pull-mode backups (virDomainBackupBegin) with one
// checkpoint per run, named like the chain's bitmaps (docs/cbt.md), so libvirt
// keeps the bitmaps and Ferry reconciles its checkpoints with the repository.
// Where the export goes:
//  - a local libvirtd (no host in the URI) and no tcp_export: a unix socket
//    in a session directory under the runtime directory (handed to QEMU's
//    user), the scratch files beside it;
//  - tcp_export (required for a remote URI, e.g. from the worker appliance):
//    QEMU's NBD server on TCP at tcp_export.host, a port of the range, with
//    the host's backup TLS (x509, qemu.conf) unless turned off; the export
//    names carry the session ("ferry-<session>-<disk>") so a later run can
//    tell a dead session's job; nothing on this machine but the session lock,
//    the scratch files on the host, beside each image or in
//    tcp_export.scratch_dir.
// Shut-off domains: each image read through a read-only qemu-nbd whose image
// lock keeps the domain from starting meanwhile; qcow2 disks use the
// persistent bitmap of the chain's checkpoint for an incremental. Only for a
// local libvirtd: a remote one's shut-off domains are refused (kEnvironment).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ferry/common/repository.h"
#include "ferry/worker/disk_restore.h"
#include "ferry/worker/host.h"
#include "ferry/worker/qmp_snapshot.h"

namespace ferry::worker {

// A running domain's pull-mode export over TCP (docs/worker.md, "Remote
// libvirt").
struct LibvirtTcpExport {
  std::string host;  // QEMU listens at this name and the reader connects to it (<server name=>)
  // libvirt 9 needs a concrete port: the first of these not in use.
  uint16_t port_min = 10809;
  uint16_t port_max = 10909;
  // <server tls='yes'>: the host's backup TLS (qemu.conf
  // backup_tls_x509_cert_dir); the reader's certificates in tls_x509_dir.
  // false: plaintext NBD, for a trusted network only.
  bool tls = true;
  std::string tls_x509_dir;
  std::string scratch_dir;  // the host's directory for scratch files; "": beside each image
};

struct LibvirtHostOptions {
  std::string uri;  // e.g. qemu:///system
  std::string vm;   // domain name or UUID
  SnapshotPaths paths;
  std::optional<LibvirtTcpExport> tcp_export{};  // unset: a unix socket (local libvirtd only)
};

// The host part of a libvirt URI ("hv1" of qemu+ssh://root@hv1:22/system),
// without brackets; "" for a local one (qemu:///system, qemu+unix:///...).
std::string LibvirtUriHost(const std::string& uri);

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
  const RepositoryKey* key = nullptr;       // an encrypted repository's (DiskRestoreOptions::key)
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
                              DiskRestoreProgress* progress = nullptr, const RepositoryKey* key = nullptr);

}  // namespace ferry::worker
