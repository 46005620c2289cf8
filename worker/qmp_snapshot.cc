#include "ferry/worker/qmp_snapshot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "ferry/common/error.h"
#include "ferry/common/ids.h"
#include "ferry/common/log.h"

namespace json = boost::json;

namespace ferry::worker {

namespace {

constexpr char kPrefix[] = "ferry-";

std::string ObjectName(const std::string& session, size_t disk, const char* role) {
  // Node names are limited to 31 characters: "ferry-" + 8 + "-" + n + "-" + role.
  return std::string(kPrefix) + session + "-" + std::to_string(disk) + (role[0] ? "-" : "") + role;
}

// "ferry-1a2b3c4d-0-o" -> "1a2b3c4d"; "" if not one of ours.
std::string SessionOf(std::string_view name) {
  if (!name.starts_with(kPrefix)) return "";
  name.remove_prefix(sizeof kPrefix - 1);
  auto dash = name.find('-');
  if (dash != 8) return "";
  return std::string(name.substr(0, 8));
}

}  // namespace

std::string NewSnapshotSessionId() { return RandomHex(8); }

namespace {

std::string SocketPath(const SnapshotPaths& p, const std::string& session) {
  return p.host_runtime_dir + "/" + session + ".nbd";
}
// Present while the session owns QEMU's (only) NBD server.
std::string NbdServerMarker(const SnapshotPaths& p, const std::string& session) {
  return p.runtime_dir + "/" + session + ".nbd-server";
}
// TCP exports: the session's TLS-PSK keys file, in a directory of its own
// (QEMU's tls-creds-psk object takes a directory and reads keys.psk in it).
std::string TlsDir(const SnapshotPaths& p, const std::string& session) {
  return p.host_runtime_dir + "/" + session + ".tls";
}
std::string TlsObjectId(const std::string& session) { return std::string(kPrefix) + session + "-tls"; }
// The PSK identity of a session's exports.
std::string TlsIdentity(const std::string& session) { return std::string(kPrefix) + session; }

std::string OverlayPath(const SnapshotPaths& p, const std::string& session, size_t disk) {
  return p.host_scratch_dir + "/ferry-" + session + "-" + std::to_string(disk) + ".qcow2";
}

bool IsSessionId(std::string_view s) {
  return s.size() == 8 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// "ferry-1a2b3c4d-0.qcow2" -> "1a2b3c4d"; "" if not an overlay's name.
std::string SessionOfOverlay(std::string_view name) {
  if (!name.starts_with(kPrefix) || !name.ends_with(".qcow2")) return "";
  std::string_view rest = name.substr(sizeof kPrefix - 1);
  if (rest.size() < 10 || rest[8] != '-' || !IsSessionId(rest.substr(0, 8))) return "";
  std::string_view n = rest.substr(9, rest.size() - 9 - 6);
  if (n.empty() || !std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) return "";
  return std::string(rest.substr(0, 8));
}

std::string RecordText(const std::string& session, const std::string& vm_key, const std::string& qmp_address) {
  return "ferry-session " + session + "\nvm " + vm_key + "\nqmp " + qmp_address + "\npid " +
         std::to_string(::getpid()) + "\n";
}

// Rewrites a file in place (not by rename: the lock's inode must stay the
// one this process has flock()ed).
void OverwriteFile(const std::string& path, const std::string& text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (!fd.valid()) throw ErrnoError("opening " + path, errno);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    throw ErrnoError("writing " + path, errno);
  }
}

SessionRecord ParseRecord(const std::string& text) {
  SessionRecord r;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto space = line.find(' ');
    if (space == std::string::npos) continue;
    std::string key = line.substr(0, space), value = line.substr(space + 1);
    if (key == "vm") r.vm_key = value;
    if (key == "qmp") r.qmp_address = value;
    if (key == "pid") r.pid = std::atoi(value.c_str());
  }
  return r;
}

std::string StringMember(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  return it != o.end() && it->value().is_string() ? std::string(it->value().as_string()) : "";
}

// Runs a cleanup step, logging instead of throwing.
template <typename Fn>
bool Attempt(const std::string& what, Fn&& fn) {
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    LogWarning("cleanup: " + what + ": " + e.what());
    return false;
  }
}

}  // namespace

