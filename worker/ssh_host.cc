#include "ferry/worker/ssh_host.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/worker/qmp_client.h"

namespace ferry::worker {

namespace {

using Clock = std::chrono::steady_clock;

bool ValidUser(const std::string& u) {
  return !u.empty() && u.size() <= 64 && u[0] != '-' &&
         std::all_of(u.begin(), u.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'; });
}

bool ValidHost(const std::string& h, bool bracketed) {
  if (h.empty() || h.size() > 253 || h[0] == '-') return false;
  return std::all_of(h.begin(), h.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
           (bracketed && (c == ':' || c == '%'));
  });
}

// A directory the worker names to ssh: absolute, and of characters that
// need no care in an -L forwarding spec (':' separates its halves) or a
// log line.
bool PlainPath(const std::string& p) {
  return !p.empty() && p[0] == '/' && p.find("/../") == std::string::npos &&
         std::all_of(p.begin(), p.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '.' || c == '_' || c == '-' ||
                  c == '+' || c == '@' || c == ',' || c == '=' || c == '~';
         });
}

// The name of a QMP socket we mirror: "<vmid>.qmp" and the like.
bool MirrorableName(const std::string& n) {
  return n.size() > 4 && n.size() <= 32 && n.ends_with(".qmp") && n[0] != '.' && n[0] != '-' &&
         std::all_of(n.begin(), n.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
         });
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

bool IsSocket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool Contains(const std::string& haystack, const char* needle) { return haystack.find(needle) != std::string::npos; }

}  // namespace

std::string SshTarget::ToString() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return (user.empty() ? "" : user + "@") + h + ":" + std::to_string(port);
}

SshTarget ParseSshTarget(const std::string& text) {
  const std::string what = "SSH target '" + text + "'";
  SshTarget t;
  std::string rest = text;
  if (auto at = rest.rfind('@'); at != std::string::npos) {
    t.user = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (!ValidUser(t.user)) throw Error(ErrorKind::kBadInput, what + ": '" + t.user + "' is not a user name");
  }
  std::string port;
  bool bracketed = false;
  if (rest.starts_with("[")) {
    auto close = rest.find(']');
    if (close == std::string::npos) throw Error(ErrorKind::kBadInput, what + ": no ']' after the IPv6 address");
    t.host = rest.substr(1, close - 1);
    bracketed = true;
    std::string after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') throw Error(ErrorKind::kBadInput, what + ": expected ':PORT' after ']'");
      port = after.substr(1);
      if (port.empty()) throw Error(ErrorKind::kBadInput, what + ": empty port");
    }
  } else if (auto colon = rest.find(':'); colon != std::string::npos) {
    if (rest.find(':', colon + 1) != std::string::npos) {
      throw Error(ErrorKind::kBadInput, what + ": put an IPv6 address in brackets ([fd00::1]:22)");
    }
    t.host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (port.empty()) throw Error(ErrorKind::kBadInput, what + ": empty port");
  } else {
    t.host = rest;
  }
  if (!ValidHost(t.host, bracketed)) throw Error(ErrorKind::kBadInput, what + ": '" + t.host + "' is not a host name or address");
  if (!port.empty()) {
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (*end != '\0' || p < 1 || p > 65535 || !std::isdigit(static_cast<unsigned char>(port[0]))) {
      throw Error(ErrorKind::kBadInput, what + ": '" + port + "' is not a port (1-65535)");
    }
    t.port = static_cast<uint16_t>(p);
  }
  return t;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string TrimSshMessage(const std::string& ssh_stderr) {
  std::vector<std::string> kept;
  for (auto& line : Lines(ssh_stderr)) {
    auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    line = line.substr(first);
    if (line.find_first_not_of('@') == std::string::npos) continue;  // the banner's frame
    if (line.size() > 200) line = line.substr(0, 200) + "...";
    kept.push_back(line);
  }
  std::string out;
  size_t from = kept.size() > 2 ? kept.size() - 2 : 0;
  for (size_t i = from; i < kept.size(); ++i) out += (out.empty() ? "" : " ") + kept[i];
  return out.empty() ? "(ssh said nothing)" : out;
}

