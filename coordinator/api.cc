#include "ferry/coordinator/api.h"

#include <cctype>
#include <charconv>
#include <ctime>
#include <algorithm>
#include <cmath>
#include <functional>

#include "ferry/common/bandwidth.h"
#include "ferry/common/log.h"
#include "ferry/common/stage_busy.h"
#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/job_lifecycle.h"
#include "ferry/coordinator/json_input.h"
#include "ferry/coordinator/repository_lifecycle.h"
#include "ferry/coordinator/restore_request.h"
#include "ferry/coordinator/schedule.h"
#include "ferry/coordinator/selection.h"
#include "ferry/coordinator/worker_records.h"
#include "ferry/http/metrics_text.h"
#include "ferry/s3/object_repository.h"
#include "ferry/rpc/repository_service.h"
#include "ferry/rpc/worker_tokens.h"

namespace json = boost::json;

namespace ferry::coordinator {

extern const char kOpenApiJson[];  // generated from openapi.json

namespace {

const std::set<std::string> kPlatforms = {"proxmox", "ovirt", "ahv", "libvirt"};

struct Context {
  SessionRunner& runner;
  Database& db;  // read-only
  const http::Request& request;
  std::vector<int64_t> ids;
  const std::string& version;
  ApplianceDeployer* appliances;  // null: no appliance image configured
  RepositoryLifecycle* lifecycle;  // null: no point calls (409)
};

http::Response Json(int status, const json::value& body) {
  http::Response response;
  response.status = status;
  response.body = json::serialize(body);
  return response;
}

http::Response ErrorResponse(int status, const std::string& kind, const std::string& message,
                             const std::string& field = "") {
  json::object error{{"kind", kind}, {"message", message}};
  if (!field.empty()) error["field"] = field;
  return Json(status, json::object{{"error", error}});
}

json::value Time(const std::optional<int64_t>& ms) {
  if (!ms) return nullptr;
  time_t seconds = static_cast<time_t>(*ms / 1000);
  struct tm tm;
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(*ms % 1000));
  return json::string(buf);
}

json::value OptInt(const std::optional<int64_t>& v) { return v ? json::value(*v) : json::value(nullptr); }

int64_t QueryInt(const http::Request& request, const char* key, int64_t fallback, int64_t min, int64_t max) {
  auto it = request.query.find(key);
  if (it == request.query.end()) return fallback;
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), value);
  if (ec != std::errc() || ptr != it->second.data() + it->second.size() || value < min || value > max)
    throw FieldError(key, "must be an integer between " + std::to_string(min) + " and " + std::to_string(max));
  return value;
}

[[noreturn]] void NotFound(const std::string& what, int64_t id) {
  throw Error(ErrorKind::kNotFound, what + " " + std::to_string(id) + " not found");
}

// --- hosts -----------------------------------------------------------------

// The host's worker appliance, if the coordinator deployed one (POST
// /hosts/{id}/worker), or null.
json::value ApplianceJson(Statement& s, int first) {
  if (s.IsNull(first)) return nullptr;
  return json::object{{"state", s.Text(first)}, {"reason", s.Text(first + 1)},
                      {"state_changed_at", Time(s.Int(first + 2))}, {"domain", s.Text(first + 3)},
                      {"libvirt_uri", s.Text(first + 4)}, {"pool", s.Text(first + 5)},
                      {"network", json::parse(s.Text(first + 6))}, {"memory_mib", s.Int(first + 7)},
                      {"coordinator_address", s.Text(first + 8)}, {"idle_shutdown_s", s.Int(first + 9)},
                      {"worker_id", OptInt(s.OptInt(first + 10))}, {"created_at", Time(s.Int(first + 11))}};
}

json::object HostJson(Statement& s) {
  return {{"id", s.Int(0)}, {"name", s.Text(1)}, {"platform", s.Text(2)}, {"cluster", s.Text(3)},
          {"created_at", Time(s.Int(4))}, {"workers", s.Int(5)}, {"vms", s.Int(6)}, {"appliance", ApplianceJson(s, 7)}};
}
const char kHostSelect[] =
    "SELECT h.id, h.name, h.platform, h.cluster, h.created_at, "
    "(SELECT COUNT(*) FROM workers w WHERE w.host_id = h.id), "
    "(SELECT COUNT(*) FROM vms v WHERE v.host_id = h.id AND v.state != 'missing'), "
    "a.state, a.reason, a.state_changed_at, a.domain, a.libvirt_uri, a.pool, a.network, a.memory_mib, "
    "a.coordinator_address, a.idle_shutdown_s, a.worker_id, a.created_at "
    "FROM hosts h LEFT JOIN appliances a ON a.host_id = h.id ";

json::object ReadHost(Database& db, int64_t id) {
  Statement s = db.Prepare(std::string(kHostSelect) + "WHERE h.id = ?");
  s.Bind(1, id);
  if (!s.Step()) NotFound("host", id);
  return HostJson(s);
}

http::Response ListHosts(Context& c) {
  Statement s = c.db.Prepare(std::string(kHostSelect) + "ORDER BY h.id LIMIT ? OFFSET ?");
  s.Bind(1, QueryInt(c.request, "limit", 10000, 1, 100000)).Bind(2, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(HostJson(s));
  return Json(200, json::object{{"hosts", out}});
}

void CheckPlatform(const std::string& field, const std::string& platform) {
  if (!kPlatforms.count(platform))
    throw FieldError(field, "'" + platform + "' is not one of proxmox, ovirt, ahv, libvirt");
}

// "cluster": a name, or "" for a host in no cluster (it is then a cluster of
// its own for the scheduler). The same rule for creating and changing a host.
std::optional<std::string> ReadCluster(FieldReader& f) {
  const json::value* value = f.Member("cluster", false);
  if (!value) return std::nullopt;
  if (!value->is_string()) throw FieldError("cluster", "must be a string");
  std::string cluster(value->as_string());
  if (!cluster.empty()) CheckName("cluster", cluster);
  return cluster;
}

http::Response CreateHost(Context& c) {
  json::object body = ParseRequestObject(c.request.body);
  FieldReader f(body, "");
  std::string name = *f.Name("name", true);
  std::string platform = *f.String("platform", true, 16);
  CheckPlatform("platform", platform);
  std::string cluster = ReadCluster(f).value_or("");
  f.Finish();
  int64_t id = c.runner.Write([&](Database& db) {
    Statement exists = db.Prepare("SELECT 1 FROM hosts WHERE name = ?");
    exists.Bind(1, name);
    if (exists.Step()) throw ConflictError("a host named '" + name + "' exists");
    db.Prepare("INSERT INTO hosts (name, platform, cluster, created_at) VALUES (?, ?, ?, strftime('%s','now') * 1000)")
        .Bind(1, name).Bind(2, platform).Bind(3, cluster).Run();
    return db.LastInsertId();
  });
  c.runner.HostChanged(id, name, cluster);
  return Json(201, ReadHost(c.db, id));
}

http::Response GetHost(Context& c) { return Json(200, ReadHost(c.db, c.ids[0])); }

http::Response PatchHost(Context& c) {
  json::object body = ParseRequestObject(c.request.body);
  FieldReader f(body, "");
  std::optional<std::string> platform = f.String("platform", false, 16);
  if (platform) CheckPlatform("platform", *platform);
  std::optional<std::string> cluster = ReadCluster(f);
  f.Finish();
  std::string name = c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT name FROM hosts WHERE id = ?");
    s.Bind(1, c.ids[0]);
    if (!s.Step()) NotFound("host", c.ids[0]);
    if (platform) db.Prepare("UPDATE hosts SET platform = ? WHERE id = ?").Bind(1, *platform).Bind(2, c.ids[0]).Run();
    if (cluster) db.Prepare("UPDATE hosts SET cluster = ? WHERE id = ?").Bind(1, *cluster).Bind(2, c.ids[0]).Run();
    return s.Text(0);
  });
  json::object host = ReadHost(c.db, c.ids[0]);
  c.runner.HostChanged(c.ids[0], name, std::string(host.at("cluster").as_string()));
  return Json(200, host);
}

http::Response DeleteHost(Context& c) {
  c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT name, (SELECT COUNT(*) FROM workers WHERE host_id = hosts.id), "
                             "(SELECT COUNT(*) FROM vms WHERE host_id = hosts.id), "
                             "(SELECT COUNT(*) FROM restores WHERE host_id = hosts.id) FROM hosts WHERE id = ?");
    s.Bind(1, c.ids[0]);
    if (!s.Step()) NotFound("host", c.ids[0]);
    if (s.Int(1) > 0 || s.Int(2) > 0)
      throw ConflictError("host '" + s.Text(0) + "' still has " + std::to_string(s.Int(1)) + " workers and " +
                          std::to_string(s.Int(2)) + " VMs");
    if (s.Int(3) > 0)
      throw ConflictError("host '" + s.Text(0) + "' is the target of " + std::to_string(s.Int(3)) +
                          " restore sessions, which refer to it");
    Statement appliance = db.Prepare("SELECT 1 FROM appliances WHERE host_id = ?");
    appliance.Bind(1, c.ids[0]);
    if (appliance.Step())
      throw ConflictError("host '" + s.Text(0) + "' has a worker appliance; DELETE /hosts/" + std::to_string(c.ids[0]) +
                          "/worker first");
    db.Prepare("DELETE FROM hosts WHERE id = ?").Bind(1, c.ids[0]).Run();
    return 0;
  });
  return Json(200, json::object{{"deleted", c.ids[0]}});
}

// --- appliances (POST/DELETE /hosts/{id}/worker) ------------------------------

ApplianceDeployer& Appliances(Context& c) {
  if (!c.appliances)
    throw ConflictError("this coordinator deploys no appliances: start it with --appliance-image DIR "
                        "(the OUTDIR of scripts/build-image)");
  return *c.appliances;
}

