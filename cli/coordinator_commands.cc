#include "coordinator_commands.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <thread>

#include <boost/json.hpp>

#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>

#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/retention.h"
#include "ferry/http/client.h"

namespace json = boost::json;

namespace ferry::cli {
namespace {

class ApiClient {
 public:
  ApiClient(const std::string& url, const std::string& token, const std::string& ca)
      : client_(url, MakeOptions(ca)), token_(token) {}

  json::value Call(const std::string& method, const std::string& target, const std::string& body = "") {
    std::vector<std::pair<std::string, std::string>> headers = {{"Authorization", "Bearer " + token_}};
    if (!body.empty()) headers.emplace_back("Content-Type", "application/json");
    http::Response r = client_.Send(method, "/api/v1" + target, body, headers);
    json::error_code ec;
    json::value v = json::parse(r.body, ec);
    if (r.status >= 200 && r.status < 300) {
      if (ec) throw Error(ErrorKind::kInternal, "the coordinator sent malformed JSON for " + target);
      return v;
    }
    std::string message = "HTTP " + std::to_string(r.status);
    if (!ec && v.is_object() && v.as_object().contains("error")) {
      const json::object& e = v.at("error").as_object();
      message = std::string(e.at("message").as_string());
      if (e.contains("field")) message = std::string(e.at("field").as_string()) + ": " + message;
    }
    ErrorKind kind = r.status == 404 ? ErrorKind::kNotFound
                     : r.status == 401 ? ErrorKind::kBadInput
                     : r.status >= 500 ? ErrorKind::kRetryable
                                       : ErrorKind::kBadInput;
    if (r.status == 401) message = "the coordinator refused the token (" + message + ")";
    throw Error(kind, message);
  }

