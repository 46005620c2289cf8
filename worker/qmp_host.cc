#include "ferry/worker/qmp_host.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/worker/inventory.h"

namespace json = boost::json;

namespace ferry::worker {

namespace {

std::string QueryString(QmpClient& qmp, const char* command, const char* key) {
  try {
    json::value v = qmp.Execute(command);
    if (v.is_object()) {
      auto it = v.as_object().find(key);
      if (it != v.as_object().end() && it->value().is_string()) return std::string(it->value().as_string());
    }
  } catch (const QmpError&) {
  }
  return "";
}

// The holder record of a VM lock: "pid <pid>\nholder <what>\nqmp <address>\n".
std::string LockField(const std::string& text, const std::string& key) {
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + at, end - at);
    if (line.starts_with(key + " ")) return std::string(line.substr(key.size() + 1));
    at = end + 1;
  }
  return "";
}

// Who holds a lock file: "" if it is free (or missing), else the process
// its record names, or "another ferry process" if that is not known.
std::string HolderOf(const std::string& lock_path) {
  FileLock probe = FileLock::TryAcquire(lock_path, /*create=*/false);
  if (probe.held() || !PathExists(lock_path)) return "";
  const std::string unknown = "another ferry process (a backup, or the guardian of a killed one)";
  std::string text;
  try {
    text = ReadWholeFile(lock_path);
  } catch (const Error&) {
    return unknown;
  }
  std::string pid = LockField(text, "pid");
  if (pid.empty() || !PathExists("/proc/" + pid)) return unknown;
  return "ferry process " + pid + " (" + LockField(text, "holder") + ")";
}

// A ferry process connected to the monitor at `address` (from the records
// of the VM locks taken); "" if none is known.
std::string HolderByAddress(const SnapshotPaths& paths, const std::string& address) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(paths.runtime_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (!name.starts_with("vm-") || !name.ends_with(".lock")) continue;
    std::string path = paths.runtime_dir + "/" + name;
    std::string holder = HolderOf(path);
    if (!holder.starts_with("ferry process ")) continue;  // free, or its holder unknown
    try {
      if (LockField(ReadWholeFile(path), "qmp") == address) return holder;
    } catch (const Error&) {
    }
  }
  return "";
}

// "pid:123:4567" -> "QEMU pid 123"; "uuid:U" -> "UUID U"; else as is.
std::string DescribeVmKey(const std::string& key) {
  if (key.starts_with("pid:")) return "QEMU pid " + key.substr(4, key.find(':', 4) - 4);
  if (key.starts_with("uuid:")) return "UUID " + key.substr(5);
  return key;
}

int LockWaitMs(const QmpHostOptions& options) {
  if (options.lock_wait_ms >= 0) return options.lock_wait_ms;
  const char* env = std::getenv("FERRY_VM_LOCK_WAIT");
  if (env && *env) {
    char* end = nullptr;
    long seconds = std::strtol(env, &end, 10);
    if (*end != '\0' || seconds < 0 || seconds > 86400) {
      throw Error(ErrorKind::kBadInput, "FERRY_VM_LOCK_WAIT='" + std::string(env) +
                                            "': expected a number of seconds (0 to 86400)");
    }
    return static_cast<int>(seconds * 1000);
  }
  return 60000;
}

class QmpHostBackup : public HostBackup {
 public:
  QmpHostBackup(QmpClient& qmp, SnapshotGuard* guard, std::string vm_key, std::vector<std::string> nodes,
                std::vector<CbtPlan> plans)
      : qmp_(qmp), guard_(guard), vm_key_(std::move(vm_key)), nodes_(std::move(nodes)), plans_(std::move(plans)) {}