// Checks at once what can be refuted (the body, the host, its libvirtd),
// writes the worker record and the appliance row, and leaves the upload,
// definition and start to the deployer's thread: 202, follow GET /hosts/{id}.
http::Response DeployAppliance(Context& c) {
  ApplianceSpec spec = ParseApplianceSpec(c.request.body);
  Statement h = c.db.Prepare("SELECT h.name, h.platform, a.state FROM hosts h "
                             "LEFT JOIN appliances a ON a.host_id = h.id WHERE h.id = ?");
  h.Bind(1, c.ids[0]);
  if (!h.Step()) NotFound("host", c.ids[0]);
  std::string host = h.Text(0), platform = h.Text(1);
  std::optional<std::string> state = h.OptText(2);
  h.Reset();  // ends its read snapshot: the reply below must see the row written
  ApplianceDeployer& appliances = Appliances(c);
  if (platform != "libvirt")
    throw ConflictError("host '" + host + "' is a " + platform + " host; appliances are deployed onto libvirt hosts "
                        "(for Proxmox see scripts/proxmox-deploy-appliance)");
  if (state && *state != "failed")
    throw ConflictError("host '" + host + "' has an appliance (" + *state + "); DELETE /hosts/" +
                        std::to_string(c.ids[0]) + "/worker first");
  AppliancePlan plan = appliances.Prepare(host, spec);
  std::string token = NewToken();
  c.runner.Write([&](Database& db) {
    // A failed deployment's row (its reason kept until now) makes way.
    db.Prepare("DELETE FROM appliances WHERE host_id = ? AND state = 'failed'").Bind(1, c.ids[0]).Run();
    Statement again = db.Prepare("SELECT 1 FROM appliances WHERE host_id = ?");
    again.Bind(1, c.ids[0]);
    if (again.Step()) throw ConflictError("host '" + host + "' has an appliance being deployed");
    int64_t worker_id = InsertWorkerRecord(db, plan.worker_name, "", token);
    db.Prepare("INSERT INTO appliances (host_id, worker_id, domain, libvirt_uri, pool, image_volume, config_volume, "
               "network, memory_mib, coordinator_address, worker_config, idle_shutdown_s, state, state_changed_at, "
               "last_busy_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'deploying', "
               "strftime('%s','now') * 1000, strftime('%s','now') * 1000, strftime('%s','now') * 1000)")
        .Bind(1, c.ids[0]).Bind(2, worker_id).Bind(3, plan.domain).Bind(4, spec.libvirt_uri).Bind(5, spec.pool)
        .Bind(6, plan.image_volume).Bind(7, plan.config_volume).Bind(8, json::serialize(spec.NetworkJson()))
        .Bind(9, spec.memory_mib).Bind(10, spec.coordinator_address).Bind(11, spec.worker_config)
        .Bind(12, spec.idle_shutdown_s).Run();
    return 0;
  });
  appliances.Deploy(c.ids[0], token, spec.files);
  return Json(202, ReadHost(c.db, c.ids[0]));
}

http::Response RemoveAppliance(Context& c) {
  ReadHost(c.db, c.ids[0]);  // 404 for an unknown host
  Appliances(c).Remove(c.ids[0]);
  return Json(200, json::object{{"deleted", c.ids[0]}});
}

// --- VMs -------------------------------------------------------------------

json::object VmJson(Database& db, Statement& s) {
  json::object vm{{"id", s.Int(0)}, {"name", s.Text(1)}, {"uuid", s.Text(2)}, {"state", s.Text(3)},
                  {"tags", json::parse(s.Text(4))}, {"host", s.Text(5)}, {"host_id", s.Int(6)},
                  {"cluster", s.Text(7)}, {"seen_at", Time(s.Int(8))}};
  Statement d = db.Prepare("SELECT name, size_bytes, format FROM disks WHERE vm_id = ? ORDER BY name");
  d.Bind(1, s.Int(0));
  json::array disks;
  while (d.Step()) disks.push_back(json::object{{"name", d.Text(0)}, {"size_bytes", d.Int(1)}, {"format", d.Text(2)}});
  vm["disks"] = disks;
  return vm;
}
const char kVmSelect[] =
    "SELECT v.id, v.name, v.uuid, v.state, v.tags, h.name, h.id, h.cluster, v.seen_at FROM vms v "
    "JOIN hosts h ON h.id = v.host_id ";

http::Response ListVms(Context& c) {
  std::string where = "WHERE 1 ";
  auto host = c.request.query.find("host");
  auto name = c.request.query.find("name");
  if (host != c.request.query.end()) where += "AND h.name = ?1 ";
  if (name != c.request.query.end()) where += "AND v.name = ?2 ";
  Statement s = c.db.Prepare(std::string(kVmSelect) + where + "ORDER BY v.id LIMIT ?3 OFFSET ?4");
  if (host != c.request.query.end()) s.Bind(1, host->second);
  if (name != c.request.query.end()) s.Bind(2, name->second);
  s.Bind(3, QueryInt(c.request, "limit", 1000, 1, 100000)).Bind(4, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(VmJson(c.db, s));
  return Json(200, json::object{{"vms", out}});
}

http::Response GetVm(Context& c) {
  Statement s = c.db.Prepare(std::string(kVmSelect) + "WHERE v.id = ?");
  s.Bind(1, c.ids[0]);
  if (!s.Step()) NotFound("VM", c.ids[0]);
  return Json(200, VmJson(c.db, s));
}

// --- workers -----------------------------------------------------------------

const char kWorkerSelect[] =
    "SELECT w.id, w.name, h.name, w.task_slots, w.state, w.last_heartbeat_at, w.version, w.registered_at, "
    "w.created_at, (SELECT COUNT(*) FROM tasks t WHERE t.worker_id = w.id AND t.state = 'running'), h.cluster, "
    "w.bandwidth FROM workers w LEFT JOIN hosts h ON h.id = w.host_id ";

// A bandwidth cap given to the API (docs/throttling.md): stored in its
// canonical form, '' for none; shown as "unlimited" when none.
std::optional<std::string> ReadBandwidth(FieldReader& f) {
  auto text = f.String("bandwidth", false, 1000);
  if (!text) return std::nullopt;
  try {
    BandwidthSchedule schedule = BandwidthSchedule::Parse(*text);
    return schedule == BandwidthSchedule() ? std::string() : schedule.ToString();
  } catch (const Error& e) {
    throw FieldError("bandwidth", e.what());
  }
}
std::string BandwidthJson(const std::string& stored) { return stored.empty() ? "unlimited" : stored; }

json::object WorkerJson(Statement& s) {
  return {{"id", s.Int(0)}, {"name", s.Text(1)}, {"host", s.IsNull(2) ? json::value(nullptr) : json::value(s.Text(2))},
          {"cluster", s.IsNull(10) ? json::value(nullptr) : json::value(s.Text(10))},
          {"task_slots", s.Int(3)}, {"state", s.Text(4)}, {"last_heartbeat_at", Time(s.OptInt(5))},
          {"version", s.Text(6)}, {"registered_at", Time(s.OptInt(7))}, {"created_at", Time(s.Int(8))},
          {"running_tasks", s.Int(9)}, {"bandwidth", BandwidthJson(s.Text(11))}};
}

json::object ReadWorker(Database& db, int64_t id) {
  Statement s = db.Prepare(std::string(kWorkerSelect) + "WHERE w.id = ?");
  s.Bind(1, id);
  if (!s.Step()) NotFound("worker", id);
  return WorkerJson(s);
}

http::Response ListWorkers(Context& c) {
  Statement s = c.db.Prepare(std::string(kWorkerSelect) + "ORDER BY w.id LIMIT ? OFFSET ?");
  s.Bind(1, QueryInt(c.request, "limit", 10000, 1, 100000)).Bind(2, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(WorkerJson(s));
  return Json(200, json::object{{"workers", out}});
}

http::Response CreateWorker(Context& c) {
  json::object body = ParseRequestObject(c.request.body);
  FieldReader f(body, "");
  std::string name = *f.Name("name", true);
  std::string bandwidth = ReadBandwidth(f).value_or("");
  f.Finish();
  std::string token = NewToken();
  int64_t id = c.runner.Write([&](Database& db) { return InsertWorkerRecord(db, name, bandwidth, token); });
  json::object worker = ReadWorker(c.db, id);
  worker["token"] = token;  // shown once; only its hash is stored
  return Json(201, worker);
}

http::Response GetWorker(Context& c) { return Json(200, ReadWorker(c.db, c.ids[0])); }

// Only the bandwidth cap is changed here; a worker's host and slots are its own.
// It applies to the worker's next disk task.
http::Response PatchWorker(Context& c) {
  json::object body = ParseRequestObject(c.request.body);
  FieldReader f(body, "");
  auto bandwidth = ReadBandwidth(f);
  f.Finish();
  c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT 1 FROM workers WHERE id = ?");
    s.Bind(1, c.ids[0]);
    if (!s.Step()) NotFound("worker", c.ids[0]);
    if (bandwidth) db.Prepare("UPDATE workers SET bandwidth = ? WHERE id = ?").Bind(1, *bandwidth).Bind(2, c.ids[0]).Run();
    return 0;
  });
  return Json(200, ReadWorker(c.db, c.ids[0]));
}

http::Response DeleteWorker(Context& c) {
  c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT name, state, (SELECT COUNT(*) FROM tasks WHERE worker_id = workers.id "
                             "AND state = 'running') FROM workers WHERE id = ?");
    s.Bind(1, c.ids[0]);
    if (!s.Step()) NotFound("worker", c.ids[0]);
    if (s.Text(1) == "connected" || s.Int(2) > 0)
      throw ConflictError("worker '" + s.Text(0) + "' is connected or runs tasks; stop it first");
    Statement appliance = db.Prepare("SELECT host_id FROM appliances WHERE worker_id = ?");
    appliance.Bind(1, c.ids[0]);
    if (appliance.Step())
      throw ConflictError("worker '" + s.Text(0) + "' is the appliance of host " + std::to_string(appliance.Int(0)) +
                          "; remove it with DELETE /hosts/" + std::to_string(appliance.Int(0)) + "/worker");
    DeleteWorkerRecord(db, c.ids[0]);
    return 0;
  });
  return Json(200, json::object{{"deleted", c.ids[0]}});
}

// --- repositories ------------------------------------------------------------

const char kRepositorySelect[] =
    "SELECT r.id, r.name, r.location, r.task_slots, r.capacity_bytes, r.created_at, "
    "(SELECT COUNT(*) FROM tasks t WHERE t.repository_id = r.id AND t.state = 'running'), "
    "(SELECT COUNT(*) FROM points p WHERE p.repository_id = r.id), "
    "(SELECT COALESCE(SUM(bytes_stored), 0) FROM points p WHERE p.repository_id = r.id), r.token != '', "
    "r.bandwidth, r.space FROM repositories r ";

json::object RepositoryJson(Statement& s) {
  return {{"id", s.Int(0)}, {"name", s.Text(1)}, {"location", s.Text(2)}, {"task_slots", s.Int(3)},
          {"capacity_bytes", s.Int(4)}, {"created_at", Time(s.Int(5))}, {"running_tasks", s.Int(6)},
          {"points", s.Int(7)}, {"stored_bytes", s.Int(8)}, {"token_set", s.Int(9) != 0},
          {"bandwidth", BandwidthJson(s.Text(10))},
          // The last space measurement (after a session that wrote points): null before any.
          {"space", s.IsNull(11) ? json::value(nullptr) : json::parse(s.Text(11))}};
}

json::object ReadRepository(Database& db, int64_t id) {
  Statement s = db.Prepare(std::string(kRepositorySelect) + "WHERE r.id = ?");
  s.Bind(1, id);
  if (!s.Step()) NotFound("repository", id);
  return RepositoryJson(s);
}

