#include "ferry/coordinator/appliance_deployer.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/subprocess.h"
#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/json_input.h"
#include "ferry/coordinator/worker_records.h"
#include "libvirt_util.h"

namespace json = boost::json;

namespace ferry::coordinator {

using worker::Connect;
using worker::LibvirtError;
using worker::VirPtr;
using worker::XmlEscape;

namespace {

const char kImageFile[] = "ferry-appliance.qcow2";

// Keys ferry-worker reads that the coordinator sets itself.
const std::set<std::string> kReservedKeys = {"coordinator", "token-file", "host"};

// `name = value` lines (blank lines and # comments allowed), none setting
// what the coordinator writes, one of them saying how to reach the VMs.
void CheckWorkerConfig(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  int number = 0;
  bool reaches_vms = false;
  while (std::getline(in, line)) {
    ++number;
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    size_t eq = line.find('=');
    std::string where = "line " + std::to_string(number) + ": ";
    if (eq == std::string::npos) throw FieldError("worker_config", where + "is not 'name = value'");
    std::string key = line.substr(start, eq - start);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    if (key.empty()) throw FieldError("worker_config", where + "has no name before '='");
    for (char ch : key)
      if (!std::islower(static_cast<unsigned char>(ch)) && !std::isdigit(static_cast<unsigned char>(ch)) && ch != '-')
        throw FieldError("worker_config", where + "'" + key + "' is not an option name (docs/worker.md)");
    if (kReservedKeys.count(key))
      throw FieldError("worker_config", where + "'" + key +
                                            "' is set by the coordinator (coordinator_address, the worker's token, "
                                            "the host's name); leave it out");
    if (key == "libvirt" || key == "qmp-dir" || key == "qmp-ssh") reaches_vms = true;
  }
  if (!reaches_vms)
    throw FieldError("worker_config",
                     "must say how the appliance's worker reaches the host's VMs: 'libvirt = URI' "
                     "(e.g. qemu+ssh://root@host/system), 'qmp-ssh = [USER@]HOST' or 'qmp-dir = DIR' (docs/worker.md)");
}

void CheckAddress(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
    throw FieldError("coordinator_address", "must be HOST:PORT, e.g. coordinator.example.net:8081");
  std::string port = address.substr(colon + 1);
  for (char ch : port)
    if (!std::isdigit(static_cast<unsigned char>(ch))) throw FieldError("coordinator_address", "port '" + port + "' is not a number");
  if (port.size() > 5 || std::stoi(port) < 1 || std::stoi(port) > 65535)
    throw FieldError("coordinator_address", "port " + port + " is not between 1 and 65535");
  for (char ch : address)
    if (std::isspace(static_cast<unsigned char>(ch)) || ch == '#' || ch == '=')
      throw FieldError("coordinator_address", "must be HOST:PORT without spaces");
}

// Host names may hold spaces; libvirt object names here do not.
std::string Slug(const std::string& name) {
  std::string out;
  for (char ch : name) out += (ch == ' ') ? '_' : ch;
  return out;
}

bool LocalUri(const std::string& uri) {
  size_t scheme = uri.find("://");
  return scheme != std::string::npos && uri.compare(scheme, 4, ":///") == 0;
}

// docs/../shared lab rule: a real kernel crawls under nested, paravirtualised
// KVM (kvm_pvm), so the appliance runs under TCG there, and wherever /dev/kvm
// is missing. A remote host says whether it offers KVM in its capabilities.
std::string DomainType(virConnectPtr conn, const std::string& uri) {
  if (LocalUri(uri)) {
    bool kvm = ::access("/dev/kvm", R_OK | W_OK) == 0 && ::access("/sys/module/kvm_pvm", F_OK) != 0;
    return kvm ? "kvm" : "qemu";
  }
  char* caps = virConnectGetCapabilities(conn);
  if (!caps) return "qemu";
  bool kvm = std::string(caps).find("<domain type='kvm'") != std::string::npos;
  free(caps);
  return kvm ? "kvm" : "qemu";
}

VirPtr<virStoragePool> LookupPool(virConnectPtr conn, const std::string& name) {
  virStoragePoolPtr pool = virStoragePoolLookupByName(conn, name.c_str());
  if (!pool) throw FieldError("pool", "libvirt has no storage pool '" + name + "' (" + LibvirtError() + "); the coordinator creates none");
  VirPtr<virStoragePool> owned(pool);
  if (virStoragePoolIsActive(pool) != 1) throw FieldError("pool", "storage pool '" + name + "' is not active");
  return owned;
}

VirPtr<virConnect> ConnectOrFieldError(const std::string& uri) {
  try {
    return Connect(uri);
  } catch (const Error& e) {
    throw FieldError("libvirt_uri", e.what());
  }
}

// Creates volume `name` in `pool` and uploads `file` into it through a
// virStream: the way to put bytes onto a host the coordinator reaches only
// through its libvirtd.
void UploadVolume(virConnectPtr conn, virStoragePoolPtr pool, const std::string& name, const std::string& file) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) throw ErrnoError("reading " + file, errno);
  std::string xml = "<volume><name>" + XmlEscape(name) + "</name><capacity unit='bytes'>" +
                    std::to_string(st.st_size) + "</capacity><target><format type='raw'/></target></volume>";
  VirPtr<virStorageVol> vol(virStorageVolCreateXML(pool, xml.c_str(), 0));
  if (!vol) throw Error(ErrorKind::kEnvironment, "creating volume " + name + ": " + LibvirtError());
  VirPtr<virStream> stream(virStreamNew(conn, 0));
  if (!stream) throw Error(ErrorKind::kEnvironment, "a stream for volume " + name + ": " + LibvirtError());
  if (virStorageVolUpload(vol.get(), stream.get(), 0, static_cast<unsigned long long>(st.st_size), 0) != 0)
    throw Error(ErrorKind::kEnvironment, "uploading into volume " + name + ": " + LibvirtError());
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    virStreamAbort(stream.get());
    throw ErrnoError("opening " + file, errno);
  }
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      int err = errno;
      ::close(fd);
      virStreamAbort(stream.get());
      throw ErrnoError("reading " + file, err);
    }
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      int sent = virStreamSend(stream.get(), buf.data() + off, static_cast<size_t>(n - off));
      if (sent < 0) {
        ::close(fd);
        std::string why = LibvirtError();
        virStreamAbort(stream.get());
        throw Error(ErrorKind::kEnvironment, "uploading " + file + " into volume " + name + ": " + why);
      }
      off += sent;
    }
  }
  ::close(fd);
  if (virStreamFinish(stream.get()) != 0)
    throw Error(ErrorKind::kEnvironment, "finishing the upload into volume " + name + ": " + LibvirtError());
}