 private:
  static http::ClientOptions MakeOptions(const std::string& ca) {
    http::ClientOptions o;
    o.ca_file = ca;
    return o;
  }
  http::Client client_;
  std::string token_;
};

std::string Str(const json::value& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return std::string(v.as_string());
  return json::serialize(v);
}

std::string Bytes(double b) {
  char buf[32];
  if (b >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024));
  return buf;
}

// A busy share from the API ("91%"), "-" when not measured.
std::string Percent(const json::value& v) {
  if (!v.is_number()) return "-";
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.0f%%", v.to_number<double>());
  return buf;
}

// A row's member by column name; "a.b" is member b of object a ("appliance.state").
std::string CellOf(const json::object& row, const std::string& column) {
  size_t dot = column.find('.');
  if (dot == std::string::npos) return row.contains(column) ? Str(row.at(column)) : "";
  const json::value* outer = row.if_contains(column.substr(0, dot));
  if (!outer || !outer->is_object()) return "-";
  return CellOf(outer->as_object(), column.substr(dot + 1));
}

// Prints rows of a list as an aligned table of the given columns.
void Table(const json::array& rows, const std::vector<std::string>& columns) {
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> width;
  for (const auto& c : columns) width.push_back(c.size());
  for (const auto& row : rows) {
    std::vector<std::string> line;
    for (size_t i = 0; i < columns.size(); ++i) {
      std::string cell = CellOf(row.as_object(), columns[i]);
      width[i] = std::max(width[i], cell.size());
      line.push_back(cell);
    }
    cells.push_back(line);
  }
  auto print = [&](const std::vector<std::string>& line) {
    for (size_t i = 0; i < line.size(); ++i)
      std::cout << line[i] << (i + 1 < line.size() ? std::string(width[i] - line[i].size() + 2, ' ') : "");
    std::cout << "\n";
  };
  std::vector<std::string> header;
  for (const auto& c : columns) header.push_back(c);
  print(header);
  for (const auto& line : cells) print(line);
}

bool IsNumber(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

std::string Positional(const std::vector<std::string>& words, size_t i, const char* what) {
  if (i >= words.size()) throw Error(ErrorKind::kBadInput, std::string("missing ") + what);
  return words[i];
}

// An object by its id, or by the value of its member `key` in the listing
// GET `listing` ({"COLLECTION": [...]}); `what` is the error when none has it.
// A name several objects share is refused: the id says which.
std::string IdOf(ApiClient& api, const std::string& listing, const std::string& collection, const char* key,
                 const std::string& value, const std::string& what) {
  if (IsNumber(value)) return value;
  json::value listed = api.Call("GET", listing);
  std::vector<std::string> ids;
  for (const auto& o : listed.at(collection).as_array())
    if (o.at(key).is_string() && o.at(key).as_string() == value) ids.push_back(std::to_string(o.at("id").as_int64()));
  if (ids.empty()) throw Error(ErrorKind::kNotFound, what);
  if (ids.size() > 1) {
    std::string list;
    for (const auto& id : ids) list += (list.empty() ? "" : ", ") + id;
    throw Error(ErrorKind::kBadInput, std::to_string(ids.size()) + " " + collection + " have " + key + " '" + value +
                                          "' (ids " + list + "); give the id");
  }
  return ids[0];
}

std::string RepoId(ApiClient& api, const std::string& repo) {
  return IdOf(api, "/repositories", "repositories", "name", repo, "no repository named '" + repo + "' (ferry --coordinator URL repo list)");
}

// "key=value&" with the value percent-encoded (Boost.URL), for a query string.
std::string QueryParam(const std::string& key, const std::string& value) {
  return key + "=" + boost::urls::encode(value, boost::urls::unreserved_chars) + "&";
}

std::string JobId(ApiClient& api, const std::string& job) {
  return IdOf(api, "/jobs", "jobs", "name", job, "no job named '" + job + "'");
}

// The id of an object of `resource` (host, vm, worker, repo, job, point,
// session) given by its id or, except sessions, by its name (a point: its id
// in its repository).
std::string IdFor(ApiClient& api, const std::string& resource, const std::string& value);

// A point of `point list` by its id, or by its id in its repository.
std::string PointRecordId(ApiClient& api, const std::string& point) {
  return IdOf(api, "/points?limit=100000", "points", "point_id", point,
              "the coordinator has recorded no restore point '" + point + "' (ferry point list)");
}

std::string IdFor(ApiClient& api, const std::string& resource, const std::string& value) {
  if (resource == "job") return JobId(api, value);
  if (resource == "repo") return RepoId(api, value);
  if (resource == "point") return PointRecordId(api, value);
  if (resource == "host" || resource == "worker" || resource == "vm") {
    const std::string collection = resource + "s";
    // VMs are many: the API filters them by name; hosts and workers are few.
    const std::string listing =
        "/" + collection + "?" + (resource == "vm" ? QueryParam("name", value) : "") + "limit=100000";
    return IdOf(api, listing, collection, "name", value,
                "no " + resource + " named '" + value + "' (ferry " + resource + " list)");
  }
  return value;  // sessions: ids only
}

// POST /restores from `restore disk ...` / `restore vm ...`.
json::object RestoreFromOptions(ApiClient& api, const std::string& what, const std::vector<std::string>& words,
                                const Arguments& a) {
  json::object body{{"point", std::stoll(PointRecordId(api, Positional(words, 0, "POINT")))}};
  json::object target;
  if (what == "disk") {
    body["disk"] = Positional(words, 1, "DISK");
    if (a.Has("to") == a.Has("into-vm"))
      throw Error(ErrorKind::kBadInput, "give the disk's target as exactly one of --to PATH or --into-vm DOMAIN");
    if (a.Has("to")) {
      target = {{"type", "file"}, {"path", a.Require("to")}};
      if (auto f = a.Get("format")) target["format"] = *f;
    } else {
      target = {{"type", "libvirt_domain"}, {"vm", a.Require("into-vm")}};
      if (auto d = a.Get("target-disk")) target["disk"] = *d;
    }
  } else if (what == "vm") {
    if (a.Has("overwrite")) {
      if (!a.Has("yes"))
        throw Error(ErrorKind::kBadInput, "--overwrite powers off the original domain and replaces its disks; add --yes to confirm");
      target = {{"type", "original_domain"}, {"confirm", true}};
    } else {
      target = {{"type", "new_domain"}};
      if (auto d = a.Get("dir")) target["directory"] = *d;
      if (auto p = a.Get("pool")) target["pool"] = *p;
      if (auto n = a.Get("name")) target["name"] = *n;
      if (auto f = a.Get("format")) target["format"] = *f;
      if (a.Has("keep-macs")) target["keep_macs"] = true;
    }
  } else {
    throw Error(ErrorKind::kBadInput, "restore what? 'restore disk ...', 'restore vm ...' or 'restore list'");
  }
  body["target"] = target;
  if (auto h = a.Get("host")) body["host"] = *h;
  json::object retries;
  if (auto n = a.GetInt("retries", 0, 100)) retries["count"] = *n;
  if (auto s = a.GetInt("retry-interval", 0, 86400)) retries["interval_s"] = *s;
  if (!retries.empty()) body["retries"] = retries;
  return body;
}

json::array Strings(const std::vector<std::string>& values) {
  json::array a;
  for (const auto& v : values) a.emplace_back(v);
  return a;
}

json::object JobFromOptions(ApiClient& api, const std::string& name, const Arguments& a) {
  if (!a.Has("repo")) throw Error(ErrorKind::kBadInput, "--repo ID|NAME is required");
  json::object job{{"name", name}, {"repository", std::stoll(RepoId(api, *a.Get("repo")))}};
  if (auto source = a.Get("copy-from")) {
    // A copy job: what only a backup job has is refused by the API, naming it.
    job["kind"] = "copy";
    job["source_job"] = std::stoll(JobId(api, *source));
    for (const char* only_backup : {"vm", "tag", "host", "cluster", "exclude-disk", "retries", "retry-interval", "chain"})
      if (a.Has(only_backup))
        throw Error(ErrorKind::kBadInput, std::string("--") + only_backup + " is for backup jobs: a copy job copies " +
                                              "the points of its --copy-from job");
  } else {
    job["selection"] = json::object{{"vms", Strings(a.GetAll("vm"))}, {"tags", Strings(a.GetAll("tag"))},
                                    {"hosts", Strings(a.GetAll("host"))}, {"clusters", Strings(a.GetAll("cluster"))}};
  }
  json::array excludes;
  for (const std::string& e : a.GetAll("exclude-disk")) {
    size_t slash = e.find('/');
    if (slash == std::string::npos) excludes.push_back(json::object{{"disk", e}});
    else excludes.push_back(json::object{{"vm", e.substr(0, slash)}, {"disk", e.substr(slash + 1)}});
  }
  if (!job.contains("kind")) job["exclude_disks"] = excludes;
  json::object schedule;
  if (auto at = a.Get("daily")) schedule = {{"kind", "daily"}, {"at", *at}};
  if (auto hours = a.GetInt("every", 1, 24)) schedule = {{"kind", "every"}, {"hours", *hours}};
  if (auto expr = a.Get("cron")) schedule = {{"kind", "cron"}, {"expr", *expr}};
  if (auto permitted = a.Get("permitted-hours")) {
    if (schedule.empty()) throw Error(ErrorKind::kBadInput, "--permitted-hours needs --daily, --every or --cron");
    schedule["permitted_hours"] = *permitted;
  }
  if (!schedule.empty()) job["schedule"] = schedule;
  json::object retries;
  if (auto n = a.GetInt("retries", 0, 100)) retries["count"] = *n;
  if (auto s = a.GetInt("retry-interval", 0, 86400)) retries["interval_s"] = *s;
  if (!retries.empty()) job["retries"] = retries;
  if (auto chain = a.Get("chain")) job["chain"] = json::object{{"name", *chain}};
  if (a.Has("disabled")) job["enabled"] = false;
  // Retention: the options of `ferry prune`, read by the same rule parser.
  RetentionPolicy policy;
  bool any_rule = false;
  for (const auto& rule : RetentionRuleNames()) {
    if (auto v = a.Get(rule)) {
      try {
        SetRetentionRule(&policy, rule, *v);
      } catch (const Error& e) {
        throw Error(e.kind(), std::string("option --") + e.what());
      }
      any_rule = true;
    }
  }
  if (any_rule) {
    json::object r;
    for (auto [key, n] : {std::pair<const char*, int64_t>{"keep_last", policy.keep_last}, {"keep_within_days", policy.keep_within_days},
                          {"keep_daily", policy.keep_daily}, {"keep_weekly", policy.keep_weekly},
                          {"keep_monthly", policy.keep_monthly}, {"keep_yearly", policy.keep_yearly}})
      if (n > 0) r[key] = n;
    job["retention"] = r;
  }
  if (auto n = a.GetInt("lock-days", 0, 36500)) job["lock_days"] = *n;
  json::object check_schedule;
  if (auto at = a.Get("check-daily")) check_schedule = {{"kind", "daily"}, {"at", *at}};
  if (auto expr = a.Get("check-cron")) check_schedule = {{"kind", "cron"}, {"expr", *expr}};
  if (!check_schedule.empty()) {
    json::object check{{"schedule", check_schedule}};
    if (auto n = a.GetInt("check-skip-verified-days", 0, 3650)) check["skip_verified_within_days"] = *n;
    job["health_check"] = check;
  } else if (a.Has("check-skip-verified-days")) {
    throw Error(ErrorKind::kBadInput, "--check-skip-verified-days needs --check-daily or --check-cron");
  }
  return job;
}

// `session show`: the session, its snapshots and tasks, with each task's rate,
// how busy each stage was and its bottleneck, and the session's.
void PrintSession(const json::object& s) {
  const json::object& t = s.at("totals").as_object();
  const json::value* restore = s.if_contains("restore");  // a restore session's: what goes where
  std::cout << "session " << Str(s.at("id")) << " (" << (restore ? std::string("restore") : "job " + Str(s.at("job")))
            << ", " << Str(s.at("trigger")) << "): " << Str(s.at("state")) << ", " << Str(s.at("created_at")) << " - "
            << Str(s.at("ended_at")) << "\n";
  if (!s.at("reason").as_string().empty()) std::cout << "  " << Str(s.at("reason")) << "\n";
  if (restore) {
    const json::object& r = restore->as_object();
    std::cout << "  restore: " << Str(r.at("vm")) << (r.at("disk").is_null() ? "" : "/" + Str(r.at("disk")))
              << " of point " << Str(r.at("point_id")) << " onto host " << Str(r.at("host")) << ": "
              << json::serialize(r.at("target")) << "\n";
  }
  std::cout << "  tasks: " << Str(t.at("tasks")) << " (" << Str(t.at("succeeded")) << " succeeded, "
            << Str(t.at("failed")) << " failed, " << Str(t.at("running")) << " running, " << Str(t.at("queued"))
            << " queued, " << Str(t.at("canceled")) << " canceled)\n";
  if (const json::value* stats = s.if_contains("stats")) {
    const json::object& st = stats->as_object();
    std::cout << "  read " << Bytes(st.at("bytes_read").to_number<double>()) << ", sent "
              << Bytes(st.at("bytes_sent").to_number<double>()) << ", stored "
              << Bytes(st.at("bytes_stored").to_number<double>()) << "\n";
    if (st.at("busy").is_object()) {
      const json::object& busy = st.at("busy").as_object();
      std::cout << "  busy: source " << Percent(busy.at("source")) << ", compute " << Percent(busy.at("compute"))
                << ", network " << Percent(busy.at("network")) << ", target " << Percent(busy.at("target")) << "\n";
    }
    std::cout << "  bottleneck: " << Str(st.at("bottleneck")) << "\n";
  }
  json::array snapshots;
  for (const auto& v : s.at("snapshots").as_array()) {
    json::object row = v.as_object();
    row["worker"] = row.at("worker_id");
    snapshots.push_back(std::move(row));
  }
  if (!snapshots.empty()) {
    std::cout << "\n";
    Table(snapshots, {"id", "vm", "state", "worker", "tier", "attempt", "point_id", "error"});
  }
  json::array rows;
  for (const auto& v : s.at("tasks").as_array()) {
    const json::object& task = v.as_object();
    json::object row{{"id", task.at("id")},
                     {"vm/disk", Str(task.at("vm")) + "/" + Str(task.at("disk"))},
                     {"state", task.at("state")},
                     {"worker", task.at("worker_id")},
                     {"attempt", task.at("attempt")}};
    auto bytes = [&](const char* key) {
      const json::value* b = task.if_contains(key);
      return b ? Bytes(b->to_number<double>()) : std::string("-");
    };
    row["read"] = bytes("bytes_read");
    row["sent"] = bytes("bytes_sent");
    row["stored"] = bytes("bytes_stored");
    row["rate"] = Bytes(task.at("rate_bytes_per_s").to_number<double>()) + "/s";
    const json::value* busy = task.if_contains("busy");
    for (const char* stage : {"source", "compute", "network", "target"})
      row[stage] = busy && busy->is_object() ? Percent(busy->at(stage)) : "-";
    const json::value* bottleneck = task.if_contains("bottleneck");
    row["bottleneck"] = bottleneck ? Str(*bottleneck) : "-";
    row["error"] = task.at("error");
    rows.push_back(row);
  }
  std::cout << "\n";
  Table(rows, {"id", "vm/disk", "state", "worker", "attempt", "read", "sent", "stored", "rate", "source", "compute",
               "network", "target", "bottleneck", "error"});
}

bool Terminal(const std::string& state) {
  return state == "succeeded" || state == "warning" || state == "failed" || state == "stopped";
}

// Follows a session until it ends: a redrawn summary on a terminal, one line
// per change otherwise, plus the session log as it grows.
int Watch(ApiClient& api, const std::string& id, const std::atomic<bool>& interrupted) {
  bool tty = ::isatty(STDOUT_FILENO);
  int64_t last_log = 0;
  std::string last_line;
  int drawn = 0;
  while (true) {
    json::value session = api.Call("GET", "/sessions/" + id);
    json::value log = api.Call("GET", "/sessions/" + id + "/log?after=" + std::to_string(last_log));
    const json::object& s = session.as_object();
    const json::object& t = s.at("totals").as_object();
    std::string state(s.at("state").as_string());
    double done = static_cast<double>(t.at("bytes_done").to_number<int64_t>());
    double total = static_cast<double>(t.at("bytes_total").to_number<int64_t>());
    char summary[256];
    std::snprintf(summary, sizeof summary, "session %s (%s): %s  tasks %lld/%lld done, %lld running, %lld queued, %lld failed  %s of %s  %s/s",
                  id.c_str(), s.at("job").is_null() ? Str(s.at("kind")).c_str() : Str(s.at("job")).c_str(), state.c_str(),
                  static_cast<long long>(t.at("succeeded").as_int64()), static_cast<long long>(t.at("tasks").as_int64()),
                  static_cast<long long>(t.at("running").as_int64()), static_cast<long long>(t.at("queued").as_int64()),
                  static_cast<long long>(t.at("failed").as_int64()), Bytes(done).c_str(), Bytes(total).c_str(),
                  Bytes(t.at("rate_bytes_per_s").to_number<double>()).c_str());
    if (tty) {
      for (int i = 0; i < drawn; ++i) std::cout << "\x1b[1A\x1b[2K";
      drawn = 0;
    }
    for (const auto& entry : log.at("log").as_array()) {
      last_log = entry.at("id").as_int64();
      std::cout << Str(entry.at("at")) << " " << Str(entry.at("level")) << " " << Str(entry.at("message")) << "\n";
    }
    if (tty) {
      std::cout << summary << "\n";
      drawn = 1;
      for (const auto& task : s.at("tasks").as_array()) {
        if (task.at("state").as_string() != "running" || drawn > 20) continue;
        double td = static_cast<double>(task.at("bytes_done").to_number<int64_t>());
        double tt = static_cast<double>(task.at("bytes_total").to_number<int64_t>());
        const json::value* bottleneck = task.as_object().if_contains("bottleneck");
        std::printf("  %s/%s  worker %s (%s)  %3.0f%%  %s/s  bottleneck: %s\n", Str(task.at("vm")).c_str(),
                    Str(task.at("disk")).c_str(), Str(task.at("worker_id")).c_str(), Str(task.at("tier")).c_str(),
                    tt > 0 ? 100.0 * td / tt : 0.0, Bytes(task.at("rate_bytes_per_s").to_number<double>()).c_str(),
                    bottleneck ? Str(*bottleneck).c_str() : "-");
        std::fflush(stdout);
        ++drawn;
      }
    } else if (summary != last_line) {
      std::cout << summary << "\n";
      last_line = summary;
    }
    std::cout.flush();
    if (Terminal(state)) {
      std::cout << "session " << id << " " << state << ": " << Str(s.at("reason")) << "\n";
      return state == "succeeded" ? 0 : 1;
    }
    if (interrupted) throw Error(ErrorKind::kInterrupted, "stopped watching (the session goes on)");
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace

int CoordinatorCommand(const ParsedCommandLine& line, const std::atomic<bool>& interrupted) {
  const Arguments& a = line.options;
  std::string url;
  if (auto u = a.Get("coordinator")) {
    url = *u;
  } else if (const char* env = std::getenv("FERRY_COORDINATOR"); env && *env) {
    url = env;
  } else {
    throw Error(ErrorKind::kBadInput, "missing --coordinator URL (http[s]://HOST:PORT), or set FERRY_COORDINATOR");
  }
  if (url.find("://") == std::string::npos)
    throw Error(ErrorKind::kBadInput, "--coordinator: '" + url + "' is not a URL (http[s]://HOST:PORT)");
  std::string token;
  if (auto file = a.Get("token-file")) {
    token = ReadTokenFile(*file, "option --token-file");
  } else if (const char* env = std::getenv("FERRY_TOKEN")) {
    token = env;
  }
  if (token.empty()) throw Error(ErrorKind::kBadInput, "no API token: set FERRY_TOKEN or pass --token-file FILE");
  std::string ca = a.Get("ca").value_or("");
  if (ca.empty() && std::getenv("FERRY_CA")) ca = std::getenv("FERRY_CA");

  const std::string& name = line.command->name;
  const std::string resource = name.substr(0, name.find(' '));
  const std::string action = name.find(' ') == std::string::npos ? "" : name.substr(name.find(' ') + 1);
  const std::vector<std::string>& words = line.positionals;
  if (resource == "status") {
    ApiClient api(url, token, ca);
    std::cout << json::serialize(api.Call("GET", "/status")) << "\n";
    return 0;
  }
  bool raw = a.Has("json");
  ApiClient api(url, token, ca);
  auto show = [&](const json::value& v) { std::cout << json::serialize(v) << "\n"; };

  static const std::map<std::string, std::string> kCollections = {
      {"host", "hosts"}, {"vm", "vms"}, {"worker", "workers"}, {"repo", "repositories"},
      {"job", "jobs"}, {"session", "sessions"}, {"point", "points"}, {"restore", "sessions"}};
  static const std::map<std::string, std::vector<std::string>> kColumns = {
      {"host", {"id", "name", "platform", "cluster", "workers", "vms", "appliance.state"}},
      {"vm", {"id", "name", "host", "cluster", "state"}},
      {"worker", {"id", "name", "host", "state", "task_slots", "running_tasks", "bandwidth", "last_heartbeat_at", "version"}},
      {"repo", {"id", "name", "location", "task_slots", "running_tasks", "points", "bandwidth"}},
      {"job", {"id", "name", "kind", "repository", "schedule_description", "enabled", "next_run_at",
               "retention_description", "last_check.state"}},
      {"session", {"id", "kind", "job", "trigger", "state", "created_at", "ended_at", "reason"}},
      {"restore", {"id", "state", "created_at", "ended_at", "reason"}},
      {"point", {"id", "vm", "point_id", "chain", "bytes_stored", "created_at", "locked_until", "last_check.state"}}};
  auto collection = kCollections.find(resource);
  if (collection == kCollections.end()) throw Error(ErrorKind::kInternal, "no collection for " + name);
  std::string path = "/" + collection->second;

  if (resource == "restore" && action != "list") {
    json::value started = api.Call("POST", "/restores", json::serialize(RestoreFromOptions(api, action, words, a)));
    std::string session = std::to_string(started.at("session").as_int64());
    std::cout << "restore session " << session << " started\n";
    return a.Has("wait") ? Watch(api, session, interrupted) : 0;
  }
  if (action == "list") {
    std::string query;
    if (resource == "restore") query += "kind=restore&";
    else if (auto kind = a.Get("kind")) query += QueryParam("kind", *kind);
    if (auto job = a.Get("job")) query += QueryParam("job", JobId(api, *job));
    if (auto vm = a.Get("vm")) query += QueryParam("vm", *vm);
    if (auto host = a.Get("host")) query += QueryParam("host", *host);
    if (a.Has("removed")) query += "removed=true&";
    if (auto n = a.GetInt("limit", 1, 100000)) query += "limit=" + std::to_string(*n) + "&";
    if (auto n = a.GetInt("offset", 0, INT64_MAX)) query += "offset=" + std::to_string(*n) + "&";
    json::value v = api.Call("GET", path + (query.empty() ? "" : "?" + query.substr(0, query.size() - 1)));
    if (raw) show(v);
    else Table(v.at(collection->second).as_array(), kColumns.at(resource));
    return 0;
  }
  if (action == "show") {
    std::string id = IdFor(api, resource, words.at(0));
    json::value v = api.Call("GET", path + "/" + id);
    if (resource == "session" && !raw) PrintSession(v.as_object());
    else show(v);
    return 0;
  }
  if (action == "rm") {
    std::string id = IdFor(api, resource, words.at(0));
    api.Call("DELETE", path + "/" + id);
    std::cout << resource << " " << id << " deleted\n";
    return 0;
  }
  if (resource == "host" && (action == "add" || action == "set")) {
    json::object body;
    if (action == "add") body["name"] = Positional(words, 0, "NAME");
    if (auto p = a.Get("platform")) body["platform"] = *p;
    if (auto c = a.Get("cluster")) body["cluster"] = *c;
    show(action == "add" ? api.Call("POST", path, json::serialize(body))
                         : api.Call("PATCH", path + "/" + IdFor(api, resource, words.at(0)), json::serialize(body)));
    return 0;
  }
  if (resource == "worker" && action == "set") {
    show(api.Call("PATCH", path + "/" + IdFor(api, resource, words.at(0)),
                  json::serialize(json::object{{"bandwidth", a.Require("bandwidth")}})));
    return 0;
  }
  if (resource == "worker" && action == "add") {
    json::object body{{"name", Positional(words, 0, "NAME")}};
    if (auto b = a.Get("bandwidth")) body["bandwidth"] = *b;
    json::value w = api.Call("POST", path, json::serialize(body));
    std::cout << "worker " << w.at("id").as_int64() << " created; its token (shown once, give it to the worker):\n"
              << Str(w.at("token")) << "\n";
    return 0;
  }
  if (resource == "repo" && (action == "add" || action == "set")) {
    json::object body;
    if (action == "add") body = {{"name", Positional(words, 0, "NAME")}, {"location", a.Require("location")}};
    else if (auto l = a.Get("location")) body["location"] = *l;
    if (auto n = a.GetInt("slots", 1, 1024)) body["task_slots"] = *n;
    if (auto n = a.GetInt("capacity", 0, INT64_MAX)) body["capacity_bytes"] = *n;
    if (auto b = a.Get("bandwidth")) body["bandwidth"] = *b;
    // The repository service's token: from a file, never the command line.
    if (auto f = a.Get("repo-token-file")) body["token"] = ReadTokenFile(*f, "option --repo-token-file");
    show(action == "add" ? api.Call("POST", path, json::serialize(body))
                         : api.Call("PATCH", path + "/" + IdFor(api, resource, words.at(0)), json::serialize(body)));
    return 0;
  }
  if (resource == "job") {
    if (action == "create") {
      std::string body = a.Has("file") ? ReadWholeFile(*a.Get("file"))
                                         : json::serialize(JobFromOptions(api, Positional(words, 0, "NAME"), a));
      show(api.Call("POST", path, body));
      return 0;
    }
    std::string id = JobId(api, words.at(0));
    if (action == "set") {
      show(api.Call("PATCH", path + "/" + id, ReadWholeFile(a.Require("file"))));
      return 0;
    }
    if (action == "start") {
      json::value started = api.Call("POST", path + "/" + id + "/start");
      std::string session = std::to_string(started.at("session").as_int64());
      std::cout << "session " << session << " started\n";
      return a.Has("watch") ? Watch(api, session, interrupted) : 0;
    }
    if (action == "stop") {
      json::value stopped = api.Call("POST", path + "/" + id + "/stop");
      std::cout << "session " << stopped.at("session").as_int64() << " stopping\n";
      return 0;
    }
    if (action == "check") {
      json::value started = api.Call("POST", path + "/" + id + "/check");
      std::string session = std::to_string(started.at("session").as_int64());
      std::cout << "health check session " << session << " started\n";
      return a.Has("watch") ? Watch(api, session, interrupted) : 0;
    }
  }
  if (resource == "point" && action == "lock") {
    json::object body;
    if (auto d = a.GetInt("days", 1, 36500)) body["days"] = *d;
    if (auto u = a.Get("until")) body["until"] = *u;
    if (auto r = a.Get("reason")) body["reason"] = *r;
    show(api.Call("POST", path + "/" + IdFor(api, resource, words.at(0)) + "/lock", json::serialize(body)));
    return 0;
  }
  if (resource == "session" && action == "watch") return Watch(api, Positional(words, 0, "ID"), interrupted);
  if (resource == "session" && action == "stop") {
    json::value stopped = api.Call("POST", "/sessions/" + Positional(words, 0, "ID") + "/stop");
    std::cout << "session " << stopped.at("session").as_int64() << " stopping\n";
    return 0;
  }
  if (resource == "session" && action == "log") {
    json::value log = api.Call("GET", "/sessions/" + Positional(words, 0, "ID") + "/log?limit=100000");
    if (raw) show(log);
    else
      for (const auto& e : log.at("log").as_array())
        std::cout << Str(e.at("at")) << " " << Str(e.at("level")) << " " << Str(e.at("message")) << "\n";
    return 0;
  }
  throw Error(ErrorKind::kInternal, "no handler for '" + name + "'");
}

}  // namespace ferry::cli
