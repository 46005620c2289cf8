// The machine QEMU runs on, for what Ferry does there besides talking QMP
// (leveldb's Env, for a hypervisor host): the few file operations of a
// snapshot session (its NBD socket and TLS-PSK key directory, its overlays,
// the leftovers of dead sessions) and looking at QEMU's process.
//
//   LocalHostEnv()  Ferry runs on the host itself: plain system calls.
//   SshHost         (ssh_host.h) Ferry reaches the host through OpenSSH:
//                   each call is one command on the host, run over the
//                   host's one ControlMaster connection.
//
// The snapshot code (qmp_snapshot.h) is given one through SnapshotPaths and
// never asks which it has. Paths are the host's, as QEMU sees them.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry::worker {

class QmpClient;

struct HostRemoval {
  std::vector<std::string> removed;  // paths that were there and are gone
  std::vector<std::string> failed;   // "PATH: reason" for those still there
};

class HostEnv {
 public:
  virtual ~HostEnv() = default;

  // "this host", or "root@pve1:22 (over ssh)": for messages.
  virtual std::string name() const = 0;

  // The names in `dir` (all but "." and ".."), sorted; empty if `dir` does
  // not exist. Throws when the host cannot be asked (SshHost: unreachable).
  virtual std::vector<std::string> ListDirectory(const std::string& dir) = 0;

  // The file's bytes (binary-safe); nullopt if it does not exist.
  virtual std::optional<std::string> ReadFile(const std::string& path) = 0;

  // Creates the directory `dir` (mode 0700; it must not exist yet) and in it
  // the file `name` (mode 0600, created exclusively) holding `secret`. The
  // secret never appears in a command line or a log line.
  virtual void CreatePrivateFile(const std::string& dir, const std::string& name, const std::string& secret) = 0;

  // Removes each path, in order: a file or socket is unlinked, a directory
  // removed if it is empty; paths that do not exist are skipped. Never
  // throws: what could not be removed (or asked about) is in `failed`.
  virtual HostRemoval Remove(const std::vector<std::string>& paths) = 0;

  // The pid, on that machine, of the QEMU process behind `qmp`; -1 if it
  // cannot be known (TCP monitors; a host without a pid file beside the
  // socket).
  virtual int QemuPid(QmpClient& qmp) = 0;
};

// The machine this process runs on (one shared instance).
std::shared_ptr<HostEnv> LocalHostEnv();

}  // namespace ferry::worker