http::Response ListRepositories(Context& c) {
  Statement s = c.db.Prepare(std::string(kRepositorySelect) + "ORDER BY r.id LIMIT ? OFFSET ?");
  s.Bind(1, QueryInt(c.request, "limit", 10000, 1, 100000)).Bind(2, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(RepositoryJson(s));
  return Json(200, json::object{{"repositories", out}});
}

struct RepositoryFields {
  std::optional<std::string> name, location, token, bandwidth;
  std::optional<int64_t> task_slots, capacity_bytes;
};

RepositoryFields ReadRepositoryFields(const std::string& body, bool create) {
  json::object o = ParseRequestObject(body);
  FieldReader f(o, "");
  RepositoryFields r;
  r.name = f.Name("name", create);
  r.location = f.String("location", create, 4096);
  if (r.location) {
    std::optional<rpc::RepositoryEndpoint> service;
    try {
      service = rpc::ParseRepositoryUrl(*r.location);
    } catch (const Error& e) {
      throw FieldError("location", e.what());
    }
    if (s3::IsObjectLocation(*r.location)) {
      try {
        s3::ParseObjectLocation(*r.location, /*resolve_credentials=*/false);
      } catch (const Error& e) {
        throw FieldError("location", e.what());
      }
    } else if (!service && (r.location->empty() || (*r.location)[0] != '/')) {
      throw FieldError("location", "must be an absolute path, a repository service address "
                                   "(ferry+tls://HOST:PORT/NAME) or a bucket (s3://BUCKET/PREFIX?endpoint=URL)");
    }
  }
  // Write-only: the API never returns it (token_set says whether there is one).
  r.token = f.String("token", false, 4096);
  if (r.token && rpc::WorkerTokenKey::LooksLikeKey(*r.token)) {
    try {
      rpc::WorkerTokenKey::FromText(*r.token, "the token");
    } catch (const Error& e) {
      throw FieldError("token", e.what());
    }
  }
  r.bandwidth = ReadBandwidth(f);
  r.task_slots = f.Int("task_slots", false, 1, 1024);
  r.capacity_bytes = f.Int("capacity_bytes", false, 0, INT64_MAX);
  f.Finish();
  return r;
}

http::Response CreateRepository(Context& c) {
  RepositoryFields r = ReadRepositoryFields(c.request.body, true);
  int64_t slots = r.task_slots.value_or(4);
  int64_t id = c.runner.Write([&](Database& db) {
    Statement exists = db.Prepare("SELECT 1 FROM repositories WHERE name = ?");
    exists.Bind(1, *r.name);
    if (exists.Step()) throw ConflictError("a repository named '" + *r.name + "' exists");
    db.Prepare("INSERT INTO repositories (name, location, task_slots, capacity_bytes, token, bandwidth, created_at) "
               "VALUES (?, ?, ?, ?, ?, ?, strftime('%s','now') * 1000)")
        .Bind(1, *r.name).Bind(2, *r.location).Bind(3, slots).Bind(4, r.capacity_bytes.value_or(0))
        .Bind(5, r.token.value_or("")).Bind(6, r.bandwidth.value_or("")).Run();
    return db.LastInsertId();
  });
  c.runner.RepositoryChanged(id, static_cast<int>(slots), r.bandwidth.value_or(""));
  return Json(201, ReadRepository(c.db, id));
}

http::Response GetRepository(Context& c) { return Json(200, ReadRepository(c.db, c.ids[0])); }

http::Response PatchRepository(Context& c) {
  RepositoryFields r = ReadRepositoryFields(c.request.body, false);
  std::string bandwidth;
  int64_t slots = c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT task_slots, bandwidth FROM repositories WHERE id = ?");
    s.Bind(1, c.ids[0]);
    if (!s.Step()) NotFound("repository", c.ids[0]);
    bandwidth = r.bandwidth.value_or(s.Text(1));
    if (r.name) {
      Statement clash = db.Prepare("SELECT 1 FROM repositories WHERE name = ? AND id != ?");
      clash.Bind(1, *r.name).Bind(2, c.ids[0]);
      if (clash.Step()) throw ConflictError("a repository named '" + *r.name + "' exists");
      db.Prepare("UPDATE repositories SET name = ? WHERE id = ?").Bind(1, *r.name).Bind(2, c.ids[0]).Run();
    }
    if (r.location) db.Prepare("UPDATE repositories SET location = ? WHERE id = ?").Bind(1, *r.location).Bind(2, c.ids[0]).Run();
    if (r.token) db.Prepare("UPDATE repositories SET token = ? WHERE id = ?").Bind(1, *r.token).Bind(2, c.ids[0]).Run();
    if (r.bandwidth) db.Prepare("UPDATE repositories SET bandwidth = ? WHERE id = ?").Bind(1, *r.bandwidth).Bind(2, c.ids[0]).Run();
    if (r.task_slots) db.Prepare("UPDATE repositories SET task_slots = ? WHERE id = ?").Bind(1, *r.task_slots).Bind(2, c.ids[0]).Run();
    if (r.capacity_bytes)
      db.Prepare("UPDATE repositories SET capacity_bytes = ? WHERE id = ?").Bind(1, *r.capacity_bytes).Bind(2, c.ids[0]).Run();
    return r.task_slots.value_or(s.Int(0));
  });
  c.runner.RepositoryChanged(c.ids[0], static_cast<int>(slots), bandwidth);
  return Json(200, ReadRepository(c.db, c.ids[0]));
}

http::Response DeleteRepository(Context& c) {
  c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT name, (SELECT COUNT(*) FROM jobs WHERE repository_id = repositories.id), "
                             "(SELECT COUNT(*) FROM points WHERE repository_id = repositories.id) FROM repositories WHERE id = ?");
    s.Bind(1, c.ids[0]);
    if (!s.Step()) NotFound("repository", c.ids[0]);
    if (s.Int(1) > 0 || s.Int(2) > 0)
      throw ConflictError("repository '" + s.Text(0) + "' is used by " + std::to_string(s.Int(1)) + " jobs and holds " +
                          std::to_string(s.Int(2)) + " restore points");
    db.Prepare("DELETE FROM repositories WHERE id = ?").Bind(1, c.ids[0]).Run();
    return 0;
  });
  c.runner.RepositoryRemoved(c.ids[0]);
  return Json(200, json::object{{"deleted", c.ids[0]}});
}

// --- jobs --------------------------------------------------------------------

struct JobFields {
  std::optional<std::string> kind;  // backup | copy (create only)
  std::optional<int64_t> source_job;  // copy
  std::optional<std::string> name;
  std::optional<int64_t> repository;
  std::optional<json::object> selection;
  std::optional<json::array> exclude_disks;
  bool schedule_given = false;
  std::optional<json::value> schedule;  // canonical; nullopt with schedule_given = manual only
  std::optional<int64_t> retry_count, retry_interval_s;
  std::optional<std::string> chain;
  std::optional<bool> enabled;
  JobLifecycleFields lifecycle;
};

// The members of a job that say what it backs up and when, read the same
// way for a job (POST and PATCH /jobs) and for its preview (POST
// /jobs/preview): same syntax, same checks, same field names.
std::optional<json::object> ReadSelection(FieldReader& f, bool required) {
  const json::value* v = f.Member("selection", required);
  if (!v) return std::nullopt;
  if (!v->is_object()) throw FieldError("selection", "must be an object with vms, tags, hosts and/or clusters");
  FieldReader s(v->as_object(), "selection");
  json::object selection;
  size_t count = 0;
  for (const char* key : {"vms", "tags", "hosts", "clusters"}) {
    std::vector<std::string> names = s.NameList(key, false).value_or(std::vector<std::string>{});
    count += names.size();
    json::array a;
    for (auto& n : names) a.emplace_back(n);
    selection[key] = a;
  }
  s.Finish();
  if (count == 0) throw FieldError("selection", "selects nothing: give at least one of vms, tags, hosts, clusters");
  return selection;
}

std::optional<json::array> ReadExcludeDisks(FieldReader& f) {
  const json::value* v = f.Member("exclude_disks", false);
  if (!v) return std::nullopt;
  if (!v->is_array()) throw FieldError("exclude_disks", "must be an array of {vm, disk}");
  json::array out;
  for (size_t i = 0; i < v->as_array().size(); ++i) {
    std::string field = "exclude_disks[" + std::to_string(i) + "]";
    const json::value& e = v->as_array()[i];
    if (!e.is_object()) throw FieldError(field, "must be an object {vm, disk}");
    FieldReader d(e.as_object(), field);
    json::object entry;
    if (auto vm = d.Name("vm", false)) entry["vm"] = *vm;
    entry["disk"] = *d.Name("disk", true);
    d.Finish();
    out.push_back(entry);
  }
  return out;
}

// "schedule": null is given (manual only), unlike a missing member.
void ReadScheduleMember(FieldReader& f, JobFields& j) {
  if (const json::value* v = f.Member("schedule", false, true)) {
    j.schedule_given = true;
    if (!v->is_null()) j.schedule = ScheduleToJson(ParseSchedule(*v, "schedule"));
  }
}

JobFields ReadJobFields(const std::string& body, bool create) {
  json::object o = ParseRequestObject(body);
  FieldReader f(o, "");
  JobFields j;
  j.kind = f.String("kind", false, 16);
  if (j.kind && *j.kind != "backup" && *j.kind != "copy") throw FieldError("kind", "must be backup or copy");
  if (j.kind && !create) throw FieldError("kind", "cannot be changed: create a job of the other kind");
  const bool copy = j.kind == "copy";
  j.source_job = f.Int("source_job", create && copy, 1, INT64_MAX);
  j.name = f.Name("name", create);
  j.repository = f.Int("repository", create, 1, INT64_MAX);
  j.selection = ReadSelection(f, create && !copy);
  j.exclude_disks = ReadExcludeDisks(f);
  ReadScheduleMember(f, j);
  if (const json::value* v = f.Member("retries", false)) {
    if (!v->is_object()) throw FieldError("retries", "must be an object {count, interval_s}");
    FieldReader r(v->as_object(), "retries");
    j.retry_count = r.Int("count", false, 0, 100);
    j.retry_interval_s = r.Int("interval_s", false, 0, 86400);
    r.Finish();
  }
  if (const json::value* v = f.Member("chain", false)) {
    if (!v->is_object()) throw FieldError("chain", "must be an object {name}");
    FieldReader r(v->as_object(), "chain");
    j.chain = r.Name("name", true);
    r.Finish();
  }
  j.enabled = f.Bool("enabled", false);
  j.lifecycle = ReadJobLifecycleFields(f);
  f.Finish();
  return j;
}

