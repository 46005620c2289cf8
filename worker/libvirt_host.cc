#include "ferry/worker/libvirt_host.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <boost/property_tree/ptree.hpp>
#include <boost/property_tree/xml_parser.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/common/subprocess.h"
#include "ferry/worker/inventory.h"
#include "libvirt_util.h"

namespace pt = boost::property_tree;

namespace ferry::worker {

namespace {

// A disk as the domain XML describes it.
struct DomainDisk {
  std::string target;  // "vda"
  std::string source;  // image file
  std::string format;  // driver type
};

struct DomainXml {
  std::string name, uuid;
  std::vector<DomainDisk> disks;
  std::string nvram;  // UEFI variable store, if any
  bool has_tpm = false;
  uid_t qemu_uid = 0;
  gid_t qemu_gid = 0;
  bool has_dac_label = false;
};

DomainXml ParseDomainXml(const std::string& xml) {
  DomainXml d;
  pt::ptree tree = ParseXml(xml, "domain XML");
  const pt::ptree& dom = tree.get_child("domain");
  d.name = dom.get<std::string>("name", "");
  d.uuid = dom.get<std::string>("uuid", "");
  d.nvram = dom.get<std::string>("os.nvram", "");
  if (auto devices = dom.get_child_optional("devices")) {
    for (const auto& [tag, node] : *devices) {
      if (tag == "tpm") d.has_tpm = true;
      if (tag != "disk" || node.get<std::string>("<xmlattr>.device", "disk") != "disk") continue;
      DomainDisk disk;
      disk.target = node.get<std::string>("target.<xmlattr>.dev", "");
      disk.source = node.get<std::string>("source.<xmlattr>.file", node.get<std::string>("source.<xmlattr>.dev", ""));
      disk.format = node.get<std::string>("driver.<xmlattr>.type", "raw");
      if (!disk.target.empty()) d.disks.push_back(std::move(disk));
    }
  }
  // The DAC label of a running domain says which user QEMU runs as.
  for (const auto& [tag, node] : dom) {
    if (tag != "seclabel" || node.get<std::string>("<xmlattr>.model", "") != "dac") continue;
    std::string label = node.get<std::string>("label", "");  // "+64055:+64055"
    unsigned uid, gid;
    if (std::sscanf(label.c_str(), "+%u:+%u", &uid, &gid) == 2) {
      d.qemu_uid = uid;
      d.qemu_gid = gid;
      d.has_dac_label = true;
    }
  }
  return d;
}

// Bitmaps stored in a qcow2 image (offline), from qemu-img info.
std::vector<BitmapState> ImageBitmaps(const std::string& image) {
  std::vector<BitmapState> out;
  namespace json = boost::json;
  json::value info = json::parse(RunProgram({"qemu-img", "info", "-U", "--output=json", image}));
  const json::value* bitmaps = nullptr;
  if (auto* fs = info.as_object().if_contains("format-specific")) {
    if (auto* data = fs->as_object().if_contains("data")) bitmaps = data->as_object().if_contains("bitmaps");
  }
  if (!bitmaps || !bitmaps->is_array()) return out;
  for (const auto& b : bitmaps->as_array()) {
    BitmapState s;
    s.name = std::string(b.at("name").as_string());
    s.recording = false;
    for (const auto& f : b.at("flags").as_array()) {
      if (f.as_string() == "auto") s.recording = true;
      if (f.as_string() == "in-use") s.inconsistent = true;
    }
    out.push_back(std::move(s));
  }
  return out;
}

uint64_t DiskCapacity(virDomainPtr dom, const std::string& target, const std::string& vm) {
  virDomainBlockInfo info;
  if (virDomainGetBlockInfo(dom, target.c_str(), &info, 0) != 0) ThrowLibvirt("size of disk " + target + " of domain " + vm);
  return info.capacity;
}

// The VM as Ferry describes it, for a backup and for the inventory alike.
HostVm DescribeDomain(virDomainPtr dom, const DomainXml& xml, int state) {
  HostVm vm;
  vm.state = DomainStateName(state);
  vm.identity = {xml.name, xml.uuid, "libvirt"};
  for (const auto& d : xml.disks) {
    HostDisk hd{d.target, d.format, DiskCapacity(dom, d.target, xml.name), d.source, d.format == "qcow2", ""};
    if (!hd.cbt_capable) hd.no_cbt_reason = d.format + " disk: libvirt keeps checkpoints only for qcow2";
    vm.disks.push_back(hd);
  }
  return vm;
}

// Export names of a TCP export carry the session: "ferry-<session>-<disk>".
constexpr char kExportPrefix[] = "ferry-";
std::string TcpExportName(const std::string& session, const std::string& disk) {
  return kExportPrefix + session + "-" + disk;
}

// The Ferry session a running backup job (its XML) belongs to, "" if none:
// from its unix socket (<runtime>/libvirt-<session>/nbd.sock) or from its
// export names (TCP).
std::string FerrySessionOfJob(const pt::ptree& backup, const std::string& runtime_dir) {
  std::string socket = backup.get<std::string>("domainbackup.server.<xmlattr>.socket", "");
  std::string prefix = runtime_dir + "/libvirt-";
  if (!socket.empty()) {
    if (!socket.starts_with(prefix)) return "";
    std::string session_dir = socket.substr(0, socket.rfind('/'));
    return session_dir.size() > prefix.size() ? session_dir.substr(prefix.size()) : "";
  }
  if (auto disks = backup.get_child_optional("domainbackup.disks")) {
    for (const auto& [tag, node] : *disks) {
      std::string name = node.get<std::string>("<xmlattr>.exportname", "");
      if (tag != "disk" || !name.starts_with(kExportPrefix)) continue;
      std::string rest = name.substr(sizeof kExportPrefix - 1);
      size_t dash = rest.find('-');
      if (dash != std::string::npos && dash > 0) return rest.substr(0, dash);
    }
  }
  return "";
}

class LibvirtHostBackup;

class LibvirtHost : public Host {
 public:
  explicit LibvirtHost(const LibvirtHostOptions& options)
      : options_(options), remote_(!LibvirtUriHost(options.uri).empty()) {
    if (remote_ && !options.tcp_export) {
      throw Error(ErrorKind::kBadInput, "libvirt at " + options.uri + " is on another machine: its exports must go "
                                        "over TCP (ferry-worker --libvirt URI, docs/worker.md \"Remote libvirt\")");
    }
    conn_ = Connect(options.uri);
    dom_ = LookupDomain(conn_.get(), options.vm);
    if (const char* name = virDomainGetName(dom_.get())) name_ = name;  // options.vm may be the UUID
    int state = 0;
    if (virDomainGetState(dom_.get(), &state, nullptr, 0) != 0) ThrowLibvirt("state of domain " + options.vm);
    running_ = state == VIR_DOMAIN_RUNNING || state == VIR_DOMAIN_PAUSED || state == VIR_DOMAIN_BLOCKED;
    AbortAbandonedBackupJob();
    if (!remote_) RemoveDeadSessionDirectories();  // a remote session has no directory here
    xml_ = ParseDomainXml(DomainXmlDesc(dom_.get(), 0));
    vm_ = DescribeDomain(dom_.get(), xml_, state);
    if (remote_) RemoveDeadSessionLocks();
  }

