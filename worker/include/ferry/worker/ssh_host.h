// A QEMU host reached through OpenSSH's client, for a worker that does not
// run on the host itself (the worker appliance; docs/worker.md, "Reaching
// the host over SSH"). Nothing is installed on the host: it needs sshd with
// stream-local forwarding allowed, a POSIX shell and its utilities.
//
// Design:
//  - One connection per host: a ControlMaster (`ssh -N`, a child of this
//    process; its control socket and log under the worker's own directory
//    `local_dir`). Every other ssh call is a client of that master: no new
//    TCP connection, no new authentication.
//  - The host's QMP sockets (<qmp_dir>/*.qmp) appear as local unix sockets
//    in <local_dir>/qmp/ through OpenSSH's stream-local forwarding, asked of
//    the master (`ssh -O forward -L LOCAL:REMOTE`): the host's sshd connects
//    to QEMU's socket for each connection, nothing else runs there.
//    Refresh() lists the host's directory and adds and cancels forwards as
//    VMs come and go; the inventory and QmpClient use the mirror as they
//    would the host's directory.
//  - HostEnv: each call is one shell command on the host, run through the
//    master, every argument single-quoted (ShellQuote); a secret (the
//    TLS-PSK key) goes on the command's stdin, never into a command line or
//    a log. The QEMU pid comes from Proxmox's pid file beside the socket
//    (<qmp_dir>/<vmid>.pid), its liveness from the host's /proc.
//  - Strict: BatchMode (never a prompt), StrictHostKeyChecking=yes against
//    the given known_hosts file only (an unknown or changed host key is
//    refused, never learnt), no ssh configuration file (-F none).
//  - The master is started at the first use and again whenever it has died
//    (the host rebooted; the network broke: ServerAliveInterval ends a
//    master whose host went silent); the forwards are then set up again by
//    the next Refresh() (which a snapshot does before it connects).
//
// Errors name the host and the cause, with ssh's own last words: kRetryable
// when the host cannot be reached (refused, timed out, unresolvable: it may
// come back), kEnvironment when the operator must act (the key refused, the
// host key unknown or changed; a command failing on the host).
//
// Threading: any thread. One mutex guards the master, another the mirror;
// commands run concurrently over the master.
#pragma once

#include <cstdint>
#include <mutex>
#include <set>
#include <string>

#include "ferry/common/error.h"
#include "ferry/common/subprocess.h"
#include "ferry/worker/host_env.h"
#include "ferry/worker/inventory.h"

namespace ferry::worker {

// "[USER@]HOST[:PORT]"; an IPv6 address in brackets ("root@[fd00::1]:22").
struct SshTarget {
  std::string user;  // "" : ssh's default (this process's user)
  std::string host;
  uint16_t port = 22;
  std::string ToString() const;  // "root@pve1:22"
};
// Throws kBadInput saying what is wrong.
SshTarget ParseSshTarget(const std::string& text);

// `s` as one word for a POSIX shell: in single quotes, a ' inside as '\''.
std::string ShellQuote(const std::string& s);

// The last lines of what ssh wrote to stderr that say why, trimmed (no
// banners, no carriage returns, at most about 400 characters).
std::string TrimSshMessage(const std::string& ssh_stderr);

struct SshHostOptions {
  SshTarget target;
  std::string key_file;          // the private key (-i); "": ssh's default identities
  std::string known_hosts_file;  // required: the host's key must be in it
  std::string qmp_dir = "/var/run/qemu-server";  // the host's QMP sockets (Proxmox: <vmid>.qmp)
  std::string host_runtime_dir = "/run/ferry";   // made on the host at each connection (0711)
  std::string host_scratch_dir = "/var/tmp/ferry";  // ... (0700)
  std::string local_dir;         // this worker's: control socket, master log, the QMP mirror
  int connect_timeout_s = 10;
  int server_alive_interval_s = 10;  // 3 missed answers end the master
};

// Why an ssh call failed (exit 255: ssh's own failure), as an Error naming
// the target: kEnvironment for a refused key or an unknown/changed host key,
// kRetryable otherwise.
Error DescribeSshFailure(const SshHostOptions& options, const std::string& ssh_stderr);

class SshHost : public HostEnv, public QmpMonitorDirectory {
 public:
  // Checks the options (kBadInput); connects only when first used.
  explicit SshHost(SshHostOptions options);
  // Ends the master and removes the mirror's sockets.
  ~SshHost() override;
  SshHost(const SshHost&) = delete;
  SshHost& operator=(const SshHost&) = delete;

  const SshHostOptions& options() const { return options_; }
  const std::string& mirror_dir() const { return mirror_dir_; }

  // Runs `command` (a shell command line; quote its words with ShellQuote)
  // on the host with `input` on its stdin; connects first if need be.
  // Throws (DescribeSshFailure) when ssh itself fails; the command's own
  // exit code and output are the caller's.
  ProgramResult Run(const std::string& command, const std::string& input = "");

  // The pid of the ControlMaster, -1 if none runs (for tests).
  int master_pid();

  // HostEnv
  std::string name() const override;
  std::vector<std::string> ListDirectory(const std::string& dir) override;
  std::optional<std::string> ReadFile(const std::string& path) override;
  void CreatePrivateFile(const std::string& dir, const std::string& name, const std::string& secret) override;
  HostRemoval Remove(const std::vector<std::string>& paths) override;
  int QemuPid(QmpClient& qmp) override;

  // QmpMonitorDirectory
  std::string description() const override;
  std::string Refresh() override;
  bool forwarded() const override { return true; }

 private:
  std::vector<std::string> SshArgs() const;  // ssh and the options every call shares
  // Starts the master unless it runs; returns its generation (a new one
  // after every reconnection).
  uint64_t EnsureMaster();
  void StartMasterLocked();
  ProgramResult RunOverMaster(const std::string& command, const std::string& input);
  // A command whose non-zero exit is a failure: kEnvironment naming `what`.
  std::string RunChecked(const std::string& command, const std::string& what, const std::string& input = "");
  bool Forward(const char* op, const std::string& socket_name);

  const SshHostOptions options_;
  const std::string control_path_, log_path_, mirror_dir_;

  std::mutex master_mu_;  // guards what follows
  ChildProcess master_;
  uint64_t generation_ = 0;   // masters started so far
  bool host_prepared_ = false;  // the host's directories made by this master

  std::mutex mirror_mu_;  // serialises Refresh(); guards what follows
  std::set<std::string> forwarded_;  // socket names forwarded by master `forwarded_generation_`
  uint64_t forwarded_generation_ = 0;
};

}  // namespace ferry::worker