// A copy job's chain is its source job's (a copy keeps the point's chain).
const char kJobSelect[] =
    "SELECT j.id, j.name, j.repository_id, j.selection, j.exclude_disks, j.schedule, j.retry_count, "
    "j.retry_interval_s, COALESCE((SELECT src.chain FROM jobs src WHERE src.id = j.source_job_id), j.chain), "
    "j.enabled, j.next_run_at, j.created_at, j.updated_at, "
    "ls.id, ls.state, "
    "j.retention, j.lock_days, j.check_schedule, j.check_skip_verified_s, j.next_check_at, "
    "(SELECT COUNT(*) FROM points p WHERE p.job_id = j.id AND p.removed_at IS NULL), "
    "(SELECT space FROM repositories r WHERE r.id = j.repository_id), "
    "(SELECT id FROM sessions s WHERE s.job_id = j.id AND s.kind = 'check' ORDER BY id DESC LIMIT 1), "
    "(SELECT state FROM sessions s WHERE s.job_id = j.id AND s.kind = 'check' ORDER BY id DESC LIMIT 1), "
    // The last session's figures are those session_totals keeps (a primary-key
    // lookup); bytes_read is not among them, and summing its tasks' would cost
    // a scan of up to tens of thousands of rows per job and request.
    "j.kind, j.source_job_id, ls.created_at, ls.ended_at, lt.bytes_done, lt.bytes_total, lt.bytes_stored "
    // The last backup (or copy) session, found once (sessions_by_job), and its totals.
    "FROM jobs j LEFT JOIN sessions ls ON ls.id = (SELECT id FROM sessions s WHERE s.job_id = j.id AND "
    "s.kind IN ('backup', 'copy') ORDER BY id DESC LIMIT 1) LEFT JOIN session_totals lt ON lt.session_id = ls.id ";

json::object JobJson(Statement& s) {
  json::value schedule = s.IsNull(5) ? json::value(nullptr) : json::parse(s.Text(5));
  const bool copy = s.Text(24) == "copy";
  json::object job{{"id", s.Int(0)}, {"name", s.Text(1)}, {"kind", s.Text(24)},
                   {"source_job", OptInt(s.OptInt(25))}, {"repository", s.Int(2)},
                   {"selection", copy ? json::value(nullptr) : json::parse(s.Text(3))},
                   {"exclude_disks", json::parse(s.Text(4))},
                   {"schedule", schedule},
                   {"schedule_description", schedule.is_null() ? json::value("manual only")
                                                               : json::value(DescribeSchedule(ParseSchedule(schedule)))},
                   {"retries", json::object{{"count", s.Int(6)}, {"interval_s", s.Int(7)}}},
                   {"chain", json::object{{"name", s.Text(8)}}}, {"enabled", s.Int(9) != 0},
                   {"next_run_at", Time(s.OptInt(10))}, {"created_at", Time(s.Int(11))}, {"updated_at", Time(s.Int(12))}};
  job["last_session"] =
      s.IsNull(13) ? json::value(nullptr)
                   : json::value(json::object{{"id", s.Int(13)}, {"state", s.Text(14)}, {"started_at", Time(s.Int(26))},
                                              {"ended_at", Time(s.OptInt(27))}, {"bytes_done", s.OptInt(28).value_or(0)},
                                              {"bytes_total", s.OptInt(29).value_or(0)},
                                              {"bytes_stored", s.OptInt(30).value_or(0)}});
  AddJobLifecycleJson(job, JobLifecycleFromRow(s, 15), s.OptInt(19));
  job["last_check"] = s.IsNull(22) ? json::value(nullptr) : json::value(json::object{{"id", s.Int(22)}, {"state", s.Text(23)}});
  // Its points now, and its chain's figures at its repository's last space
  // measurement (unique_bytes: what removing all of them frees).
  job["points"] = s.Int(20);
  json::value space = nullptr;
  if (!s.IsNull(21)) {
    json::value r = json::parse(s.Text(21));
    if (const json::value* chains = r.is_object() ? r.as_object().if_contains("chains") : nullptr; chains && chains->is_array())
      for (const auto& c : chains->as_array())
        if (c.is_object() && c.as_object().contains("chain") && c.at("chain") == json::value(s.Text(8))) space = c;
  }
  job["space"] = space;
  return job;
}

json::object ReadJob(Database& db, int64_t id) {
  Statement s = db.Prepare(std::string(kJobSelect) + "WHERE j.id = ?");
  s.Bind(1, id);
  if (!s.Step()) NotFound("job", id);
  return JobJson(s);
}

http::Response ListJobs(Context& c) {
  Statement s = c.db.Prepare(std::string(kJobSelect) + "ORDER BY j.id LIMIT ? OFFSET ?");
  s.Bind(1, QueryInt(c.request, "limit", 10000, 1, 100000)).Bind(2, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(JobJson(s));
  return Json(200, json::object{{"jobs", out}});
}

void CheckRepositoryExists(Database& db, int64_t id) {
  Statement r = db.Prepare("SELECT 1 FROM repositories WHERE id = ?");
  r.Bind(1, id);
  if (!r.Step()) throw FieldError("repository", "no repository with id " + std::to_string(id));
}

// A copy job's members (docs/api.md, "Copy jobs"): what a backup job has and
// a copy job has not is refused by name; the source must be a backup job
// whose repository is not the copy's target.
void CheckCopyJob(Database& db, const JobFields& j, int64_t source_job, int64_t target) {
  if (j.selection) throw FieldError("selection", "a copy job has no selection: it copies its source job's points");
  if (j.exclude_disks) throw FieldError("exclude_disks", "a copy job copies whole points: it has no exclude_disks");
  if (j.retry_count || j.retry_interval_s) throw FieldError("retries", "a copy job has no retries: its next run goes on where one stopped");
  if (j.chain) throw FieldError("chain", "a copy job's points keep their source job's chain");
  Statement src = db.Prepare("SELECT name, kind, repository_id FROM jobs WHERE id = ?");
  src.Bind(1, source_job);
  if (!src.Step()) throw FieldError("source_job", "no job with id " + std::to_string(source_job));
  if (src.Text(1) != "backup")
    throw FieldError("source_job", "job '" + src.Text(0) + "' is a copy job: the source must be a backup job");
  if (src.Int(2) == target)
    throw FieldError("repository", "is the repository of source job '" + src.Text(0) +
                                       "': a copy goes to another repository");
}

http::Response CreateJob(Context& c) {
  JobFields j = ReadJobFields(c.request.body, true);
  const bool copy = j.kind == "copy";
  int64_t id = c.runner.Write([&](Database& db) {
    CheckRepositoryExists(db, *j.repository);
    if (copy) CheckCopyJob(db, j, *j.source_job, *j.repository);
    else if (j.source_job) throw FieldError("source_job", "only a copy job (\"kind\": \"copy\") has a source job");
    Statement exists = db.Prepare("SELECT 1 FROM jobs WHERE name = ?");
    exists.Bind(1, *j.name);
    if (exists.Step()) throw ConflictError("a job named '" + *j.name + "' exists");
    const JobLifecycleFields& l = j.lifecycle;
    std::optional<std::string> check_schedule;
    if (l.check_schedule && *l.check_schedule) check_schedule = json::serialize(**l.check_schedule);
    db.Prepare("INSERT INTO jobs (name, repository_id, selection, exclude_disks, schedule, retry_count, retry_interval_s, "
               "chain, enabled, retention, lock_days, check_schedule, check_skip_verified_s, kind, source_job_id, "
               "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
               "strftime('%s','now') * 1000, strftime('%s','now') * 1000)")
        .Bind(1, *j.name).Bind(2, *j.repository).Bind(3, json::serialize(j.selection.value_or(json::object{})))
        .Bind(4, json::serialize(j.exclude_disks.value_or(json::array{})))
        .Bind(5, j.schedule ? std::optional<std::string>(json::serialize(*j.schedule)) : std::nullopt)
        .Bind(6, j.retry_count.value_or(3)).Bind(7, j.retry_interval_s.value_or(600))
        .Bind(8, j.chain.value_or(*j.name)).Bind(9, int64_t{j.enabled.value_or(true)})
        .Bind(10, l.retention ? RetentionColumn(*l.retention) : std::nullopt).Bind(11, l.lock_days.value_or(0))
        .Bind(12, check_schedule).Bind(13, l.check_skip_verified_s.value_or(0))
        .Bind(14, copy ? "copy" : "backup").Bind(15, copy ? j.source_job : std::nullopt).Run();
    return db.LastInsertId();
  });
  c.runner.JobScheduleChanged(id);
  return Json(201, ReadJob(c.db, id));
}

http::Response GetJob(Context& c) { return Json(200, ReadJob(c.db, c.ids[0])); }

http::Response PatchJob(Context& c) {
  JobFields j = ReadJobFields(c.request.body, false);
  int64_t id = c.ids[0];
  c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT kind, source_job_id, repository_id FROM jobs WHERE id = ?");
    s.Bind(1, id);
    if (!s.Step()) NotFound("job", id);
    if (j.repository) CheckRepositoryExists(db, *j.repository);
    if (s.Text(0) == "copy") {
      CheckCopyJob(db, j, j.source_job.value_or(s.OptInt(1).value_or(0)), j.repository.value_or(s.Int(2)));
      if (j.source_job) db.Prepare("UPDATE jobs SET source_job_id = ? WHERE id = ?").Bind(1, *j.source_job).Bind(2, id).Run();
    } else if (j.source_job) {
      throw FieldError("source_job", "only a copy job has a source job");
    } else if (j.repository) {
      // Its copy jobs must keep copying into another repository than its own.
      Statement clash = db.Prepare("SELECT name FROM jobs WHERE source_job_id = ? AND repository_id = ?");
      clash.Bind(1, id).Bind(2, *j.repository);
      if (clash.Step())
        throw FieldError("repository", "is the target of copy job '" + clash.Text(0) + "', which copies this job's points");
    }
    if (j.name) {
      Statement clash = db.Prepare("SELECT 1 FROM jobs WHERE name = ? AND id != ?");
      clash.Bind(1, *j.name).Bind(2, id);
      if (clash.Step()) throw ConflictError("a job named '" + *j.name + "' exists");
      db.Prepare("UPDATE jobs SET name = ? WHERE id = ?").Bind(1, *j.name).Bind(2, id).Run();
    }
    auto set_text = [&](const char* column, const std::optional<std::string>& value) {
      db.Prepare(std::string("UPDATE jobs SET ") + column + " = ? WHERE id = ?").Bind(1, value).Bind(2, id).Run();
    };
    auto set_int = [&](const char* column, int64_t value) {
      db.Prepare(std::string("UPDATE jobs SET ") + column + " = ? WHERE id = ?").Bind(1, value).Bind(2, id).Run();
    };
    if (j.repository) set_int("repository_id", *j.repository);
    if (j.selection) set_text("selection", json::serialize(*j.selection));
    if (j.exclude_disks) set_text("exclude_disks", json::serialize(*j.exclude_disks));
    if (j.schedule_given)
      set_text("schedule", j.schedule ? std::optional<std::string>(json::serialize(*j.schedule)) : std::nullopt);
    if (j.retry_count) set_int("retry_count", *j.retry_count);
    if (j.retry_interval_s) set_int("retry_interval_s", *j.retry_interval_s);
    if (j.chain) set_text("chain", *j.chain);
    if (j.enabled) set_int("enabled", *j.enabled ? 1 : 0);
    const JobLifecycleFields& l = j.lifecycle;
    if (l.retention) set_text("retention", RetentionColumn(*l.retention));
    if (l.lock_days) set_int("lock_days", *l.lock_days);
    if (l.check_schedule)
      set_text("check_schedule", *l.check_schedule ? std::optional<std::string>(json::serialize(**l.check_schedule)) : std::nullopt);
    if (l.check_skip_verified_s) set_int("check_skip_verified_s", *l.check_skip_verified_s);
    db.Prepare("UPDATE jobs SET updated_at = strftime('%s','now') * 1000 WHERE id = ?").Bind(1, id).Run();
    return 0;
  });
  c.runner.JobScheduleChanged(id);
  return Json(200, ReadJob(c.db, id));
}