  std::string description() const override { return "libvirt domain " + xml_.name + " at " + options_.uri; }
  const HostVm& vm() const override { return vm_; }

  std::vector<VmConfigFile> CaptureConfig() override {
    std::vector<VmConfigFile> files;
    files.push_back({"libvirt-domain-xml", "domain.xml",
                     DomainXmlDesc(dom_.get(), VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE), options_.uri});
    if (remote_ && (!xml_.nvram.empty() || xml_.has_tpm)) {
      // Those are files on the domain's host, which libvirt does not serve.
      LogWarning("domain " + xml_.name + ": its UEFI NVRAM and TPM state are on host " + LibvirtUriHost(options_.uri) +
                 " and not kept in the point (only a worker on that host reads them)");
    } else if (!xml_.nvram.empty()) {
      try {
        files.push_back({"uefi-nvram", "nvram.fd", ReadWholeFile(xml_.nvram), xml_.nvram});
      } catch (const Error& e) {
        LogWarning("domain " + xml_.name + ": cannot read its UEFI NVRAM: " + e.what());
      }
    }
    if (xml_.has_tpm && !remote_) {
      std::string state = "/var/lib/libvirt/swtpm/" + xml_.uuid + "/tpm2/tpm2-00.permall";
      if (PathExists(state)) files.push_back({"tpm-state", "tpm2-00.permall", ReadWholeFile(state), state});
    }
    return files;
  }