  void Start(const std::vector<QmpDisk>& disks, const std::vector<HostDisk>& host_disks, const SnapshotPaths& paths,
             const std::optional<NbdExportNetwork>& network) {
    std::vector<SnapshotBitmaps> bitmaps;
    for (size_t i = 0; i < disks.size(); ++i) {
      bitmaps.push_back({plans_[i].new_bitmap, disks[i].format == "qcow2",
                         plans_[i].incremental ? plans_[i].previous_bitmap : ""});
    }
    std::string session = NewSnapshotSessionId();
    if (guard_) guard_->Arm(session, vm_key_);
    snapshot_ = FleecingSnapshot::Create(qmp_, disks, paths, session, vm_key_, bitmaps, network);
    LogInfo("snapshot of " + std::to_string(disks.size()) + " disk(s) taken (session " + session + ")");
    for (size_t i = 0; i < disks.size(); ++i) {
      exports_.push_back({host_disks[i], snapshot_->exports()[i].source, plans_[i]});
    }
  }

  const std::vector<ExportedDisk>& exports() const override { return exports_; }

  bool End() override {
    if (ended_) return end_ok_;
    ended_ = true;
    end_ok_ = !snapshot_ || snapshot_->Release();
    if (end_ok_ && guard_) guard_->Disarm();
    return end_ok_;
  }

  void FinishCbt(bool success) override {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (!success) {
        FinishCbtFailure(qmp_, nodes_[i], plans_[i]);
        continue;
      }
      try {
        FinishCbtSuccess(qmp_, nodes_[i], plans_[i]);
      } catch (const std::exception& e) {
        // Harmless: the next run drops the chain's stale bitmaps.
        LogWarning("removing the previous dirty bitmap on node " + nodes_[i] + ": " + e.what());
      }
    }
  }

 private:
  QmpClient& qmp_;
  SnapshotGuard* guard_;
  std::string vm_key_;
  std::vector<std::string> nodes_;
  std::vector<CbtPlan> plans_;
  std::unique_ptr<FleecingSnapshot> snapshot_;
  std::vector<ExportedDisk> exports_;
  bool ended_ = false, end_ok_ = false;
};

std::string QueryStatus(QmpClient& qmp) {
  try {
    json::value v = qmp.Execute("query-status");
    auto it = v.as_object().find("status");
    if (it != v.as_object().end() && it->value().is_string()) return std::string(it->value().as_string());
  } catch (const QmpError&) {
  }
  return "unknown";
}

// The VM behind a monitor as Ferry describes it, for a backup and for the
// inventory alike.
HostVm DescribeQmpVm(QmpClient& qmp, const std::vector<QmpDisk>& disks) {
  HostVm vm;
  vm.identity = {QueryString(qmp, "query-name", "name"), QueryString(qmp, "query-uuid", "UUID"), "qemu"};
  if (vm.identity.name.empty()) vm.identity.name = qmp.address();
  vm.state = QueryStatus(qmp);
  for (const auto& d : disks) vm.disks.push_back({d.name, d.format, d.size, d.filename, true, ""});
  return vm;
}