http::Response DeleteJob(Context& c) {
  int64_t id = c.ids[0];
  c.runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT name, (SELECT COUNT(*) FROM sessions WHERE job_id = jobs.id AND state IN "
                             "('running', 'stopping')) FROM jobs WHERE id = ?");
    s.Bind(1, id);
    if (!s.Step()) NotFound("job", id);
    if (s.Int(1) > 0) throw ConflictError("job '" + s.Text(0) + "' is running; stop it first");
    Statement copies = db.Prepare("SELECT name FROM jobs WHERE source_job_id = ?");
    copies.Bind(1, id);
    if (copies.Step())
      throw ConflictError("job '" + s.Text(0) + "' is the source of copy job '" + copies.Text(0) + "'; delete that first");
    // Session history goes with the job; restore points stay (they are data).
    db.Prepare("DELETE FROM task_log WHERE session_id IN (SELECT id FROM sessions WHERE job_id = ?)").Bind(1, id).Run();
    db.Prepare("DELETE FROM tasks WHERE session_id IN (SELECT id FROM sessions WHERE job_id = ?)").Bind(1, id).Run();
    db.Prepare("DELETE FROM snapshots WHERE session_id IN (SELECT id FROM sessions WHERE job_id = ?)").Bind(1, id).Run();
    db.Prepare("DELETE FROM sessions WHERE job_id = ?").Bind(1, id).Run();
    db.Prepare("DELETE FROM jobs WHERE id = ?").Bind(1, id).Run();
    return 0;
  });
  return Json(200, json::object{{"deleted", id}});
}

http::Response StartJob(Context& c) {
  if (!c.request.body.empty()) FieldReader(ParseRequestObject(c.request.body), "").Finish();
  int64_t session = c.runner.StartJob(c.ids[0], "manual");
  return Json(202, json::object{{"session", session}});
}

http::Response StopJob(Context& c) {
  if (!c.request.body.empty()) FieldReader(ParseRequestObject(c.request.body), "").Finish();
  std::optional<int64_t> session = c.runner.StopJob(c.ids[0]);
  if (!session) throw ConflictError("job " + std::to_string(c.ids[0]) + " has no running session");
  return Json(202, json::object{{"session", *session}, {"state", "stopping"}});
}

// --- sessions ------------------------------------------------------------------

const char kSessionSelect[] =
    "SELECT s.id, s.job_id, j.name, s.trigger, s.state, s.reason, s.created_at, s.ended_at, "
    "t.tasks, t.succeeded, t.failed, t.running, t.queued + t.waiting, t.canceled, t.bytes_done, t.bytes_total, "
    "t.rate, s.kind, s.lifecycle_state, s.lifecycle FROM sessions s LEFT JOIN jobs j ON j.id = s.job_id JOIN session_totals t ON t.session_id = s.id ";

// The totals are kept by triggers (docs/coordinator-database.md, migration 2).
json::object SessionJson(Statement& s) {
  // The sum of the running tasks' rates is kept incrementally in floating
  // point; with nothing running it is exactly 0, not a rounding residue.
  double rate = s.Int(11) > 0 ? std::max(0.0, std::round(s.Real(16))) : 0.0;
  // What the repository lifecycle did: after a backup session, its locks,
  // retention, GC and space ("state": pending until done); a health
  // check's summary.
  json::value lifecycle = nullptr;
  if (!s.IsNull(19)) {
    json::value v = json::parse(s.Text(19));
    if (v.is_object()) lifecycle = v;
  }
  if (!s.IsNull(18) && lifecycle.is_null()) lifecycle = json::object{{"state", s.Text(18)}};
  // A restore session has no job.
  return {{"id", s.Int(0)}, {"lifecycle", lifecycle}, {"kind", s.Text(17)}, {"job_id", OptInt(s.OptInt(1))},
          {"job", s.IsNull(2) ? json::value(nullptr) : json::value(s.Text(2))}, {"trigger", s.Text(3)}, {"state", s.Text(4)},
          {"reason", s.Text(5)}, {"created_at", Time(s.Int(6))}, {"ended_at", Time(s.OptInt(7))},
          {"totals", json::object{{"tasks", s.Int(8)}, {"succeeded", s.Int(9)}, {"failed", s.Int(10)},
                                  {"running", s.Int(11)}, {"queued", s.Int(12)}, {"canceled", s.Int(13)},
                                  {"bytes_done", s.Int(14)}, {"bytes_total", s.Int(15)},
                                  {"rate_bytes_per_s", rate}}}};
}

