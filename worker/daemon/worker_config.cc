#include "worker_config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <tuple>

#include "ferry/common/arguments.h"
#include "ferry/common/command_line.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/repository_key.h"
#include "ferry/common/version.h"
#include "ferry/worker/libvirt_host.h"
#include "ferry/worker/ssh_host.h"


namespace ferry::daemon {

namespace {

// Only with qmp-ssh.
const char* const kSshOnly[] = {"ssh-key", "ssh-known-hosts", "qmp-remote-dir", "host-runtime-dir", "host-scratch-dir"};

ProgramSpec MakeWorkerProgram() {
  ProgramSpec p;
  p.name = "ferry-worker";
  p.summary = "the per-host Ferry worker";
  p.man_section = 8;
  p.description =
      "Registers with the coordinator, reports the host's VMs, and runs the snapshot, disk and release work the "
      "coordinator assigns to it. Every option may also be given in the configuration file as \"name = value\" (a "
      "flag as its bare name); the command line wins. See docs/worker.md.";
  CommandSpec serve;
  serve.synopsis = "--coordinator HOST:PORT [--config FILE] [OPTIONS]";
  serve.summary = "run the worker";
  serve.options = {
      Option("config", "FILE", "the configuration file (e.g. /etc/ferry/worker.conf)").Files(),
      Option("coordinator", "HOST:PORT", "the coordinator's worker RPC address (required)"),
      Flag("tls", "TLS to the coordinator, trusting the system store"),
      Option("tls-ca", "FILE", "TLS to the coordinator, trusting only these CA certificates").Files(),
      Option("tls-name", "NAME", "the name the coordinator's certificate carries (default: HOST)"),
      Option("token-file", "FILE", "the worker's token (POST /api/v1/workers); or $FERRY_WORKER_TOKEN").Files(),
      Option("host", "NAME", "the hypervisor host this worker stands for (default: hostname)"),
      Option("cluster", "NAME", "its cluster (default: as configured on the coordinator)"),
      Option("platform", "NAME", "proxmox | libvirt | ovirt (default: proxmox with --qmp-dir or --qmp-ssh, else libvirt)")
          .Choices({"proxmox", "libvirt", "ovirt"}),
      Option("qmp-dir", "DIR", "the host's VMs as a directory of QMP sockets, one per VM (Proxmox: /var/run/qemu-server, sockets <vmid>.qmp)").Directories(),
      Option("qmp-ssh", "[USER@]HOST[:PORT]", "the same directory on a host reached through its sshd (for a worker not on the host, e.g. the appliance; docs/worker.md)"),
      Option("ssh-key", "FILE", "the private key for --qmp-ssh (default: ssh's own)").Files(),
      Option("ssh-known-hosts", "FILE", "the host's key, known_hosts format (required with --qmp-ssh; an unknown or changed key is refused)").Files(),
      Option("qmp-remote-dir", "DIR", "the host's QMP directory (default /var/run/qemu-server)"),
      Option("host-runtime-dir", "DIR", "with --qmp-ssh: the host's directory for export keys (default /run/ferry)"),
      Option("host-scratch-dir", "DIR", "with --qmp-ssh: the host's directory for overlays (default /var/tmp/ferry)"),
      Option("libvirt", "URI", "the host's VMs as libvirt domains (e.g. qemu:///system); a remote URI (qemu+libssh://root@HOST/system?keyfile=...&known_hosts=..., qemu+tls://HOST/system) exports over TCP (docs/worker.md)"),
      Option("libvirt-export-tls", "yes|no", "libvirt's TCP exports with the host's backup TLS (x509, qemu.conf backup_tls_x509_cert_dir; default yes); no: plaintext NBD, only on a trusted network")
          .Choices({"yes", "no"}),
      Option("libvirt-export-tls-dir", "DIR", "this worker's certificates for those: ca-cert.pem, and client-cert.pem, client-key.pem (required with TLS)").Directories(),
      Option("libvirt-scratch-dir", "DIR", "the host's directory for libvirt's scratch files (default: beside each disk image file)").Directories(),
      Option("slots", "N", "disk tasks run at once (default 2)"),
      Option("threads", "N", "compute threads per disk task (default: cores / slots)"),
      Option("rate-limit", "BYTES/s", "read rate cap per disk task (default: none)"),
      Option("bandwidth", "SCHEDULE", "cap on what this worker sends to repositories, shared by its tasks, e.g. \"50MB/s 08:00-18:00 mon-fri\" (docs/throttling.md); the coordinator's setting for the worker replaces it"),
      Option("runtime-dir", "DIR", "session locks, NBD sockets (default /run/ferry); with --qmp-ssh this worker's own: locks, the SSH connection, the QMP mirror").Directories(),
      Option("scratch-dir", "DIR", "snapshot overlays (default /var/tmp/ferry; not with --qmp-ssh)").Directories(),
      Option("inventory-interval", "DUR", "how often the host's VMs are listed again (default 30s)"),
      Option("staging-expiry", "DUR", "a staged point never released is removed after this (default 24h)"),
      Option("monitor-timeout", "DUR", "a QMP monitor's greeting, when listing VMs (default 2s)"),
      Option("reconnect-ms", "N", "delay between reconnection attempts (default 500)"),
      Option("export-host", "NAME", "export snapshots over TCP with per-session TLS-PSK, reachable by other hosts' workers at NAME (this host's name or address); without it exports are unix sockets, for this host's worker only; always TCP with --qmp-ssh (default there: the SSH HOST) and a remote --libvirt URI (default: the URI's host; libvirt's TLS is x509, see --libvirt-export-tls)"),
      Option("export-listen", "ADDR", "where QEMU listens for QMP exports (default 0.0.0.0; libvirt listens at the export host)"),
      Option("export-ports", "MIN-MAX", "the ports it may use (default 10809-10909)"),
      Option("repository-ca", "FILE", "CA certificates for repositories behind a repository service (ferry+tls://...; default: --tls-ca's, else the system store)").Files(),
      Option("repository-name", "NAME", "the name their certificates carry (default: --tls-name's, else the address's host)"),
      Option("repository-retry", "DUR", "after a lost repository connection, try again this often (default 15s)"),
      Option("repository-retry-for", "DUR", "... for this long, then fail the task (default 30m)"),
      Option("key-dir", "DIR", "key files (*.key) of encrypted repositories: a task's repository uses the one whose fingerprint its configuration records (docs/worker.md)").Directories(),
      Option("passphrase-file", "FILE", "their passphrase, the file's first line (default: $FERRY_PASSPHRASE); only with --key-dir").Files()};
  for (OptionSpec& flag : VerbosityFlags()) serve.options.push_back(std::move(flag));
  p.commands.push_back(serve);
  p.footer = "Durations: 90s, 30m, 24h, 7d, 500ms or plain seconds.";
  return p;
}

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "";
  return buf;
}

}  // namespace

