// request_fuzz: fuzzes the web API's request parsing (ParseRequestObject,
// FieldReader, the job/repository/host/worker field readers, ParseSchedule)
// through Api::Handle, on an in-process SessionRunner and a temporary
// database, exactly as the HTTP server calls it.
//
// Input: the first byte picks the route (kTargets), the rest is the body.
// Invariants checked on every response (abort() with the input printed):
//   - never 5xx;
//   - the body is a JSON object; a 4xx body is {"error": {"kind", "message"}};
//   - a 400 names the field at fault ("field").
//
// Two ways to run it (docs/api.md, "Fuzzing"):
//   - clang++ -fsanitize=fuzzer,address -DFERRY_LIBFUZZER: libFuzzer drives
//     LLVMFuzzerTestOneInput.
//   - otherwise (GCC, the default build) the standalone driver below: every
//     file given on the command line, then --runs N (default 20000)
//     mutations of a built-in corpus of valid bodies, from --seed S (default
//     1), so a run is reproducible. ctest runs it as `request_fuzz`.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "ferry/coordinator/api.h"
#include "ferry/coordinator/database.h"
#include "ferry/coordinator/session_runner.h"
#include "ferry/http/server.h"

namespace json = boost::json;
using ferry::coordinator::Api;
using ferry::coordinator::Database;
using ferry::coordinator::SessionRunner;

namespace {

struct Target {
  const char* method;
  const char* path;
};
// Id 1 of each kind exists (seeded), so PATCHes that parse reach the database.
const Target kTargets[] = {
    {"POST", "/api/v1/jobs"},  {"PATCH", "/api/v1/jobs/1"},  {"POST", "/api/v1/repositories"},
    {"PATCH", "/api/v1/repositories/1"}, {"POST", "/api/v1/hosts"}, {"PATCH", "/api/v1/hosts/1"},
    {"POST", "/api/v1/workers"}, {"POST", "/api/v1/jobs/1/stop"}, {"POST", "/api/v1/jobs/1/start"},
    {"POST", "/api/v1/restores"}, {"POST", "/api/v1/sessions/1/stop"}, {"POST", "/api/v1/hosts/1/worker"},
    {"POST", "/api/v1/jobs/preview"},
};
constexpr size_t kTargetCount = sizeof kTargets / sizeof kTargets[0];

std::string Printable(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

// The temporary directory, removed at exit. A plain array: it must outlive
// every other static (the harness itself is never destroyed).
char g_temp_dir[4096];

void RemoveTempDir() {
  std::error_code ec;
  if (g_temp_dir[0]) std::filesystem::remove_all(g_temp_dir, ec);
}

class Harness {
 public:
  // Created on first use and deliberately never destroyed, as fuzz harnesses
  // usually are: libFuzzer exits from wherever it likes, and tearing down the
  // runner and its database connections then only risks spurious reports.
  static Harness& Get() {
    static Harness* harness = new Harness;
    return *harness;
  }

  ferry::http::Response Handle(const Target& target, const std::string& body) {
    ferry::http::Request request;
    request.method = target.method;
    request.path = target.path;
    request.body = body;
    request.content_type = "application/json";
    request.authorization = "Bearer " + token_;
    request.remote = "127.0.0.1:1";
    return api_->Handle(request);
  }

 private:
  Harness() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp ? tmp : "/tmp") + "/ferry-request-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    dir_ = tmpl;
    std::snprintf(g_temp_dir, sizeof g_temp_dir, "%s", dir_.c_str());
    std::atexit(RemoveTempDir);
    const std::string path = dir_ + "/coordinator.db";
    {
      Database db = Database::Open(path);
      token_ = ferry::coordinator::CreateAdminToken(db, "fuzz");
    }
    auto clock = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
    runner_ = std::make_unique<SessionRunner>(Database::Open(path), ferry::coordinator::RunnerOptions{}, clock);
    runner_->Recover();
    api_ = std::make_unique<Api>(*runner_, path, "fuzz");
    Seed({"POST", "/api/v1/repositories"}, R"({"name":"seed","location":"/srv/seed"})");
    Seed({"POST", "/api/v1/hosts"}, R"({"name":"seed","platform":"libvirt","cluster":"c1"})");
    Seed({"POST", "/api/v1/jobs"}, R"({"name":"seed","repository":1,"selection":{"tags":["prod"]}})");
    // A restore point (as a session would record it), so that restore
    // requests that parse get as far as the host check.
    Database::Open(path)
        .Execute("INSERT INTO points (point_id, repository_id, vm_name, chain, created_at, disks) VALUES "
                 "('20260101T000000.000000Z-abcdef', 1, 'web01', 'seed', 1, "
                 "'[{\"name\":\"vda\",\"size_bytes\":1048576}]')");
  }