  std::vector<BitmapState> ChainBitmaps(const HostDisk& disk, const std::string& chain_id) override {
    std::vector<BitmapState> out;
    std::map<std::string, BitmapState> in_image;
    if (!running_ && remote_) RefuseShutOffRemote();
    if (!running_) {
      for (auto& b : ImageBitmaps(disk.identity)) in_image[b.name] = b;
    }
    for (const auto& name : CheckpointNames()) {
      if (!IsChainBitmap(name, chain_id) || !CheckpointCovers(name, disk.name)) continue;
      if (running_) {
        out.push_back({name, true, false, false, true});
      } else if (auto it = in_image.find(name); it != in_image.end()) {
        out.push_back(it->second);
      } else {
        BitmapState s{name, false, true, false, true};  // metadata without a bitmap
        out.push_back(s);
      }
    }
    return out;
  }

  void DropChainBitmaps(const HostDisk&, const std::vector<std::string>& names) override {
    // A checkpoint spans all disks: drop it in BeginBackup, once every disk's
    // plan is known, unless another disk still builds on it.
    pending_drops_.insert(names.begin(), names.end());
  }

  std::unique_ptr<HostBackup> BeginBackup(const std::vector<HostDisk>& disks, const std::vector<CbtPlan>& plans) override;

  virDomainPtr domain() const { return dom_.get(); }
  virConnectPtr connection() const { return conn_.get(); }
  const DomainXml& xml() const { return xml_; }
  bool running() const { return running_; }
  bool remote() const { return remote_; }
  const LibvirtHostOptions& options() const { return options_; }

  // A shut-off domain's images are read by qemu-nbd on their host, which a
  // worker reaching libvirt over the network cannot start.
  [[noreturn]] void RefuseShutOffRemote() const {
    throw Error(ErrorKind::kEnvironment,
                "domain " + xml_.name + " at " + options_.uri + " is shut off: a shut-off domain's disks are read "
                "by qemu-nbd on its host, which this worker (reaching libvirt over the network) cannot start; start "
                "the domain (paused is enough: virsh start --paused " + xml_.name + ") or back it up with a worker "
                "running on that host");
  }

  void DeleteCheckpoint(const std::string& name) {
    VirPtr<virDomainCheckpoint> cp(virDomainCheckpointLookupByName(dom_.get(), name.c_str(), 0));
    if (!cp) return;
    if (virDomainCheckpointDelete(cp.get(), 0) == 0) return;
    std::string why = LibvirtError();
    // The bitmap is gone (or the domain is off): drop libvirt's record of it.
    if (virDomainCheckpointDelete(cp.get(), VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) != 0) {
      throw Error(ErrorKind::kEnvironment, "deleting checkpoint " + name + " of domain " + xml_.name + ": " + why +
                                               "; " + LibvirtError());
    }
  }

  void ApplyPendingDrops(const std::vector<CbtPlan>& plans) {
    for (const auto& name : pending_drops_) {
      bool used = std::any_of(plans.begin(), plans.end(),
                              [&](const CbtPlan& p) { return p.incremental && p.previous_bitmap == name; });
      if (!used) DeleteCheckpoint(name);
    }
    pending_drops_.clear();
  }

 private:
  std::vector<std::string> CheckpointNames() {
    virDomainCheckpointPtr* cps = nullptr;
    int n = virDomainListAllCheckpoints(dom_.get(), &cps, 0);
    if (n < 0) ThrowLibvirt("listing checkpoints of domain " + options_.vm);
    std::vector<std::string> names;
    for (int i = 0; i < n; ++i) {
      names.push_back(virDomainCheckpointGetName(cps[i]));
      virDomainCheckpointFree(cps[i]);
    }
    free(cps);
    return names;
  }

  bool CheckpointCovers(const std::string& checkpoint, const std::string& disk) {
    VirPtr<virDomainCheckpoint> cp(virDomainCheckpointLookupByName(dom_.get(), checkpoint.c_str(), 0));
    if (!cp) return false;
    char* raw = virDomainCheckpointGetXMLDesc(cp.get(), 0);
    if (!raw) return false;
    std::string xml = raw;
    free(raw);
    pt::ptree tree = ParseXml(xml, "checkpoint XML");
    if (auto ds = tree.get_child_optional("domaincheckpoint.disks")) {
      for (const auto& [tag, node] : *ds) {
        if (tag == "disk" && node.get<std::string>("<xmlattr>.name", "") == disk) {
          return node.get<std::string>("<xmlattr>.checkpoint", "bitmap") == "bitmap";
        }
      }
    }
    return false;
  }

