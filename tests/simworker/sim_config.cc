#include "sim_config.h"

#include <boost/json.hpp>

#include <charconv>
#include <initializer_list>
#include <optional>
#include <set>

#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"

namespace ferry::simworker {
namespace json = boost::json;

namespace {

Error Bad(const std::string& message) { return Error(ErrorKind::kBadInput, message); }

class FieldReader {
 public:
  FieldReader(const json::value& v, std::string path, const std::string& source,
              std::initializer_list<const char*> known)
      : source_(source), path_(std::move(path)) {
    if (!v.is_object()) throw Fail(path_, "expected an object");
    obj_ = &v.as_object();
    std::set<std::string> allowed(known.begin(), known.end());
    for (const auto& kv : *obj_) {
      std::string key(kv.key());
      if (!allowed.count(key)) throw Fail(Field(key), "unknown field");
    }
  }

  std::string Field(const char* key) const { return Field(std::string(key)); }
  std::string Field(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

  Error Fail(const std::string& field, const std::string& why) const {
    return Bad(source_ + ": " + field + ": " + why);
  }

  const json::value* Find(const char* key) const { return obj_->if_contains(key); }

  std::string String(const char* key, bool required, const std::string& def = "",
                     bool non_empty = false) const {
    const json::value* v = Find(key);
    if (v == nullptr) {
      if (required) throw Fail(Field(key), "missing (a string is required)");
      return def;
    }
    if (!v->is_string()) throw Fail(Field(key), "expected a string, got " + json::serialize(*v));
    std::string s(v->as_string());
    if (non_empty && s.empty()) throw Fail(Field(key), "must not be empty");
    return s;
  }

  uint64_t Unsigned(const char* key, bool required, uint64_t def, uint64_t min,
                    uint64_t max) const {
    const json::value* v = Find(key);
    if (v == nullptr) {
      if (required) throw Fail(Field(key), "missing (an integer is required)");
      return def;
    }
    uint64_t out = 0;
    if (v->is_uint64()) {
      out = v->as_uint64();
    } else if (v->is_int64() && v->as_int64() >= 0) {
      out = static_cast<uint64_t>(v->as_int64());
    } else {
      throw Fail(Field(key), "expected a non-negative integer, got " + json::serialize(*v));
    }
    if (out < min || out > max) {
      throw Fail(Field(key), "must be from " + std::to_string(min) + " to " + std::to_string(max) +
                                 ", got " + std::to_string(out));
    }
    return out;
  }

  const json::array* Array(const char* key) const {
    const json::value* v = Find(key);
    if (v == nullptr) return nullptr;
    if (!v->is_array()) throw Fail(Field(key), "expected an array, got " + json::serialize(*v));
    return &v->as_array();
  }

 private:
  const std::string& source_;
  std::string path_;
  const json::object* obj_ = nullptr;
};

SimDisk ParseDisk(const json::value& v, const std::string& path, const std::string& source) {
  FieldReader r(v, path, source, {"name", "size", "format"});
  SimDisk d;
  d.name = r.String("name", true, "", true);
  d.size = r.Unsigned("size", false, 0, 0, UINT64_MAX);
  d.format = r.String("format", false, "raw", true);
  return d;
}

SimVm ParseVm(const json::value& v, const std::string& path, const std::string& source) {
  FieldReader r(v, path, source, {"name", "uuid", "state", "tags", "disks"});
  SimVm vm;
  vm.name = r.String("name", true, "", true);
  vm.uuid = r.String("uuid", false, "");
  vm.state = r.String("state", false, "running", true);
  if (const json::array* tags = r.Array("tags")) {
    for (size_t i = 0; i < tags->size(); ++i) {
      const json::value& t = (*tags)[i];
      std::string field = r.Field("tags") + "[" + std::to_string(i) + "]";
      if (!t.is_string()) throw r.Fail(field, "expected a string, got " + json::serialize(t));
      vm.tags.emplace_back(t.as_string());
    }
  }
  if (const json::array* disks = r.Array("disks")) {
    std::set<std::string> names;
    for (size_t i = 0; i < disks->size(); ++i) {
      std::string field = r.Field("disks") + "[" + std::to_string(i) + "]";
      SimDisk d = ParseDisk((*disks)[i], field, source);
      if (!names.insert(d.name).second) {
        throw r.Fail(field + ".name", "disk '" + d.name + "' listed twice");
      }
      vm.disks.push_back(std::move(d));
    }
  }
  return vm;
}

WorkerSpec ParseWorker(const json::value& v, const std::string& path, const std::string& source) {
  FieldReader r(v, path, source, {"token", "host", "platform", "cluster", "slots", "vms"});
  WorkerSpec w;
  w.token = r.String("token", true, "", true);
  w.host = r.String("host", true, "", true);
  w.platform = r.String("platform", false, "libvirt", true);
  w.cluster = r.String("cluster", false, "");
  w.slots = static_cast<uint32_t>(r.Unsigned("slots", false, 1, 1, 1024));
  if (const json::array* vms = r.Array("vms")) {
    std::set<std::string> names;
    for (size_t i = 0; i < vms->size(); ++i) {
      std::string field = r.Field("vms") + "[" + std::to_string(i) + "]";
      SimVm vm = ParseVm((*vms)[i], field, source);
      if (!names.insert(vm.name).second) {
        throw r.Fail(field + ".name", "VM '" + vm.name + "' listed twice");
      }
      w.vms.push_back(std::move(vm));
    }
  }
  return w;
}

int ParseInt(const std::string& option, const std::string& value, int min, int max) {
  int out = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || out < min ||
      out > max) {
    throw Bad(option + ": expected an integer from " + std::to_string(min) + " to " +
              std::to_string(max) + ", got '" + value + "'");
  }
  return out;
}

}  // namespace

std::vector<WorkerSpec> ParseWorkersJson(const std::string& text, const std::string& source) {
  boost::system::error_code ec;
  json::value root = json::parse(text, ec);
  if (ec) throw Bad(source + ": not valid JSON: " + ec.message());
  if (!root.is_array()) throw Bad(source + ": expected a JSON array of workers");
  const json::array& arr = root.as_array();
  if (arr.empty()) throw Bad(source + ": the array of workers is empty");
  std::vector<WorkerSpec> out;
  out.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    out.push_back(ParseWorker(arr[i], "[" + std::to_string(i) + "]", source));
  }
  return out;
}