const ProgramSpec& WorkerProgram() {
  static const ProgramSpec program = MakeWorkerProgram();
  return program;
}

WorkerConfig ParseWorkerConfig(const std::vector<std::string>& args) {
  const ProgramSpec& program = WorkerProgram();
  const Arguments command_line = ParseCommandLine(program, args).options;
  WorkerConfig c;
  Arguments a = command_line;
  if (auto path = command_line.Get("config")) {
    const CommandSpec& serve = *program.Find("");
    a = Arguments::Layered(Arguments::ReadConfigFile(*path, ValuedOptions(program, serve), FlagOptions(program, serve)),
                           command_line);
  }
  // The command line's verbosity wins over the file's.
  const Arguments& loudness = command_line.Has("verbose") || command_line.Has("quiet") ? command_line : a;
  c.log_level = loudness.Has("verbose") ? 0 : loudness.Has("quiet") ? 2 : 1;

  c.coordinator.address = a.Require("coordinator");
  rpc::SplitHostPort(c.coordinator.address);  // kBadInput for a malformed one
  c.coordinator.tls = a.Has("tls") || a.Has("tls-ca");
  c.coordinator.ca_file = a.Get("tls-ca").value_or("");
  c.coordinator.server_name = a.Get("tls-name").value_or("");
  if (!c.coordinator.tls && a.Has("tls-name")) {
    throw Error(ErrorKind::kBadInput, "option --tls-name: only with --tls or --tls-ca");
  }

  if (auto file = a.Get("token-file")) {
    c.token_file = *file;
    c.token = ReadTokenFile(*file, "option --token-file");
  } else if (const char* env = std::getenv("FERRY_WORKER_TOKEN"); env && *env) {
    c.token = env;
  } else {
    throw Error(ErrorKind::kBadInput, "give the worker's token with --token-file FILE (or $FERRY_WORKER_TOKEN)");
  }

  HostSettings& h = c.host;
  h.version = kVersion;
  h.host = a.Get("host").value_or(HostName());
  if (h.host.empty()) throw Error(ErrorKind::kBadInput, "option --host: this machine has no host name; give one");
  h.cluster = a.Get("cluster").value_or("");
  const std::string qmp_dir = a.Get("qmp-dir").value_or("");
  const bool over_ssh = a.Has("qmp-ssh");
  h.libvirt_uri = a.Get("libvirt").value_or("");
  if (!qmp_dir.empty() && over_ssh) {
    throw Error(ErrorKind::kBadInput, "options --qmp-dir and --qmp-ssh: give one (--qmp-ssh reaches the host's "
                                      "QMP directory, --qmp-remote-dir, over SSH)");
  }
  for (const char* name : kSshOnly) {
    if (a.Has(name) && !over_ssh) throw Error(ErrorKind::kBadInput, std::string("option --") + name + ": only with --qmp-ssh");
  }
  if (qmp_dir.empty() && !over_ssh && h.libvirt_uri.empty()) {
    throw Error(ErrorKind::kBadInput,
                "give how to reach the host's VMs: --qmp-dir DIR or --qmp-ssh [USER@]HOST[:PORT], and/or --libvirt URI");
  }
  if (struct stat st; !qmp_dir.empty() && (::stat(qmp_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) {
    throw Error(ErrorKind::kNotFound, "option --qmp-dir: " + qmp_dir + " is not a directory");
  }
  const bool qmp = !qmp_dir.empty() || over_ssh;
  h.platform = a.Get("platform").value_or(qmp ? "proxmox" : "libvirt");
  if (h.platform != "proxmox" && h.platform != "libvirt" && h.platform != "ovirt") {
    throw Error(ErrorKind::kBadInput, "option --platform: '" + h.platform + "' is not proxmox, libvirt or ovirt");
  }
  if (auto n = a.GetInt("slots", 1, 64)) h.task_slots = static_cast<uint32_t>(*n);
  if (auto n = a.GetInt("threads", 1, 256)) h.compute_threads = static_cast<unsigned>(*n);
  if (auto r = a.GetSize("rate-limit")) h.rate_limit_bytes_per_s = *r;
  if (auto b = a.Get("bandwidth")) {
    try {
      h.bandwidth = BandwidthSchedule::Parse(*b);
    } catch (const Error& e) {
      throw Error(ErrorKind::kBadInput, std::string("option --bandwidth: ") + e.what());
    }
  }
  if (auto d = a.GetDuration("inventory-interval")) h.inventory_interval = *d;
  if (h.inventory_interval < std::chrono::milliseconds(100)) {
    throw Error(ErrorKind::kBadInput, "option --inventory-interval: at least 100ms");
  }
  if (auto d = a.GetDuration("staging-expiry")) h.staging_expiry = std::chrono::duration_cast<std::chrono::seconds>(*d);
  if (h.staging_expiry < std::chrono::seconds(60)) throw Error(ErrorKind::kBadInput, "option --staging-expiry: at least 60s");
  if (auto d = a.GetDuration("monitor-timeout")) h.monitor_timeout = *d;
  // The coordinator's own repository service has the coordinator's certificate.
  h.repository_access.ca_file = a.Get("repository-ca").value_or(c.coordinator.ca_file);
  h.repository_access.server_name = a.Get("repository-name").value_or(c.coordinator.server_name);
  if (auto d = a.GetDuration("repository-retry")) h.repository_access.reconnect_interval = *d;
  if (auto d = a.GetDuration("repository-retry-for")) h.repository_access.reconnect_for = *d;
  if (auto n = a.GetInt("reconnect-ms", 10, 600000)) c.reconnect_ms = static_cast<int>(*n);
  if (auto dir = a.Get("key-dir")) {
    if (struct stat st; dir->empty() || ::stat(dir->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      throw Error(ErrorKind::kNotFound, "option --key-dir: " + *dir + " is not a directory");
    }
    h.key_dir = *dir;
    h.passphrase_file = a.Get("passphrase-file").value_or("");
    try {
      std::string passphrase = ReadPassphrase(h.passphrase_file, "FERRY_PASSPHRASE");  // there, not kept
      std::fill(passphrase.begin(), passphrase.end(), '\0');
    } catch (const Error& e) {
      throw Error(e.kind(), std::string("option --key-dir: ") + e.what());
    }
  } else if (a.Has("passphrase-file")) {
    throw Error(ErrorKind::kBadInput, "option --passphrase-file: only with --key-dir (the passphrase of its key files)");
  }
  std::optional<std::pair<uint16_t, uint16_t>> ports;
  if (auto text = a.Get("export-ports")) {
    unsigned lo = 0, hi = 0;
    char tail = 0;
    if (std::sscanf(text->c_str(), "%u-%u%c", &lo, &hi, &tail) != 2 || lo == 0 || hi > 65535 || lo > hi) {
      throw Error(ErrorKind::kBadInput, "option --export-ports: '" + *text + "' is not a range MIN-MAX of ports");
    }
    ports = {static_cast<uint16_t>(lo), static_cast<uint16_t>(hi)};
  }
  if (a.Has("export-host") && a.Get("export-host")->empty()) {
    throw Error(ErrorKind::kBadInput, "option --export-host: empty");
  }
  // libvirt over the network: its pull-mode exports on TCP, at the URI's
  // host unless told another (docs/worker.md, "Remote libvirt").
  const std::string libvirt_host = h.libvirt_uri.empty() ? "" : worker::LibvirtUriHost(h.libvirt_uri);
  if (a.Has("export-host") && !qmp && libvirt_host.empty()) {
    throw Error(ErrorKind::kBadInput, "option --export-host: a local libvirtd (a URI without a host) exports on "
                                      "unix sockets, for this host's worker; --export-host is for QMP snapshots "
                                      "and remote --libvirt URIs (docs/worker.md)");
  }
  if (!libvirt_host.empty()) {
    worker::LibvirtTcpExport e;
    e.host = a.Get("export-host").value_or(libvirt_host);
    if (ports) std::tie(e.port_min, e.port_max) = *ports;
    const std::string tls = a.Get("libvirt-export-tls").value_or("yes");
    if (tls != "yes" && tls != "no") {
      throw Error(ErrorKind::kBadInput, "option --libvirt-export-tls: '" + tls + "' is not yes or no");
    }
    e.tls = tls == "yes";
    if (e.tls) {
      if (!a.Has("libvirt-export-tls-dir")) {
        throw Error(ErrorKind::kBadInput,
                    "option --libvirt-export-tls-dir: required for libvirt's exports over TCP with TLS (this "
                    "worker's ca-cert.pem, client-cert.pem, client-key.pem for the host's backup TLS); or, on a "
                    "trusted network only, --libvirt-export-tls no");
      }
      e.tls_x509_dir = *a.Get("libvirt-export-tls-dir");
      if (struct stat st; ::stat((e.tls_x509_dir + "/ca-cert.pem").c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        throw Error(ErrorKind::kNotFound, "option --libvirt-export-tls-dir: " + e.tls_x509_dir +
                                              " has no ca-cert.pem (the CA of the host's backup certificate)");
      }
    } else if (a.Has("libvirt-export-tls-dir")) {
      throw Error(ErrorKind::kBadInput, "option --libvirt-export-tls-dir: not with --libvirt-export-tls no");
    }
    e.scratch_dir = a.Get("libvirt-scratch-dir").value_or("");
    if (a.Has("libvirt-scratch-dir") && (e.scratch_dir.empty() || e.scratch_dir[0] != '/')) {
      throw Error(ErrorKind::kBadInput, "option --libvirt-scratch-dir: '" + e.scratch_dir +
                                            "' is not an absolute path (a directory on the host)");
    }
    h.libvirt_export = e;
  } else {
    for (const char* name : {"libvirt-export-tls", "libvirt-export-tls-dir", "libvirt-scratch-dir"}) {
      if (a.Has(name)) {
        throw Error(ErrorKind::kBadInput, std::string("option --") + name + ": only with a remote --libvirt URI "
                                          "(a local libvirtd exports on a unix socket)");
      }
    }
  }
  std::optional<worker::SshTarget> ssh_target;
  if (over_ssh) {
    try {
      ssh_target = worker::ParseSshTarget(a.Require("qmp-ssh"));
    } catch (const Error& e) {
      throw Error(ErrorKind::kBadInput, std::string("option --qmp-ssh: ") + e.what());
    }
  }
  // Over SSH the worker cannot open the host's unix sockets: TCP, at the
  // SSH host's address unless told another.
  std::optional<std::string> advertise;
  if (qmp) advertise = ssh_target ? std::optional<std::string>(a.Get("export-host").value_or(ssh_target->host))
                                  : a.Get("export-host");
  if (advertise) {
    worker::NbdExportNetwork n;
    n.advertise_host = *advertise;
    n.listen_host = a.Get("export-listen").value_or(n.listen_host);
    if (ports) std::tie(n.port_min, n.port_max) = *ports;
    h.export_tcp = n;
  } else if (a.Has("export-listen")) {
    throw Error(ErrorKind::kBadInput, "option --export-listen: only for QMP exports over TCP (--export-host or "
                                      "--qmp-ssh)");
  } else if (ports && !h.libvirt_export) {
    throw Error(ErrorKind::kBadInput, "option --export-ports: only for exports over TCP (--export-host, --qmp-ssh "
                                      "or a remote --libvirt URI)");
  }
  const char* runtime = std::getenv("FERRY_RUNTIME_DIR");
  const char* scratch = std::getenv("FERRY_SCRATCH_DIR");
  const std::string runtime_dir = a.Get("runtime-dir").value_or(runtime && *runtime ? runtime : "/run/ferry");
  if (!ssh_target) {
    h.paths = worker::MakeSnapshotPaths(runtime_dir,
                                        a.Get("scratch-dir").value_or(scratch && *scratch ? scratch : "/var/tmp/ferry"));
    if (!qmp_dir.empty()) h.qmp_monitors = worker::LocalQmpMonitorDirectory(qmp_dir);
    return c;
  }
  if (a.Has("scratch-dir")) {
    throw Error(ErrorKind::kBadInput, "option --scratch-dir: with --qmp-ssh the overlays are on the host: give "
                                      "--host-scratch-dir");
  }
  worker::SshHostOptions o;
  o.target = *ssh_target;
  auto file_option = [&](const char* name) {
    std::string path = a.Require(name);
    if (struct stat st; ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      throw Error(ErrorKind::kNotFound, std::string("option --") + name + ": " + path + " is not a file");
    }
    return path;
  };
  if (a.Has("ssh-key")) o.key_file = file_option("ssh-key");
  if (!a.Has("ssh-known-hosts")) {
    throw Error(ErrorKind::kBadInput, "option --ssh-known-hosts: required with --qmp-ssh (the host's key, in "
                                      "known_hosts format: ssh-keyscan, then check it)");
  }
  o.known_hosts_file = file_option("ssh-known-hosts");
  o.qmp_dir = a.Get("qmp-remote-dir").value_or(o.qmp_dir);
  o.host_runtime_dir = a.Get("host-runtime-dir").value_or(o.host_runtime_dir);
  o.host_scratch_dir = a.Get("host-scratch-dir").value_or(o.host_scratch_dir);
  o.local_dir = runtime_dir + "/ssh";
  auto ssh = std::make_shared<worker::SshHost>(o);  // connects when first used
  h.paths = worker::RemoteSnapshotPaths(runtime_dir, ssh, o.host_runtime_dir, o.host_scratch_dir);
  h.qmp_monitors = ssh;
  return c;
}

}  // namespace ferry::daemon