http::Response ListSessions(Context& c) {
  // Backup sessions unless asked otherwise: a v1 client that lists sessions
  // sees no restore session (whose job_id is null) it did not ask for.
  std::string kind = "backup";
  if (auto k = c.request.query.find("kind"); k != c.request.query.end()) kind = k->second;
  if (kind != "backup" && kind != "restore" && kind != "check" && kind != "copy" && kind != "all")
    throw FieldError("kind", "must be backup, restore, check, copy or all");
  std::string where = kind == "all" ? "WHERE 1 " : "WHERE s.kind = ?4 ";
  if (c.request.query.count("job")) where += "AND s.job_id = ?1 ";
  Statement s = c.db.Prepare(std::string(kSessionSelect) + where + "ORDER BY s.id DESC LIMIT ?2 OFFSET ?3");
  if (kind != "all") s.Bind(4, kind);
  if (c.request.query.count("job")) s.Bind(1, QueryInt(c.request, "job", 0, 1, INT64_MAX));
  s.Bind(2, QueryInt(c.request, "limit", 100, 1, 10000)).Bind(3, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(SessionJson(s));
  return Json(200, json::object{{"sessions", out}});
}

// --- a session's statistics (docs/api.md, "Statistics and the bottleneck") ---

// The statistics columns of a task row (migration 4) from column `first` on:
// wall_us, the four busy times, remote_store. nullopt: its worker sent none.
std::optional<StageBusy> StagesAt(const Statement& t, int first) {
  if (t.IsNull(first)) return std::nullopt;
  auto us = [&](int i) { return static_cast<uint64_t>(std::max<int64_t>(0, t.Int(first + i))); };
  StageBusy b;
  b.wall_us = us(0);
  b.source_us = us(1);
  b.compute_us = us(2);
  b.network_us = us(3);
  b.target_us = us(4);
  b.remote_store = t.Int(first + 5) != 0;
  return b;
}

double Percent1(double p) { return std::round(p * 10.0) / 10.0; }

// {"source": 91.5, "compute": 30.2, "network": null, "target": 12.0}: null
// for a stage not measured (network of a local repository, target of a
// repository service).
json::value BusyJson(const std::optional<StageBusy>& b) {
  if (!b) return nullptr;
  json::object o;
  for (Stage s : kStages)
    o[StageName(s)] = b->measured(s) ? json::value(Percent1(b->percent(s))) : json::value(nullptr);
  return o;
}

json::value StageJson(std::optional<Stage> s) { return s ? json::value(StageName(*s)) : json::value(nullptr); }

// The session's summary over its tasks' statistics: each stage's busy time
// over the wall time of the tasks that measured it, and the session's
// bottleneck: the stage that was the bottleneck of the most bytes read (of
// the busy shares when no task read any).
class SessionStats {
 public:
  void Add(int64_t bytes_read, int64_t bytes_sent, int64_t bytes_stored, const std::optional<StageBusy>& b) {
    bytes_read_ += bytes_read;
    bytes_sent_ += bytes_sent;
    bytes_stored_ += bytes_stored;
    if (!b || b->wall_us == 0) return;
    ++tasks_;
    for (size_t i = 0; i < 4; ++i) {
      if (!b->measured(kStages[i])) continue;
      wall_[i] += static_cast<double>(b->wall_us);
      busy_[i] += static_cast<double>(std::min(b->us(kStages[i]), b->wall_us));
    }
    if (auto s = b->bottleneck()) bottleneck_bytes_[static_cast<size_t>(*s)] += bytes_read;
  }

  json::object Json() const {
    json::object busy, by_bytes;
    std::optional<Stage> by_share, by_read;
    for (size_t i = 0; i < 4; ++i) {
      const char* name = StageName(kStages[i]);
      by_bytes[name] = bottleneck_bytes_[i];
      if (wall_[i] == 0) {
        busy[name] = nullptr;
        continue;
      }
      double share = busy_[i] / wall_[i];
      busy[name] = Percent1(100.0 * share);
      if (!by_share || share > busy_[static_cast<size_t>(*by_share)] / wall_[static_cast<size_t>(*by_share)])
        by_share = kStages[i];
      const int64_t bytes = bottleneck_bytes_[i];
      if (bytes > 0 && (!by_read || bytes > bottleneck_bytes_[static_cast<size_t>(*by_read)])) by_read = kStages[i];
    }
    return {{"bytes_read", bytes_read_}, {"bytes_sent", bytes_sent_}, {"bytes_stored", bytes_stored_},
            {"tasks_measured", tasks_}, {"busy", tasks_ ? json::value(busy) : json::value(nullptr)},
            {"bottleneck", StageJson(by_read ? by_read : by_share)}, {"bottleneck_bytes", by_bytes}};
  }

 private:
  int64_t bytes_read_ = 0, bytes_sent_ = 0, bytes_stored_ = 0, tasks_ = 0;
  double wall_[4] = {}, busy_[4] = {};
  int64_t bottleneck_bytes_[4] = {};
};

http::Response GetSession(Context& c) {
  Statement s = c.db.Prepare(std::string(kSessionSelect) + "WHERE s.id = ?");
  s.Bind(1, c.ids[0]);
  if (!s.Step()) NotFound("session", c.ids[0]);
  json::object session = SessionJson(s);
  Statement snaps = c.db.Prepare(
      "SELECT id, vm_name, state, worker_id, tier, attempt, point_id, error FROM snapshots WHERE session_id = ? ORDER BY id");
  snaps.Bind(1, c.ids[0]);
  json::array snapshots;
  while (snaps.Step())
    snapshots.push_back(json::object{{"id", snaps.Int(0)}, {"vm", snaps.Text(1)}, {"state", snaps.Text(2)},
                                     {"worker_id", OptInt(snaps.OptInt(3))},
                                     {"tier", snaps.IsNull(4) ? json::value(nullptr) : json::value(snaps.Text(4))},
                                     {"attempt", snaps.Int(5)},
                                     {"point_id", snaps.IsNull(6) ? json::value(nullptr) : json::value(snaps.Text(6))},
                                     {"error", snaps.Text(7)}});
  session["snapshots"] = snapshots;
  // A restore's task has no snapshot; its VM is the restore's, and a
  // whole VM's restore has no disk.
  Statement t = c.db.Prepare(
      "SELECT t.id, COALESCE(s.vm_name, r.vm_name), t.disk, t.state, t.worker_id, t.tier, t.tier_reason, t.attempt, "
      "t.bytes_done, t.bytes_total, t.bytes_stored, t.rate, t.error, t.started_at, t.ended_at, t.snapshot_id, "
      "t.repository_id, t.bytes_read, t.bytes_sent, t.wall_us, t.source_busy_us, t.compute_busy_us, "
      "t.network_busy_us, t.target_busy_us, t.remote_store, t.snapshot_id IS NULL "
      "FROM tasks t LEFT JOIN snapshots s ON s.id = t.snapshot_id "
      "LEFT JOIN restores r ON r.session_id = t.session_id AND t.snapshot_id IS NULL WHERE t.session_id = ? ORDER BY t.id");
  t.Bind(1, c.ids[0]);
  json::array tasks;
  SessionStats stats;
  while (t.Step()) {
    std::optional<StageBusy> stages = StagesAt(t, 19);
    stats.Add(t.Int(17), t.Int(18), t.Int(10), stages);
    tasks.push_back(json::object{
        {"id", t.Int(0)}, {"vm", t.Text(1)},
        {"disk", t.Int(25) && t.Text(2).empty() ? json::value(nullptr) : json::value(t.Text(2))}, {"state", t.Text(3)},
        {"worker_id", OptInt(t.OptInt(4))}, {"tier", t.IsNull(5) ? json::value(nullptr) : json::value(t.Text(5))},
        {"tier_reason", t.IsNull(6) ? json::value(nullptr) : json::value(t.Text(6))}, {"attempt", t.Int(7)},
        {"bytes_done", t.Int(8)}, {"bytes_total", t.Int(9)}, {"bytes_stored", t.Int(10)},
        {"rate_bytes_per_s", t.Real(11)}, {"error", t.Text(12)}, {"started_at", Time(t.OptInt(13))},
        {"ended_at", Time(t.OptInt(14))}, {"snapshot_id", OptInt(t.OptInt(15))}, {"repository_id", t.Int(16)},
        {"bytes_read", t.Int(17)}, {"bytes_sent", t.Int(18)}, {"busy", BusyJson(stages)},
        {"bottleneck", StageJson(stages ? stages->bottleneck() : std::nullopt)}});
  }
  session["tasks"] = tasks;
  session["stats"] = stats.Json();
  Statement r = c.db.Prepare(
      "SELECT r.point, r.point_id, r.repository_id, r.vm_name, r.disk, h.name, r.target, r.retry_count, "
      "r.retry_interval_s FROM restores r JOIN hosts h ON h.id = r.host_id WHERE r.session_id = ?");
  r.Bind(1, c.ids[0]);
  if (r.Step())
    session["restore"] = json::object{
        {"point", r.Int(0)}, {"point_id", r.Text(1)}, {"repository_id", r.Int(2)}, {"vm", r.Text(3)},
        {"disk", r.Text(4).empty() ? json::value(nullptr) : json::value(r.Text(4))}, {"host", r.Text(5)},
        {"target", json::parse(r.Text(6))},
        {"retries", json::object{{"count", r.Int(7)}, {"interval_s", r.Int(8)}}}};
  return Json(200, session);
}

http::Response StopSession(Context& c) {
  if (!c.request.body.empty()) FieldReader(ParseRequestObject(c.request.body), "").Finish();
  if (!c.runner.StopSession(c.ids[0]))
    throw ConflictError("session " + std::to_string(c.ids[0]) + " is not running");
  return Json(202, json::object{{"session", c.ids[0]}, {"state", "stopping"}});
}

// --- restores --------------------------------------------------------------------

http::Response CreateRestore(Context& c) {
  RestoreRequest request = ParseRestoreRequest(c.request.body);
  int64_t session = c.runner.StartRestore(request);
  return Json(202, json::object{{"session", session}});
}

http::Response GetSessionLog(Context& c) {
  Statement exists = c.db.Prepare("SELECT 1 FROM sessions WHERE id = ?");
  exists.Bind(1, c.ids[0]);
  if (!exists.Step()) NotFound("session", c.ids[0]);
  Statement s = c.db.Prepare(
      "SELECT id, at, level, task_id, snapshot_id, message FROM task_log WHERE session_id = ? AND id > ? "
      "ORDER BY id LIMIT ?");
  s.Bind(1, c.ids[0]).Bind(2, QueryInt(c.request, "after", 0, 0, INT64_MAX)).Bind(3, QueryInt(c.request, "limit", 1000, 1, 100000));
  json::array out;
  while (s.Step())
    out.push_back(json::object{{"id", s.Int(0)}, {"at", Time(s.Int(1))}, {"level", s.Text(2)},
                               {"task_id", OptInt(s.OptInt(3))}, {"snapshot_id", OptInt(s.OptInt(4))},
                               {"message", s.Text(5)}});
  return Json(200, json::object{{"log", out}});
}

// --- points and status ---------------------------------------------------------

const char kPointSelect[] =
    "SELECT id, point_id, repository_id, job_id, session_id, vm_name, chain, bytes_read, bytes_stored, created_at, "
    "disks, locked_until, removed_at, check_state, checked_at, check_problem, check_problems, unique_bytes FROM points ";

json::object PointJson(Statement& s) {
  json::value disks = s.IsNull(10) ? json::value(nullptr) : json::parse(s.Text(10));
  json::value logical = nullptr;
  if (disks.is_array()) {
    int64_t sum = 0;
    for (const auto& d : disks.as_array()) sum += d.at("size_bytes").to_number<int64_t>();
    logical = sum;
  }
  json::value check = nullptr;
  if (!s.IsNull(13))
    check = json::object{{"state", s.Text(13)}, {"at", Time(s.OptInt(14))}, {"problems", s.Int(16)},
                         {"first_problem", s.IsNull(15) ? json::value(nullptr) : json::value(s.Text(15))}};
  return json::object{{"id", s.Int(0)}, {"point_id", s.Text(1)}, {"repository_id", s.Int(2)},
                      {"job_id", OptInt(s.OptInt(3))}, {"session_id", OptInt(s.OptInt(4))},
                      {"vm", s.Text(5)}, {"chain", s.Text(6)}, {"bytes_read", s.Int(7)},
                      {"bytes_stored", s.Int(8)}, {"created_at", Time(s.Int(9))}, {"disks", disks},
                      {"logical_bytes", logical}, {"unique_bytes", OptInt(s.OptInt(17))},
                      {"locked_until", Time(s.OptInt(11))}, {"removed_at", Time(s.OptInt(12))},
                      {"last_check", check}};
}

http::Response ListPoints(Context& c) {
  std::string where = "WHERE 1 ";
  if (c.request.query.count("job")) where += "AND job_id = ?1 ";
  if (c.request.query.count("repository")) where += "AND repository_id = ?2 ";
  if (c.request.query.count("vm")) where += "AND vm_name = ?3 ";
  // Removed points (their rows stay for the restores that name them) only when asked.
  if (auto r = c.request.query.find("removed"); r != c.request.query.end()) {
    if (r->second != "true" && r->second != "false") throw FieldError("removed", "must be true or false");
    if (r->second == "false") where += "AND removed_at IS NULL ";
  } else {
    where += "AND removed_at IS NULL ";
  }
  Statement s = c.db.Prepare(std::string(kPointSelect) + where + "ORDER BY id DESC LIMIT ?4 OFFSET ?5");
  if (c.request.query.count("job")) s.Bind(1, QueryInt(c.request, "job", 0, 1, INT64_MAX));
  if (c.request.query.count("repository")) s.Bind(2, QueryInt(c.request, "repository", 0, 1, INT64_MAX));
  if (c.request.query.count("vm")) s.Bind(3, c.request.query.at("vm"));
  s.Bind(4, QueryInt(c.request, "limit", 1000, 1, 100000)).Bind(5, QueryInt(c.request, "offset", 0, 0, INT64_MAX));
  json::array out;
  while (s.Step()) out.push_back(PointJson(s));
  return Json(200, json::object{{"points", out}});
}

json::object ReadPoint(Database& db, int64_t id) {
  Statement s = db.Prepare(std::string(kPointSelect) + "WHERE id = ?");
  s.Bind(1, id);
  if (!s.Step()) NotFound("point", id);
  return PointJson(s);
}

http::Response GetPoint(Context& c) { return Json(200, ReadPoint(c.db, c.ids[0])); }

RepositoryLifecycle& Lifecycle(Context& c) {
  if (!c.lifecycle) throw ConflictError("this coordinator does not manage restore points");
  return *c.lifecycle;
}

http::Response DeletePoint(Context& c) {
  if (!c.request.body.empty()) FieldReader(ParseRequestObject(c.request.body), "").Finish();
  Lifecycle(c).RemovePoint(c.ids[0]);
  return Json(200, json::object{{"deleted", c.ids[0]}});
}

http::Response LockPoint(Context& c) {
  ReadPoint(c.db, c.ids[0]);  // 404 before the body's errors
  json::object o = ParseRequestObject(c.request.body);
  FieldReader f(o, "");
  std::optional<int64_t> days = f.Int("days", false, 1, 36500);
  const json::value* until_v = f.Member("until", false);
  std::optional<std::string> reason;
  if (const json::value* r = f.Member("reason", false)) {
    if (!r->is_string() || r->as_string().size() > 200) throw FieldError("reason", "must be a string of at most 200 characters");
    reason = std::string(r->as_string());
  }
  f.Finish();
  RepositoryLifecycle& lifecycle = Lifecycle(c);
  int64_t until = 0;
  if (days && until_v) throw FieldError("days", "give either days or until, not both");
  if (days) {
    until = lifecycle.NowSeconds() + *days * 86400;
  } else if (until_v) {
    if (!until_v->is_string()) throw FieldError("until", "must be an RFC 3339 time such as 2027-01-31T00:00:00Z");
    try {
      until = ParseRfc3339(std::string(until_v->as_string()));
    } catch (const Error& e) {
      throw FieldError("until", e.what());
    }
  } else {
    throw FieldError("days", "give days (a number of days from now) or until (an RFC 3339 time)");
  }
  lifecycle.LockPoint(c.ids[0], until, reason.value_or("locked through the API"));
  return Json(200, ReadPoint(c.db, c.ids[0]));
}

// POST /jobs/preview: what a backup job with this selection, exclude_disks
// and schedule would back up and when, for the console's job form. Read
// only; the members are read by the job's own readers, the selection
// resolved as a session's start resolves it (selection.h).
constexpr size_t kPreviewVms = 200;
constexpr int kPreviewRuns = 5;

http::Response PreviewJob(Context& c) {
  json::object o = ParseRequestObject(c.request.body.empty() ? std::string("{}") : c.request.body);
  FieldReader f(o, "");
  JobFields j;
  j.selection = ReadSelection(f, false);
  j.exclude_disks = ReadExcludeDisks(f);
  ReadScheduleMember(f, j);
  f.Finish();
  std::vector<SelectedVm> vms;
  if (j.selection) vms = ResolveSelection(c.db, *j.selection, j.exclude_disks.value_or(json::array{}));
  int64_t vm_count = 0, disk_count = 0;
  for (const SelectedVm& vm : vms) {
    if (!vm.HasDisksToBackUp()) continue;
    ++vm_count;
    for (const SelectedDisk& d : vm.disks) disk_count += d.excluded ? 0 : 1;
  }
  const size_t shown = std::min(vms.size(), kPreviewVms);
  std::partial_sort(vms.begin(), vms.begin() + static_cast<std::ptrdiff_t>(shown), vms.end(),
                    [](const SelectedVm& a, const SelectedVm& b) { return std::tie(a.name, a.vm_id) < std::tie(b.name, b.vm_id); });
  json::array list;
  for (size_t i = 0; i < shown; ++i) {
    const SelectedVm& vm = vms[i];
    json::array tags, disks;
    for (const std::string& t : vm.tags) tags.emplace_back(t);
    for (const SelectedDisk& d : vm.disks)
      disks.push_back(json::object{{"name", d.name}, {"size_bytes", d.size_bytes}, {"excluded", d.excluded}});
    list.push_back(json::object{{"id", vm.vm_id}, {"name", vm.name}, {"host", vm.host}, {"cluster", vm.cluster},
                                {"tags", tags}, {"disks", disks}, {"backed_up", vm.HasDisksToBackUp()}});
  }
  json::array runs;
  std::string description = "manual only";
  if (j.schedule) {
    Schedule schedule = ParseSchedule(*j.schedule);
    description = DescribeSchedule(schedule);
    int64_t after = std::time(nullptr);
    for (int i = 0; i < kPreviewRuns; ++i) {
      std::optional<int64_t> next = NextRun(schedule, after);
      if (!next) break;
      runs.push_back(Time(*next * 1000));
      after = *next;
    }
  }
  return Json(200, json::object{{"vms", list}, {"vms_matched", static_cast<int64_t>(vms.size())},
                                {"vm_count", vm_count}, {"disk_count", disk_count},
                                {"schedule_description", description}, {"next_runs", runs}});
}

http::Response CheckJob(Context& c) {
  if (!c.request.body.empty()) FieldReader(ParseRequestObject(c.request.body), "").Finish();
  int64_t session = Lifecycle(c).StartCheck(c.ids[0], "manual");
  return Json(202, json::object{{"session", session}});
}

http::Response GetStatus(Context& c) {
  SessionRunner::Stats stats = c.runner.GetStats();
  Statement s = c.db.Prepare(
      "SELECT (SELECT COUNT(*) FROM workers WHERE state = 'connected'), (SELECT COUNT(*) FROM workers), "
      "(SELECT COUNT(*) FROM hosts), (SELECT COUNT(*) FROM vms), (SELECT COUNT(*) FROM sessions WHERE state IN "
      "('running', 'stopping'))");
  s.Step();
  // Every state, 0 when no worker is in it (workers.state; a scan of a
  // table of at most thousands of rows).
  json::object by_state{{"new", 0}, {"connected", 0}, {"disconnected", 0}, {"unreachable", 0}};
  Statement w = c.db.Prepare("SELECT state, COUNT(*) FROM workers GROUP BY state");
  while (w.Step()) by_state[w.Text(0)] = w.Int(1);
  return Json(200, json::object{{"version", c.version}, {"schema_version", LatestSchemaVersion()},
                                {"workers_connected", s.Int(0)}, {"workers", s.Int(1)}, {"hosts", s.Int(2)},
                                {"vms", s.Int(3)}, {"sessions_running", s.Int(4)}, {"workers_by_state", by_state},
                                {"scheduler", json::object{{"queued", stats.queued},
                                                           {"assignments_live", stats.live_assignments},
                                                           {"assignments_made", stats.assignments_made}}}});
}

http::Response OpenApi(Context&) {
  http::Response response;
  response.body = Api::OpenApiDocument();
  return response;
}

// --- operations: /healthz and /metrics (outside /api/v1) ---------------------------

using http::MetricsText;  // ferry/http/metrics_text.h, shared with ferry-repository

http::Response Metrics(Context& c) {
  MetricsText m;
  m.Family("ferry_build_info", "gauge", "The coordinator's version.");
  m.Sample("ferry_build_info", {{"version", c.version}}, 1);
  m.Family("ferry_sessions", "gauge", "Sessions kept in the database, by kind and state.");
  {
    Statement s = c.db.Prepare("SELECT kind, state, COUNT(*) FROM sessions GROUP BY kind, state ORDER BY kind, state");
    while (s.Step()) m.Sample("ferry_sessions", {{"kind", s.Text(0)}, {"state", s.Text(1)}}, static_cast<double>(s.Int(2)));
  }
  m.Family("ferry_session_duration_seconds", "summary", "How long ended sessions took, by kind and state.");
  {
    Statement s = c.db.Prepare(
        "SELECT kind, state, COUNT(*), COALESCE(SUM(ended_at - created_at), 0) FROM sessions WHERE ended_at IS NOT NULL "
        "GROUP BY kind, state ORDER BY kind, state");
    while (s.Step()) {
      m.Sample("ferry_session_duration_seconds_count", {{"kind", s.Text(0)}, {"state", s.Text(1)}}, static_cast<double>(s.Int(2)));
      m.Sample("ferry_session_duration_seconds_sum", {{"kind", s.Text(0)}, {"state", s.Text(1)}}, s.Int(3) / 1000.0);
    }
  }
  m.Family("ferry_tasks", "gauge", "Tasks of the sessions kept, by state.");
  {
    Statement s = c.db.Prepare(
        "SELECT COALESCE(SUM(waiting), 0), COALESCE(SUM(queued), 0), COALESCE(SUM(running), 0), "
        "COALESCE(SUM(succeeded), 0), COALESCE(SUM(failed), 0), COALESCE(SUM(canceled), 0), "
        "COALESCE(SUM(bytes_done), 0), COALESCE(SUM(bytes_stored), 0), COALESCE(SUM(rate), 0) FROM session_totals");
    s.Step();
    const char* states[] = {"waiting", "queued", "running", "succeeded", "failed", "canceled"};
    for (int i = 0; i < 6; ++i) m.Sample("ferry_tasks", {{"state", states[i]}}, static_cast<double>(s.Int(i)));
    m.Family("ferry_task_bytes_done", "gauge", "Bytes the tasks of the sessions kept have read.");
    m.Sample("ferry_task_bytes_done", {}, static_cast<double>(s.Int(6)));
    m.Family("ferry_task_bytes_stored", "gauge", "Bytes the tasks of the sessions kept have stored.");
    m.Sample("ferry_task_bytes_stored", {}, static_cast<double>(s.Int(7)));
    m.Family("ferry_task_rate_bytes_per_second", "gauge", "The running tasks' summed rate.");
    m.Sample("ferry_task_rate_bytes_per_second", {}, std::max(0.0, s.Real(8)));
  }
  m.Family("ferry_workers", "gauge", "Workers by state.");
  {
    Statement s = c.db.Prepare("SELECT state, COUNT(*) FROM workers GROUP BY state ORDER BY state");
    while (s.Step()) m.Sample("ferry_workers", {{"state", s.Text(0)}}, static_cast<double>(s.Int(1)));
  }
  m.Family("ferry_points", "gauge", "Restore points not removed, by repository.");
  {
    Statement s = c.db.Prepare(
        "SELECT r.name, COUNT(p.id) FROM repositories r LEFT JOIN points p ON p.repository_id = r.id AND p.removed_at IS NULL "
        "GROUP BY r.id ORDER BY r.name");
    while (s.Step()) m.Sample("ferry_points", {{"repository", s.Text(0)}}, static_cast<double>(s.Int(1)));
  }
  SessionRunner::Stats stats = c.runner.GetStats();
  m.Family("ferry_scheduler_queued", "gauge", "Work items waiting for a worker.");
  m.Sample("ferry_scheduler_queued", {}, static_cast<double>(stats.queued));
  m.Family("ferry_scheduler_assignments_live", "gauge", "Work items held by workers now.");
  m.Sample("ferry_scheduler_assignments_live", {}, static_cast<double>(stats.live_assignments));
  m.Family("ferry_scheduler_assignments_total", "counter", "Work items handed to workers since the coordinator started.");
  m.Sample("ferry_scheduler_assignments_total", {}, static_cast<double>(stats.assignments_made));
  http::Response r;
  r.body = m.Take();
  r.content_type = http::kMetricsContentType;
  return r;
}

http::Response Healthz(Context& c) {
  http::Response r;
  r.content_type = "text/plain; charset=utf-8";
  std::string fatal = c.runner.FatalError();
  if (!fatal.empty()) {
    r.status = 503;
    r.body = "unhealthy: " + fatal + "\n";
    return r;
  }
  Statement s = c.db.Prepare("SELECT 1");
  s.Step();
  r.body = "ok\n";
  return r;
}

// --- routing ---------------------------------------------------------------------

using RouteHandler = http::Response (*)(Context&);
struct RouteEntry {
  const char* method;
  const char* pattern;
  RouteHandler handler;
  bool write;
};

const RouteEntry kRoutes[] = {
    {"GET", "/api/v1/openapi.json", OpenApi, false},
    {"GET", "/api/v1/status", GetStatus, false},
    {"GET", "/api/v1/hosts", ListHosts, false},
    {"POST", "/api/v1/hosts", CreateHost, true},
    {"GET", "/api/v1/hosts/{id}", GetHost, false},
    {"PATCH", "/api/v1/hosts/{id}", PatchHost, true},
    {"DELETE", "/api/v1/hosts/{id}", DeleteHost, true},
    {"POST", "/api/v1/hosts/{id}/worker", DeployAppliance, true},
    {"DELETE", "/api/v1/hosts/{id}/worker", RemoveAppliance, true},
    {"GET", "/api/v1/vms", ListVms, false},
    {"GET", "/api/v1/vms/{id}", GetVm, false},
    {"GET", "/api/v1/workers", ListWorkers, false},
    {"POST", "/api/v1/workers", CreateWorker, true},
    {"GET", "/api/v1/workers/{id}", GetWorker, false},
    {"PATCH", "/api/v1/workers/{id}", PatchWorker, true},
    {"DELETE", "/api/v1/workers/{id}", DeleteWorker, true},
    {"GET", "/api/v1/repositories", ListRepositories, false},
    {"POST", "/api/v1/repositories", CreateRepository, true},
    {"GET", "/api/v1/repositories/{id}", GetRepository, false},
    {"PATCH", "/api/v1/repositories/{id}", PatchRepository, true},
    {"DELETE", "/api/v1/repositories/{id}", DeleteRepository, true},
    {"GET", "/api/v1/jobs", ListJobs, false},
    {"POST", "/api/v1/jobs", CreateJob, true},
    {"POST", "/api/v1/jobs/preview", PreviewJob, true},  // before /jobs/{id}: see Handle
    {"GET", "/api/v1/jobs/{id}", GetJob, false},
    {"PATCH", "/api/v1/jobs/{id}", PatchJob, true},
    {"DELETE", "/api/v1/jobs/{id}", DeleteJob, true},
    {"POST", "/api/v1/jobs/{id}/start", StartJob, true},
    {"POST", "/api/v1/jobs/{id}/stop", StopJob, true},
    {"POST", "/api/v1/jobs/{id}/check", CheckJob, true},
    {"GET", "/api/v1/sessions", ListSessions, false},
    {"GET", "/api/v1/sessions/{id}", GetSession, false},
    {"GET", "/api/v1/sessions/{id}/log", GetSessionLog, false},
    {"POST", "/api/v1/sessions/{id}/stop", StopSession, true},
    {"GET", "/api/v1/points", ListPoints, false},
    {"GET", "/api/v1/points/{id}", GetPoint, false},
    {"DELETE", "/api/v1/points/{id}", DeletePoint, true},
    {"POST", "/api/v1/points/{id}/lock", LockPoint, true},
    {"POST", "/api/v1/restores", CreateRestore, true},
};

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

bool AsciiIEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// "application/json", in any case, optionally with parameters
// ("; charset=utf-8"); not "application/json-seq" or "application/jsonx".
bool IsJsonMediaType(const std::string& content_type) {
  const std::string type = "application/json";
  if (content_type.size() < type.size() || !AsciiIEquals(content_type.substr(0, type.size()), type)) return false;
  return content_type.size() == type.size() || content_type[type.size()] == ';' || content_type[type.size()] == ' ' ||
         content_type[type.size()] == '\t';
}

// Matches `path` against `pattern`; {id} segments must be positive integers.
enum class Match { kNo, kYes, kBadId };
Match MatchPath(const std::string& pattern, const std::string& path, std::vector<int64_t>& ids, std::string& bad) {
  std::vector<std::string> want = Split(pattern), got = Split(path);
  if (want.size() != got.size()) return Match::kNo;
  std::vector<int64_t> found;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == "{id}") {
      int64_t id = 0;
      auto [ptr, ec] = std::from_chars(got[i].data(), got[i].data() + got[i].size(), id);
      if (got[i].empty() || ec != std::errc() || ptr != got[i].data() + got[i].size() || id < 1) {
        bad = got[i];
        found.push_back(-1);
        continue;
      }
      found.push_back(id);
    } else if (want[i] != got[i]) {
      return Match::kNo;
    }
  }
  ids = found;
  for (int64_t id : found)
    if (id < 0) return Match::kBadId;
  return Match::kYes;
}