class QmpHost : public Host {
 public:
  explicit QmpHost(const QmpHostOptions& options) : options_(options) {
    const int wait_ms = LockWaitMs(options);
    // The VM's identity needs a connection, so connect first. A monitor
    // greets a second client only when the first leaves: wait as long as
    // for the lock, then fail as retryable, naming the client if we can.
    try {
      qmp_ = QmpClient::Connect(options.address, std::chrono::milliseconds(std::max(wait_ms, 10000)));
    } catch (const Error& e) {
      std::string holder = e.kind() == ErrorKind::kRetryable ? HolderByAddress(options.paths, options.address) : "";
      if (holder.empty()) throw;
      throw Error(ErrorKind::kRetryable, std::string(e.what()) + "; " + holder + " is connected to it");
    }
    if (!options.paths.host) throw Error(ErrorKind::kInternal, "QMP host: the paths name no host");
    vm_key_ = QemuProcessKey(*qmp_, *options.paths.host);
    std::string name = QueryString(*qmp_, "query-name", "name");
    std::string vm = "VM '" + (name.empty() ? options.address : name) + "' (" + DescribeVmKey(vm_key_) + ")";
    const std::string lock_path = QmpVmLockPath(options.paths, vm_key_);
    if (std::string holder = HolderOf(lock_path); !holder.empty()) {
      LogInfo(vm + " is locked by " + holder + "; waiting up to " + std::to_string(wait_ms / 1000) + " s");
    }
    vm_lock_ = AcquireVmLock(options.paths, vm_key_, wait_ms, "backup through " + options.address, options.address);
    if (!vm_lock_.held()) {
      std::string holder = HolderOf(lock_path);
      throw Error(ErrorKind::kRetryable, vm + " is busy: " + (holder.empty() ? "another ferry process" : holder) +
                                             " has held its lock for " + std::to_string(wait_ms / 1000) +
                                             " s; try again later");
    }
    for (const auto& s : RemoveAbandonedSnapshots(*qmp_, options.paths, vm_key_)) {
      LogInfo("removed the snapshot left by dead session " + s);
    }
    if (options.expected_vm_name && *options.expected_vm_name != name) {
      throw Error(ErrorKind::kNotFound, "the VM at " + options.address + " is named '" + name + "', not '" +
                                            *options.expected_vm_name + "'");
    }
    qmp_disks_ = ListQmpDisks(*qmp_);
    vm_ = DescribeQmpVm(*qmp_, qmp_disks_);
  }

  std::string description() const override { return "QEMU at " + options_.address; }
  const HostVm& vm() const override { return vm_; }

  std::vector<VmConfigFile> CaptureConfig() override {
    std::vector<VmConfigFile> files;
    // QEMU's host, wherever that is (HostEnv): its /proc and /etc/pve.
    HostEnv& host = *options_.paths.host;
    std::string cmdline;
    int pid = -1;
    try {
      pid = host.QemuPid(*qmp_);
      if (pid <= 0) return files;
      std::optional<std::string> read = host.ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
      if (!read) throw Error(ErrorKind::kNotFound, "QEMU pid " + std::to_string(pid) + " is gone");
      cmdline = std::move(*read);
    } catch (const Error& e) {
      LogWarning("cannot read QEMU's command line on " + host.name() + ": " + std::string(e.what()));
      return files;
    }
    json::array args;
    std::string proxmox_id;
    size_t start = 0;
    for (size_t i = 0; i <= cmdline.size(); ++i) {
      if (i == cmdline.size() || cmdline[i] == '\0') {
        if (i > start) args.push_back(json::value(cmdline.substr(start, i - start)));
        start = i + 1;
      }
    }
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i].as_string() == "-id") proxmox_id = std::string(args[i + 1].as_string());
    }
    files.push_back({"qemu-command-line", "qemu-cmdline.json", json::serialize(args) + "\n",
                     "/proc/" + std::to_string(pid) + "/cmdline"});
    // Proxmox VE starts QEMU with "-id <vmid>"; its config sits beside.
    std::string pve = "/etc/pve/qemu-server/" + proxmox_id + ".conf";
    if (!proxmox_id.empty() && proxmox_id.find('/') == std::string::npos) {
      if (std::optional<std::string> conf = host.ReadFile(pve)) {
        files.push_back({"proxmox-vm-config", "proxmox.conf", std::move(*conf), pve});
      }
    }
    return files;
  }

  std::vector<BitmapState> ChainBitmaps(const HostDisk& disk, const std::string& chain_id) override {
    std::vector<BitmapState> out;
    for (auto& b : ListDirtyBitmaps(*qmp_, Find(disk).node_name)) {
      if (IsChainBitmap(b.name, chain_id)) out.push_back(std::move(b));
    }
    return out;
  }

  void DropChainBitmaps(const HostDisk& disk, const std::vector<std::string>& names) override {
    for (const auto& n : names) {
      qmp_->Execute("block-dirty-bitmap-remove", {{"node", Find(disk).node_name}, {"name", n}});
    }
  }

  std::unique_ptr<HostBackup> BeginBackup(const std::vector<HostDisk>& disks, const std::vector<CbtPlan>& plans) override {
    std::vector<QmpDisk> qmp_disks;
    std::vector<std::string> nodes;
    for (const auto& d : disks) {
      qmp_disks.push_back(Find(d));
      nodes.push_back(qmp_disks.back().node_name);
    }
    auto backup = std::make_unique<QmpHostBackup>(*qmp_, options_.guard, vm_key_, nodes, plans);
    backup->Start(qmp_disks, disks, options_.paths, options_.export_tcp);
    return backup;
  }

 private:
  const QmpDisk& Find(const HostDisk& disk) const {
    for (const auto& d : qmp_disks_) {
      if (d.name == disk.name) return d;
    }
    throw Error(ErrorKind::kInternal, "disk " + disk.name + " is not one of this VM's");
  }

  QmpHostOptions options_;
  std::unique_ptr<QmpClient> qmp_;
  std::string vm_key_;
  FileLock vm_lock_;
  HostVm vm_;
  std::vector<QmpDisk> qmp_disks_;
};

}  // namespace