std::string SessionLockPath(const SnapshotPaths& p, const std::string& session) {
  return p.runtime_dir + "/" + session + ".lock";
}

namespace {
constexpr char kNewLockSuffix[] = ".lock.new";
}  // namespace

FileLock CreateSessionLock(const SnapshotPaths& paths, const std::string& session, const std::string& record) {
  const std::string path = SessionLockPath(paths, session);
  const std::string temp = paths.runtime_dir + "/" + session + kNewLockSuffix;
  FileLock lock = FileLock::TryAcquire(temp);
  if (!lock.held()) throw Error(ErrorKind::kInternal, "session lock " + temp + " is taken");
  try {
    OverwriteFile(temp, record);
    if (PathExists(path)) throw Error(ErrorKind::kInternal, "session " + session + " exists already");
    if (::rename(temp.c_str(), path.c_str()) != 0) throw ErrnoError("renaming " + temp + " to " + path, errno);
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
  return lock;
}

std::vector<QmpDisk> ListQmpDisks(QmpClient& qmp) {
  std::vector<QmpDisk> disks;
  json::value blocks = qmp.Execute("query-block");
  if (!blocks.is_array()) throw Error(ErrorKind::kInternal, "query-block did not return an array");
  for (const auto& v : blocks.as_array()) {
    if (!v.is_object()) continue;
    const auto& b = v.as_object();
    auto inserted = b.find("inserted");
    if (inserted == b.end() || !inserted->value().is_object()) continue;  // empty drive
    const auto& ins = inserted->value().as_object();
    // The device id: "/machine/peripheral/<id>/virtio-backend" or "<id>" for
    // devices on -device ...,id=<id>; fall back to the drive id.
    std::string qdev = StringMember(b, "qdev");
    std::string name;
    const std::string peripheral = "/machine/peripheral/";
    if (qdev.starts_with(peripheral)) {
      name = qdev.substr(peripheral.size());
      name = name.substr(0, name.find('/'));
    } else if (!qdev.empty() && qdev[0] != '/') {
      name = qdev;
    } else {
      name = StringMember(b, "device");
    }
    if (name.empty()) continue;  // no device id we could name it by
    QmpDisk d;
    d.name = name;
    d.node_name = StringMember(ins, "node-name");
    d.format = StringMember(ins, "drv");
    d.filename = StringMember(ins, "file");
    auto image = ins.find("image");
    if (image != ins.end() && image->value().is_object()) {
      const auto& img = image->value().as_object();
      auto vs = img.find("virtual-size");
      if (vs != img.end() && vs->value().is_number()) d.size = vs->value().to_number<uint64_t>();
    }
    if (d.node_name.empty() || d.size == 0) continue;
    disks.push_back(std::move(d));
  }
  return disks;
}

SnapshotPaths DefaultSnapshotPaths() {
  const char* runtime = std::getenv("FERRY_RUNTIME_DIR");
  const char* scratch = std::getenv("FERRY_SCRATCH_DIR");
  return MakeSnapshotPaths(runtime && *runtime ? runtime : "/run/ferry", scratch && *scratch ? scratch : "/var/tmp/ferry");
}

SnapshotPaths LocalSnapshotPaths(const std::string& runtime_dir, const std::string& scratch_dir) {
  return {runtime_dir, LocalHostEnv(), runtime_dir, scratch_dir};
}

namespace {
void MakeRuntimeDirectory(const std::string& dir) {
  // 0711: QEMU under libvirt runs as its own user and must reach the
  // per-session directories (0700, owned by that user) inside; nobody can
  // list what is here.
  MakeDirectory(dir, 0711);
  if (::chmod(dir.c_str(), 0711) != 0) throw ErrnoError("setting the mode of " + dir, errno);
}
}  // namespace

SnapshotPaths MakeSnapshotPaths(const std::string& runtime_dir, const std::string& scratch_dir) {
  SnapshotPaths p = LocalSnapshotPaths(runtime_dir, scratch_dir);
  MakeRuntimeDirectory(p.runtime_dir);
  MakeDirectory(p.host_scratch_dir, 0700);
  return p;
}

SnapshotPaths RemoteSnapshotPaths(const std::string& runtime_dir, std::shared_ptr<HostEnv> host,
                                  const std::string& host_runtime_dir, const std::string& host_scratch_dir) {
  MakeRuntimeDirectory(runtime_dir);
  return {runtime_dir, std::move(host), host_runtime_dir, host_scratch_dir};
}

namespace {

// The only NBD server is another's (a live session of this VM cannot be:
// this process holds the VM's lock).
[[noreturn]] void ThrowServerBusy(QmpClient& qmp, const QmpError& e) {
  throw Error(ErrorKind::kRetryable, "QEMU at " + qmp.address() +
                                         " already runs an NBD server (another backup or a migration?): " +
                                         e.description());
}

NbdSource StartUnixNbdServer(QmpClient& qmp, const SnapshotPaths& paths, const std::string& session) {
  NbdSource server;
  server.unix_socket = SocketPath(paths, session);
  try {
    qmp.Execute("nbd-server-start",
                {{"addr", json::object{{"type", "unix"}, {"data", json::object{{"path", server.unix_socket}}}}}});
  } catch (const QmpError& e) {
    ThrowServerBusy(qmp, e);
  }
  return server;
}

// The session's TLS-PSK credentials (a fresh key in a 0600 file, and QEMU's
// tls-creds-psk object reading it), then the server on the first free port
// of the range, requiring TLS with those credentials.
NbdSource StartTlsNbdServer(QmpClient& qmp, const SnapshotPaths& paths, const std::string& session,
                            const NbdExportNetwork& network) {
  NbdSource server;
  server.tls_identity = TlsIdentity(session);
  server.tls_psk_key = RandomHex(64);  // 256 bits from OpenSSL's DRBG
  const std::string dir = TlsDir(paths, session);
  paths.host->CreatePrivateFile(dir, "keys.psk", server.tls_identity + ":" + server.tls_psk_key + "\n");
  qmp.Execute("object-add", {{"qom-type", "tls-creds-psk"},
                             {"id", TlsObjectId(session)},
                             {"dir", dir},
                             {"endpoint", "server"}});
  for (uint32_t port = network.port_min;; ++port) {
    try {
      qmp.Execute("nbd-server-start",
                  {{"addr", json::object{{"type", "inet"},
                                         {"data", json::object{{"host", network.listen_host},
                                                               {"port", std::to_string(port)}}}}},
                   {"tls-creds", TlsObjectId(session)}});
      server.tcp_address = JoinNbdTcpAddress(network.advertise_host, static_cast<uint16_t>(port));
      return server;
    } catch (const QmpError& e) {
      // QEMU 7.2: "Failed to find an available port: Address already in use".
      if (e.description().find("in use") == std::string::npos) ThrowServerBusy(qmp, e);
      if (port >= network.port_max) {
        throw Error(ErrorKind::kRetryable, "QEMU at " + qmp.address() + ": no free port for its NBD server on " +
                                               network.listen_host + " in " + std::to_string(network.port_min) +
                                               "-" + std::to_string(network.port_max));
      }
    }
  }
}

// Runs a blockdev-create job to its end and dismisses it. QEMU creates the
// image itself, on its own host: nothing runs there but QEMU, wherever this
// process is.
void CreateImage(QmpClient& qmp, const std::string& job_id, json::object options, const std::string& what) {
  qmp.Execute("blockdev-create", {{"job-id", job_id}, {"options", std::move(options)}});
  auto concluded = qmp.WaitEvent(
      "JOB_STATUS_CHANGE",
      [&](const json::object& d) { return StringMember(d, "id") == job_id && StringMember(d, "status") == "concluded"; },
      std::chrono::seconds(60));
  if (!concluded) {
    throw Error(ErrorKind::kRetryable, "QEMU at " + qmp.address() + ": creating " + what + " did not end within 60 s");
  }
  std::string error;
  json::value jobs = qmp.Execute("query-jobs");
  for (const auto& j : jobs.as_array()) {
    if (j.is_object() && StringMember(j.as_object(), "id") == job_id) error = StringMember(j.as_object(), "error");
  }
  qmp.Execute("job-dismiss", {{"id", job_id}});
  if (!error.empty()) {
    throw Error(ErrorKind::kEnvironment, "QEMU at " + qmp.address() + " could not create " + what + ": " + error);
  }
}

}  // namespace

FleecingSnapshot::FleecingSnapshot(QmpClient& qmp, SnapshotPaths paths, std::string session_id,
                                   FileLock lock)
    : qmp_(qmp), paths_(std::move(paths)), session_id_(std::move(session_id)), lock_(std::move(lock)) {}

FleecingSnapshot::~FleecingSnapshot() { Release(); }

std::unique_ptr<FleecingSnapshot> FleecingSnapshot::Create(QmpClient& qmp,
                                                           const std::vector<QmpDisk>& disks,
                                                           const SnapshotPaths& paths,
                                                           const std::string& session,
                                                           const std::string& vm_key,
                                                           const std::vector<SnapshotBitmaps>& bitmaps,
                                                           const std::optional<NbdExportNetwork>& network) {
  if (!bitmaps.empty() && bitmaps.size() != disks.size()) {
    throw Error(ErrorKind::kInternal, "snapshot: bitmaps do not match the disks");
  }
  if (!paths.host) throw Error(ErrorKind::kInternal, "snapshot: the paths name no host (use MakeSnapshotPaths)");
  if (network && (network->advertise_host.empty() || network->listen_host.empty() || network->port_min == 0 ||
                  network->port_min > network->port_max)) {
    throw Error(ErrorKind::kBadInput, "NBD export network: needs a listen host, an advertised host and a port "
                                      "range (1-65535, lowest first)");
  }
  // The lock and its record first: every file and QEMU object below must be
  // traceable to this VM once the lock is free.
  FileLock lock = CreateSessionLock(paths, session, RecordText(session, vm_key, qmp.address()));
  std::unique_ptr<FleecingSnapshot> snap(new FleecingSnapshot(qmp, paths, session, std::move(lock)));
  try {
    json::array actions;
    for (size_t i = 0; i < disks.size(); ++i) {
      const QmpDisk& d = disks[i];
      std::string overlay = OverlayPath(paths, session, i);
      CreateImage(qmp, ObjectName(session, i, "c"), {{"driver", "file"}, {"filename", overlay}, {"size", 0}}, overlay);
      qmp.Execute("blockdev-add", {{"driver", "file"},
                                   {"node-name", ObjectName(session, i, "f")},
                                   {"filename", overlay}});
      CreateImage(qmp, ObjectName(session, i, "c"),
                  {{"driver", "qcow2"}, {"file", ObjectName(session, i, "f")}, {"size", d.size}}, overlay);
      qmp.Execute("blockdev-add", {{"driver", "qcow2"},
                                   {"node-name", ObjectName(session, i, "o")},
                                   {"file", ObjectName(session, i, "f")},
                                   {"backing", d.node_name}});
      if (!bitmaps.empty() && !bitmaps[i].start.empty()) {
        actions.push_back(json::object{
            {"type", "block-dirty-bitmap-add"},
            {"data", json::object{{"node", d.node_name},
                                  {"name", bitmaps[i].start},
                                  {"persistent", bitmaps[i].persistent}}}});
      }
      if (!bitmaps.empty() && !bitmaps[i].export_bitmap.empty()) {
        // Frozen at the snapshot: it then holds exactly the writes between the
        // previous point's snapshot and this one.
        actions.push_back(json::object{
            {"type", "block-dirty-bitmap-disable"},
            {"data", json::object{{"node", d.node_name}, {"name", bitmaps[i].export_bitmap}}}});
      }
      actions.push_back(json::object{
          {"type", "blockdev-backup"},
          {"data", json::object{{"job-id", ObjectName(session, i, "")},
                                {"device", d.node_name},
                                {"target", ObjectName(session, i, "o")},
                                {"sync", "none"},
                                {"filter-node-name", ObjectName(session, i, "x")}}}});
    }
    // The point in time: every disk's copy-before-write starts, and every
    // bitmap rotates, in one step.
    qmp.Execute("transaction", {{"actions", actions}});

    // What every export shares: where the server is and how to get in.
    NbdSource server = network ? StartTlsNbdServer(qmp, paths, session, *network)
                               : StartUnixNbdServer(qmp, paths, session);
    WriteFileAtomically(NbdServerMarker(paths, session), RecordText(session, vm_key, qmp.address()));
    for (size_t i = 0; i < disks.size(); ++i) {
      json::object args{{"type", "nbd"},
                        {"id", ObjectName(session, i, "")},
                        {"node-name", ObjectName(session, i, "o")},
                        {"name", disks[i].name},
                        {"writable", false}};
      std::string exported_bitmap = bitmaps.empty() ? "" : bitmaps[i].export_bitmap;
      if (!exported_bitmap.empty()) {
        args["bitmaps"] = json::array{json::object{{"node", disks[i].node_name}, {"name", exported_bitmap}}};
      }
      qmp.Execute("block-export-add", std::move(args));
      NbdSource source = server;
      source.export_name = disks[i].name;
      source.dirty_bitmap = exported_bitmap;
      snap->exports_.push_back({disks[i], std::move(source)});
    }
  } catch (const QmpError& e) {
    snap->Release();
    if (e.kind() != ErrorKind::kRetryable) throw;
    throw Error(ErrorKind::kRetryable, "taking the snapshot through " + qmp.address() +
                                           ": a disk is busy (a block job or export of another tool?): " + e.what());
  } catch (...) {
    snap->Release();
    throw;
  }
  return snap;
}

bool FleecingSnapshot::Release() {
  if (released_) return true;
  released_ = true;
  bool ok = RemoveSessionObjects(qmp_, paths_, session_id_);
  ::unlink(SessionLockPath(paths_, session_id_).c_str());
  return ok;
}

std::vector<std::string> ListFerryObjects(QmpClient& qmp) {
  std::vector<std::string> names;
  auto collect = [&](const char* command, json::object args, const char* key) {
    json::value v = qmp.Execute(command, std::move(args));
    if (!v.is_array()) return;
    for (const auto& e : v.as_array()) {
      if (!e.is_object()) continue;
      std::string n = StringMember(e.as_object(), key);
      if (n.starts_with(kPrefix)) names.push_back(n);
    }
  };
  collect("query-block-exports", {}, "id");
  collect("query-block-jobs", {}, "device");
  collect("query-jobs", {}, "id");  // overlay creation (blockdev-create) too
  collect("query-named-block-nodes", {{"flat", true}}, "node-name");
  collect("qom-list", {{"path", "/objects"}}, "name");  // TLS credentials
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

bool RemoveSessionObjects(QmpClient& qmp, const SnapshotPaths& paths, const std::string& session,
                          std::vector<std::string>* removed) {
  bool ok = true;
  bool server_stopped = !PathExists(NbdServerMarker(paths, session));
  auto ours = [&](const std::string& name) { return SessionOf(name) == session; };
  using std::chrono::seconds;

  // 1. Exports: the NBD client (if any) is cut off.
  ok &= Attempt("listing exports", [&] {
    json::value exports = qmp.Execute("query-block-exports");
    for (const auto& e : exports.as_array()) {
      std::string id = StringMember(e.as_object(), "id");
      if (!ours(id)) continue;
      ok &= Attempt("removing export " + id, [&] {
        qmp.Execute("block-export-del", {{"id", id}, {"mode", "hard"}});
        qmp.WaitEvent("BLOCK_EXPORT_DELETED",
                      [&](const json::object& d) { return StringMember(d, "id") == id; }, seconds(30));
      });
    }
  });
  // 2. NBD server, if this session started it.
  if (PathExists(NbdServerMarker(paths, session))) {
    ok &= Attempt("stopping the NBD server", [&] {
      try {
        qmp.Execute("nbd-server-stop");
      } catch (const QmpError&) {
        // Not running any more (QEMU restarted): nothing to stop.
      }
      server_stopped = true;
    });
  }
  // 2b. QOM objects (the TLS credentials of TCP exports), once no server
  // uses them.
  ok &= Attempt("listing objects", [&] {
    json::value objects = qmp.Execute("qom-list", {{"path", "/objects"}});
    for (const auto& o : objects.as_array()) {
      std::string id = StringMember(o.as_object(), "name");
      if (!ours(id)) continue;
      ok &= Attempt("removing object " + id, [&] { qmp.Execute("object-del", {{"id", id}}); });
    }
  });
  // 3. Backup jobs: cancelling one also removes its filter node.
  ok &= Attempt("listing block jobs", [&] {
    json::value jobs = qmp.Execute("query-block-jobs");
    for (const auto& j : jobs.as_array()) {
      std::string id = StringMember(j.as_object(), "device");
      if (!ours(id)) continue;
      ok &= Attempt("cancelling job " + id, [&] {
        qmp.Execute("block-job-cancel", {{"device", id}, {"force", true}});
        auto done = [&](const json::object& d) { return StringMember(d, "device") == id; };
        if (!qmp.WaitEvent("BLOCK_JOB_CANCELLED", done, seconds(30))) {
          throw Error(ErrorKind::kRetryable, "job " + id + " did not end within 30 s");
        }
      });
    }
  });
  // 3b. Overlay creation jobs of a session killed while it made them: they
  // hold the file node until dismissed.
  ok &= Attempt("listing jobs", [&] {
    json::value jobs = qmp.Execute("query-jobs");
    for (const auto& j : jobs.as_array()) {
      const auto& o = j.as_object();
      std::string id = StringMember(o, "id");
      if (!ours(id) || StringMember(o, "type") != "create") continue;
      ok &= Attempt("dismissing job " + id, [&] {
        if (StringMember(o, "status") != "concluded") {
          qmp.Execute("job-cancel", {{"id", id}});
          qmp.WaitEvent("JOB_STATUS_CHANGE",
                        [&](const json::object& d) {
                          return StringMember(d, "id") == id && StringMember(d, "status") == "concluded";
                        },
                        seconds(30));
        }
        qmp.Execute("job-dismiss", {{"id", id}});
      });
    }
  });
  // 4. Nodes: the overlay before its file node.
  ok &= Attempt("listing block nodes", [&] {
    std::vector<std::string> overlays, file_nodes;
    json::value nodes = qmp.Execute("query-named-block-nodes", {{"flat", true}});
    for (const auto& n : nodes.as_array()) {
      const auto& o = n.as_object();
      std::string name = StringMember(o, "node-name");
      if (!ours(name)) continue;
      if (name.ends_with("-f")) {
        file_nodes.push_back(name);
      } else if (name.ends_with("-o")) {
        overlays.push_back(name);
      }
    }
    for (const auto& name : overlays) {
      ok &= Attempt("removing node " + name, [&] { qmp.Execute("blockdev-del", {{"node-name", name}}); });
    }
    for (const auto& name : file_nodes) {
      ok &= Attempt("removing node " + name, [&] { qmp.Execute("blockdev-del", {{"node-name", name}}); });
    }
  });
  // 5. Files: overlays (only ours, by name, in our scratch directory),
  // socket, TLS keys, and the marker once the server is stopped (else a
  // later run must still know to stop it).
  std::vector<std::string> files = RemoveSessionFiles(paths, session, /*keep_marker=*/!server_stopped, &ok);
  if (removed) removed->insert(removed->end(), files.begin(), files.end());
  return ok;
}

std::vector<std::string> RemoveSessionFiles(const SnapshotPaths& paths, const std::string& session, bool keep_marker,
                                            bool* all_removed) {
  HostRemoval r;
  std::vector<std::string> on_host;
  try {
    for (const auto& name : paths.host->ListDirectory(paths.host_scratch_dir)) {
      if (SessionOfOverlay(name) == session) on_host.push_back(paths.host_scratch_dir + "/" + name);
    }
  } catch (const std::exception& e) {
    r.failed.push_back("listing " + paths.host_scratch_dir + " on " + paths.host->name() + ": " + e.what());
  }
  on_host.push_back(SocketPath(paths, session));
  // The key goes even if that session's QEMU may still serve it: its
  // exports then refuse every reader, which is what a dead session wants.
  on_host.push_back(TlsDir(paths, session) + "/keys.psk");
  on_host.push_back(TlsDir(paths, session));
  HostRemoval host = paths.host->Remove(on_host);
  r.removed = std::move(host.removed);
  r.failed.insert(r.failed.end(), host.failed.begin(), host.failed.end());
  if (!keep_marker) {
    const std::string marker = NbdServerMarker(paths, session);
    if (::unlink(marker.c_str()) == 0) {
      r.removed.push_back(marker);
    } else if (errno != ENOENT) {
      r.failed.push_back(marker + ": " + std::strerror(errno));
    }
  }
  for (const auto& f : r.failed) LogWarning("cleanup of session " + session + ": removing " + f);
  if (all_removed && !r.failed.empty()) *all_removed = false;
  return r.removed;
}

std::string QemuProcessKey(QmpClient& qmp, HostEnv& host) {
  int pid = host.QemuPid(qmp);
  if (pid > 0) {
    // Field 22 of /proc/<pid>/stat, counted after the ")" that ends the
    // command name (which may contain spaces).
    std::string start_time;
    try {
      std::optional<std::string> stat = host.ReadFile("/proc/" + std::to_string(pid) + "/stat");
      if (stat && stat->rfind(')') != std::string::npos && stat->rfind(')') + 2 <= stat->size()) {
        std::istringstream in(stat->substr(stat->rfind(')') + 2));
        for (int field = 3; field <= 22 && in >> start_time; ++field) {
        }
      }
    } catch (const Error&) {
    }
    return "pid:" + std::to_string(pid) + ":" + start_time;
  }
  try {
    json::value v = qmp.Execute("query-uuid");
    std::string uuid = v.is_object() ? StringMember(v.as_object(), "UUID") : "";
    if (!uuid.empty() && uuid != "00000000-0000-0000-0000-000000000000") return "uuid:" + uuid;
  } catch (const QmpError&) {
  }
  return "qmp:" + qmp.address();
}

bool QemuProcessMayBeAlive(const std::string& key, HostEnv& host) {
  if (!key.starts_with("pid:")) return true;
  auto colon = key.find(':', 4);
  std::string pid = key.substr(4, colon == std::string::npos ? std::string::npos : colon - 4);
  std::string start_time = colon == std::string::npos ? "" : key.substr(colon + 1);
  if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) return true;
  std::optional<std::string> read;
  try {
    read = host.ReadFile("/proc/" + pid + "/stat");
  } catch (const Error&) {
    return true;  // the host cannot be asked: not known to be gone
  }
  if (!read) return false;  // no such process
  const std::string& stat = *read;
  if (stat.rfind(')') == std::string::npos || stat.rfind(')') + 2 > stat.size()) return true;
  std::istringstream in(stat.substr(stat.rfind(')') + 2));
  std::string state, field;
  in >> state;
  for (int i = 4; i <= 22 && in >> field; ++i) {
  }
  if (state == "Z" || state == "X") return false;
  return start_time.empty() || field == start_time;
}

SessionRecord ReadSessionRecord(const SnapshotPaths& paths, const std::string& session) {
  for (const auto& path : {SessionLockPath(paths, session), NbdServerMarker(paths, session)}) {
    try {
      SessionRecord r = ParseRecord(ReadWholeFile(path));
      if (!r.vm_key.empty()) return r;
    } catch (const Error&) {
    }
  }
  return {};
}

namespace {

// A lock of a session killed inside CreateSessionLock. Only once it is a
// minute old: before its flock, a fresh one is free for an instant.
void RemoveStaleNewLock(const std::string& path, const std::string& session) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || ::time(nullptr) - st.st_mtime < 60) return;
  FileLock lock = FileLock::TryAcquire(path, /*create=*/false);
  if (!lock.held()) return;
  if (::unlink(path.c_str()) == 0) LogInfo("session " + session + ": removed " + path);
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out.empty() ? "nothing" : out;
}

}  // namespace

