// A crash-consistent point-in-time view of a running QEMU VM's disks, taken
// through QMP by fleecing (docs/architecture.md, "Snapshots"):
//
//   for each disk: a temporary qcow2 overlay whose backing is the disk's node,
//   then, for all disks in ONE transaction, blockdev-backup sync=none from the
//   disk into its overlay (copy-before-write: a guest write first copies the
//   old data into the overlay), then an NBD export of each overlay.
//
// Everything Ferry adds to QEMU is named "ferry-<session>-<n>-<role>"; the
// files of a session are, on this process's side (SnapshotPaths::runtime_dir:
// flock needs a local file)
//   <runtime dir>/<session>.lock        flock held while the session lives;
//                                       holds the session record (its VM)
//   <runtime dir>/<session>.nbd-server  marker: the session started QEMU's
//                                       (only) NBD server; also names the VM
// and on QEMU's host (SnapshotPaths::host, the same machine unless the
// worker reaches QEMU over SSH), where QEMU opens them
//   <host runtime dir>/<session>.nbd    the NBD server's socket
//   <host runtime dir>/<session>.tls/keys.psk  TCP exports only: the session's
//                                       TLS-PSK key (dir 0700, file 0600),
//                                       read by QEMU's tls-creds-psk object
//                                       "ferry-<session>-tls"
//   <host scratch dir>/ferry-<session>-<n>.qcow2   overlay of disk n, created
//                                       by QEMU itself (blockdev-create jobs
//                                       "ferry-<session>-<n>-c")
//
// Ordering rules that make a free lock mean "dead": a session takes its lock
// (CreateSessionLock: visible only once held, record included) before it
// creates any other file or QEMU object,
// and unlinks the lock only after everything else is gone. The hunter lists
// files and objects first and checks locks afterwards, so a session it sees
// files of either holds its lock or is dead.
//
// Release() removes it all. If the process dies before that, the guardian
// the CLI leaves behind removes it, and else RemoveAbandonedSnapshots() (run
// at the start of every QMP backup) does: for every session whose lock is
// free or missing, through QMP if the session ran on the VM it is connected
// to, and by deleting the files if that session's QEMU is gone. A dead
// session of another VM whose QEMU still runs is left to that VM's next run
// (its QEMU still holds and writes the overlay and may run its NBD server).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/file_util.h"
#include "ferry/worker/block_reader.h"
#include "ferry/worker/host_env.h"
#include "ferry/worker/qmp_client.h"

namespace ferry::worker {

struct QmpDisk {
  std::string name;       // the device id, e.g. "virtio0" or "scsi0"
  std::string node_name;  // the block node the device reads
  std::string format;     // "qcow2", "raw", ...
  uint64_t size = 0;
  std::string filename;
};

// Disks attached to guest devices, from query-block.
std::vector<QmpDisk> ListQmpDisks(QmpClient& qmp);

// Where a session's files go: this process's side, and QEMU's host's side
// (see the top of this file). With QEMU on this machine the host's runtime
// directory is this process's.
struct SnapshotPaths {
  std::string runtime_dir;  // this process's: session and VM locks, NBD server markers
  // QEMU's host, and its directories as QEMU sees them.
  std::shared_ptr<HostEnv> host;
  std::string host_runtime_dir;  // NBD sockets, TLS key directories
  std::string host_scratch_dir;  // overlay files (grow with guest writes during the backup)
};

// Default directories: /run/ferry (or $FERRY_RUNTIME_DIR) and /var/tmp/ferry
// (or $FERRY_SCRATCH_DIR) on this host; created if missing.
SnapshotPaths DefaultSnapshotPaths();
// The same for given directories (the worker daemon's configuration).
SnapshotPaths MakeSnapshotPaths(const std::string& runtime_dir, const std::string& scratch_dir);
// Given directories on this host, taken as they are (made by someone else).
SnapshotPaths LocalSnapshotPaths(const std::string& runtime_dir, const std::string& scratch_dir);
// QEMU on another machine (SshHost): this process's runtime directory is
// created here if missing; `host` makes sure of the host's directories.
SnapshotPaths RemoteSnapshotPaths(const std::string& runtime_dir, std::shared_ptr<HostEnv> host,
                                  const std::string& host_runtime_dir, const std::string& host_scratch_dir);

// A session's NBD server on TCP instead of a unix socket, for disk tasks run
// by workers on other hosts (or by a worker that reaches QEMU over SSH).
// Always TLS-PSK: each session gets a fresh random 256-bit key under the
// identity "ferry-<session>" (a tls-creds-psk object, its keys file in the
// host's runtime directory, written through SnapshotPaths::host), and its
// exports' NbdSource carry the address and the credentials, so only a
// holder of the session's read plans can read them. QEMU must be able to
// read that file (it runs as the user Ferry writes it as, as for the socket).
struct NbdExportNetwork {
  std::string listen_host = "0.0.0.0";  // where QEMU listens ("::" for IPv6 too)
  std::string advertise_host;           // what readers connect to: this host's name or address
  // QEMU needs a concrete port: the first of these not in use.
  uint16_t port_min = 10809;
  uint16_t port_max = 10909;
};

// Bitmap actions of one disk, done in the snapshot's transaction.
struct SnapshotBitmaps {
  std::string start;        // bitmap to add (tracks writes after the snapshot); "" for none
  bool persistent = false;  // survive a QEMU restart (qcow2 only)
  std::string export_bitmap;  // bitmap to disable and publish on the export; "" for none
};

class FleecingSnapshot {
 public:
  struct Export {
    QmpDisk disk;
    NbdSource source;
  };