void DeleteVolumeIfThere(virStoragePoolPtr pool, const std::string& name) {
  VirPtr<virStorageVol> vol(virStorageVolLookupByName(pool, name.c_str()));
  if (!vol) {
    virResetLastError();
    return;
  }
  if (virStorageVolDelete(vol.get(), 0) != 0)
    throw Error(ErrorKind::kEnvironment, "deleting volume " + name + ": " + LibvirtError());
}

void DestroyAndUndefine(virConnectPtr conn, const std::string& domain) {
  VirPtr<virDomain> dom(virDomainLookupByName(conn, domain.c_str()));
  if (!dom) {
    virResetLastError();
    return;
  }
  if (virDomainIsActive(dom.get()) == 1 && virDomainDestroy(dom.get()) != 0)
    throw Error(ErrorKind::kEnvironment, "destroying domain " + domain + ": " + LibvirtError());
  if (virDomainUndefine(dom.get()) != 0)
    throw Error(ErrorKind::kEnvironment, "undefining domain " + domain + ": " + LibvirtError());
}

std::string ConfigFile(const std::string& host, const std::string& address, const std::string& extra) {
  std::string text = "# ferry-worker's configuration, written by ferry-coordinator for host " + host + "\n" +
                     "coordinator = " + address + "\n" + "token-file = token\n" + "host = " + host + "\n";
  if (!extra.empty()) text += extra + (extra.back() == '\n' ? "" : "\n");
  return text;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw ErrnoError("writing " + path, errno);
}