std::vector<std::string> RemoveAbandonedSnapshots(QmpClient& qmp, const SnapshotPaths& paths,
                                                  const std::string& vm_key) {
  // 1. Every session we can see a trace of: QEMU objects and files. Listed
  // before any lock is looked at (see the ordering rules in the header).
  std::map<std::string, bool> sessions;  // id -> known to this QEMU
  for (const auto& name : ListFerryObjects(qmp)) {
    std::string s = SessionOf(name);
    if (!s.empty()) sessions[s] = true;
  }
  // A name in this process's runtime directory (locks, markers) or in the
  // host's (NBD sockets, TLS key directories); the same directory when QEMU
  // runs here.
  auto consider = [&](const std::string& name, bool here) {
    auto dot = name.find('.');
    std::string id = name.substr(0, dot), suffix = dot == std::string::npos ? "" : name.substr(dot);
    if (!IsSessionId(id)) return;
    if (here && suffix == kNewLockSuffix) {
      RemoveStaleNewLock(paths.runtime_dir + "/" + name, id);
      return;
    }
    bool traced = here ? suffix == ".lock" || suffix == ".nbd-server" : suffix == ".nbd" || suffix == ".tls";
    if (!traced) return;
    // A libvirt session (its directory beside): libvirt's host cleans it.
    if (PathExists(paths.runtime_dir + "/libvirt-" + id)) return;
    sessions.try_emplace(id, false);
  };
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(paths.runtime_dir, ec)) {
    consider(entry.path().filename().string(), /*here=*/true);
  }
  for (const auto& name : paths.host->ListDirectory(paths.host_runtime_dir)) consider(name, /*here=*/false);
  for (const auto& name : paths.host->ListDirectory(paths.host_scratch_dir)) {
    std::string s = SessionOfOverlay(name);
    if (!s.empty()) sessions.try_emplace(s, false);
  }

  std::vector<std::string> cleaned;
  for (const auto& [s, in_qemu] : sessions) {
    // 2. Alive or dead: a held lock is a live session (maybe another VM's).
    // Holding the dead one's lock while cleaning keeps other hunters off.
    std::string lock_path = SessionLockPath(paths, s);
    FileLock lock = FileLock::TryAcquire(lock_path, /*create=*/false);
    if (!lock.held() && PathExists(lock_path)) continue;
    SessionRecord record = ReadSessionRecord(paths, s);
    bool ours = in_qemu || (!record.vm_key.empty() && record.vm_key == vm_key);
    std::vector<std::string> removed;
    if (ours) {
      LogWarning("removing leftovers of dead ferry session " + s + " from " + qmp.address() +
                 " (its process is gone)");
      if (!RemoveSessionObjects(qmp, paths, s, &removed)) {
        LogWarning("session " + s + ": not everything could be removed; the next run tries again");
      }
    } else if (!record.vm_key.empty() && QemuProcessMayBeAlive(record.vm_key, *paths.host)) {
      // Its QEMU still runs and may still write the overlay and serve the
      // socket; only a run on that VM can end them.
      LogInfo("dead ferry session " + s + " belongs to another running VM (" + record.vm_key + ", " +
              record.qmp_address + "): left for that VM's next backup");
      continue;
    } else {
      LogWarning("removing the files of dead ferry session " + s + " (its QEMU " +
                 (record.vm_key.empty() ? std::string("is unknown") : record.vm_key + " is gone") + ")");
      // With no record (a session of the previous Ferry) its QEMU may still
      // run an NBD server this session started: keep the marker, so that
      // VM's next backup still knows to stop it.
      removed = RemoveSessionFiles(paths, s, /*keep_marker=*/record.vm_key.empty());
    }
    if (::unlink(lock_path.c_str()) == 0) removed.push_back(lock_path);
    LogInfo("session " + s + ": removed " + Join(removed));
    cleaned.push_back(s);
  }
  return cleaned;
}

}  // namespace ferry::worker