  // Takes the snapshot of `disks` (all at one instant) and exports them,
  // as session `session_id` (from NewSnapshotSessionId). On failure, removes
  // whatever it had created and throws.
  // `bitmaps` is empty or parallel to `disks`.
  // `vm_key` (QemuProcessKey) goes into the session record so that a later
  // run can tell which QEMU the session's leftovers belong to.
  // `network` set: the NBD server listens on TCP with TLS-PSK (see
  // NbdExportNetwork); unset: on the session's unix socket.
  static std::unique_ptr<FleecingSnapshot> Create(QmpClient& qmp, const std::vector<QmpDisk>& disks,
                                                  const SnapshotPaths& paths,
                                                  const std::string& session_id,
                                                  const std::string& vm_key,
                                                  const std::vector<SnapshotBitmaps>& bitmaps = {},
                                                  const std::optional<NbdExportNetwork>& network = std::nullopt);
  ~FleecingSnapshot();

  const std::string& session_id() const { return session_id_; }
  const std::vector<Export>& exports() const { return exports_; }

  // Removes everything this snapshot added. Never throws; logs failures.
  // Returns false if something could not be removed.
  bool Release();

 private:
  FleecingSnapshot(QmpClient& qmp, SnapshotPaths paths, std::string session_id, FileLock lock);

  QmpClient& qmp_;
  SnapshotPaths paths_;
  std::string session_id_;
  FileLock lock_;
  std::vector<Export> exports_;
  bool released_ = false;
};

// A fresh session id: 8 hex digits.
std::string NewSnapshotSessionId();

// The lock a live session holds (flock); free or missing once it is gone.
std::string SessionLockPath(const SnapshotPaths& paths, const std::string& session_id);

// Creates a session's lock already held, with `record` in it: made and
// locked under a temporary name, then renamed, so that no one ever sees the
// lock file unlocked (between open and flock) and takes the session for
// dead. Throws if it cannot. Used by QMP and libvirt sessions alike.
FileLock CreateSessionLock(const SnapshotPaths& paths, const std::string& session_id, const std::string& record);

// The identity of the QEMU process behind a monitor, the same through every
// monitor of one VM: "pid:<pid>:<start time>" from the host's pid of it
// (HostEnv::QemuPid: SO_PEERCRED locally) and its /proc/<pid>/stat on that
// host (a reused pid has another start time), else (TCP, no pid file)
// "uuid:<uuid>" from query-uuid, else "qmp:<address>".
std::string QemuProcessKey(QmpClient& qmp, HostEnv& host);
// False only when `key` names a QEMU process that is gone from `host`;
// keys without a pid cannot be checked and count as alive.
bool QemuProcessMayBeAlive(const std::string& key, HostEnv& host);

// What a session wrote into its lock file (and its NBD server marker).
struct SessionRecord {
  std::string vm_key;       // QemuProcessKey of its VM; "" if unknown (older or half-made)
  std::string qmp_address;  // how it reached the VM
  int pid = -1;             // the ferry process
};
// The record of a session from its lock, else its marker; empty if neither.
SessionRecord ReadSessionRecord(const SnapshotPaths& paths, const std::string& session_id);

// Removes every object of session `session_id` from QEMU and its files
// (not the lock). Returns false if something could not be removed (logged).
// `removed`, if given, receives the files deleted.
bool RemoveSessionObjects(QmpClient& qmp, const SnapshotPaths& paths, const std::string& session_id,
                          std::vector<std::string>* removed = nullptr);

// Removes the files of session `session_id` (overlays, NBD socket, TLS keys
// directory, and the NBD server marker unless `keep_marker`), not its lock, and nothing in
// QEMU: for sessions whose QEMU is gone. Returns the paths deleted; what
// could not be removed is logged and clears `*all_removed` (if given).
std::vector<std::string> RemoveSessionFiles(const SnapshotPaths& paths, const std::string& session_id,
                                            bool keep_marker = false, bool* all_removed = nullptr);

// The snapshot hunter, run by a process holding the lock of the VM whose
// QEMU is `vm_key`: removes what dead sessions left (see the top of this
// file). Returns the session ids it cleaned.
std::vector<std::string> RemoveAbandonedSnapshots(QmpClient& qmp, const SnapshotPaths& paths,
                                                  const std::string& vm_key);

// Names of Ferry objects currently present in QEMU (exports, block jobs and
// other jobs, nodes, QOM objects such as TLS credentials), for the hunter,
// tests and diagnostics.
std::vector<std::string> ListFerryObjects(QmpClient& qmp);

}  // namespace ferry::worker