// The config drive (docs/appliance.md, "Configuration"): a 4 MiB vfat volume
// labelled cidata holding the files in ferry/.
void BuildConfigDrive(const std::string& dir, const std::vector<std::string>& names, const std::string& image) {
  RunProgram({"mkfs.fat", "-C", "-n", "cidata", image, "4096"});
  RunProgram({"env", "MTOOLS_SKIP_CHECK=1", "mmd", "-i", image, "::/ferry"});
  std::vector<std::string> argv = {"env", "MTOOLS_SKIP_CHECK=1", "mcopy", "-i", image};
  for (const std::string& name : names) argv.push_back(dir + "/" + name);
  argv.push_back("::/ferry/");
  RunProgram(argv);
}

std::string InterfaceXml(const json::object& network) {
  std::string type(network.at("type").as_string());
  std::string source = network.contains("source") ? std::string(network.at("source").as_string()) : "";
  if (type == "user") return "<interface type='user'><model type='virtio'/></interface>";
  if (type == "network")
    return "<interface type='network'><source network='" + XmlEscape(source) + "'/><model type='virtio'/></interface>";
  return "<interface type='bridge'><source bridge='" + XmlEscape(source) + "'/><model type='virtio'/></interface>";
}

}  // namespace

json::object ApplianceSpec::NetworkJson() const {
  json::object out{{"type", network_type}};
  if (network_type != "user") out["source"] = network_source;
  return out;
}