Error DescribeSshFailure(const SshHostOptions& o, const std::string& ssh_stderr) {
  const std::string said = TrimSshMessage(ssh_stderr);
  const std::string head = "ssh to " + o.target.ToString() + ": ";
  if (Contains(ssh_stderr, "Host key verification failed") || Contains(ssh_stderr, "HOST IDENTIFICATION HAS CHANGED")) {
    return Error(ErrorKind::kEnvironment, head + "its host key is unknown or changed (known hosts: " +
                                              o.known_hosts_file + "; unknown keys are never accepted): " + said);
  }
  if (Contains(ssh_stderr, "Permission denied") || Contains(ssh_stderr, "Too many authentication failures") ||
      Contains(ssh_stderr, "not accessible")) {
    return Error(ErrorKind::kEnvironment,
                 head + "the login was refused (key " + (o.key_file.empty() ? "ssh's default" : o.key_file) +
                     "; is it in the host's authorized_keys?): " + said);
  }
  return Error(ErrorKind::kRetryable, head + "cannot reach the host: " + said);
}

// ---------------------------------------------------------------------------

SshHost::SshHost(SshHostOptions options)
    : options_(std::move(options)),
      control_path_(options_.local_dir + "/master.ctl"),
      log_path_(options_.local_dir + "/master.log"),
      mirror_dir_(options_.local_dir + "/qmp") {
  auto check_dir = [](const std::string& d, const char* what) {
    if (!PlainPath(d)) {
      throw Error(ErrorKind::kBadInput, std::string(what) + " '" + d +
                                            "': an absolute path of letters, digits and / . _ - + @ , = ~ only");
    }
  };
  check_dir(options_.local_dir, "the worker's SSH directory");
  check_dir(options_.qmp_dir, "the host's QMP directory");
  check_dir(options_.host_runtime_dir, "the host's runtime directory");
  check_dir(options_.host_scratch_dir, "the host's scratch directory");
  if (options_.known_hosts_file.empty()) {
    throw Error(ErrorKind::kBadInput, "ssh to " + options_.target.ToString() + ": a known_hosts file is required");
  }
  // sun_path holds 107 bytes; ssh binds the control socket under a name 17
  // bytes longer first, and the mirror's sockets need room for their names.
  if (control_path_.size() + 17 > 107 || mirror_dir_.size() + 1 + 32 > 107) {
    throw Error(ErrorKind::kBadInput, "the worker's SSH directory " + options_.local_dir +
                                          " is too long for the unix socket paths in it (at most 70 characters)");
  }
}

SshHost::~SshHost() {
  {
    std::lock_guard<std::mutex> lock(mirror_mu_);
    for (const auto& name : forwarded_) ::unlink((mirror_dir_ + "/" + name).c_str());
    forwarded_.clear();
  }
  std::lock_guard<std::mutex> lock(master_mu_);
  if (master_.pid() > 0) {
    master_.Terminate(2000);
    LogInfo("ssh: closed the connection to " + options_.target.ToString());
  }
  ::unlink(control_path_.c_str());
}

std::string SshHost::name() const { return options_.target.ToString() + " (over ssh)"; }

std::string SshHost::description() const { return options_.target.ToString() + ":" + options_.qmp_dir + " (over ssh)"; }