std::string QmpVmLockPath(const SnapshotPaths& paths, const std::string& vm_key) {
  return paths.runtime_dir + "/vm-" + Sha256(vm_key.data(), vm_key.size()).Hex().substr(0, 16) + ".lock";
}

FileLock AcquireVmLock(const SnapshotPaths& paths, const std::string& vm_key, int wait_ms,
                       const std::string& holder, const std::string& qmp_address) {
  const std::string path = QmpVmLockPath(paths, vm_key);
  FileLock lock = FileLock::Acquire(path, wait_ms);
  if (!lock.held()) return lock;
  // Rewritten in place (the flock is on this inode); a reader may see it
  // empty for a moment, which only makes the holder "unknown".
  std::string text = "pid " + std::to_string(::getpid()) + "\nholder " + holder + "\nvm " + vm_key + "\nqmp " +
                     qmp_address + "\n";
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (fd.valid()) (void)!::write(fd.get(), text.data(), text.size());
  return lock;
}

std::string VmLockHolder(const SnapshotPaths& paths, const std::string& vm_key) {
  return HolderOf(QmpVmLockPath(paths, vm_key));
}

std::vector<InventoryEntry> QmpDirectoryInventory(const std::string& dir, std::chrono::milliseconds timeout,
                                                  bool forwarded) {
  std::vector<InventoryEntry> out;
  for (const auto& name : ListDirectory(dir)) {
    std::string path = dir + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;  // not a monitor
    InventoryEntry e;
    e.source = path;
    try {
      auto qmp = QmpClient::Connect("unix:" + path, timeout);
      e.vm = DescribeQmpVm(*qmp, ListQmpDisks(*qmp));
    } catch (const QmpNoGreeting& err) {
      e.problem = err.what();
      e.busy = forwarded;
    } catch (const Error& err) {
      e.problem = err.what();  // stale socket, or a monitor busy with another client
      e.busy = err.kind() == ErrorKind::kRetryable;
    } catch (const std::exception& err) {
      e.problem = err.what();
    }
    out.push_back(std::move(e));
  }
  return out;
}

namespace {

class LocalQmpDirectory : public QmpMonitorDirectory {
 public:
  explicit LocalQmpDirectory(std::string dir) : dir_(std::move(dir)) {}
  std::string description() const override { return dir_; }
  std::string Refresh() override { return dir_; }

 private:
  std::string dir_;
};

}  // namespace

std::shared_ptr<QmpMonitorDirectory> LocalQmpMonitorDirectory(const std::string& dir) {
  return std::make_shared<LocalQmpDirectory>(dir);
}

std::unique_ptr<Host> OpenQmpHost(const QmpHostOptions& options) { return std::make_unique<QmpHost>(options); }

}  // namespace ferry::worker