ApplianceSpec ParseApplianceSpec(const std::string& body) {
  json::object object = ParseRequestObject(body);
  FieldReader f(object, "");
  ApplianceSpec spec;
  spec.libvirt_uri = *f.String("libvirt_uri", true, 1024);
  if (spec.libvirt_uri.find("://") == std::string::npos)
    throw FieldError("libvirt_uri", "must be a libvirt URI such as qemu:///system or qemu+ssh://root@host/system");
  if (auto pool = f.Name("pool", false)) spec.pool = *pool;
  if (auto network = f.Object("network", false)) {
    spec.network_type = *network->String("type", true, 16);
    if (spec.network_type != "user" && spec.network_type != "network" && spec.network_type != "bridge")
      throw FieldError("network.type", "'" + spec.network_type + "' is not one of user, network, bridge");
    auto source = network->Name("source", spec.network_type != "user");
    if (spec.network_type == "user" && source)
      throw FieldError("network.source", "user-mode networking takes no source");
    spec.network_source = source.value_or("");
    network->Finish();
  }
  spec.memory_mib = f.Int("memory_mib", false, 256, 65536).value_or(spec.memory_mib);
  spec.coordinator_address = *f.String("coordinator_address", true, 300);
  CheckAddress(spec.coordinator_address);
  spec.worker_config = f.String("worker_config", false, 16384).value_or("");
  CheckWorkerConfig(spec.worker_config);
  spec.idle_shutdown_s = f.Int("idle_shutdown_s", false, 0, 30 * 86400).value_or(spec.idle_shutdown_s);
  if (const json::value* files = f.Member("files", false)) {
    if (!files->is_object()) throw FieldError("files", "must be an object of file name to contents");
    size_t total = 0;
    for (const auto& [key, value] : files->as_object()) {
      std::string name(key), field = "files." + name;
      // vfat 8.3-safe enough and never a path: letters, digits, . _ -
      bool ok = !name.empty() && name.size() <= 64 && name[0] != '.';
      for (char ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') ok = false;
      if (!ok) throw FieldError(field, "a file name is 1-64 letters, digits, '.', '_' or '-', not starting with '.'");
      if (name == "config" || name == "token")
        throw FieldError(field, "'" + name + "' is written by the coordinator");
      if (!value.is_string()) throw FieldError(field, "must be the file's contents, a string");
      total += value.as_string().size();
      if (total > 1024 * 1024) throw FieldError(field, "the files come to more than 1 MiB");
      spec.files[name] = std::string(value.as_string());
    }
  }
  f.Finish();
  return spec;
}

struct ApplianceDeployer::Row {
  int64_t host_id = 0;
  std::string host;
  std::optional<int64_t> worker_id;
  std::string domain, uri, pool, image_volume, config_volume;
  json::object network;
  int64_t memory_mib = 0;
  std::string address, worker_config;
  int64_t idle_shutdown_s = 0;
  std::string state, reason;
  int64_t state_changed_at = 0, last_busy_at = 0;
  std::string worker_state;
  bool busy = false;
};

namespace {
const char kRowSelect[] =
    "SELECT a.host_id, h.name, a.worker_id, a.domain, a.libvirt_uri, a.pool, a.image_volume, a.config_volume, "
    "a.network, a.memory_mib, a.coordinator_address, a.worker_config, a.idle_shutdown_s, a.state, "
    "a.state_changed_at, a.last_busy_at, COALESCE(w.state, ''), "
    // Work for its host: a snapshot of one of its VMs not yet released (its
    // disk tasks run while it is ready), or a restore onto it not ended.
    "EXISTS (SELECT 1 FROM snapshots s WHERE s.host_id = a.host_id "
    "        AND s.state IN ('pending', 'taking', 'ready', 'releasing')) OR "
    "EXISTS (SELECT 1 FROM restores r JOIN tasks t ON t.id = r.task_id WHERE r.host_id = a.host_id "
    "        AND t.state IN ('waiting', 'queued', 'running')), a.reason "
    "FROM appliances a JOIN hosts h ON h.id = a.host_id LEFT JOIN workers w ON w.id = a.worker_id ";
}  // namespace

ApplianceDeployer::ApplianceDeployer(SessionRunner& runner, std::string db_path, std::string image_dir, Clock clock,
                                     ApplianceTiming timing)
    : runner_(runner), db_path_(std::move(db_path)), image_dir_(std::move(image_dir)),
      work_dir_((std::filesystem::path(db_path_).parent_path() / "appliance-work").string()), clock_(std::move(clock)),
      timing_(timing) {}

ApplianceDeployer::~ApplianceDeployer() { Stop(); }

std::optional<ApplianceDeployer::Row> ApplianceDeployer::ReadRow(int64_t host_id) {
  if (!reader_) reader_.emplace(Database::Open(db_path_, true));
  Statement s = reader_->Prepare(std::string(kRowSelect) + "WHERE a.host_id = ?");
  s.Bind(1, host_id);
  if (!s.Step()) return std::nullopt;
  Row r;
  r.host_id = s.Int(0);
  r.host = s.Text(1);
  r.worker_id = s.OptInt(2);
  r.domain = s.Text(3);
  r.uri = s.Text(4);
  r.pool = s.Text(5);
  r.image_volume = s.Text(6);
  r.config_volume = s.Text(7);
  r.network = json::parse(s.Text(8)).as_object();
  r.memory_mib = s.Int(9);
  r.address = s.Text(10);
  r.worker_config = s.Text(11);
  r.idle_shutdown_s = s.Int(12);
  r.state = s.Text(13);
  r.state_changed_at = s.Int(14);
  r.last_busy_at = s.Int(15);
  r.worker_state = s.Text(16);
  r.busy = s.Int(17) != 0;
  r.reason = s.Text(18);
  return r;
}

void ApplianceDeployer::SetState(int64_t host_id, const std::string& state, const std::string& reason,
                                 std::optional<int64_t> last_busy) {
  int64_t now = clock_();
  runner_.Write([&](Database& db) {
    db.Prepare("UPDATE appliances SET state_changed_at = CASE WHEN state != ?1 THEN ?3 ELSE state_changed_at END, "
               "state = ?1, reason = ?2, last_busy_at = COALESCE(?4, last_busy_at) WHERE host_id = ?5")
        .Bind(1, state).Bind(2, reason).Bind(3, now).Bind(4, last_busy).Bind(5, host_id).Run();
    return 0;
  });
}

AppliancePlan ApplianceDeployer::Prepare(const std::string& host_name, const ApplianceSpec& spec) {
  std::string image = image_dir_ + "/" + kImageFile;
  if (::access(image.c_str(), R_OK) != 0)
    throw ConflictError("the appliance image " + image + " is not readable (" + std::strerror(errno) +
                        "); build it with scripts/build-image " + image_dir_);
  AppliancePlan plan;
  plan.domain = "ferry-appliance-" + Slug(host_name);
  plan.image_volume = plan.domain + ".qcow2";
  plan.config_volume = plan.domain + "-cidata.img";
  plan.worker_name = "appliance-" + host_name;
  VirPtr<virConnect> conn = ConnectOrFieldError(spec.libvirt_uri);
  VirPtr<virStoragePool> pool = LookupPool(conn.get(), spec.pool);
  if (spec.network_type == "network") {
    VirPtr<virNetwork> net(virNetworkLookupByName(conn.get(), spec.network_source.c_str()));
    if (!net)
      throw FieldError("network.source", "libvirt has no network '" + spec.network_source + "' (" + LibvirtError() + ")");
  }
  VirPtr<virDomain> dom(virDomainLookupByName(conn.get(), plan.domain.c_str()));
  virResetLastError();
  if (dom) throw ConflictError("libvirt at " + spec.libvirt_uri + " has a domain '" + plan.domain + "' already");
  for (const std::string& name : {plan.image_volume, plan.config_volume}) {
    VirPtr<virStorageVol> vol(virStorageVolLookupByName(pool.get(), name.c_str()));
    virResetLastError();
    if (vol) throw ConflictError("storage pool '" + spec.pool + "' has a volume '" + name + "' already");
  }
  return plan;
}

void ApplianceDeployer::Deploy(int64_t host_id, std::string token, std::map<std::string, std::string> files) {
  {
    std::lock_guard lock(queue_mu_);
    queue_.push_back(Pending{host_id, std::move(token), std::move(files)});
  }
  wake_.notify_all();
}

void ApplianceDeployer::Start() {
  {
    std::lock_guard lock(op_mu_);
    if (!reader_) reader_.emplace(Database::Open(db_path_, true));
    std::error_code ec;
    std::filesystem::remove_all(work_dir_, ec);
    if (ec) throw ErrnoError("emptying " + work_dir_, ec.value());
    if (::mkdir(work_dir_.c_str(), 0700) != 0) throw ErrnoError("creating " + work_dir_, errno);
    // A deployment the last run did not finish: its token is gone with it.
    std::vector<int64_t> interrupted;
    Statement s = reader_->Prepare("SELECT host_id FROM appliances WHERE state = 'deploying'");
    while (s.Step()) interrupted.push_back(s.Int(0));
    s.Reset();
    for (int64_t host_id : interrupted) {
      std::optional<Row> row = ReadRow(host_id);
      if (!row) continue;
      try {
        Undo(*row);
      } catch (const Error& e) {
        LogWarning("appliance of host " + row->host + ": cleaning up an interrupted deployment: " + e.what());
      }
      SetState(host_id, "failed", "the coordinator stopped during the deployment; deploy it again");
    }
  }
  thread_ = std::thread([this] { Run(); });
}

void ApplianceDeployer::Stop() {
  {
    std::lock_guard lock(queue_mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ApplianceDeployer::Run() {
  for (;;) {
    std::optional<Pending> next;
    {
      std::unique_lock lock(queue_mu_);
      if (queue_.empty()) wake_.wait_for(lock, std::chrono::milliseconds(timing_.tick_ms), [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      if (!queue_.empty()) {
        next = std::move(queue_.front());
        queue_.pop_front();
      }
    }
    std::lock_guard lock(op_mu_);
    try {
      if (next) RunDeployment(*next);
      TickLocked();
    } catch (const std::exception& e) {
      LogError(std::string("appliances: ") + e.what());
    }
  }
}

void ApplianceDeployer::Undo(const Row& row) {
  std::string errors;
  try {
    VirPtr<virConnect> conn = Connect(row.uri);
    try {
      DestroyAndUndefine(conn.get(), row.domain);
    } catch (const Error& e) {
      errors += std::string(e.what()) + "; ";
    }
    VirPtr<virStoragePool> pool(virStoragePoolLookupByName(conn.get(), row.pool.c_str()));
    if (pool) {
      for (const std::string& name : {row.image_volume, row.config_volume}) {
        try {
          DeleteVolumeIfThere(pool.get(), name);
        } catch (const Error& e) {
          errors += std::string(e.what()) + "; ";
        }
      }
    }
  } catch (const Error& e) {
    errors += std::string(e.what()) + "; ";
  }
  if (row.worker_id) {
    runner_.Write([&](Database& db) {
      DeleteWorkerRecord(db, *row.worker_id);
      return 0;
    });
  }
  if (!errors.empty()) throw Error(ErrorKind::kEnvironment, errors.substr(0, errors.size() - 2));
}

void ApplianceDeployer::RunDeployment(const Pending& pending) {
  const int64_t host_id = pending.host_id;
  std::optional<Row> row = ReadRow(host_id);
  if (!row || row->state != "deploying") return;
  std::string dir;
  try {
    LogInfo("appliance of host " + row->host + ": deploying domain " + row->domain + " onto " + row->uri);
    VirPtr<virConnect> conn = Connect(row->uri);
    VirPtr<virStoragePool> pool(virStoragePoolLookupByName(conn.get(), row->pool.c_str()));
    if (!pool) throw Error(ErrorKind::kNotFound, "storage pool '" + row->pool + "': " + LibvirtError());

    std::string tmpl = work_dir_ + "/deploy-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw ErrnoError("creating a directory in " + work_dir_, errno);
    dir = tmpl;
    WriteFile(dir + "/config", ConfigFile(row->host, row->address, row->worker_config));
    WriteFile(dir + "/token", pending.token + "\n");
    std::vector<std::string> names = {"config", "token"};
    for (const auto& [name, contents] : pending.files) {
      WriteFile(dir + "/" + name, contents);
      names.push_back(name);
    }
    BuildConfigDrive(dir, names, dir + "/cidata.img");

    UploadVolume(conn.get(), pool.get(), row->image_volume, image_dir_ + "/" + kImageFile);
    UploadVolume(conn.get(), pool.get(), row->config_volume, dir + "/cidata.img");
    std::filesystem::remove_all(dir);
    dir.clear();

    std::string type = DomainType(conn.get(), row->uri);
    std::string serial = "<serial type='pty'/>";
    // On a system libvirtd the console is kept in its log directory too.
    if (row->uri.size() >= 7 && row->uri.compare(row->uri.size() - 7, 7, "/system") == 0)
      serial = "<serial type='pty'><log file='/var/log/libvirt/qemu/" + XmlEscape(row->domain) +
               "-console.log' append='off'/></serial>";
    std::string xml =
        "<domain type='" + type + "'><name>" + XmlEscape(row->domain) + "</name>" +
        "<description>Ferry worker appliance of host " + XmlEscape(row->host) + " (made by ferry-coordinator)</description>" +
        "<memory unit='MiB'>" + std::to_string(row->memory_mib) + "</memory><vcpu>1</vcpu>" +
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/></features>" +
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash><devices>" +
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='" + XmlEscape(row->pool) +
        "' volume='" + XmlEscape(row->image_volume) + "'/><target dev='vda' bus='virtio'/></disk>" +
        "<disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='" + XmlEscape(row->pool) +
        "' volume='" + XmlEscape(row->config_volume) + "'/><target dev='vdb' bus='virtio'/><readonly/></disk>" +
        InterfaceXml(row->network) + serial + "<console type='pty'/></devices></domain>";
    VirPtr<virDomain> dom(virDomainDefineXML(conn.get(), xml.c_str()));
    if (!dom) throw Error(ErrorKind::kEnvironment, "defining domain " + row->domain + ": " + LibvirtError());
    if (virDomainCreate(dom.get()) != 0)
      throw Error(ErrorKind::kEnvironment, "starting domain " + row->domain + ": " + LibvirtError());
    SetState(host_id, "starting", "", clock_());
    LogInfo("appliance of host " + row->host + ": domain " + row->domain + " (" + type + ") started");
  } catch (const Error& e) {
    if (!dir.empty()) std::filesystem::remove_all(dir);
    std::string reason = e.what();
    LogWarning("appliance of host " + row->host + ": deployment failed: " + reason);
    try {
      Undo(*row);
    } catch (const Error& undo) {
      reason += " (and cleaning up: " + std::string(undo.what()) + ")";
    }
    SetState(host_id, "failed", reason);
  }
}

void ApplianceDeployer::Remove(int64_t host_id) {
  std::lock_guard lock(op_mu_);
  std::optional<Row> row = ReadRow(host_id);
  if (!row) throw Error(ErrorKind::kNotFound, "host " + std::to_string(host_id) + " has no appliance");
  if (row->state == "deploying") throw ConflictError("the appliance of host '" + row->host + "' is being deployed; try again once it is not");
  // A failed deployment left nothing in libvirt; what else failed (its domain
  // gone missing) may have left its volumes: those go too when libvirt answers.
  VirPtr<virConnect> conn;
  try {
    conn = Connect(row->uri);
  } catch (const Error& e) {
    if (row->state != "failed") throw ConflictError(std::string(e.what()) + "; nothing was removed");
  }
  if (conn) {
    DestroyAndUndefine(conn.get(), row->domain);
    VirPtr<virStoragePool> pool(virStoragePoolLookupByName(conn.get(), row->pool.c_str()));
    virResetLastError();
    if (pool)
      for (const std::string& name : {row->image_volume, row->config_volume}) DeleteVolumeIfThere(pool.get(), name);
    // Its worker's connection ends with the domain: wait until the runner
    // has seen it go, so the record goes only once nothing refers to it live.
    for (int i = 0; i < 100 && row->worker_id; ++i) {
      std::optional<Row> now = ReadRow(host_id);
      if (!now || now->worker_state != "connected") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  runner_.Write([&](Database& db) {
    if (row->worker_id) DeleteWorkerRecord(db, *row->worker_id);
    db.Prepare("DELETE FROM appliances WHERE host_id = ?").Bind(1, host_id).Run();
    return 0;
  });
  LogInfo("appliance of host " + row->host + ": removed (domain " + row->domain + ", its volumes and worker)");
}

// The lifecycle, once a tick (see the top of the header).
void ApplianceDeployer::TickLocked() {
  std::vector<int64_t> hosts;
  {
    if (!reader_) reader_.emplace(Database::Open(db_path_, true));
    Statement s = reader_->Prepare("SELECT host_id FROM appliances WHERE state NOT IN ('deploying', 'failed')");
    while (s.Step()) hosts.push_back(s.Int(0));
  }
  std::map<std::string, VirPtr<virConnect>>& connections = connections_;
  for (int64_t host_id : hosts) {
    std::optional<Row> row = ReadRow(host_id);
    if (!row) continue;
    int64_t now = clock_();
    auto set = [&](const std::string& state, const std::string& reason, std::optional<int64_t> busy = std::nullopt) {
      if (state != row->state) LogInfo("appliance of host " + row->host + ": " + row->state + " -> " + state +
                                       (reason.empty() ? "" : " (" + reason + ")"));
      if (state != row->state || busy) SetState(host_id, state, reason, busy);
    };
    auto it = connections.find(row->uri);
    if (it != connections.end() && virConnectIsAlive(it->second.get()) != 1) {
      connections.erase(it);
      it = connections.end();
    }
    if (it == connections.end()) {
      try {
        it = connections.emplace(row->uri, Connect(row->uri)).first;
      } catch (const Error& e) {
        set("unreachable", e.what());
        continue;
      }
    }
    virConnectPtr conn = it->second.get();
    VirPtr<virDomain> dom(virDomainLookupByName(conn, row->domain.c_str()));
    if (!dom) {
      virResetLastError();
      set("failed", "libvirt at " + row->uri + " has no domain " + row->domain + " any more");
      continue;
    }
    int active = virDomainIsActive(dom.get());
    if (active < 0) {
      set("unreachable", "asking libvirt whether " + row->domain + " runs: " + LibvirtError());
      connections.erase(it);
      continue;
    }
    bool connected = row->worker_state == "connected";
    // Work seen: the idle time counts from here (written now and then, not every tick).
    std::optional<int64_t> busy_mark;
    if (row->busy && now - row->last_busy_at >= 5000) busy_mark = now;
    if (active == 1) {
      if (row->state == "stopping") {
        if (now - row->state_changed_at > timing_.shutdown_timeout_ms) {
          LogWarning("appliance of host " + row->host + ": still running " +
                     std::to_string(timing_.shutdown_timeout_ms / 1000) + " s after the shutdown request; destroying it");
          if (virDomainDestroy(dom.get()) != 0) set("stopping", "destroying it: " + LibvirtError());
          else set("stopped", "destroyed: it did not power off within the shutdown timeout");
        }
        continue;
      }
      if (!connected) {
        // One whose worker never registers (a wrong coordinator_address, a
        // refused token: its console says) is not left running for ever
        // while its host has no work.
        int64_t waited_ms = now - row->state_changed_at;
        int64_t limit_ms = std::max<int64_t>(row->idle_shutdown_s * 1000, timing_.register_timeout_ms);
        if (row->state == "starting" && !row->busy && row->idle_shutdown_s > 0 && waited_ms >= limit_ms) {
          if (virDomainShutdown(dom.get()) == 0)
            set("stopping", "its worker did not register within " + std::to_string(waited_ms / 1000) +
                                " s (see the domain's serial console)");
          continue;
        }
        set("starting", row->state == "running" || row->state == "idle" ? "its worker is not connected" : "", busy_mark);
        continue;
      }
      // Just registered: the idle time counts from now, not from the boot.
      if (row->state == "starting" || row->state == "unreachable") {
        row->last_busy_at = now;
        busy_mark = now;
      }
      if (row->busy) {
        set("running", "", busy_mark);
        continue;
      }
      if (busy_mark) {
        set("idle", "", busy_mark);
        continue;
      }
      int64_t idle_ms = now - row->last_busy_at;
      if (row->idle_shutdown_s > 0 && idle_ms >= row->idle_shutdown_s * 1000) {
        if (virDomainShutdown(dom.get()) != 0) {
          set("idle", "shutting it down: " + LibvirtError());
        } else {
          set("stopping", "no work for its host for " + std::to_string(idle_ms / 1000) + " s");
        }
        continue;
      }
      set("idle", "");
    } else {
      if (row->busy) {
        if (virDomainCreate(dom.get()) != 0) {
          set("stopped", "starting it for queued work: " + LibvirtError());
        } else {
          set("starting", "work for its host is queued", now);
        }
        continue;
      }
      set("stopped", row->state == "stopping" ? "shut down after idle_shutdown_s without work"
                     : row->state == "stopped" ? row->reason : "the domain is shut off");
    }
  }
}

}  // namespace ferry::coordinator
