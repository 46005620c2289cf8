#include "commands.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cctype>
#include <chrono>
#include <map>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <thread>

#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"
#include "ferry/common/retention.h"
#include "ferry/common/subprocess.h"
#include "ferry/common/verify.h"
#include "ferry/rpc/repository_service.h"
#include "ferry/worker/disk_backup.h"
#include "ferry/worker/disk_restore.h"
#include "ferry/worker/qmp_client.h"
#include "ferry/worker/qmp_snapshot.h"
#include "ferry/worker/inventory.h"
#include "ferry/worker/libvirt_host.h"
#include "ferry/worker/qmp_host.h"
#include "ferry/worker/vm_backup.h"
#include "progress.h"

namespace json = boost::json;

namespace ferry::cli {

std::atomic<bool> g_interrupted{false};

namespace {

// The guardian is a child process, in its own session, that outlives a
// killed backup: when the backup's end of the pipe closes without "done",
// it removes that backup's snapshot from QEMU (or only its files, if the
// QEMU it was taken in is gone).
class Guardian : public worker::SnapshotGuard {
 public:
  Guardian(std::string self, std::string qmp, worker::SnapshotPaths paths)
      : self_(std::move(self)), qmp_(std::move(qmp)), paths_(std::move(paths)) {}
  ~Guardian() override {
    if (write_fd_ >= 0) ::close(write_fd_);  // EOF without "done": clean up
  }

  void Arm(const std::string& session, const std::string& vm_key) override {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw ErrnoError("creating the guardian's pipe", errno);
    std::vector<std::string> argv = {self_, "_guardian", "--qmp", qmp_, "--session", session,
                                     "--vm-key", vm_key, "--runtime-dir", paths_.runtime_dir,
                                     "--scratch-dir", paths_.host_scratch_dir};
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) throw ErrnoError("starting the guardian", errno);
    if (pid == 0) {
      ::dup2(fds[0], 0);
      int null_fd = ::open("/dev/null", O_WRONLY);
      ::dup2(null_fd, 1);
      ::setsid();
      CloseInheritedDescriptors();
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    ::close(fds[0]);
    write_fd_ = fds[1];
    pid_ = pid;
  }

  // The snapshot is gone: the guardian may exit without doing anything.
  void Disarm() override {
    if (write_fd_ < 0) return;
    (void)!::write(write_fd_, "done\n", 5);
    ::close(write_fd_);
    write_fd_ = -1;
    ::waitpid(pid_, nullptr, 0);
  }