  // A Ferry run killed during a pull backup leaves libvirt's job running
  // (its NBD socket in our runtime directory): end it.
  void AbortAbandonedBackupJob() {
    if (!running_) return;
    char* raw = virDomainBackupGetXMLDesc(dom_.get(), 0);
    if (!raw) {
      virResetLastError();
      return;  // no backup job
    }
    std::string xml = raw;
    free(raw);
    pt::ptree tree = ParseXml(xml, "backup XML");
    std::string session = FerrySessionOfJob(tree, options_.paths.runtime_dir);
    if (session.empty()) {
      throw Error(ErrorKind::kRetryable, "domain " + options_.vm + " has a backup job that is not Ferry's running");
    }
    const std::string lock_path = SessionLockPath(options_.paths, session);
    FileLock lock = FileLock::TryAcquire(lock_path, /*create=*/false);
    const bool lock_exists = PathExists(lock_path);
    if (lock_exists && !lock.held()) {
      throw Error(ErrorKind::kRetryable, "another ferry backup of domain " + options_.vm + " is running");
    }
    // A local libvirtd's jobs are this runtime directory's: no lock is a dead
    // session. A remote one may serve other workers too: only a lock left
    // here says the session was this worker's.
    if (remote_ && !lock_exists) {
      throw Error(ErrorKind::kRetryable,
                  "domain " + name_ + " at " + options_.uri + " has the backup job of ferry session " + session +
                      ", which this worker does not know (another worker's, or from before this worker restarted); "
                      "if no ferry worker is backing it up, end it with: virsh -c '" + options_.uri +
                      "' domjobabort " + name_);
    }
    LogWarning("ending the backup job a dead ferry session (" + session + ") left on domain " + options_.vm);
    virDomainAbortJob(dom_.get());
    if (!remote_) RemoveTree(options_.paths.runtime_dir + "/libvirt-" + session);
    ::unlink(lock_path.c_str());
  }

  // A Ferry run killed together with its domain's QEMU (so no job is left
  // for AbortAbandonedBackupJob to find), or on a shut-off domain, leaves its
  // session directory and lock. Remove those of dead sessions (lock free or
  // missing; a session locks before it makes its directory and unlocks after
  // removing it, and the directories are listed before any lock is looked
  // at) unless a running domain's backup job still uses the directory: that
  // job belongs to its domain's next run.
  void RemoveDeadSessionDirectories() {
    const std::string& runtime = options_.paths.runtime_dir;
    std::vector<std::string> sessions;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(runtime, ec)) {
      std::string name = entry.path().filename().string();
      if (name.starts_with("libvirt-") && entry.is_directory(ec)) sessions.push_back(name.substr(8));
    }
    if (sessions.empty()) return;
    std::set<std::string> in_use;  // session directories of running backup jobs
    virDomainPtr* domains = nullptr;
    int n = virConnectListAllDomains(conn_.get(), &domains, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) {
      LogWarning("listing running domains (to clean up dead ferry sessions): " + LibvirtError());
      return;  // cannot tell which directories are in use: leave them all
    }
    for (int i = 0; i < n; ++i) {
      if (char* raw = virDomainBackupGetXMLDesc(domains[i], 0)) {
        std::string xml = raw;
        free(raw);
        try {
          std::string session = FerrySessionOfJob(ParseXml(xml, "backup XML"), runtime);
          if (!session.empty()) in_use.insert(runtime + "/libvirt-" + session);
        } catch (const std::exception&) {
        }
      } else {
        virResetLastError();
      }
      virDomainFree(domains[i]);
    }
    free(domains);
    for (const auto& session : sessions) {
      std::string dir = runtime + "/libvirt-" + session;
      std::string lock_path = SessionLockPath(options_.paths, session);
      FileLock lock = FileLock::TryAcquire(lock_path, /*create=*/false);
      if (!lock.held() && PathExists(lock_path)) continue;  // alive
      if (in_use.count(dir)) continue;
      LogWarning("removing " + dir + " and the lock of dead ferry session " + session);
      try {
        RemoveTree(dir);
      } catch (const Error& e) {
        LogWarning("session " + session + ": " + e.what());
        continue;
      }
      ::unlink(lock_path.c_str());
    }
  }