// Everything but /api, /api/..., /healthz and /metrics.
bool IsConsolePath(const std::string& path) {
  return path != "/api" && path.rfind("/api/", 0) != 0 && path != "/healthz" && path != "/metrics";
}

}  // namespace

Api::Api(SessionRunner& runner, std::string db_path, std::string version, ApplianceDeployer* appliances,
         RepositoryLifecycle* lifecycle, const ConsoleAssets* console)
    : runner_(runner), appliances_(appliances), lifecycle_(lifecycle), db_path_(std::move(db_path)), version_(std::move(version)) {
  static const ConsoleAssets kNoConsole;
  console_ = console ? console : &kNoConsole;
  for (auto& reader : readers_) reader.db.emplace(Database::Open(db_path_, true));
  Statement s = readers_[0].db->Prepare("SELECT token_hash FROM api_tokens");
  while (s.Step()) token_hashes_.insert(s.Text(0));
}

std::vector<Route> Api::Routes() {
  std::vector<Route> routes;
  for (const RouteEntry& r : kRoutes) routes.push_back({r.method, r.pattern});
  return routes;
}

const std::string& Api::OpenApiDocument() {
  static const std::string document(kOpenApiJson);
  return document;
}

bool Api::Authorized(const http::Request& request) {
  // The auth scheme is case-insensitive (RFC 7235): "bearer" is "Bearer".
  const std::string prefix = "bearer ";
  if (request.authorization.size() < prefix.size() || !AsciiIEquals(request.authorization.substr(0, prefix.size()), prefix))
    return false;
  std::string hash = HashToken(request.authorization.substr(prefix.size()));
  std::lock_guard lock(tokens_mu_);
  return token_hashes_.count(hash) > 0;
}