 private:
  std::string self_, qmp_;
  worker::SnapshotPaths paths_;
  int write_fd_ = -1;
  pid_t pid_ = -1;
};

}  // namespace

rpc::RepositoryAccess RepoAccess(const Arguments& a) {
  rpc::RepositoryAccess access;
  if (auto file = a.Get("repo-token-file")) {
    access.token = ReadTokenFile(*file, "option --repo-token-file");
  }
  access.ca_file = a.Get("repo-ca").value_or("");
  access.server_name = a.Get("repo-server-name").value_or("");
  return access;
}

std::string RepoLocation(const Arguments& a) {
  if (auto repo = a.Get("repo")) return *repo;
  // As restic's RESTIC_REPOSITORY and borg's BORG_REPO: set once per shell.
  if (const char* env = std::getenv("FERRY_REPO"); env && *env) return env;
  throw Error(ErrorKind::kBadInput,
              "missing required option --repo (a directory or ferry+tls://HOST:PORT/NAME; or set FERRY_REPO)");
}

std::unique_ptr<Repository> OpenRepo(const Arguments& a) { return rpc::OpenRepository(RepoLocation(a), RepoAccess(a)); }

std::optional<RepositoryKey> LoadKey(const Arguments& a) {
  auto path = a.Get("key-file");
  if (!path) return std::nullopt;
  return RepositoryKey::LoadKeyFile(*path, ReadPassphrase(a.Get("passphrase-file").value_or(""), "FERRY_PASSPHRASE"));
}

std::optional<RepositoryKey> LoadKeyFor(const Arguments& a, const Repository& repo) {
  std::optional<RepositoryKey> key;
  // Checked before the passphrase is asked for: no key file given for an
  // encrypted repository says so, whatever else is missing.
  if (repo.config().encrypted() || a.Has("key-file")) {
    if (!a.Has("key-file")) CheckKeyFits(repo.config(), nullptr, repo.location());
    key = LoadKey(a);
  }
  CheckKeyFits(repo.config(), key ? &*key : nullptr, repo.location());
  return key;
}

namespace {
const char kRecoveryAdvice[] =
    "without this key (its file, or its recovery copy) the repository's data cannot be read by anyone: print "
    "the recovery copy now (ferry key recovery --key-file ";
}  // namespace

int KeyCommand(const std::string& command, const Arguments& a) {
  const std::string path = a.Require("key-file");
  if (command == "key create") {
    RepositoryKey key = RepositoryKey::Generate();
    key.WriteKeyFile(path, ReadPassphrase(a.Get("passphrase-file").value_or(""), "FERRY_PASSPHRASE"));
    LogInfo("created key file " + path + "; " + kRecoveryAdvice + path + ")");
    std::cout << key.Fingerprint() << std::endl;
    return 0;
  }
  if (command == "key recovery") {
    std::cout << LoadKey(a)->RecoveryText() << std::flush;
    return 0;
  }
  if (command == "key restore") {
    const std::string from = a.Require("recovery-file");
    std::string text;
    if (from == "-") {
      text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    } else {
      text = ReadWholeFile(from);
    }
    RepositoryKey key = RepositoryKey::FromRecoveryText(text);
    key.WriteKeyFile(path, ReadPassphrase(a.Get("passphrase-file").value_or(""), "FERRY_PASSPHRASE"));
    LogInfo("restored key file " + path + " from its recovery copy");
    std::cout << key.Fingerprint() << std::endl;
    return 0;
  }
  if (command == "key passwd") {
    RepositoryKey key = *LoadKey(a);
    key.WriteKeyFile(path, ReadPassphrase(a.Get("new-passphrase-file").value_or(""), "FERRY_NEW_PASSPHRASE"),
                     /*replace=*/true);
    LogInfo("changed the passphrase of key file " + path + " (key " + key.Fingerprint() + ")");
    return 0;
  }
  throw Error(ErrorKind::kInternal, "no handler for ferry " + command);
}

int InitCommand(const Arguments& a) {
  RepositoryConfig config;
  if (auto cs = a.GetSize("chunk-size")) {
    ValidateChunkSize(*cs);
    config.chunk_size = static_cast<uint32_t>(*cs);
  }
  if (auto level = a.GetInt("compression-level", -7, 19)) config.zstd_level = static_cast<int>(*level);
  if (auto sync = a.Get("sync-level")) {
    if (*sync == "file") config.sync_level = SyncLevel::kFile;
    else if (*sync == "filesystem") config.sync_level = SyncLevel::kFilesystem;
    else throw Error(ErrorKind::kBadInput, "option --sync-level: '" + *sync + "' is not file or filesystem");
  }
  std::string dir = RepoLocation(a);
  if (a.Has("encrypt") != a.Has("key-file")) {
    throw Error(ErrorKind::kBadInput, a.Has("encrypt") ? "--encrypt needs --key-file FILE (an existing key file, or "
                                                         "where to write a new one)"
                                                       : "--key-file is for an encrypted repository: add --encrypt");
  }
  if (a.Has("encrypt")) {
    const std::string path = a.Require("key-file");
    const std::string passphrase = ReadPassphrase(a.Get("passphrase-file").value_or(""), "FERRY_PASSPHRASE");
    if (PathExists(path)) {
      config.key_fingerprint = RepositoryKey::LoadKeyFile(path, passphrase).Fingerprint();
    } else {
      RepositoryKey key = RepositoryKey::Generate();
      key.WriteKeyFile(path, passphrase);
      config.key_fingerprint = key.Fingerprint();
      LogWarning("created key file " + path + " (key " + config.key_fingerprint + "); " + kRecoveryAdvice + path +
                 ")");
    }
  }
  rpc::InitRepository(dir, config);  // a directory or a bucket
  LogInfo("created " + std::string(config.encrypted() ? "encrypted repository " : "repository ") + dir +
          " (chunk size " + HumanBytes(config.chunk_size) +
          (config.encrypted() ? ", key " + config.key_fingerprint : std::string()) + ")");
  return 0;
}

int BackupCommand(const Arguments& a, const std::string& self_path) {
  worker::VmBackupRequest request;
  request.disks = a.GetAll("disk");
  request.exclude_disks = a.GetAll("exclude-disk");
  if (auto chain = a.Get("chain")) {
    if (chain->empty() || chain->size() > 64) {
      throw Error(ErrorKind::kBadInput, "option --chain: a chain name has 1 to 64 characters");
    }
    request.chain = *chain;
  }
  request.disk_options.cancel = &g_interrupted;
  if (auto r = a.GetSize("rate-limit")) request.disk_options.rate_limit_bytes_per_s = *r;
  if (auto t = a.GetInt("threads", 1, 256)) request.disk_options.compute_threads = static_cast<unsigned>(*t);
  if (a.Has("qmp") == a.Has("libvirt")) {
    throw Error(ErrorKind::kBadInput, "give the VM's host as exactly one of --qmp SOCKET or --libvirt URI");
  }

  auto repo = OpenRepo(a);
  std::optional<RepositoryKey> key = LoadKeyFor(a, *repo);
  request.disk_options.key = key ? &*key : nullptr;
  worker::SnapshotPaths paths = worker::DefaultSnapshotPaths();
  std::unique_ptr<Guardian> guardian;
  std::unique_ptr<worker::Host> host;
  if (a.Has("libvirt")) {
    host = worker::OpenLibvirtHost({a.Require("libvirt"), a.Require("vm"), paths});
  } else {
    std::string qmp_address = a.Require("qmp");
    // A socket file named by a relative path: make it an unambiguous address
    // (the guardian and the session records need it absolute anyway).
    if (!qmp_address.starts_with("unix:") && !qmp_address.starts_with("tcp:") && PathExists(qmp_address)) {
      qmp_address = "unix:" + std::filesystem::absolute(qmp_address).string();
    }
    worker::QmpHostOptions host_options;
    host_options.address = qmp_address;
    host_options.expected_vm_name = a.Get("vm");
    host_options.paths = paths;
    guardian = std::make_unique<Guardian>(self_path, qmp_address, paths);
    host_options.guard = guardian.get();
    host = worker::OpenQmpHost(host_options);
  }

  worker::VmBackupProgress progress;
  RestorePointManifest point;
  {
    ProgressLine line("backup", [&] { return std::make_pair(progress.done(), progress.bytes_total.load()); });
    point = worker::BackupVm(*repo, *host, request, &progress);
  }
  std::cout << point.id << std::endl;
  return 0;
}

int RestoreVmCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  std::optional<RepositoryKey> key = LoadKeyFor(a, *repo);
  worker::LibvirtRestoreOptions o;
  o.key = key ? &*key : nullptr;
  o.uri = a.Require("libvirt");
  o.point_id = a.Require("point");
  o.name = a.Get("name").value_or("");
  o.directory = a.Get("dir").value_or("");
  o.pool = a.Get("pool").value_or("");
  o.format = a.Get("format").value_or("qcow2");
  o.keep_macs = a.Has("keep-macs");
  o.overwrite = a.Has("overwrite");
  o.cancel = &g_interrupted;
  if (o.overwrite && !a.Has("yes")) {
    throw Error(ErrorKind::kBadInput, "--overwrite powers off the original domain and replaces its disks; "
                                      "add --yes to confirm");
  }
  if (o.overwrite && !o.name.empty()) throw Error(ErrorKind::kBadInput, "--overwrite keeps the original name; drop --name");
  if (o.overwrite && a.Has("format")) {
    throw Error(ErrorKind::kBadInput, "--overwrite keeps each disk's format; --format is for a new domain");
  }
  std::string name = worker::RestoreLibvirtVm(*repo, o);
  LogInfo("domain " + name + " defined from point " + o.point_id);
  std::cout << name << std::endl;
  return 0;
}