  // A remote session leaves only its lock here. Once any job of this
  // domain's was dealt with (AbortAbandonedBackupJob), a free lock whose
  // record names this domain is a dead session's whose job went with its
  // QEMU (the domain restarted): remove it. A live session's lock is never
  // free (CreateSessionLock).
  void RemoveDeadSessionLocks() {
    const std::string& runtime = options_.paths.runtime_dir;
    const std::string mark = "\nlibvirt " + xml_.uuid + "\n";
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(runtime, ec)) {
      std::string name = entry.path().filename().string();
      if (!name.ends_with(".lock") || !entry.is_regular_file(ec)) continue;
      std::string session = name.substr(0, name.size() - 5);
      std::string path = SessionLockPath(options_.paths, session);
      if (path != entry.path().string()) continue;
      std::string record;
      try {
        record = ReadWholeFile(path);
      } catch (const Error&) {
        continue;  // gone meanwhile
      }
      if (xml_.uuid.empty() || record.find(mark) == std::string::npos) continue;
      FileLock lock = FileLock::TryAcquire(path, /*create=*/false);
      if (!lock.held()) continue;  // alive (or gone)
      LogWarning("removing the lock of dead ferry session " + session + " (domain " + name_ + ")");
      ::unlink(path.c_str());
    }
  }

  LibvirtHostOptions options_;
  bool remote_ = false;  // the URI names a host: libvirtd runs on another machine
  std::string name_;     // the domain's name, for messages
  VirPtr<virConnect> conn_;
  VirPtr<virDomain> dom_;
  bool running_ = false;
  DomainXml xml_;
  HostVm vm_;
  std::set<std::string> pending_drops_;
};

// One backup of a libvirt domain: a pull-mode job (running) or read-only
// qemu-nbd servers (shut off).
class LibvirtHostBackup : public HostBackup {
 public:
  LibvirtHostBackup(LibvirtHost& host, std::string session)
      : host_(host), session_(std::move(session)),
        dir_(host.remote() ? "" : host.options().paths.runtime_dir + "/libvirt-" + session_) {}

  ~LibvirtHostBackup() override { End(); }

  void StartRunning(const std::vector<HostDisk>& disks, std::vector<CbtPlan> plans) {
    MakeSessionDir();
    const std::optional<LibvirtTcpExport>& tcp = host_.options().tcp_export;
    std::string socket = tcp ? "" : dir_ + "/nbd.sock";
    uint32_t port = tcp ? tcp->port_min : 0;
    for (int attempt = 0;;) {
      std::string error;
      if (TryBegin(disks, plans, socket, static_cast<uint16_t>(port), &error)) break;
      // QEMU: "Failed to bind socket: Address already in use": the next port.
      if (tcp && error.find("in use") != std::string::npos) {
        if (port >= tcp->port_max) {
          throw Error(ErrorKind::kRetryable, "starting a backup of domain " + host_.xml().name + ": no free port for "
                                             "its NBD export on " + tcp->host + " in " + std::to_string(tcp->port_min) +
                                             "-" + std::to_string(tcp->port_max));
        }
        ++port;
        continue;
      }
      if (tcp && tcp->tls && (error.find("TLS") != std::string::npos || error.find("tls") != std::string::npos ||
                              error.find("x509") != std::string::npos || error.find(".pem") != std::string::npos)) {
        throw Error(ErrorKind::kEnvironment,
                    "starting a backup of domain " + host_.xml().name + ": libvirt at " + host_.options().uri +
                        " could not set up TLS for its NBD export (" + error + "); configure backup TLS on that host "
                        "(qemu.conf backup_tls_x509_cert_dir: ca-cert.pem, server-cert.pem, server-key.pem for the "
                        "name " + tcp->host + "), or on a trusted network give libvirt-export-tls = no "
                        "(docs/worker.md, \"Remote libvirt\")");
      }
      // A broken connection (a remote host gone, its sshd or libvirtd
      // restarted) is no refusal of the checkpoint: keep the chain.
      if (virConnectIsAlive(host_.connection()) != 1) {
        throw Error(ErrorKind::kRetryable, "starting a backup of domain " + host_.xml().name +
                                               ": the connection to libvirt at " + host_.options().uri +
                                               " broke: " + error);
      }
      bool any_incremental = std::any_of(plans.begin(), plans.end(), [](auto& p) { return p.incremental; });
      if (attempt++ > 0 || !any_incremental) {
        throw Error(ErrorKind::kRetryable, "starting a backup of domain " + host_.xml().name + ": " + error);
      }
      // The checkpoint's bitmap is missing or broken inside QEMU: no dead
      // end, read in full and start the chain afresh.
      LogWarning("libvirt refused the incremental backup of domain " + host_.xml().name + " (" + error +
                 "); reading in full");
      for (auto& p : plans) {
        if (!p.incremental) continue;
        try {
          host_.DeleteCheckpoint(p.previous_bitmap);
        } catch (const Error& e) {
          LogWarning(e.what());
        }
        p.incremental = false;
        p.reason = "libvirt refused checkpoint " + p.previous_bitmap + ": " + error;
        p.previous_bitmap.clear();
      }
    }
    job_running_ = true;
    plans_ = plans;
    // Export names and bitmaps as libvirt chose them.
    char* raw = virDomainBackupGetXMLDesc(host_.domain(), 0);
    if (!raw) ThrowLibvirt("reading the backup job of domain " + host_.xml().name);
    std::string xml = raw;
    free(raw);
    pt::ptree tree = ParseXml(xml, "backup XML");
    std::map<std::string, std::pair<std::string, std::string>> exported;  // disk -> (export, bitmap)
    for (const auto& [tag, node] : tree.get_child("domainbackup.disks")) {
      if (tag != "disk") continue;
      exported[node.get<std::string>("<xmlattr>.name", "")] = {node.get<std::string>("<xmlattr>.exportname", ""),
                                                              node.get<std::string>("<xmlattr>.exportbitmap", "")};
    }
    for (size_t i = 0; i < disks.size(); ++i) {
      auto it = exported.find(disks[i].name);
      if (it == exported.end() || it->second.first.empty()) {
        throw Error(ErrorKind::kInternal, "libvirt did not export disk " + disks[i].name);
      }
      std::string bitmap = plans[i].incremental ? it->second.second : "";
      NbdSource source{socket, it->second.first, bitmap};
      if (tcp) {
        source.tcp_address = JoinNbdTcpAddress(tcp->host, static_cast<uint16_t>(port));
        if (tcp->tls) {
          source.tls_x509_dir = tcp->tls_x509_dir;
        } else {
          source.plaintext = true;
        }
      }
      exports_.push_back({disks[i], source, plans[i]});
    }
  }