  void Seed(const Target& target, const std::string& body) {
    ferry::http::Response r = Handle(target, body);
    if (r.status != 201) {
      std::fprintf(stderr, "request_fuzz: seeding %s %s failed: %d %s\n", target.method, target.path, r.status,
                   r.body.c_str());
      std::abort();
    }
  }

  std::string dir_, token_;
  std::unique_ptr<SessionRunner> runner_;
  std::unique_ptr<Api> api_;
};

[[noreturn]] void Fail(const Target& target, const std::string& body, const ferry::http::Response& r,
                       const std::string& problem) {
  std::fprintf(stderr, "request_fuzz: %s\n  request: %s %s\n  body (%zu bytes): %s\n  response: %d %s\n",
               problem.c_str(), target.method, target.path, body.size(), Printable(body).c_str(), r.status,
               Printable(r.body.substr(0, 4000)).c_str());
  std::abort();
}

// Checks one response against the invariants at the top; returns its status.
int RunOne(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Target& target = kTargets[data[0] % kTargetCount];
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  ferry::http::Response r = Harness::Get().Handle(target, body);
  if (r.status >= 500) Fail(target, body, r, "a 5xx response");
  if (r.status < 200) Fail(target, body, r, "a status below 200");
  json::error_code ec;
  json::value v = json::parse(r.body, ec);
  if (ec || !v.is_object()) Fail(target, body, r, "the response is not a JSON object");
  if (r.status >= 400) {
    const json::value* e = v.as_object().if_contains("error");
    if (!e || !e->is_object() || !e->as_object().contains("kind") || !e->as_object().at("kind").is_string() ||
        !e->as_object().contains("message") || !e->as_object().at("message").is_string())
      Fail(target, body, r, "an error response without error.kind and error.message");
    if (r.status == 400) {
      const json::value* field = e->as_object().if_contains("field");
      // (The field may be "": the name of a member {"": ...}.)
      if (!field || !field->is_string()) Fail(target, body, r, "a 400 that names no field");
    }
  }
  return r.status;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  RunOne(data, size);
  return 0;
}

#ifndef FERRY_LIBFUZZER