int GuardianCommand(const Arguments& a) {
  std::string message;
  char buf[64];
  for (ssize_t n; (n = ::read(0, buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    message.append(buf, static_cast<size_t>(n));
  }
  if (message.find("done") != std::string::npos) return 0;
  worker::SnapshotPaths paths = worker::LocalSnapshotPaths(a.Require("runtime-dir"), a.Require("scratch-dir"));
  std::string session = a.Require("session");
  std::string vm_key = a.Require("vm-key");
  std::string address = a.Require("qmp");
  const std::string session_lock_path = worker::SessionLockPath(paths, session);
  // The session's lock: free once the kernel has dropped the dead backup's
  // hold (or held by a hunter cleaning the same session). Returns a held
  // lock, or an invalid one when the lock file is gone (cleaned already).
  auto take_session_lock = [&] {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      FileLock lock = FileLock::TryAcquire(session_lock_path, /*create=*/false);
      if (lock.held() || !PathExists(session_lock_path) || std::chrono::steady_clock::now() > deadline) return lock;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  };
  // Wait for the backup to be gone, but do not hold its lock while we
  // connect (which can take long when another client holds the monitor): a
  // backup that reaches the monitor first must see the session as dead and
  // clean it up itself.
  take_session_lock();
  auto remove_files = [&](const std::string& why) {
    LogWarning("backup session " + session + " ended without cleaning up and " + why + "; removing its files");
    auto removed = worker::RemoveSessionFiles(paths, session);
    if (::unlink(session_lock_path.c_str()) == 0) removed.push_back(session_lock_path);
    for (const auto& f : removed) LogInfo("guardian: session " + session + ": removed " + f);
    return 0;
  };
  // Connect before taking the VM's lock: a backup connected to the same
  // monitor before us holds the monitor and then the lock, and must not
  // wait for a lock we would hold while waiting for its monitor.
  std::unique_ptr<worker::QmpClient> qmp;
  for (int attempt = 0;; ++attempt) {
    try {
      qmp = worker::QmpClient::Connect(address, std::chrono::seconds(10));
      break;
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kNotFound) return remove_files("its QEMU is gone (" + std::string(e.what()) + ")");
      if (attempt >= 6) {
        LogError("guardian: cannot reach " + address + " to remove backup session " + session + ": " + e.what() +
                 " (the next backup will remove it)");
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
  // Held from here on, so that no hunter works on the same session meanwhile.
  FileLock session_lock = take_session_lock();
  if (!session_lock.held()) {
    if (!PathExists(session_lock_path)) return 0;  // a backup's hunter cleaned it up meanwhile
    LogError("guardian: backup session " + session + " is still locked by another process; leaving it");
    return 1;
  }
  // The monitor may now be another QEMU's (the VM restarted): its NBD
  // server and nodes are none of this session's business.
  if (std::string now = worker::QemuProcessKey(*qmp, *paths.host); now != vm_key) {
    return remove_files("its QEMU (" + vm_key + ") is gone; " + address + " now reaches " + now);
  }
  FileLock vm_lock = worker::AcquireVmLock(paths, vm_key, 60000, "guardian of backup session " + session, address);
  if (!vm_lock.held()) {
    LogError("guardian: " + worker::VmLockHolder(paths, vm_key) + " has held the lock of the VM at " + address +
             " for 60 s; leaving backup session " + session + " to the next backup");
    return 1;
  }
  LogWarning("backup session " + session + " ended without cleaning up; removing its snapshot");
  bool ok = worker::RemoveSessionObjects(*qmp, paths, session);
  ::unlink(session_lock_path.c_str());
  return ok ? 0 : 1;
}

int ListCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  // One bad entry (a stray file, a damaged manifest) is a problem line, not
  // a failed listing: exit 0 unless nothing at all could be read.
  PointListing listing = repo->points().LoadAll();
  const int rc = listing.points.empty() && !listing.problems.empty() ? ExitCodeFor(ErrorKind::kCorrupt) : 0;
  // Each point's lock: "" none (or expired), else "until <time>"; a lock that
  // cannot be read is shown as such (and keeps the point from removal).
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  struct LockView {
    std::optional<PointLock> lock;
    std::string error;
    bool damaged = false;  // else unknown (a repository service older than the lock calls)
  };
  std::vector<LockView> locks;
  for (const auto& m : listing.points) {
    LockView v;
    try {
      v.lock = repo->points().ReadLock(m.id);
    } catch (const Error& e) {
      v.error = e.what();
      v.damaged = e.kind() == ErrorKind::kCorrupt;
    }
    locks.push_back(std::move(v));
  }
  // Each point's last health check (ferry verify): "-" never checked.
  const std::map<std::string, PointCheck> checks = repo->points().LoadChecks();
  auto check_of = [&](const std::string& id) -> const PointCheck* {
    auto it = checks.find(id);
    return it == checks.end() ? nullptr : &it->second;
  };
  if (a.Has("json")) {
    json::array points, problems;
    for (size_t i = 0; i < listing.points.size(); ++i) {
      json::value point = json::parse(ManifestToJson(listing.points[i]));
      const LockView& v = locks[i];
      if (v.lock) {
        point.as_object()["lock"] = json::object{{"locked_until", v.lock->locked_until},
                                                 {"locked_until_utc", FormatRfc3339(v.lock->locked_until)},
                                                 {"set_at", v.lock->set_at},
                                                 {"reason", v.lock->reason},
                                                 {"active", v.lock->locked_until > now}};
      } else if (!v.error.empty()) {
        point.as_object()["lock"] = json::object{{"error", v.error}};
      } else {
        point.as_object()["lock"] = nullptr;
      }
      if (const PointCheck* c = check_of(listing.points[i].id)) {
        point.as_object()["last_check"] = json::parse(PointCheckToJson(*c));
        point.as_object()["last_check"].as_object().erase("format");
      } else {
        point.as_object()["last_check"] = nullptr;
      }
      points.push_back(std::move(point));
    }
    for (const auto& p : listing.problems) problems.push_back(json::object{{"entry", p.entry}, {"message", p.message}});
    std::cout << json::serialize(json::object{{"points", std::move(points)}, {"problems", std::move(problems)}})
              << std::endl;
    return rc;
  }
  const std::vector<RestorePointManifest>& points = listing.points;
  std::printf("%-30s %-16s %-10s %-21s %5s %10s %10s %10s %-26s %-30s  %s\n", "POINT", "VM", "CHAIN", "COMPLETED",
              "DISKS", "SIZE", "READ", "STORED", "LOCKED", "CHECKED", "MODE");
  for (size_t i = 0; i < points.size(); ++i) {
    const RestorePointManifest& m = points[i];
    uint64_t size = 0, read = 0, stored = 0;
    std::string mode;
    for (const auto& d : m.disks) {
      size += d.size;
      read += d.read_bytes;
      stored += d.stored_bytes;
      // Per disk: "incremental", or "full" with the reason a full read was needed.
      std::string m1 = d.cbt.mode.empty() ? "full" : d.cbt.mode;
      if (!d.cbt.reason.empty()) m1 += " (" + d.cbt.reason + ")";
      mode += (mode.empty() ? "" : "; ") + d.name + ": " + m1;
    }
    std::string locked = "-";
    if (locks[i].damaged) locked = "? (unreadable)";
    else if (!locks[i].error.empty()) locked = "?";
    else if (locks[i].lock && locks[i].lock->locked_until > now) locked = "until " + FormatRfc3339(locks[i].lock->locked_until);
    std::string checked = "-";
    if (const PointCheck* c = check_of(m.id)) checked = (c->ok ? "ok " : "DAMAGED ") + FormatRfc3339(c->checked_at);
    std::printf("%-30s %-16s %-10s %-21s %5zu %10s %10s %10s %-26s %-30s  %s\n", m.id.c_str(), m.vm.name.c_str(),
                m.chain.c_str(), m.completed_at.c_str(), m.disks.size(),
                HumanBytes(static_cast<double>(size)).c_str(), HumanBytes(static_cast<double>(read)).c_str(),
                HumanBytes(static_cast<double>(stored)).c_str(), locked.c_str(), checked.c_str(), mode.c_str());
  }
  for (size_t i = 0; i < points.size(); ++i) {
    if (locks[i].damaged) std::printf("BAD %s: %s\n", points[i].id.c_str(), locks[i].error.c_str());
  }
  for (const auto& p : listing.problems) std::printf("BAD %s: %s\n", p.entry.c_str(), p.message.c_str());
  return rc;
}

int RestoreCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  std::optional<RepositoryKey> key = LoadKeyFor(a, *repo);
  if (a.Has("libvirt")) {
    if (a.Has("to")) throw Error(ErrorKind::kBadInput, "give either --to PATH or --libvirt URI --vm NAME, not both");
    std::string disk = a.Require("disk");
    worker::RestoreDiskIntoLibvirtVm(*repo, a.Require("libvirt"), a.Require("vm"), a.Require("point"), disk,
                                     a.Get("target-disk").value_or(disk), &g_interrupted, nullptr,
                                     key ? &*key : nullptr);
    return 0;
  }
  worker::ImageFormat format = worker::ParseImageFormat(a.Get("format").value_or("raw"));
  worker::DiskRestoreOptions options;
  options.key = key ? &*key : nullptr;
  options.cancel = &g_interrupted;
  if (auto t = a.GetInt("threads", 1, 256)) options.threads = static_cast<unsigned>(*t);
  std::string disk = a.Require("disk"), target = a.Require("to"), point = a.Require("point");
  worker::DiskRestoreProgress progress;
  worker::DiskRestoreResult r;
  {
    ProgressLine line("restore " + disk, [&] {
      return std::make_pair(progress.bytes_done.load(), progress.bytes_total.load());
    });
    r = worker::RestoreDisk(*repo, point, disk, target, format, options, &progress);
  }
  LogInfo("restored disk " + disk + " of point " + point + " to " + target + " (" +
          HumanBytes(static_cast<double>(r.size)) + ", " + HumanBytes(static_cast<double>(r.bytes_written)) +
          " of data)");
  return 0;
}

int InventoryCommand(const Arguments& a) {
  if (a.Has("qmp-dir") == a.Has("libvirt")) {
    throw Error(ErrorKind::kBadInput, "give the host as exactly one of --qmp-dir DIR or --libvirt URI");
  }
  std::vector<worker::InventoryEntry> entries;
  if (a.Has("libvirt")) {
    entries = worker::LibvirtInventory(a.Require("libvirt"));
  } else {
    std::string dir = a.Require("qmp-dir");
    if (!PathExists(dir)) throw Error(ErrorKind::kNotFound, "directory " + dir + " does not exist");
    int64_t timeout_ms = a.GetInt("timeout", 1, 600).value_or(2) * 1000;
    entries = worker::QmpDirectoryInventory(dir, std::chrono::milliseconds(timeout_ms));
  }
  if (a.Has("json")) {
    json::array vms, problems;
    for (const auto& e : entries) {
      if (!e.vm) {
        problems.push_back(json::object{{"source", e.source}, {"message", e.problem}});
        continue;
      }
      json::array disks;
      for (const auto& d : e.vm->disks) disks.push_back(json::object{{"name", d.name}, {"size", d.size}, {"format", d.format}});
      vms.push_back(json::object{{"source", e.source}, {"name", e.vm->identity.name}, {"uuid", e.vm->identity.uuid},
                                 {"state", e.vm->state}, {"disks", std::move(disks)}});
    }
    std::cout << json::serialize(json::object{{"vms", std::move(vms)}, {"problems", std::move(problems)}}) << std::endl;
    return 0;
  }
  std::printf("%-20s %-36s %-10s %s\n", "VM", "UUID", "STATE", "DISKS");
  for (const auto& e : entries) {
    if (!e.vm) continue;
    std::string disks;
    for (const auto& d : e.vm->disks) {
      disks += (disks.empty() ? "" : ", ") + d.name + " (" + d.format + ", " + HumanBytes(static_cast<double>(d.size)) + ")";
    }
    std::printf("%-20s %-36s %-10s %s\n", e.vm->identity.name.c_str(), e.vm->identity.uuid.c_str(), e.vm->state.c_str(),
                disks.c_str());
  }
  for (const auto& e : entries) {
    if (!e.vm) std::printf("BAD %s: %s\n", e.source.c_str(), e.problem.c_str());
  }
  return 0;
}

int VerifyCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  // Without the key an encrypted repository is still checked, as far as
  // that goes (VerifyReport::ciphertext_only).
  std::optional<RepositoryKey> key;
  if (a.Has("key-file")) key = LoadKeyFor(a, *repo);
  VerifyOptions options;
  options.key = key ? &*key : nullptr;
  options.point = a.Get("point");
  options.chain = a.Get("chain");
  options.threads = std::max(1u, std::thread::hardware_concurrency());
  if (auto t = a.GetInt("threads", 1, 256)) options.threads = static_cast<unsigned>(*t);
  if (auto d = a.GetDuration("skip-verified-within")) {
    options.skip_verified_within_s = std::chrono::duration_cast<std::chrono::seconds>(*d).count();
  }
  options.record = !a.Has("no-record");
  VerifyProgress progress;
  VerifyReport report;
  {
    ProgressLine line("verify", [&] {
      return std::make_pair(progress.chunks_done.load(), progress.chunks_total.load());
    });
    report = VerifyRepository(*repo, options, &progress);
  }
  for (const auto& p : report.problems) {
    std::string where = "point " + p.point;
    if (!p.disk.empty()) where += " disk " + p.disk;
    if (p.chunk >= 0) where += " chunk " + std::to_string(p.chunk) + " (offset " + std::to_string(p.offset) + ")";
    std::cout << "BAD " << where << ": " << p.message << "\n";
  }
  if (report.ciphertext_only) {
    std::cout << "NOTE encrypted repository, no key given: checked ciphertext integrity only (framing and CRC of "
                 "every chunk; their content and the manifests' HMACs need --key-file)\n";
  }
  for (const auto& id : report.unprotected) {
    std::cout << "NOTE point " << id << ": format v1 manifest (Ferry 0.1), not protected by a checksum\n";
  }
  std::cout << (report.clean() ? "OK" : "DAMAGED") << ": " << report.points << " point(s), " << report.disks
            << " disk(s), " << report.chunks_checked << " chunk(s) (" << HumanBytes(static_cast<double>(report.bytes_checked))
            << ") checked"
            << (report.chunks_skipped ? ", " + std::to_string(report.chunks_skipped) + " skipped (verified within " +
                                             a.Require("skip-verified-within") + ")"
                                       : std::string())
            << ", " << report.problems.size() << " problem(s)"
            << (report.unprotected.empty() ? "" : ", " + std::to_string(report.unprotected.size()) + " unprotected v1 point(s)")
            << std::endl;
  return report.clean() ? 0 : ExitCodeFor(ErrorKind::kCorrupt);
}

}  // namespace ferry::cli