  void StartShutOff(const std::vector<HostDisk>& disks, std::vector<CbtPlan> plans) {
    if (host_.remote()) host_.RefuseShutOffRemote();
    MakeSessionDir();
    for (size_t i = 0; i < disks.size(); ++i) {
      CbtPlan& p = plans[i];
      // Offline nothing rotates: the point keeps the chain's checkpoint, whose
      // bitmap (a superset of the changes since this point) the next run uses.
      if (p.incremental) {
        p.new_bitmap = p.previous_bitmap;
        p.generation = p.previous_bitmap.substr(p.previous_bitmap.rfind('-') + 1);
      } else {
        p.new_bitmap.clear();
        p.generation.clear();
        p.reason = (p.reason.empty() ? "" : p.reason + "; ") + "domain is shut off";
      }
      std::string socket = dir_ + "/" + disks[i].name + ".sock";
      std::vector<std::string> argv = {"qemu-nbd", "--read-only", "--format=" + disks[i].format,
                                       "--socket=" + socket, "--export-name=" + disks[i].name, "--shared=2"};
      if (p.incremental) argv.push_back("--bitmap=" + p.previous_bitmap);
      argv.push_back(disks[i].identity);
      servers_.push_back(ChildProcess::Spawn(argv, dir_ + "/" + disks[i].name + ".log"));
      WaitForSocket(socket, servers_.back(), dir_ + "/" + disks[i].name + ".log");
      exports_.push_back({disks[i], NbdSource{socket, disks[i].name, p.incremental ? p.previous_bitmap : ""}, p});
    }
    plans_ = plans;
  }

  const std::vector<ExportedDisk>& exports() const override { return exports_; }