std::vector<std::string> SshHost::SshArgs() const {
  std::vector<std::string> a = {
      "ssh", "-F", "none",  // no configuration file: only what is said here
      "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
      "-o", "UserKnownHostsFile=" + options_.known_hosts_file, "-o", "GlobalKnownHostsFile=/dev/null",
      "-o", "UpdateHostKeys=no", "-o", "ControlPath=" + control_path_,
      "-o", "ConnectTimeout=" + std::to_string(options_.connect_timeout_s),
      "-o", "ServerAliveInterval=" + std::to_string(options_.server_alive_interval_s),
      "-o", "ServerAliveCountMax=3",
      // A forward's local socket may be left by an earlier master.
      "-o", "StreamLocalBindUnlink=yes", "-o", "ExitOnForwardFailure=yes",
      "-p", std::to_string(options_.target.port)};
  if (!options_.key_file.empty()) {
    a.insert(a.end(), {"-i", options_.key_file, "-o", "IdentitiesOnly=yes"});
  }
  if (!options_.target.user.empty()) a.insert(a.end(), {"-l", options_.target.user});
  return a;
}

uint64_t SshHost::EnsureMaster() {
  std::lock_guard<std::mutex> lock(master_mu_);
  if (!master_.running()) StartMasterLocked();
  if (!host_prepared_) {
    // The host's directories, made at each connection: /run is empty after
    // the host reboots.
    const std::string& r = options_.host_runtime_dir;
    const std::string& s = options_.host_scratch_dir;
    RunChecked("mkdir -p -m 0711 -- " + ShellQuote(r) + " && chmod 0711 -- " + ShellQuote(r) +
                   " && mkdir -p -m 0700 -- " + ShellQuote(s),
               "creating " + r + " and " + s);
    host_prepared_ = true;
  }
  return generation_;
}