namespace {

// Valid requests: the target index, then the body.
const std::vector<std::pair<int, std::string>> kCorpus = {
    {0, R"({"name":"nightly","repository":1,"selection":{"vms":["web01","db 1"],"tags":["prod"],"hosts":["pve1"],)"
        R"("clusters":["c1"]},"exclude_disks":[{"vm":"web01","disk":"vdb"},{"disk":"scratch"}],)"
        R"("schedule":{"kind":"daily","at":"22:00","days":["mon","FRI"],"permitted_hours":"20-23"},)"
        R"("retries":{"count":3,"interval_s":600},"chain":{"name":"nightly-chain"},"enabled":true})"},
    {0, R"({"name":"every","repository":1,"selection":{"tags":["x"]},"schedule":{"kind":"every","hours":6,"from":"01:30"}})"},
    {0, R"({"name":"cron","repository":1,"selection":{"hosts":["h"]},"schedule":{"kind":"cron",)"
        R"("expr":"*/15 1-5,22 1,15 jan-jun mon-fri","permitted_hours":"0-6,22-23"}})"},
    {0, R"({"name":"feb29","repository":1,"selection":{"vms":["a"]},"schedule":{"kind":"cron","expr":"0 0 29 2 *"}})"},
    {0, R"({"name":"m","repository":1,"selection":{"clusters":["c"]},"schedule":null,"enabled":false})"},
    {0, R"({"name":"life","repository":1,"selection":{"vms":["a"]},"retention":{"keep_last":7,"keep_within_days":30,)"
        R"("keep_daily":7,"keep_weekly":4,"keep_monthly":12,"keep_yearly":3},"lock_days":14,)"
        R"("health_check":{"schedule":{"kind":"daily","at":"03:00","days":["sun"]},"skip_verified_within_days":28}})"},
    {1, R"({"retention":null,"health_check":null,"lock_days":0})"},
    {1, R"({"retention":{"keep_last":1},"health_check":{"schedule":{"kind":"cron","expr":"0 4 * * 6"}}})"},
    {1, R"({"enabled":false})"},
    {1, R"({"schedule":null,"retries":{"count":0,"interval_s":0}})"},
    {1, R"({"schedule":{"kind":"cron","expr":"0 3 * * 7"},"chain":{"name":"c2"}})"},
    {1, R"({"name":"renamed","selection":{"vms":["a","b"]},"exclude_disks":[]})"},
    {1, R"({"repository":1,"schedule":{"kind":"every","hours":24,"from":"23:59","permitted_hours":"23"}})"},
    {2, R"({"name":"main","location":"/srv/backup/main","task_slots":4,"capacity_bytes":1000000})"},
    {2, R"({"name":"r2","location":"/r2"})"},
    {3, R"({"task_slots":1024,"location":"/new","name":"seed2","capacity_bytes":0})"},
    {4, R"({"name":"pve1","platform":"proxmox","cluster":"c1"})"},
    {4, R"({"name":"kvm 2","platform":"libvirt"})"},
    {5, R"({"platform":"ahv","cluster":""})"},
    {5, R"({"cluster":"c9"})"},
    {6, R"({"name":"worker-1"})"},
    {7, R"({})"},
    {7, ""},
    {8, R"({})"},
    {9, R"({"point":1,"disk":"vda","host":"seed","target":{"type":"file","path":"/r/vda.qcow2","format":"qcow2"},)"
        R"("retries":{"count":1,"interval_s":0}})"},
    {9, R"({"point":1,"disk":"vda","host":"seed","target":{"type":"libvirt_domain","vm":"db01","disk":"vdb"}})"},
    {9, R"({"point":1,"host":"seed","target":{"type":"new_domain","name":"n","directory":"/v","format":"raw",)"
        R"("keep_macs":true}})"},
    {9, R"({"point":1,"host":"seed","target":{"type":"new_domain","pool":"default"}})"},
    {9, R"({"point":1,"target":{"type":"original_domain","confirm":true}})"},
    {10, ""},
    {12, R"({"selection":{"vms":["web01"],"tags":["prod"],"hosts":["pve1"],"clusters":["c1"]},)"
         R"("exclude_disks":[{"vm":"web01","disk":"vdb"},{"disk":"scratch"}],"schedule":{"kind":"daily","at":"22:00"}})"},
    {12, R"({"selection":{"tags":["x"]},"schedule":{"kind":"cron","expr":"*/15 1-5 * * mon-fri"}})"},
    {12, R"({"schedule":null})"},
    {12, ""},
    {11, R"({"libvirt_uri":"qemu+ssh://root@kvm1/system","pool":"images","network":{"type":"bridge","source":"br0"},)"
         R"("memory_mib":1024,"coordinator_address":"[::1]:8081","idle_shutdown_s":0,)"
         R"("worker_config":"# more\nlibvirt = qemu+ssh://root@kvm1/system\nslots = 4\n"})"},
    {11, R"({"libvirt_uri":"qemu:///system","coordinator_address":"10.0.2.2:8081","worker_config":"qmp-dir = /x"})"},
};

// Tokens that steer mutations towards the interesting parts of the parsers.
const std::vector<std::string> kDictionary = {
    "\"name\"", "\"platform\"", "\"cluster\"", "\"location\"", "\"task_slots\"", "\"capacity_bytes\"",
    "\"repository\"", "\"selection\"", "\"vms\"", "\"tags\"", "\"hosts\"", "\"clusters\"", "\"exclude_disks\"",
    "\"vm\"", "\"disk\"", "\"schedule\"", "\"kind\"", "\"daily\"", "\"every\"", "\"cron\"", "\"at\"", "\"days\"",
    "\"hours\"", "\"from\"", "\"expr\"", "\"permitted_hours\"", "\"retries\"", "\"count\"", "\"interval_s\"",
    "\"chain\"", "\"enabled\"", "null", "true", "false", "0", "-1", "1024", "1025", "86400", "86401",
    "9223372036854775807", "9223372036854775808", "18446744073709551616", "-9223372036854775808", "1e400",
    "1.5", "-0", "0.0", "\"\"", "\"25:00\"", "\"23:59\"", "\"00:00\"", "\"0 0 31 2 *\"", "\"*/0 * * * *\"",
    "\"0-6,22-23\"", "\"23-0\"", "\"mon\"", "\"SUN\"", "\"\\u0000\"", "\"\\ud800\"", "\"a/b\"", "[]", "{}",
    "[[[[[[[[", "]]]]]]]]", "{\"a\":", ",", ":", "\"", "\\", "/", "\"proxmox\"", "\"libvirt\"", "\"vmware\"",
    "\"point\"", "\"target\"", "\"type\"", "\"file\"", "\"path\"", "\"format\"", "\"qcow2\"", "\"raw\"",
    "\"libvirt_domain\"", "\"new_domain\"", "\"original_domain\"", "\"directory\"", "\"pool\"",
    "\"keep_macs\"", "\"confirm\"", "\"host\"", "\"libvirt_uri\"", "\"network\"", "\"source\"",
    "\"bridge\"", "\"user\"", "\"memory_mib\"", "\"coordinator_address\"", "\"worker_config\"",
    "\"idle_shutdown_s\"", "\"h:65536\"", "\"token-file = t\\n\"",
};

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  // One input: a corpus entry with 1-4 stacked mutations.
  std::string Next() {
    const auto& [target, body] = kCorpus[Below(kCorpus.size())];
    std::string out = body;
    char selector = static_cast<char>(target);
    size_t roll = Below(8);  // mostly one mutation, so that many inputs stay nearly valid
    int n = roll < 5 ? 1 : roll < 7 ? 2 : 3 + static_cast<int>(Below(2));
    for (int i = 0; i < n; ++i) {
      if (Below(20) == 0) selector = static_cast<char>(Below(256));
      Mutate(out);
    }
    if (out.size() > (1u << 20)) out.resize(1u << 20);  // the server's body limit
    return std::string(1, selector) + out;
  }

 private:
  size_t Below(size_t n) { return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }

  void Mutate(std::string& s) {
    switch (Below(11)) {
      case 0:  // flip a bit
        if (!s.empty()) s[Below(s.size())] ^= static_cast<char>(1 << Below(8));
        break;
      case 1: {  // an interesting byte
        static const char kBytes[] = "\"{}[],:\\0-e.+ \x00\xff\x7f\t\n";
        if (!s.empty()) s[Below(s.size())] = kBytes[Below(sizeof kBytes - 1)];
        break;
      }
      case 2:  // truncate
        s.resize(Below(s.size() + 1));
        break;
      case 3: {  // splice with another body
        const std::string& other = kCorpus[Below(kCorpus.size())].second;
        s = s.substr(0, Below(s.size() + 1)) + other.substr(Below(other.size() + 1));
        break;
      }
      case 4:  // insert a dictionary token
        s.insert(Below(s.size() + 1), kDictionary[Below(kDictionary.size())]);
        break;
      case 5: {  // delete a range
        if (s.empty()) break;
        size_t at = Below(s.size());
        s.erase(at, 1 + Below(std::min<size_t>(16, s.size() - at)));
        break;
      }
      case 6:  // textual type swap: 1 <-> "1", "x" -> x
        SwapType(s);
        break;
      case 7:
      case 8:
      case 9:  // structural: replace, add or remove a member of the parsed body
        Structural(s);
        break;
      default: {  // deep nesting around the body or a value
        size_t depth = 1 + Below(Below(2) ? 20 : 200);
        bool arrays = Below(2);
        std::string open, close;
        for (size_t i = 0; i < depth; ++i) {
          open += arrays ? "[" : "{\"a\":";
          close += arrays ? "]" : "}";
        }
        size_t colon = s.find(':', Below(s.size() + 1));
        if (colon == std::string::npos || Below(3) == 0) {
          s = open + s + close;
        } else {
          // Wrap the value after a colon up to the next comma or brace.
          size_t end = s.find_first_of(",}", colon + 1);
          if (end == std::string::npos) end = s.size();
          s = s.substr(0, colon + 1) + open + s.substr(colon + 1, end - colon - 1) + close + s.substr(end);
        }
        break;
      }
    }
  }

  // Swaps the JSON type of a token found textually.
  void SwapType(std::string& s) {
    std::vector<std::pair<size_t, size_t>> numbers, strings;
    for (size_t i = 0; i < s.size();) {
      if (s[i] == '"') {
        size_t j = i + 1;
        while (j < s.size() && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
        if (j >= s.size()) break;
        strings.push_back({i, j + 1});
        i = j + 1;
      } else if ((s[i] >= '0' && s[i] <= '9') || s[i] == '-') {
        size_t j = i + 1;
        while (j < s.size() && std::strchr("0123456789.eE+-", s[j])) ++j;
        numbers.push_back({i, j});
        i = j;
      } else {
        ++i;
      }
    }
    bool pick_number = !numbers.empty() && (strings.empty() || Below(2));
    if (pick_number) {
      auto [b, e] = numbers[Below(numbers.size())];
      s = s.substr(0, b) + "\"" + s.substr(b, e - b) + "\"" + s.substr(e);
    } else if (!strings.empty()) {
      auto [b, e] = strings[Below(strings.size())];
      static const char* kReplacements[] = {"", "1", "true", "null", "[]", "{}", "-5"};
      std::string inner = s.substr(b + 1, e - b - 2);
      std::string with = Below(2) ? inner : kReplacements[Below(7)];
      s = s.substr(0, b) + with + s.substr(e);
    } else {
      s.insert(Below(s.size() + 1), "1");
    }
  }

  json::value RandomValue(int depth = 0) {
    switch (Below(depth > 3 ? 12 : 15)) {
      case 0: return nullptr;
      case 1: return Below(2) == 1;
      case 2: {
        static const int64_t kInts[] = {0, 1, -1, 2, 24, 25, 59, 60, 100, 101, 1024, 1025, 86400, 86401, INT64_MAX, INT64_MIN};
        return kInts[Below(sizeof kInts / sizeof kInts[0])];
      }
      case 3: return static_cast<uint64_t>(INT64_MAX) + 1 + Below(1000);
      case 4: {
        static const double kDoubles[] = {0.5, -0.0, 1e300, 4.0, 6.5, -1e-300};
        return kDoubles[Below(sizeof kDoubles / sizeof kDoubles[0])];
      }
      case 5: return json::string(std::string(Below(2) ? 129 : 5000, 'a'));
      case 6: {
        std::string t = kDictionary[Below(kDictionary.size())];
        if (t.size() >= 2 && t.front() == '"' && t.back() == '"') return json::string(t.substr(1, t.size() - 2));
        return json::string(t);
      }
      case 7: {
        static const char* kStrings[] = {"mon", "xyz", "0 0 * * *", "59 23 31 12 *", "0-23", "1,2,3", "12:00", "/abs",
                                         "rel", "proxmox", "ahv", "a.b_c-d e", "", " ", "\xc3\xa9", "daily", "cron", "every"};
        return json::string(kStrings[Below(sizeof kStrings / sizeof kStrings[0])]);
      }
      case 8: {
        json::string s;
        size_t n = Below(20);
        for (size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(0x20 + Below(0x5f)));
        return s;
      }
      case 9:
      case 10:
      case 11: return json::array{};
      case 12: {
        json::array a;
        size_t n = Below(4);
        for (size_t i = 0; i < n; ++i) a.push_back(RandomValue(depth + 1));
        return a;
      }
      default: {
        json::object o;
        size_t n = Below(4);
        for (size_t i = 0; i < n; ++i) {
          std::string key = kDictionary[Below(31)];
          o[key.substr(1, key.size() - 2)] = RandomValue(depth + 1);
        }
        return o;
      }
    }
  }

  // Every value in the tree, for picking one.
  static void Collect(json::value& v, std::vector<json::value*>& out) {
    out.push_back(&v);
    if (v.is_object())
      for (auto& member : v.as_object()) Collect(member.value(), out);
    else if (v.is_array())
      for (auto& element : v.as_array()) Collect(element, out);
  }

  void Structural(std::string& s) {
    json::error_code ec;
    json::value root = json::parse(s, ec);
    if (ec) {
      SwapType(s);
      return;
    }
    std::vector<json::value*> values;
    Collect(root, values);
    json::value* at = values[Below(values.size())];
    switch (Below(4)) {
      case 0:
      case 1:
        *at = RandomValue();
        break;
      case 2:
        if (at->is_object()) {
          std::string key = kDictionary[Below(31)];
          at->as_object()[key.substr(1, key.size() - 2)] = RandomValue();
        } else if (at->is_array()) {
          at->as_array().push_back(RandomValue());
        } else {
          *at = json::array{*at};
        }
        break;
      default:
        if (at->is_object() && !at->as_object().empty()) {
          auto it = at->as_object().begin() + static_cast<std::ptrdiff_t>(Below(at->as_object().size()));
          at->as_object().erase(it);
        } else if (at->is_array() && !at->as_array().empty()) {
          at->as_array().erase(at->as_array().begin() + static_cast<std::ptrdiff_t>(Below(at->as_array().size())));
        } else {
          *at = json::object{{"kind", *at}};
        }
        break;
    }
    s = json::serialize(root);
  }

  std::mt19937_64 rng_;
};

std::string ReadFile(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "request_fuzz: cannot read %s\n", path);
    std::exit(2);
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void Usage() {
  std::fprintf(stderr,
               "usage: request_fuzz [--runs N] [--seed S] [FILE...]\n"
               "  runs each FILE (first byte: route, rest: body), then N mutations (default 20000)\n"
               "  of the built-in corpus from seed S (default 1)\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t runs = 20000, seed = 1;
  std::vector<const char*> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto number = [&]() -> uint64_t {
      if (i + 1 >= argc) Usage();
      char* end = nullptr;
      uint64_t n = std::strtoull(argv[++i], &end, 10);
      if (!end || *end) Usage();
      return n;
    };
    if (a == "--runs") runs = number();
    else if (a == "--seed") seed = number();
    else if (a == "-h" || a == "--help") Usage();
    else if (!a.empty() && a[0] == '-') Usage();
    else files.push_back(argv[i]);
  }
  std::map<int, uint64_t> statuses;
  auto run = [&](const std::string& input) {
    statuses[RunOne(reinterpret_cast<const uint8_t*>(input.data()), input.size())]++;
  };
  for (const char* file : files) run(ReadFile(file));
  for (const auto& [target, body] : kCorpus) run(std::string(1, static_cast<char>(target)) + body);
  auto start = std::chrono::steady_clock::now();
  Mutator mutator(seed);
  for (uint64_t i = 0; i < runs; ++i) run(mutator.Next());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string summary;
  for (const auto& [status, count] : statuses) summary += " " + std::to_string(status) + ":" + std::to_string(count);
  std::printf("request_fuzz: %zu files, %zu corpus entries, %llu mutations (seed %llu) in %.1f s; statuses%s; no 5xx\n",
              files.size(), kCorpus.size(), static_cast<unsigned long long>(runs), static_cast<unsigned long long>(seed),
              seconds, summary.c_str());
  return 0;
}

#endif  // FERRY_LIBFUZZER