std::optional<http::Response> Api::Admit(const http::Request& head) {
  if (head.method == "GET" && (head.path == "/api/v1/openapi.json" || head.path == "/healthz")) return std::nullopt;  // public
  // The console's files hold no data: public (Handle answers other methods).
  if (IsConsolePath(head.path)) return std::nullopt;
  if (Authorized(head)) return std::nullopt;
  // Without a token the answer never depends on the body (404, 405 or 401,
  // as Handle gives them): given from the head alone.
  return Handle(head);
}

http::Response Api::Handle(const http::Request& request) {
  try {
    // Operations, outside the versioned API: /healthz for anyone (a load
    // balancer, systemd), /metrics with a token like the API.
    if (request.path == "/healthz" || request.path == "/metrics") {
      if (request.method != "GET") {
        http::Response r = ErrorResponse(405, "method_not_allowed", request.method + " is not allowed on " + request.path);
        r.headers.emplace_back("Allow", "GET");
        return r;
      }
      if (request.path == "/metrics" && !Authorized(request)) {
        http::Response r = ErrorResponse(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
        r.headers.emplace_back("WWW-Authenticate", "Bearer");
        return r;
      }
      Reader& reader = readers_[next_reader_.fetch_add(1) % readers_.size()];
      std::lock_guard lock(reader.mu);
      Context context{runner_, *reader.db, request, {}, version_, appliances_, lifecycle_};
      return request.path == "/healthz" ? Healthz(context) : Metrics(context);
    }
    // The web console's files: everything outside /api (console_assets.h).
    if (IsConsolePath(request.path)) return console_->Serve(request);
    const RouteEntry* route = nullptr;
    bool path_known = false;
    std::vector<int64_t> ids;
    std::string bad_id;
    bool id_invalid = false;
    std::string allowed;  // the methods of the path, for a 405's Allow header
    bool literal = false;  // a route without {id} took the path: /jobs/preview is not /jobs/{id}
    for (const RouteEntry& r : kRoutes) {
      std::vector<int64_t> candidate;
      std::string bad;
      Match m = MatchPath(r.pattern, request.path, candidate, bad);
      if (m == Match::kNo || (m == Match::kBadId && literal)) continue;
      if (m == Match::kYes && std::string_view(r.pattern).find("{id}") == std::string_view::npos) literal = true;
      if (m == Match::kBadId) bad_id = bad;
      path_known = true;
      if (request.method != r.method) {
        allowed += (allowed.empty() ? "" : ", ") + std::string(r.method);
        continue;
      }
      route = &r;
      ids = candidate;
      id_invalid = m == Match::kBadId;
      break;
    }
    if (!path_known) return ErrorResponse(404, "not_found", "no such route: " + request.path);
    if (route == nullptr) {
      http::Response r = ErrorResponse(405, "method_not_allowed", request.method + " is not allowed on " + request.path);
      r.headers.emplace_back("Allow", allowed);  // required in a 405 (RFC 9110)
      return r;
    }
    if (route->handler != OpenApi && !Authorized(request)) {
      http::Response r = ErrorResponse(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      return r;
    }
    if (id_invalid) throw FieldError("id", "'" + bad_id + "' is not a positive integer id");
    if (route->write && !request.body.empty() && !IsJsonMediaType(request.content_type))
      return ErrorResponse(415, "bad_input", "request bodies must be application/json", "Content-Type");
    if (route->write) {
      // Writes take the runner's lock and read back through a connection of
      // their own, so that a long write never holds up the readers.
      Database own = Database::Open(db_path_, true);
      Context context{runner_, own, request, ids, version_, appliances_, lifecycle_};
      return route->handler(context);
    }
    // Any free reader; if all are busy, wait for the next one in turn.
    size_t start = next_reader_.fetch_add(1) % readers_.size();
    for (size_t i = 0; i < readers_.size(); ++i) {
      Reader& reader = readers_[(start + i) % readers_.size()];
      std::unique_lock lock(reader.mu, std::try_to_lock);
      if (!lock.owns_lock()) continue;
      Context context{runner_, *reader.db, request, ids, version_, appliances_, lifecycle_};
      return route->handler(context);
    }
    Reader& reader = readers_[start];
    std::lock_guard lock(reader.mu);
    Context context{runner_, *reader.db, request, ids, version_, appliances_, lifecycle_};
    return route->handler(context);
  } catch (const FieldError& e) {
    // Always names the field, even a member whose name is "" ({"": 1}).
    return Json(400, json::object{{"error", json::object{{"kind", "bad_input"}, {"message", e.detail()}, {"field", e.field()}}}});
  } catch (const ConflictError& e) {
    return ErrorResponse(409, "conflict", e.what());
  } catch (const Error& e) {
    switch (e.kind()) {
      case ErrorKind::kBadInput: return ErrorResponse(400, "bad_input", e.what());
      case ErrorKind::kNotFound: return ErrorResponse(404, "not_found", e.what());
      case ErrorKind::kRetryable: return ErrorResponse(503, "retryable", e.what());
      default:
        LogError("API " + request.method + " " + request.path + ": " + e.what());
        return ErrorResponse(500, "internal", std::string(ErrorKindName(e.kind())) + ": " + e.what());
    }
  } catch (const std::exception& e) {
    LogError("API " + request.method + " " + request.path + ": " + e.what());
    return ErrorResponse(500, "internal", "internal error; see the coordinator log");
  }
}

std::string CreateAdminToken(Database& db, const std::string& name) {
  std::string token = NewToken();
  db.Prepare("INSERT INTO api_tokens (name, token_hash, role, created_at) VALUES (?, ?, 'admin', strftime('%s','now') * 1000)")
      .Bind(1, name).Bind(2, HashToken(token)).Run();
  return token;
}

}  // namespace ferry::coordinator