void SshHost::StartMasterLocked() {
  const std::string target = options_.target.ToString();
  if (generation_ > 0) {
    std::string log;
    try {
      log = ReadWholeFile(log_path_);
    } catch (const Error&) {
    }
    LogWarning("ssh: the connection to " + target + " ended" + (log.empty() ? "" : " (" + TrimSshMessage(log) + ")") +
               "; reconnecting");
  }
  host_prepared_ = false;
  MakeDirectory(options_.local_dir, 0700);
  MakeDirectory(mirror_dir_, 0700);
  if (PathExists(control_path_)) {
    // A master of an earlier worker process (killed before it could end
    // it) would still hold the forwards: ask it to go.
    std::vector<std::string> exit_args = SshArgs();
    exit_args.insert(exit_args.end(), {"-O", "exit", "--", options_.target.host});
    RunProgramCapturing(exit_args);
    ::unlink(control_path_.c_str());
  }
  if (::truncate(log_path_.c_str(), 0) != 0 && errno != ENOENT) throw ErrnoError("emptying " + log_path_, errno);
  std::vector<std::string> args = SshArgs();
  args.insert(args.end(), {"-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", "-T", "--", options_.target.host});
  master_ = ChildProcess::Spawn(args, log_path_);
  // The control socket appears once the master is connected and logged in.
  const auto deadline = Clock::now() + std::chrono::seconds(options_.connect_timeout_s + 5);
  while (!IsSocket(control_path_)) {
    if (!master_.running()) {
      std::string said;
      try {
        said = ReadWholeFile(log_path_);
      } catch (const Error&) {
      }
      throw DescribeSshFailure(options_, said);
    }
    if (Clock::now() > deadline) {
      master_.Terminate(1000);
      throw Error(ErrorKind::kRetryable, "ssh to " + target + ": no connection within " +
                                             std::to_string(options_.connect_timeout_s + 5) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ++generation_;
  LogInfo("ssh: connected to " + target + " (ControlMaster pid " + std::to_string(master_.pid()) + ")");
}

int SshHost::master_pid() {
  std::lock_guard<std::mutex> lock(master_mu_);
  return master_.running() ? master_.pid() : -1;
}

ProgramResult SshHost::RunOverMaster(const std::string& command, const std::string& input) {
  std::vector<std::string> args = SshArgs();
  args.insert(args.end(), {"-T", "--", options_.target.host, command});
  LogDebug("ssh " + options_.target.ToString() + ": " + command);
  ProgramResult r = RunProgramCapturing(args, input);
  if (r.exit_code == 255) throw DescribeSshFailure(options_, r.err);
  return r;
}

ProgramResult SshHost::Run(const std::string& command, const std::string& input) {
  EnsureMaster();
  return RunOverMaster(command, input);
}

std::string SshHost::RunChecked(const std::string& command, const std::string& what, const std::string& input) {
  ProgramResult r = RunOverMaster(command, input);
  if (r.exit_code != 0) {
    throw Error(ErrorKind::kEnvironment, "on " + options_.target.ToString() + ": " + what + " failed (exit " +
                                             std::to_string(r.exit_code) + "): " + TrimSshMessage(r.err));
  }
  return r.out;
}

// --- HostEnv ---

std::vector<std::string> SshHost::ListDirectory(const std::string& dir) {
  EnsureMaster();
  std::string out = RunChecked("if [ -d " + ShellQuote(dir) + " ]; then exec ls -1A -- " + ShellQuote(dir) + "; fi",
                               "listing " + dir);
  std::vector<std::string> names = Lines(out);
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<std::string> SshHost::ReadFile(const std::string& path) {
  EnsureMaster();
  ProgramResult r = RunOverMaster("if [ -e " + ShellQuote(path) + " ]; then exec cat -- " + ShellQuote(path) +
                                      "; else exit 3; fi",
                                  "");
  if (r.exit_code == 3) return std::nullopt;
  if (r.exit_code != 0) {
    throw Error(ErrorKind::kEnvironment, "on " + options_.target.ToString() + ": reading " + path + " failed: " +
                                             TrimSshMessage(r.err));
  }
  return std::move(r.out);
}

void SshHost::CreatePrivateFile(const std::string& dir, const std::string& name, const std::string& secret) {
  EnsureMaster();
  // umask 077: the directory 0700, the file 0600; set -C: the file is
  // created exclusively (O_EXCL). The secret comes on stdin.
  const std::string file = dir + "/" + name;
  RunChecked("umask 077 && mkdir -- " + ShellQuote(dir) + " && set -C && cat > " + ShellQuote(file),
             "creating " + file, secret);
}

HostRemoval SshHost::Remove(const std::vector<std::string>& paths) {
  HostRemoval r;
  if (paths.empty()) return r;
  std::string list;
  for (const auto& p : paths) list += " " + ShellQuote(p);
  // One line per path that was there: "+PATH" removed, "-PATH" not.
  const std::string script =
      "for p in" + list +
      "; do if [ -d \"$p\" ] && [ ! -L \"$p\" ]; then if rmdir -- \"$p\"; then echo \"+$p\"; else echo \"-$p\"; fi; "
      "elif [ -e \"$p\" ] || [ -L \"$p\" ]; then if rm -f -- \"$p\"; then echo \"+$p\"; else echo \"-$p\"; fi; fi; "
      "done; exit 0";
  ProgramResult result;
  try {
    EnsureMaster();
    result = RunOverMaster(script, "");
  } catch (const std::exception& e) {
    for (const auto& p : paths) r.failed.push_back(p + ": " + e.what());
    return r;
  }
  const std::string why = TrimSshMessage(result.err);
  for (const auto& line : Lines(result.out)) {
    if (line[0] == '+') r.removed.push_back(line.substr(1));
    else if (line[0] == '-') r.failed.push_back(line.substr(1) + " on " + options_.target.ToString() + ": " + why);
  }
  if (result.exit_code != 0) {
    r.failed.push_back("removing files on " + options_.target.ToString() + ": exit " +
                       std::to_string(result.exit_code) + ": " + why);
  }
  return r;
}

int SshHost::QemuPid(QmpClient& qmp) {
  // "unix:<mirror>/<vmid>.qmp" -> the host's <qmp dir>/<vmid>.pid (Proxmox
  // starts QEMU with -pidfile there). The local peer of a mirrored socket
  // is ssh, not QEMU: SO_PEERCRED says nothing here.
  const std::string prefix = "unix:" + mirror_dir_ + "/";
  const std::string& address = qmp.address();
  if (!address.starts_with(prefix) || !address.ends_with(".qmp")) return -1;
  std::string stem = address.substr(prefix.size(), address.size() - prefix.size() - 4);
  std::optional<std::string> text;
  try {
    text = ReadFile(options_.qmp_dir + "/" + stem + ".pid");
  } catch (const Error& e) {
    LogWarning("reading QEMU's pid file of " + stem + " on " + options_.target.ToString() + ": " + e.what());
    return -1;
  }
  if (!text) return -1;
  char* end = nullptr;
  long pid = std::strtol(text->c_str(), &end, 10);
  while (end && (*end == '\n' || *end == ' ' || *end == '\r')) ++end;
  return pid > 0 && pid < (1L << 22) && end && *end == '\0' ? static_cast<int>(pid) : -1;
}

// --- QmpMonitorDirectory ---

bool SshHost::Forward(const char* op, const std::string& socket_name) {
  std::vector<std::string> args = SshArgs();
  args.insert(args.end(), {"-O", op, "-L", mirror_dir_ + "/" + socket_name + ":" + options_.qmp_dir + "/" + socket_name,
                           "--", options_.target.host});
  ProgramResult r = RunProgramCapturing(args);
  if (r.exit_code != 0) {
    LogWarning("ssh " + options_.target.ToString() + ": " + op + " of " + options_.qmp_dir + "/" + socket_name +
               " failed: " + TrimSshMessage(r.err));
    return false;
  }
  return true;
}

std::string SshHost::Refresh() {
  std::lock_guard<std::mutex> lock(mirror_mu_);
  uint64_t generation = EnsureMaster();
  if (generation != forwarded_generation_) {
    forwarded_.clear();  // they went with the old master
    forwarded_generation_ = generation;
  }
  const std::string& dir = options_.qmp_dir;
  // Sockets of live VMs only: a VM's pid file beside its socket (as Proxmox
  // keeps them) naming a process that is gone makes the socket stale.
  ProgramResult r = RunOverMaster("cd -- " + ShellQuote(dir) +
                                      " || exit 3; for f in *.qmp; do if [ -S \"$f\" ]; then p=\"${f%.qmp}.pid\"; "
                                      "if [ -f \"$p\" ] && ! kill -0 \"$(cat -- \"$p\")\" 2>/dev/null; then continue; fi; "
                                      "printf '%s\\n' \"$f\"; fi; done; exit 0",
                                  "");
  if (r.exit_code == 3) {
    throw Error(ErrorKind::kNotFound, "on " + options_.target.ToString() + ": the QMP directory " + dir +
                                          " is not there: " + TrimSshMessage(r.err));
  }
  if (r.exit_code != 0) {
    throw Error(ErrorKind::kEnvironment, "on " + options_.target.ToString() + ": listing " + dir + " failed: " +
                                             TrimSshMessage(r.err));
  }
  std::set<std::string> present;
  for (const auto& name : Lines(r.out)) {
    if (MirrorableName(name)) present.insert(name);
    else LogDebug("ssh " + options_.target.ToString() + ": not mirroring " + dir + "/" + name + " (unusual name)");
  }
  // VMs gone: their forwards and sockets go (and anything else in the mirror).
  for (const auto& name : ::ferry::ListDirectory(mirror_dir_)) {
    if (present.count(name)) continue;
    if (forwarded_.erase(name)) Forward("cancel", name);
    ::unlink((mirror_dir_ + "/" + name).c_str());
  }
  for (const auto& name : present) {
    if (forwarded_.count(name)) continue;
    if (Forward("forward", name)) forwarded_.insert(name);
  }
  return mirror_dir_;
}

}  // namespace ferry::worker