std::vector<WorkerSpec> LoadWorkersFile(const std::string& path) {
  std::string text;
  try {
    text = ReadWholeFile(path);
  } catch (const Error& e) {
    throw Bad(std::string("--workers: cannot read the workers file: ") + e.what());
  }
  return ParseWorkersJson(text, path);
}

DiskRef ParseDiskSpec(const std::string& spec) {
  size_t slash = spec.rfind('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == spec.size()) {
    throw Bad("DISKSPEC '" + spec + "': expected VM/DISK, e.g. vm1/vda");
  }
  return DiskRef{spec.substr(0, slash), spec.substr(slash + 1)};
}

FailSpec ParseFailSpec(const std::string& spec) {
  size_t colon = spec.rfind(':');
  if (colon == std::string::npos) {
    throw Bad("--fail '" + spec + "': expected VM/DISK:N, e.g. vm1/vda:2");
  }
  FailSpec out;
  out.disk = ParseDiskSpec(spec.substr(0, colon));
  out.count = ParseInt("--fail '" + spec + "' count", spec.substr(colon + 1), 1, 1000000);
  return out;
}

const char* Usage() {
  return "usage: ferry-simworker --coordinator HOST:PORT --workers FILE.json [options]\n"
         "  Simulates the workers listed in FILE.json, each on its own connection to the\n"
         "  coordinator's worker RPC port, all in one event loop.\n"
         "options:\n"
         "  --tls                   use TLS, trusting the system store\n"
         "  --tls-ca FILE           use TLS, trusting only the CA(s) in FILE\n"
         "  --tls-name NAME         name the coordinator's certificate must carry\n"
         "                          (default: HOST; for an IP address give a DNS name\n"
         "                          of the certificate, e.g. localhost)\n"
         "  --report FILE.json      write what each worker did on exit\n"
         "  --task-ms N             disk task duration (default 200)\n"
         "  --snapshot-ms N         snapshot duration (default 20)\n"
         "  --release-ms N          release duration (default 5)\n"
         "  --fail VM/DISK:N        the first N attempts of that disk fail (repeatable)\n"
         "  --hang VM/DISK          that disk never finishes until cancelled (repeatable)\n"
         "  --pull-wait-ms N        pullWork long-poll wait (default 1000)\n"
         "  --exit-when-idle-ms N   exit after N ms without work once an item was done\n"
         "  --reconnect-ms N        delay between connection attempts (default 500)\n"
         "  --quiet                 log warnings and errors only\n"
         "Exit: 0 after SIGTERM/SIGINT or --exit-when-idle-ms (report written), 2 bad input.\n";
}

SimOptions ParseCommandLine(const std::vector<std::string>& args) {
  SimOptions o;
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      o.help = true;
      return o;
    }
  }
  std::optional<Arguments> parsed;
  try {
    parsed.emplace(args,
                   std::set<std::string>{"coordinator", "tls-ca", "tls-name", "workers", "report", "task-ms",
                                         "snapshot-ms", "release-ms", "pull-wait-ms", "exit-when-idle-ms",
                                         "reconnect-ms", "fail", "hang"},
                   std::set<std::string>{"tls", "quiet"});
  } catch (const Error& e) {
    throw Bad(std::string(e.what()) + " (see --help)");
  }
  const Arguments& a = *parsed;
  auto milliseconds = [&](const char* name, int min, int max, int def) {
    return static_cast<int>(a.GetInt(name, min, max).value_or(def));
  };
  o.coordinator = a.Get("coordinator").value_or("");
  o.tls_ca = a.Get("tls-ca").value_or("");
  o.tls = a.Has("tls") || !o.tls_ca.empty();
  o.tls_name = a.Get("tls-name").value_or("");
  o.workers_file = a.Get("workers").value_or("");
  o.report_file = a.Get("report").value_or("");
  o.task_ms = milliseconds("task-ms", 0, 86400000, o.task_ms);
  o.snapshot_ms = milliseconds("snapshot-ms", 0, 86400000, o.snapshot_ms);
  o.release_ms = milliseconds("release-ms", 0, 86400000, o.release_ms);
  o.pull_wait_ms = milliseconds("pull-wait-ms", 0, 3600000, o.pull_wait_ms);
  o.exit_when_idle_ms = milliseconds("exit-when-idle-ms", 0, 86400000, o.exit_when_idle_ms);
  o.reconnect_ms = milliseconds("reconnect-ms", 1, 3600000, o.reconnect_ms);
  for (const std::string& spec : a.GetAll("fail")) o.fails.push_back(ParseFailSpec(spec));
  for (const std::string& spec : a.GetAll("hang")) o.hangs.push_back(ParseDiskSpec(spec));
  o.quiet = a.Has("quiet");
  if (o.coordinator.empty()) throw Bad("--coordinator HOST:PORT is required");
  if (o.workers_file.empty()) throw Bad("--workers FILE.json is required");
  if (!o.tls_name.empty() && !o.tls) throw Bad("--tls-name needs --tls or --tls-ca");
  return o;
}

}  // namespace ferry::simworker