  bool End() override {
    bool ok = true;
    if (job_running_) {
      if (virDomainAbortJob(host_.domain()) != 0) {
        LogWarning("ending the backup job of domain " + host_.xml().name + ": " + LibvirtError());
        ok = false;
      }
      job_running_ = false;
      // libvirt tears the job down after the call returns (export, scratch
      // files): let it finish before the session directory goes.
      for (int i = 0; i < 200; ++i) {
        char* xml = virDomainBackupGetXMLDesc(host_.domain(), 0);
        if (!xml) {
          virResetLastError();
          break;
        }
        free(xml);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    for (auto& s : servers_) s.Terminate();
    servers_.clear();
    if (!dir_.empty() && PathExists(dir_)) {
      try {
        RemoveTree(dir_);
      } catch (const Error& e) {
        LogWarning(e.what());
      }
    }
    lock_ = FileLock();
    ::unlink(SessionLockPath(host_.options().paths, session_).c_str());
    return ok;
  }

  void FinishCbt(bool success) override {
    if (!host_.running()) return;  // nothing was started offline
    std::set<std::string> drop;
    for (const auto& p : plans_) {
      if (success && p.incremental) drop.insert(p.previous_bitmap);
      // Deleting the new checkpoint merges its bitmap into its parent, which
      // then again covers every change since the last point.
      if (!success && !p.new_bitmap.empty() && checkpoint_created_) drop.insert(p.new_bitmap);
    }
    for (const auto& name : drop) {
      try {
        host_.DeleteCheckpoint(name);
      } catch (const Error& e) {
        LogWarning(std::string(e.what()) + " (the next backup of this chain will sort it out)");
      }
    }
  }

 private:
  void MakeSessionDir() {
    // Locked before the directory exists, and never visible unlocked. No "vm"
    // in the record: QMP hunters then treat a lock left without its
    // directory as unknown and remove it.
    lock_ = CreateSessionLock(host_.options().paths, session_,
                              "ferry-session " + session_ + "\nlibvirt " + host_.xml().uuid + "\npid " +
                                  std::to_string(::getpid()) + "\n");
    if (dir_.empty()) return;  // remote: nothing of the session is on this machine but its lock
    MakeDirectory(dir_, 0700);
    // QEMU, running as its own user, creates the socket and scratch files here.
    uid_t uid = host_.xml().qemu_uid;
    gid_t gid = host_.xml().qemu_gid;
    if (!host_.xml().has_dac_label) {
      if (struct passwd* pw = ::getpwnam("libvirt-qemu")) {
        uid = pw->pw_uid;
        gid = pw->pw_gid;
      }
    }
    if (host_.running() && ::chown(dir_.c_str(), uid, gid) != 0) {
      throw ErrnoError("handing " + dir_ + " to QEMU's user", errno);
    }
  }

  bool TryBegin(const std::vector<HostDisk>& disks, const std::vector<CbtPlan>& plans, const std::string& socket,
                uint16_t port, std::string* error) {
    const std::optional<LibvirtTcpExport>& tcp = host_.options().tcp_export;
    std::ostringstream backup, checkpoint;
    if (tcp) {
      backup << "<domainbackup mode='pull'><server transport='tcp' name='" << XmlEscape(tcp->host) << "' port='"
             << port << "'" << (tcp->tls ? " tls='yes'" : "") << "/><disks>";
    } else {
      backup << "<domainbackup mode='pull'><server transport='unix' socket='" << XmlEscape(socket) << "'/><disks>";
    }
    checkpoint << "<domaincheckpoint><name>" << XmlEscape(plans.empty() ? "" : plans[0].new_bitmap)
               << "</name><disks>";
    bool any_checkpoint = false;
    for (const auto& d : host_.vm().disks) {
      auto it = std::find_if(disks.begin(), disks.end(), [&](auto& x) { return x.name == d.name; });
      if (it == disks.end()) {
        backup << "<disk name='" << XmlEscape(d.name) << "' backup='no'/>";
        checkpoint << "<disk name='" << XmlEscape(d.name) << "' checkpoint='no'/>";
        continue;
      }
      const CbtPlan& p = plans[static_cast<size_t>(it - disks.begin())];
      // Remote: in the host's scratch directory, else beside the image (what
      // libvirt's own default would be; libvirt 9.0 insists on a path). The
      // files are libvirt's: it removes them when the job ends.
      std::string scratch;
      if (!dir_.empty()) {
        scratch = dir_ + "/" + d.name + ".scratch";
      } else if (tcp && !tcp->scratch_dir.empty()) {
        scratch = tcp->scratch_dir + "/" + session_ + "-" + d.name + ".scratch";
      } else if (!d.identity.empty() && !d.identity.starts_with("/dev/")) {
        scratch = d.identity + "." + TcpExportName(session_, d.name) + ".scratch";
      } else {
        throw Error(ErrorKind::kEnvironment, "domain " + host_.xml().name + ", disk " + d.name + " (" +
                                                 (d.identity.empty() ? "no image file" : d.identity) +
                                                 "): no directory on the host for its scratch file; give "
                                                 "libvirt-scratch-dir (docs/worker.md, \"Remote libvirt\")");
      }
      backup << "<disk name='" << XmlEscape(d.name) << "' backup='yes' type='file' backupmode='"
             << (p.incremental ? "incremental' incremental='" + XmlEscape(p.previous_bitmap) : std::string("full"))
             << "'";
      if (tcp) backup << " exportname='" << XmlEscape(TcpExportName(session_, d.name)) << "'";
      backup << ">";
      backup << "<scratch file='" << XmlEscape(scratch) << "'/></disk>";
      checkpoint << "<disk name='" << XmlEscape(d.name) << "' checkpoint='" << (d.cbt_capable ? "bitmap" : "no")
                 << "'/>";
      any_checkpoint |= d.cbt_capable;
    }
    backup << "</disks></domainbackup>";
    checkpoint << "</disks></domaincheckpoint>";
    // All disks share the run's generation, so plans[0].new_bitmap names the
    // one checkpoint of this run.
    std::string cp = checkpoint.str();
    if (virDomainBackupBegin(host_.domain(), backup.str().c_str(), any_checkpoint ? cp.c_str() : nullptr, 0) != 0) {
      *error = LibvirtError();
      return false;
    }
    checkpoint_created_ = any_checkpoint;
    return true;
  }

  static void WaitForSocket(const std::string& socket, ChildProcess& server, const std::string& log) {
    for (int i = 0; i < 200; ++i) {
      struct stat st;
      if (::stat(socket.c_str(), &st) == 0) return;
      if (!server.running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    std::string text;
    try {
      text = ReadWholeFile(log);
    } catch (const Error&) {
    }
    // "Failed to get shared 'write' lock": the domain is starting or running.
    throw Error(ErrorKind::kRetryable, "qemu-nbd did not start for " + socket + ": " + text);
  }

  LibvirtHost& host_;
  std::string session_;
  std::string dir_;
  FileLock lock_;
  bool job_running_ = false;
  bool checkpoint_created_ = false;
  std::vector<CbtPlan> plans_;
  std::vector<ChildProcess> servers_;
  std::vector<ExportedDisk> exports_;
};

std::unique_ptr<HostBackup> LibvirtHost::BeginBackup(const std::vector<HostDisk>& disks,
                                                     const std::vector<CbtPlan>& plans) {
  ApplyPendingDrops(plans);
  auto backup = std::make_unique<LibvirtHostBackup>(*this, NewSnapshotSessionId());
  if (running_) {
    backup->StartRunning(disks, plans);
  } else {
    backup->StartShutOff(disks, plans);
  }
  return backup;
}

}  // namespace

std::vector<InventoryEntry> LibvirtInventory(const std::string& uri) {
  VirPtr<virConnect> conn = Connect(uri);
  virDomainPtr* domains = nullptr;
  int n = virConnectListAllDomains(conn.get(), &domains, 0);
  if (n < 0) ThrowLibvirt("listing the domains at " + uri);
  std::vector<InventoryEntry> out;
  for (int i = 0; i < n; ++i) {
    VirPtr<virDomain> dom(domains[i]);
    const char* name = virDomainGetName(dom.get());
    InventoryEntry e;
    e.source = uri + " domain " + (name ? name : "?");
    try {
      int state = 0;
      if (virDomainGetState(dom.get(), &state, nullptr, 0) != 0) ThrowLibvirt("state of domain " + std::string(name ? name : "?"));
      e.vm = DescribeDomain(dom.get(), ParseDomainXml(DomainXmlDesc(dom.get(), 0)), state);
    } catch (const std::exception& err) {
      e.problem = err.what();  // gone meanwhile, or unreadable: reported, the rest still listed
    }
    out.push_back(std::move(e));
  }
  ::free(domains);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.source < b.source; });
  return out;
}

std::string LibvirtUriHost(const std::string& uri) {
  size_t scheme = uri.find("://");
  if (scheme == std::string::npos) return "";
  std::string authority = uri.substr(scheme + 3, uri.find_first_of("/?", scheme + 3) - (scheme + 3));
  if (size_t at = authority.rfind('@'); at != std::string::npos) authority = authority.substr(at + 1);
  if (authority.starts_with("[")) {
    size_t close = authority.find(']');
    return close == std::string::npos ? authority.substr(1) : authority.substr(1, close - 1);
  }
  return authority.substr(0, authority.find(':'));
}

std::unique_ptr<Host> OpenLibvirtHost(const LibvirtHostOptions& options) {
  return std::make_unique<LibvirtHost>(options);
}

}  // namespace ferry::worker
