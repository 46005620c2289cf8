// api_test: the coordinator's web API over real HTTP, against a real
// `ferry-coordinator run` child process on a fresh data directory, checked
// against the OpenAPI document it serves (coordinator/openapi.json).
//
// Every request a test makes goes through ApiTest::Call, which also checks the
// exchange against the document: the status must be one the route documents,
// a 2xx body must match the documented response schema, an error body the
// Error schema, and a request body the server accepted must match the
// documented request schema. So every test is also a conformance test.
//
// VMs exist only through a worker's inventory: FakeWorker registers over the
// real worker RPC (Cap'n Proto) with a token from POST /workers and reports
// one; it pulls work and reports results only when a test tells it to (so a
// test can drive a backup session to a restore point, and see where a
// restore goes). Nothing here waits for time to pass except for the daemon
// to start and stop, with generous deadlines; heartbeat deadlines are set to
// an hour so that no worker turns unreachable mid-test.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <kj/async-io.h>

#include "ferry/common/error.h"
#include "ferry/coordinator/api.h"
#include "ferry/http/client.h"
#include "ferry/rpc/protocol.h"
#include "ferry/rpc/worker_client.h"

#ifndef FERRY_COORDINATOR_BIN
#error "FERRY_COORDINATOR_BIN must name the ferry-coordinator binary"
#endif

namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

// ---------------------------------------------------------------------------
// Child processes.

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Forks and execs argv with stdout to `out_fd` (or the log) and stderr
// appended to `log`. Everything exec needs is built before fork.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log, int out_fd = -1) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) throw ferry::ErrnoError("opening " + log, errno);
  pid_t pid = ::fork();
  if (pid < 0) throw ferry::ErrnoError("fork", errno);
  if (pid == 0) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    ::dup2(out_fd >= 0 ? out_fd : log_fd, 1);
    ::dup2(log_fd, 2);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::execv(args[0], args.data());
    _exit(127);
  }
  ::close(log_fd);
  return pid;
}

// Waits up to `limit` for pid to exit; its wait status, or nullopt if it runs on.
std::optional<int> WaitExit(pid_t pid, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) return status;
    if (done < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// `ferry-coordinator init --data DIR`: the admin token it prints.
std::string InitDataDir(const std::string& data, const std::string& log) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw ferry::ErrnoError("pipe", errno);
  pid_t pid = Spawn({FERRY_COORDINATOR_BIN, "init", "--data", data}, log, pipe_fds[1]);
  ::close(pipe_fds[1]);
  std::string out;
  char buf[256];
  for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  std::optional<int> status = WaitExit(pid, std::chrono::seconds(60));
  if (!status || !WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
    throw std::runtime_error("ferry-coordinator init failed; log:\n" + ReadWholeFile(log));
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// One `ferry-coordinator run` child. Stop() and Kill() end exactly its pid.
class Daemon {
 public:
  Daemon(std::string data, std::string dir, std::vector<std::string> extra_args = {})
      : data_(std::move(data)), dir_(std::move(dir)), extra_args_(std::move(extra_args)) {}
  ~Daemon() {
    if (pid_ > 0) Kill();
  }

  void Start() {
    const std::string ready = dir_ + "/ready.json";
    fs::remove(ready);
    log_ = dir_ + "/daemon.log";
    std::vector<std::string> argv = {FERRY_COORDINATOR_BIN, "run", "--data", data_, "--listen", "127.0.0.1:0",
                                     "--rpc-listen", "127.0.0.1:0", "--ready-file", ready, "--heartbeat-interval-ms",
                                     "1800000", "--heartbeat-deadline-ms", "3600000"};
    argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
    pid_ = Spawn(argv, log_);
    // The ready file appears (by rename) once both ports listen. The limit
    // only keeps a broken daemon from hanging the test.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!fs::exists(ready)) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("ferry-coordinator run exited before it was ready; log:\n" + ReadWholeFile(log_));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        Kill();
        throw std::runtime_error("ferry-coordinator run not ready after 60 s; log:\n" + ReadWholeFile(log_));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    json::object r = json::parse(ReadWholeFile(ready)).as_object();
    api_ = std::string(r.at("api").as_string());
    rpc_ = std::string(r.at("rpc").as_string());
    ready_pid_ = r.at("pid").to_number<int64_t>();
  }

  // SIGTERM, then SIGKILL if it has not exited after 30 s. Returns the wait
  // status of a clean exit, or nullopt if it had to be killed.
  std::optional<int> Stop() {
    if (pid_ <= 0) return std::nullopt;
    ::kill(pid_, SIGTERM);
    std::optional<int> status = WaitExit(pid_, std::chrono::seconds(30));
    if (!status) {
      Kill();
      return std::nullopt;
    }
    pid_ = -1;
    return status;
  }

  // kill -9: what a crash or an OOM kill does.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }
  int64_t ready_pid() const { return ready_pid_; }
  const std::string& api() const { return api_; }
  const std::string& rpc() const { return rpc_; }
  std::string log() const { return ReadWholeFile(log_); }

 private:
  std::string data_, dir_, log_, api_, rpc_;
  std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
  int64_t ready_pid_ = 0;
};

// ---------------------------------------------------------------------------
// The OpenAPI document: finding operations, and checking values against its
// schemas (type, required, properties, additionalProperties, enum, pattern,
// lengths, ranges, items, nullable, allOf, oneOf, $ref).

class OpenApi {
 public:
  explicit OpenApi(json::value doc) : doc_(std::move(doc)) {}

  const json::object& doc() const { return doc_.as_object(); }

  // The operation for `method` on a concrete path, and its path template.
  const json::object* Find(const std::string& method, const std::string& path, std::string* pattern = nullptr) const {
    std::string lower;
    for (char c : method) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const auto& [key, item] : doc().at("paths").as_object()) {
      if (!Matches(std::string(key), path)) continue;
      if (pattern) *pattern = std::string(key);
      const json::value* op = item.as_object().if_contains(lower);
      return op ? &op->as_object() : nullptr;
    }
    return nullptr;
  }

  static bool Matches(const std::string& pattern, const std::string& path) {
    std::vector<std::string> want = Split(pattern), got = Split(path);
    if (want.size() != got.size()) return false;
    for (size_t i = 0; i < want.size(); ++i) {
      bool param = want[i].size() > 2 && want[i].front() == '{' && want[i].back() == '}';
      if (param ? got[i].empty() : want[i] != got[i]) return false;
    }
    return true;
  }

  const json::value& Resolve(const json::value& v) const {
    const json::value* at = &v;
    while (at->is_object() && at->as_object().contains("$ref")) {
      std::string ref(at->as_object().at("$ref").as_string());
      if (ref.rfind("#/", 0) != 0) throw std::runtime_error("unsupported $ref " + ref);
      at = &doc_.at_pointer(ref.substr(1));
    }
    return *at;
  }

  // The documented schema of a response, or nullptr.
  const json::value* ResponseSchema(const json::object& op, int status) const {
    const json::value* response = op.at("responses").as_object().if_contains(std::to_string(status));
    if (!response) return nullptr;
    const json::value& r = Resolve(*response);
    const json::value* content = r.as_object().if_contains("content");
    if (!content) return nullptr;
    return &content->as_object().at("application/json").as_object().at("schema");
  }

  const json::value* RequestSchema(const json::object& op) const {
    const json::value* body = op.if_contains("requestBody");
    if (!body) return nullptr;
    return &Resolve(*body).as_object().at("content").as_object().at("application/json").as_object().at("schema");
  }

  std::set<std::string> Statuses(const json::object& op) const {
    std::set<std::string> out;
    for (const auto& r : op.at("responses").as_object()) out.insert(std::string(r.key()));
    return out;
  }

  // Problems of `v` against `schema`, as "at: problem" lines.
  std::vector<std::string> Check(const json::value& schema, const json::value& v) const {
    std::vector<std::string> errors;
    CheckAt(schema, v, "$", errors);
    return errors;
  }

 private:
  static std::vector<std::string> Split(const std::string& path) {
    std::vector<std::string> parts;
    std::stringstream in(path);
    for (std::string part; std::getline(in, part, '/');) parts.push_back(part);
    if (!path.empty() && path.back() == '/') parts.push_back("");
    return parts;
  }

  static bool TypeIs(const std::string& type, const json::value& v) {
    if (type == "object") return v.is_object();
    if (type == "array") return v.is_array();
    if (type == "string") return v.is_string();
    if (type == "boolean") return v.is_bool();
    if (type == "integer") return v.is_int64() || v.is_uint64();
    if (type == "number") return v.is_number();
    return false;
  }

  const std::regex& Regex(const std::string& pattern) const {
    auto it = regexes_.find(pattern);
    if (it == regexes_.end()) it = regexes_.emplace(pattern, std::regex(pattern, std::regex::ECMAScript)).first;
    return it->second;
  }

  void CheckAt(const json::value& schema_ref, const json::value& v, const std::string& at,
               std::vector<std::string>& errors) const {
    const json::object& s = Resolve(schema_ref).as_object();
    auto fail = [&](const std::string& problem) { errors.push_back(at + ": " + problem + " (value " + json::serialize(v) + ")"); };
    if (v.is_null()) {
      const json::value* nullable = s.if_contains("nullable");
      if (nullable && nullable->as_bool()) return;
    }
    if (const json::value* all = s.if_contains("allOf"))
      for (const json::value& sub : all->as_array()) CheckAt(sub, v, at, errors);
    if (const json::value* one = s.if_contains("oneOf")) {
      int matched = 0;
      for (const json::value& sub : one->as_array()) {
        std::vector<std::string> sub_errors;
        CheckAt(sub, v, at, sub_errors);
        if (sub_errors.empty()) ++matched;
      }
      if (matched != 1) fail("matches " + std::to_string(matched) + " of the oneOf schemas, not 1");
    }
    if (const json::value* type = s.if_contains("type")) {
      if (!TypeIs(std::string(type->as_string()), v)) {
        fail("is not of type " + std::string(type->as_string()));
        return;
      }
    }
    if (const json::value* e = s.if_contains("enum")) {
      bool found = false;
      for (const json::value& option : e->as_array()) found = found || option == v;
      if (!found) fail("is not one of " + json::serialize(*e));
    }
    if (v.is_string()) {
      const std::string text(v.as_string());
      if (const json::value* p = s.if_contains("pattern"))
        if (!std::regex_search(text, Regex(std::string(p->as_string())))) fail("does not match " + json::serialize(*p));
      if (const json::value* n = s.if_contains("minLength"))
        if (text.size() < n->to_number<size_t>()) fail("is shorter than " + json::serialize(*n));
      if (const json::value* n = s.if_contains("maxLength"))
        if (text.size() > n->to_number<size_t>()) fail("is longer than " + json::serialize(*n));
      if (const json::value* f = s.if_contains("format"); f && f->as_string() == "date-time") {
        static const std::regex kDateTime(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$)");
        if (!std::regex_match(text, kDateTime)) fail("is not a date-time");
      }
    }
    if (const json::value* n = s.if_contains("minProperties"); n && v.is_object())
      if (v.as_object().size() < n->to_number<size_t>()) fail("has fewer than " + json::serialize(*n) + " members");
    if (const json::value* f = s.if_contains("format"); f && f->as_string() == "int64" && v.is_uint64())
      fail("is not an int64");
    if (v.is_number()) {
      double x = v.to_number<double>();
      if (const json::value* m = s.if_contains("minimum"))
        if (x < m->to_number<double>()) fail("is below the minimum " + json::serialize(*m));
      if (const json::value* m = s.if_contains("maximum"))
        if (x > m->to_number<double>()) fail("is above the maximum " + json::serialize(*m));
    }
    if (v.is_array()) {
      const json::array& a = v.as_array();
      if (const json::value* n = s.if_contains("minItems"))
        if (a.size() < n->to_number<size_t>()) fail("has fewer items than " + json::serialize(*n));
      if (const json::value* n = s.if_contains("maxItems"))
        if (a.size() > n->to_number<size_t>()) fail("has more items than " + json::serialize(*n));
      if (const json::value* u = s.if_contains("uniqueItems"); u && u->as_bool())
        for (size_t i = 0; i < a.size(); ++i)
          for (size_t j = i + 1; j < a.size(); ++j)
            if (a[i] == a[j]) fail("has duplicate items");
      if (const json::value* items = s.if_contains("items"))
        for (size_t i = 0; i < a.size(); ++i) CheckAt(*items, a[i], at + "[" + std::to_string(i) + "]", errors);
    }
    if (v.is_object()) {
      const json::object& o = v.as_object();
      if (const json::value* req = s.if_contains("required"))
        for (const json::value& key : req->as_array())
          if (!o.contains(key.as_string())) fail("lacks required member " + json::serialize(key));
      const json::value* props = s.if_contains("properties");
      if (props)
        for (const auto& [key, sub] : props->as_object())
          if (const json::value* member = o.if_contains(key)) CheckAt(sub, *member, at + "." + std::string(key), errors);
      if (const json::value* extra = s.if_contains("additionalProperties"); extra && extra->is_bool() && !extra->as_bool())
        for (const auto& member : o)
          if (!props || !props->as_object().contains(member.key()))
            fail("has undocumented member \"" + std::string(member.key()) + "\"");
      if (const json::value* n = s.if_contains("maxProperties"))
        if (o.size() > n->to_number<size_t>()) fail("has more members than " + json::serialize(*n));
    }
  }

  json::value doc_;
  mutable std::map<std::string, std::regex> regexes_;
};

const OpenApi& Document() {
  static const OpenApi doc(json::parse(ferry::coordinator::Api::OpenApiDocument()));
  return doc;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += "  " + l + "\n";
  return out;
}

// ---------------------------------------------------------------------------
// A worker over the real worker RPC: registers with its token and reports an
// inventory, then stays connected (silent: no heartbeat, no pull) until
// destroyed, pulling and reporting only when told. It owns the thread's KJ
// event loop, unless given one to share (several workers in one test).

struct FakeDisk {
  std::string name;
  uint64_t size;
  std::string format;
};
struct FakeVm {
  std::string name, uuid, state;
  std::vector<std::string> tags;
  std::vector<FakeDisk> disks;
};

// A work item as a FakeWorker pulled it.
struct PulledItem {
  std::string assignment;
  std::string kind;  // snapshot | disk | release | restore
  uint64_t session_id = 0, snapshot_id = 0, task_id = 0;
  std::vector<std::string> disks;  // snapshot
  std::string disk, tier, point_id;
  uint32_t attempt = 0;
  bool commit = false;
  std::string vm;
  std::string target;  // restore: file | into_domain | new_domain | over_original
  std::string path, format, name, directory, domain, target_disk;  // restore
  std::string repository_location;
};

class FakeWorker {
 public:
  FakeWorker(const std::string& rpc_address, const std::string& token, const std::string& host,
             const std::string& platform, const std::vector<FakeVm>& vms, kj::AsyncIoContext* shared_io = nullptr)
      : own_io_(shared_io ? nullptr : std::make_unique<kj::AsyncIoContext>(kj::setupAsyncIo())),
        io_(shared_io ? *shared_io : *own_io_) {
    ferry::rpc::CoordinatorEndpoint endpoint;
    endpoint.address = rpc_address;
    connection_ = ferry::rpc::CoordinatorConnection::Connect(io_, nullptr, endpoint).wait(io_.waitScope);
    auto request = connection_->coordinator().registerWorkerRequest();
    auto r = request.initRequest();
    r.setProtocolVersion(ferry::rpc::kProtocolVersion);
    r.setToken(token);
    r.setHost(host);
    r.setPlatform(platform);
    r.setCluster("");
    r.setTaskSlots(2);
    r.setVersion("api-test-1");
    r.initRunning(0);
    auto reply = request.send().wait(io_.waitScope);
    worker_id_ = reply.getReply().getWorkerId();
    session_ = reply.getSession();

    auto inventory = KJ_ASSERT_NONNULL(session_).reportInventoryRequest();
    auto list = inventory.initVms(static_cast<unsigned>(vms.size()));
    for (unsigned i = 0; i < vms.size(); ++i) {
      list[i].setName(vms[i].name);
      list[i].setUuid(vms[i].uuid);
      list[i].setState(vms[i].state);
      auto tags = list[i].initTags(static_cast<unsigned>(vms[i].tags.size()));
      for (unsigned t = 0; t < vms[i].tags.size(); ++t) tags.set(t, vms[i].tags[t]);
      auto disks = list[i].initDisks(static_cast<unsigned>(vms[i].disks.size()));
      for (unsigned d = 0; d < vms[i].disks.size(); ++d) {
        disks[d].setName(vms[i].disks[d].name);
        disks[d].setSizeBytes(vms[i].disks[d].size);
        disks[d].setFormat(vms[i].disks[d].format);
      }
    }
    inventory.send().wait(io_.waitScope);
  }

  uint64_t worker_id() const { return worker_id_; }

  // One pullWork: the assignment ids handed out, with "snapshot", "disk" or
  // "release".
  std::vector<std::pair<std::string, std::string>> Pull(uint32_t free_slots, uint32_t wait_ms) {
    auto request = KJ_ASSERT_NONNULL(session_).pullWorkRequest();
    request.setFreeSlots(free_slots);
    request.setWaitMs(wait_ms);
    auto reply = request.send().wait(io_.waitScope);
    std::vector<std::pair<std::string, std::string>> out;
    for (auto item : reply.getItems()) {
      const char* kind = item.isSnapshot() ? "snapshot" : item.isBackupDisk() ? "disk" : "release";
      out.emplace_back(item.getAssignmentId().cStr(), kind);
    }
    return out;
  }
  // Pulls until an item of `kind` comes (bounded); its assignment id.
  std::string PullUntil(const std::string& kind) {
    for (int i = 0; i < 100; ++i)
      for (const auto& [id, k] : Pull(2, 100))
        if (k == kind) return id;
    ADD_FAILURE() << "no " << kind << " item handed out";
    return "";
  }

  // A snapshot done, exporting `disks`.
  void SnapshotDone(const std::string& assignment, const std::vector<std::string>& disks) {
    auto request = KJ_ASSERT_NONNULL(session_).reportResultRequest();
    auto r = request.initResult();
    r.setAssignmentId(assignment);
    r.setOk(true);
    auto exports = r.initExports(static_cast<unsigned>(disks.size()));
    for (unsigned i = 0; i < disks.size(); ++i) {
      exports[i].setDisk(disks[i]);
      exports[i].setUri("nbd+unix:///" + disks[i] + "?socket=/run/x.sock");
    }
    EXPECT_TRUE(request.send().wait(io_.waitScope).getAccepted());
  }

  void Progress(const std::string& assignment, uint64_t done, uint64_t total, uint64_t read, uint64_t sent,
                const ferry::StageBusy& busy) {
    auto request = KJ_ASSERT_NONNULL(session_).reportProgressRequest();
    auto p = request.initProgress();
    p.setAssignmentId(assignment);
    p.setBytesDone(done);
    p.setBytesTotal(total);
    p.setBytesRead(read);
    p.setBytesSent(sent);
    ferry::rpc::SetStageStats(busy, p.initStages());
    EXPECT_FALSE(request.send().wait(io_.waitScope).getCancel());
  }

  void DiskDone(const std::string& assignment, uint64_t read, uint64_t stored, uint64_t sent,
                const ferry::StageBusy& busy) {
    auto request = KJ_ASSERT_NONNULL(session_).reportResultRequest();
    auto r = request.initResult();
    r.setAssignmentId(assignment);
    r.setOk(true);
    r.setBytesRead(read);
    r.setBytesStored(stored);
    r.setBytesSent(sent);
    ferry::rpc::SetStageStats(busy, r.initStages());
    EXPECT_TRUE(request.send().wait(io_.waitScope).getAccepted());
  }

  // One pullWork (no long poll): what it got.
  std::vector<PulledItem> PullItems(uint32_t free_slots) {
    auto request = KJ_ASSERT_NONNULL(session_).pullWorkRequest();
    request.setFreeSlots(free_slots);
    request.setWaitMs(0);
    auto reply = request.send().wait(io_.waitScope);
    std::vector<PulledItem> out;
    for (auto w : reply.getItems()) {
      PulledItem item;
      item.assignment = w.getAssignmentId().cStr();
      item.session_id = w.getSessionId();
      item.vm = w.getVm().getName().cStr();
      switch (w.which()) {
        case ferry::rpc::WorkItem::SNAPSHOT:
          item.kind = "snapshot";
          item.snapshot_id = w.getSnapshot().getSnapshotId();
          item.point_id = w.getSnapshot().getPointId().cStr();
          for (auto d : w.getSnapshot().getDisks()) item.disks.emplace_back(d.cStr());
          break;
        case ferry::rpc::WorkItem::BACKUP_DISK:
          item.kind = "disk";
          item.task_id = w.getBackupDisk().getTaskId();
          item.disk = w.getBackupDisk().getDisk().cStr();
          item.tier = w.getBackupDisk().getTier().cStr();
          break;
        case ferry::rpc::WorkItem::RELEASE:
          item.kind = "release";
          item.snapshot_id = w.getRelease().getSnapshotId();
          item.commit = w.getRelease().getCommit();
          item.point_id = w.getRelease().getPointId().cStr();
          break;
        case ferry::rpc::WorkItem::RESTORE: {
          auto r = w.getRestore();
          item.kind = "restore";
          item.task_id = r.getTaskId();
          item.disk = r.getDisk().cStr();
          item.tier = r.getTier().cStr();
          item.attempt = r.getAttempt();
          item.point_id = r.getPointId().cStr();
          item.repository_location = r.getRepository().getLocation().cStr();
          switch (r.which()) {
            case ferry::rpc::RestoreWork::TO_FILE:
              item.target = "file";
              item.path = r.getToFile().getPath().cStr();
              item.format = r.getToFile().getFormat().cStr();
              break;
            case ferry::rpc::RestoreWork::INTO_DOMAIN:
              item.target = "into_domain";
              item.domain = r.getIntoDomain().getDomain().cStr();
              item.target_disk = r.getIntoDomain().getTargetDisk().cStr();
              break;
            case ferry::rpc::RestoreWork::NEW_DOMAIN:
              item.target = "new_domain";
              item.name = r.getNewDomain().getName().cStr();
              item.directory = r.getNewDomain().getDirectory().cStr();
              item.format = r.getNewDomain().getFormat().cStr();
              break;
            case ferry::rpc::RestoreWork::OVER_ORIGINAL: item.target = "over_original"; break;
          }
          break;
        }
        default: item.kind = "unknown"; break;
      }
      out.push_back(std::move(item));
    }
    return out;
  }

  // reportResult: ok (with one export per disk of `exports`, and `point_id`
  // for a release), or failed with `error_kind`. The coordinator's `accepted`.
  bool Report(const std::string& assignment, bool ok, const std::vector<std::string>& exports = {},
              const std::string& point_id = "", const std::string& error_kind = "", const std::string& error = "",
              uint64_t bytes = 0) {
    auto request = KJ_ASSERT_NONNULL(session_).reportResultRequest();
    auto r = request.initResult();
    r.setAssignmentId(assignment);
    r.setOk(ok);
    r.setErrorKind(error_kind);
    r.setError(error);
    r.setBytesRead(bytes);
    r.setBytesStored(bytes / 2);
    auto list = r.initExports(static_cast<unsigned>(exports.size()));
    for (unsigned i = 0; i < exports.size(); ++i) {
      list[i].setDisk(exports[i]);
      list[i].setUri("nbd+unix:///" + exports[i] + "?socket=/run/fake.sock");
    }
    r.setPointId(point_id);
    r.initLog(1).set(0, "INFO fake worker: " + assignment + (ok ? " done" : " failed"));
    return request.send().wait(io_.waitScope).getAccepted();
  }

  void ReportProgress(const std::string& assignment, uint64_t done, uint64_t total) {
    auto request = KJ_ASSERT_NONNULL(session_).reportProgressRequest();
    auto p = request.initProgress();
    p.setAssignmentId(assignment);
    p.setBytesDone(done);
    p.setBytesTotal(total);
    request.send().wait(io_.waitScope);
  }

  // Runs one backup session of its host's VMs to the end: every snapshot,
  // disk task and release it is given succeeds; a release commits the point
  // the coordinator reserved. Returns the points committed.
  std::vector<std::string> CompleteBackups() {
    std::vector<std::string> points;
    for (int round = 0; round < 20; ++round) {
      std::vector<PulledItem> items = PullItems(8);
      if (items.empty()) break;
      for (const PulledItem& item : items) {
        if (item.kind == "snapshot") {
          Report(item.assignment, true, item.disks);
        } else if (item.kind == "disk") {
          Report(item.assignment, true, {}, "", "", "", 1 << 20);
        } else if (item.kind == "release") {
          Report(item.assignment, true, {}, item.commit ? item.point_id : "");
          if (item.commit) points.push_back(item.point_id);
        }
      }
    }
    return points;
  }

 private:
  std::unique_ptr<kj::AsyncIoContext> own_io_;  // destroyed last
  kj::AsyncIoContext& io_;
  kj::Own<ferry::rpc::CoordinatorConnection> connection_;
  kj::Maybe<ferry::rpc::WorkerSession::Client> session_;
  uint64_t worker_id_ = 0;
};

// ---------------------------------------------------------------------------
// The fixture.

struct Reply {
  int status = 0;
  std::string body;
  json::value json;  // null unless the body is JSON
  std::string content_type;
  Headers headers;

  // error.field, or "" ("<none>" if there is no error object).
  std::string field() const {
    const json::value* f = json.is_object() ? json.as_object().if_contains("error") : nullptr;
    if (!f || !f->is_object()) return "<no error object>";
    const json::value* name = f->as_object().if_contains("field");
    return name && name->is_string() ? std::string(name->as_string()) : "";
  }
  std::string kind() const {
    const json::value* e = json.is_object() ? json.as_object().if_contains("error") : nullptr;
    if (!e || !e->is_object() || !e->as_object().contains("kind")) return "<no error object>";
    return std::string(e->as_object().at("kind").as_string());
  }
  std::string message() const {
    const json::value* e = json.is_object() ? json.as_object().if_contains("error") : nullptr;
    if (!e || !e->is_object() || !e->as_object().contains("message")) return "";
    return std::string(e->as_object().at("message").as_string());
  }
  int64_t id() const { return json.at("id").to_number<int64_t>(); }
  std::string Str(const char* key) const { return std::string(json.at(key).as_string()); }
};

std::ostream& operator<<(std::ostream& out, const Reply& r) { return out << r.status << " " << r.body; }

enum class Auth { kToken, kNone };

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string base = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
    std::string tmpl = base + "/ferry-api-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << "mkdtemp " << tmpl;
    dir_ = tmpl;
    data_ = dir_ + "/data";
    token_ = InitDataDir(data_, dir_ + "/init.log");
    ASSERT_TRUE(std::regex_match(token_, std::regex("fy_[0-9a-f]{40}"))) << "init printed '" << token_ << "'";
    daemon_ = std::make_unique<Daemon>(data_, dir_, DaemonArgs());
    ASSERT_NO_THROW(daemon_->Start());
    ASSERT_EQ(daemon_->ready_pid(), daemon_->pid()) << "the ready file names another process";
    client_ = std::make_unique<ferry::http::Client>(daemon_->api());
  }

  void TearDown() override {
    worker_.reset();
    client_.reset();
    if (daemon_ && daemon_->pid() > 0) {
      std::optional<int> status = daemon_->Stop();
      EXPECT_TRUE(status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << "ferry-coordinator did not exit cleanly on SIGTERM; log:\n" << daemon_->log();
    }
    if (HasFailure() && daemon_) std::cerr << "daemon log:\n" << daemon_->log();
    daemon_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // More options for `ferry-coordinator run`; by default no web console, so
  // that no installed one is picked up (ConsoleTest gives one).
  virtual std::vector<std::string> DaemonArgs() { return {"--console-dir", ""}; }

  // A request outside the API (the console's files): not checked against
  // the document.
  ferry::http::Response Raw(const std::string& method, const std::string& target, Headers headers = {}) {
    return client_->Send(method, target, "", headers);
  }

  // Kills the daemon with SIGKILL and starts a new one on the same data.
  void RestartHard() {
    client_.reset();
    daemon_->Kill();
    daemon_->Start();
    client_ = std::make_unique<ferry::http::Client>(daemon_->api());
  }

  // One request, checked against the OpenAPI document (see the top).
  Reply Call(const std::string& method, const std::string& target, const std::string& body = "",
             Auth auth = Auth::kToken, Headers headers = {}) {
    if (auth == Auth::kToken) headers.emplace_back("Authorization", "Bearer " + token_);
    ferry::http::Response response = client_->Send(method, target, body, headers);
    Reply r;
    r.status = response.status;
    r.body = response.body;
    r.content_type = response.content_type;
    r.headers = response.headers;
    json::error_code ec;
    r.json = json::parse(r.body, ec);
    if (ec) r.json = nullptr;
    if (check_conformance_) {
      std::vector<std::string> problems = Conformance(method, target, body, r, ec.failed());
      EXPECT_TRUE(problems.empty()) << method << " " << target << " -> " << r.status << " " << r.body.substr(0, 2000)
                                    << "\nconflicts with openapi.json:\n" << Join(problems);
    }
    return r;
  }
  Reply Get(const std::string& target) { return Call("GET", target); }
  Reply Post(const std::string& target, const std::string& body) { return Call("POST", target, body); }
  Reply Patch(const std::string& target, const std::string& body) { return Call("PATCH", target, body); }
  Reply Delete(const std::string& target) { return Call("DELETE", target); }

  std::vector<std::string> Conformance(const std::string& method, const std::string& target, const std::string& body,
                                       const Reply& r, bool not_json) {
    std::vector<std::string> problems;
    const OpenApi& doc = Document();
    if (not_json) problems.push_back("the response body is not JSON");
    if (r.content_type.rfind("application/json", 0) != 0) problems.push_back("Content-Type is '" + r.content_type + "'");
    std::string path = target.substr(0, target.find('?'));
    const json::object* op = doc.Find(method, path);
    if (!op) {
      // Not a documented operation: only the router's own errors belong here.
      if (r.status != 404 && r.status != 405 && r.status != 413)
        problems.push_back("an undocumented operation answered " + std::to_string(r.status));
      if (!not_json) {
        const json::value& error = doc.doc().at("components").at("schemas").at("Error");
        for (auto& p : doc.Check(error, r.json)) problems.push_back("error body: " + p);
      }
      return problems;
    }
    if (!doc.Statuses(*op).count(std::to_string(r.status)))
      problems.push_back("status " + std::to_string(r.status) + " is not documented for " + method + " " + path);
    if (not_json) return problems;
    const json::value* schema = doc.ResponseSchema(*op, r.status);
    if (r.status >= 400 && !schema) schema = &doc.doc().at("components").at("schemas").at("Error");
    if (schema)
      for (auto& p : doc.Check(*schema, r.json)) problems.push_back("response: " + p);
    if (r.status >= 200 && r.status < 300 && !body.empty()) {
      const json::value* request_schema = doc.RequestSchema(*op);
      if (!request_schema) {
        problems.push_back("the server accepted a body, but the operation documents none");
      } else {
        json::error_code ec;
        json::value request = json::parse(body, ec);
        if (!ec)
          for (auto& p : doc.Check(*request_schema, request))
            problems.push_back("accepted request body rejected by the documented schema: " + p);
      }
    }
    return problems;
  }

  // Asserts a 4xx JSON error of `status` naming `field`.
  void ExpectError(const Reply& r, int status, const std::string& field, const std::string& context = "") {
    EXPECT_EQ(r.status, status) << context << ": " << r;
    EXPECT_EQ(r.field(), field) << context << ": " << r;
    EXPECT_FALSE(r.message().empty()) << context << ": " << r;
  }

  int64_t CreateRepository(const std::string& name) {
    Reply r = Post("/api/v1/repositories", R"({"name":")" + name + R"(","location":"/srv/)" + name + R"("})");
    EXPECT_EQ(r.status, 201) << r;
    return r.status == 201 ? r.id() : 0;
  }
  int64_t CreateHost(const std::string& name, const std::string& cluster = "") {
    std::string body = R"({"name":")" + name + R"(","platform":"proxmox")" +
                       (cluster.empty() ? "" : R"(,"cluster":")" + cluster + "\"") + "}";
    Reply r = Post("/api/v1/hosts", body);
    EXPECT_EQ(r.status, 201) << r;
    return r.status == 201 ? r.id() : 0;
  }
  int64_t CreateJob(const std::string& name, int64_t repository, const std::string& extra = "") {
    Reply r = Post("/api/v1/jobs", R"({"name":")" + name + R"(","repository":)" + std::to_string(repository) +
                                       R"(,"selection":{"tags":["prod"]})" + extra + "}");
    EXPECT_EQ(r.status, 201) << r;
    return r.status == 201 ? r.id() : 0;
  }
  // A worker with its token.
  std::pair<int64_t, std::string> CreateWorker(const std::string& name) {
    Reply r = Post("/api/v1/workers", R"({"name":")" + name + R"("})");
    EXPECT_EQ(r.status, 201) << r;
    if (r.status != 201) return {0, ""};
    return {r.id(), r.Str("token")};
  }

  // Registers a worker on host pve1 with two VMs: web01 (tag prod; vda, vdb)
  // and db01 (tag db; sda).
  int64_t ConnectWorkerWithVms() {
    auto [id, token] = CreateWorker("pve1-worker");
    worker_ = std::make_unique<FakeWorker>(
        daemon_->rpc(), token, "pve1", "proxmox",
        std::vector<FakeVm>{{"web01", "7d1b5a3c-0000-4000-8000-000000000001", "running", {"prod", "web"},
                             {{"vda", 10737418240, "qcow2"}, {"vdb", 1073741824, "raw"}}},
                            {"db01", "7d1b5a3c-0000-4000-8000-000000000002", "shut-off", {"db"},
                             {{"sda", 21474836480, "raw"}}}});
    EXPECT_EQ(worker_->worker_id(), static_cast<uint64_t>(id));
    return id;
  }

  std::string dir_, data_, token_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<ferry::http::Client> client_;
  std::unique_ptr<FakeWorker> worker_;
  bool check_conformance_ = true;
};

std::set<std::pair<std::string, std::string>> DocumentedOperations(const json::object& doc) {
  static const std::set<std::string> kMethods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"};
  std::set<std::pair<std::string, std::string>> out;
  for (const auto& [path, item] : doc.at("paths").as_object())
    for (const auto& [method, op] : item.as_object()) {
      if (!kMethods.count(std::string(method))) continue;
      std::string upper;
      for (char c : std::string(method)) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      out.insert({upper, std::string(path)});
    }
  return out;
}

std::string Concrete(std::string pattern, int64_t id) {
  size_t at = pattern.find("{id}");
  if (at != std::string::npos) pattern.replace(at, 4, std::to_string(id));
  return pattern;
}

// An hour of the day twelve hours from now, local time (as the daemon's): a
// schedule at that hour cannot fire while a test runs.
int FarHour() {
  time_t now = ::time(nullptr);
  struct tm local {};
  ::localtime_r(&now, &local);
  return (local.tm_hour + 12) % 24;
}
std::string TwoDigits(int n) {
  char text[8];
  std::snprintf(text, sizeof text, "%02d", n);
  return text;
}

bool ArrayHasId(const json::value& list, int64_t id) {
  for (const json::value& item : list.as_array())
    if (item.at("id").to_number<int64_t>() == id) return true;
  return false;
}

// ===========================================================================
// OpenAPI conformance.

TEST_F(ApiTest, OpenApiIsServedWithoutAuthAndIsTheBuiltInDocument) {
  Reply r = Call("GET", "/api/v1/openapi.json", "", Auth::kNone);
  ASSERT_EQ(r.status, 200) << r;
  ASSERT_TRUE(r.json.is_object()) << "not a JSON object";
  EXPECT_EQ(r.json.at("openapi"), "3.0.3");
  EXPECT_EQ(r.json, json::parse(ferry::coordinator::Api::OpenApiDocument()));
  EXPECT_TRUE(r.content_type.rfind("application/json", 0) == 0) << r.content_type;
  // With a wrong token too: the document is public.
  Reply wrong = Call("GET", "/api/v1/openapi.json", "", Auth::kNone, {{"Authorization", "Bearer fy_wrong"}});
  EXPECT_EQ(wrong.status, 200);
}

TEST_F(ApiTest, OpenApiPathsAreExactlyTheServedRoutes) {
  std::set<std::pair<std::string, std::string>> served;
  for (const auto& route : ferry::coordinator::Api::Routes()) {
    EXPECT_TRUE(served.insert({route.method, route.pattern}).second) << "route listed twice: " << route.method << " " << route.pattern;
  }
  std::set<std::pair<std::string, std::string>> documented = DocumentedOperations(Document().doc());
  for (const auto& [method, path] : served)
    EXPECT_TRUE(documented.count({method, path})) << method << " " << path << " is served but not in openapi.json";
  for (const auto& [method, path] : documented)
    EXPECT_TRUE(served.count({method, path})) << method << " " << path << " is in openapi.json but not served";
  EXPECT_EQ(served.size(), 39u) << "a route was added or removed: update openapi.json, docs/api.md and this test";
}

TEST_F(ApiTest, OpenApiDocumentsSecurityAndErrorsOfEveryRoute) {
  const json::object& doc = Document().doc();
  ASSERT_TRUE(doc.contains("security"));
  EXPECT_EQ(doc.at("security"), json::parse(R"([{"bearerAuth":[]}])"));
  EXPECT_EQ(doc.at("components").at("securitySchemes").at("bearerAuth").at("scheme"), "bearer");
  // The Error schema is what every error looks like.
  const json::value& error = doc.at("components").at("schemas").at("Error");
  EXPECT_TRUE(Document().Check(error, json::parse(R"({"error":{"kind":"bad_input","message":"m","field":"name"}})")).empty());
  EXPECT_FALSE(Document().Check(error, json::parse(R"({"error":{"message":"m"}})")).empty());

  for (const auto& [method, path] : DocumentedOperations(doc)) {
    const json::object* op = Document().Find(method, Concrete(path, 1));
    ASSERT_NE(op, nullptr) << method << " " << path;
    std::set<std::string> statuses = Document().Statuses(*op);
    std::string what = method + " " + path;
    std::set<std::string> ok;
    for (const auto& s : statuses)
      if (s[0] == '2') ok.insert(s);
    EXPECT_EQ(ok.size(), 1u) << what << " documents one success status";
    for (const auto& s : ok) EXPECT_NE(Document().ResponseSchema(*op, std::stoi(s)), nullptr) << what << " " << s;
    if (path == "/api/v1/openapi.json") {
      ASSERT_TRUE(op->contains("security")) << what;
      EXPECT_TRUE(op->at("security").as_array().empty()) << what << " must be public (security: [])";
      EXPECT_FALSE(statuses.count("401")) << what;
      continue;
    }
    EXPECT_FALSE(op->contains("security")) << what << " overrides the global bearerAuth";
    EXPECT_TRUE(statuses.count("401")) << what << " does not document 401";
    if (path.find("{id}") != std::string::npos) {
      EXPECT_TRUE(statuses.count("400")) << what << " does not document 400 (bad id)";
      EXPECT_TRUE(statuses.count("404")) << what << " does not document 404";
    }
    if (method == "POST" || method == "PATCH") {
      EXPECT_NE(Document().RequestSchema(*op), nullptr) << what << " documents no request body";
      EXPECT_TRUE(statuses.count("400")) << what;
      EXPECT_TRUE(statuses.count("413")) << what;
      EXPECT_TRUE(statuses.count("415")) << what;
    }
    for (const auto& s : statuses) {
      if (s == "default" || s[0] == '2') continue;
      const json::value* schema = Document().ResponseSchema(*op, std::stoi(s));
      ASSERT_NE(schema, nullptr) << what << " " << s;
      EXPECT_EQ(Document().Resolve(*schema), error) << what << " " << s << " is not an Error";
    }
  }
}

// Hits every documented route with real ids, each expecting its success
// status; Call() checks the status and the body against the document.
TEST_F(ApiTest, OpenApiEveryRouteAnswersAsDocumented) {
  int64_t host = CreateHost("pve1", "c1");
  int64_t spare_host = CreateHost("spare", "");
  ConnectWorkerWithVms();
  int64_t worker = CreateWorker("spare-worker").first;
  int64_t repo = CreateRepository("main");
  int64_t spare_repo = CreateRepository("spare");
  const std::string far = std::to_string(FarHour());
  int64_t job = CreateJob("nightly", repo, R"(,"schedule":{"kind":"cron","expr":"30 )" + far + R"( * * 1-5"})");
  int64_t spare_job = CreateJob("spare", repo);
  // A restore point to restore from: session 1, run to the end by the worker.
  // The job's session below is then session 2, the restore session 3.
  int64_t backed_up = CreateJob("pre", repo);
  ASSERT_EQ(Post("/api/v1/jobs/" + std::to_string(backed_up) + "/start", "").status, 202);
  ASSERT_EQ(worker_->CompleteBackups().size(), 1u);
  Reply vms = Get("/api/v1/vms");
  ASSERT_EQ(vms.status, 200);
  ASSERT_EQ(vms.json.at("vms").as_array().size(), 2u) << vms;
  int64_t vm = vms.json.at("vms").as_array()[0].at("id").to_number<int64_t>();

  struct Step {
    std::string method, pattern;
    int64_t id;
    std::string query, body;
    int expect;
  };
  const std::vector<Step> steps = {
      {"GET", "/api/v1/openapi.json", 0, "", "", 200},
      {"GET", "/api/v1/status", 0, "", "", 200},
      {"GET", "/api/v1/hosts", 0, "?limit=10&offset=0", "", 200},
      {"POST", "/api/v1/hosts", 0, "", R"({"name":"pve9","platform":"libvirt","cluster":"c9"})", 201},
      {"GET", "/api/v1/hosts/{id}", host, "", "", 200},
      {"PATCH", "/api/v1/hosts/{id}", host, "", R"({"platform":"ovirt","cluster":"c2"})", 200},
      // This coordinator has no --appliance-image: a valid request is 409 (integration.test-appliance-deploy
      // deploys one for real).
      {"POST", "/api/v1/hosts/{id}/worker", spare_host, "",
       R"({"libvirt_uri":"qemu:///system","coordinator_address":"10.0.2.2:8081","worker_config":"qmp-dir = /var/empty"})", 409},
      {"DELETE", "/api/v1/hosts/{id}/worker", spare_host, "", "", 409},
      {"GET", "/api/v1/vms", 0, "?host=pve1&limit=5&offset=0", "", 200},
      {"GET", "/api/v1/vms/{id}", vm, "", "", 200},
      {"GET", "/api/v1/workers", 0, "?limit=10&offset=0", "", 200},
      {"POST", "/api/v1/workers", 0, "", R"({"name":"w9"})", 201},
      {"GET", "/api/v1/workers/{id}", worker, "", "", 200},
      {"PATCH", "/api/v1/workers/{id}", worker, "", R"({"bandwidth":"50MB/s 08:00-18:00 mon-fri"})", 200},
      {"GET", "/api/v1/repositories", 0, "?limit=10&offset=0", "", 200},
      {"POST", "/api/v1/repositories", 0, "", R"({"name":"r9","location":"/srv/r9","task_slots":8,"capacity_bytes":1000})", 201},
      {"GET", "/api/v1/repositories/{id}", repo, "", "", 200},
      {"PATCH", "/api/v1/repositories/{id}", repo, "", R"({"task_slots":2,"capacity_bytes":5,"bandwidth":"100MiB/s"})", 200},
      {"GET", "/api/v1/jobs", 0, "?limit=10&offset=0", "", 200},
      {"POST", "/api/v1/jobs", 0, "",
       R"({"name":"j9","repository":)" + std::to_string(repo) +
           R"(,"selection":{"vms":["web01"],"hosts":["pve1"]},"exclude_disks":[{"vm":"web01","disk":"vdb"},{"disk":"sdz"}],)"
           R"("schedule":{"kind":"every","hours":6,"from":"01:15","permitted_hours":"0-6,22-23"},)"
           R"("retries":{"count":1,"interval_s":30},"chain":{"name":"j9-chain"},"enabled":false})",
       201},
      {"POST", "/api/v1/jobs/preview", 0, "",
       R"({"selection":{"vms":["web01"],"tags":["db"]},"exclude_disks":[{"vm":"web01","disk":"vdb"}],)"
       R"("schedule":{"kind":"daily","at":"22:00"}})",
       200},
      {"GET", "/api/v1/jobs/{id}", job, "", "", 200},
      {"PATCH", "/api/v1/jobs/{id}", job, "",
       R"({"schedule":{"kind":"daily","at":")" + TwoDigits(FarHour()) + R"(:00","days":["mon","fri"]},"enabled":true})", 200},
      {"POST", "/api/v1/jobs/{id}/start", job, "", "", 202},
      {"GET", "/api/v1/sessions", 0, "?job=" + std::to_string(job) + "&limit=5", "", 200},
      {"GET", "/api/v1/sessions/{id}", 1, "", "", 200},
      {"GET", "/api/v1/sessions/{id}/log", 1, "?after=0&limit=100", "", 200},
      {"POST", "/api/v1/jobs/{id}/stop", job, "", "{}", 202},
      {"GET", "/api/v1/sessions/{id}", 1, "", "", 200},
      {"GET", "/api/v1/points", 0, "?job=" + std::to_string(backed_up) + "&repository=" + std::to_string(repo) + "&vm=web01&limit=3", "", 200},
      {"GET", "/api/v1/points", 0, "?removed=true", "", 200},
      {"GET", "/api/v1/points/{id}", 1, "", "", 200},
      // The fake worker wrote no repository (/srv/main does not exist): the
      // point calls answer 503 (lifecycle_test and integration.test-coordinator-lifecycle
      // run them against real repositories).
      {"POST", "/api/v1/points/{id}/lock", 1, "", R"({"days":3,"reason":"legal hold"})", 503},
      {"DELETE", "/api/v1/points/{id}", 1, "", "", 503},
      {"POST", "/api/v1/restores", 0, "",
       R"({"point":1,"disk":"vda","host":"pve1","target":{"type":"file","path":"/var/restore/vda.qcow2","format":"qcow2"},)"
       R"("retries":{"count":0,"interval_s":0}})",
       202},
      {"GET", "/api/v1/sessions/{id}", 3, "", "", 200},
      {"GET", "/api/v1/sessions", 0, "?kind=all", "", 200},
      {"POST", "/api/v1/sessions/{id}/stop", 3, "", "", 202},
      {"POST", "/api/v1/jobs/{id}/check", backed_up, "", "", 202},
      {"GET", "/api/v1/sessions", 0, "?kind=check", "", 200},
      {"DELETE", "/api/v1/jobs/{id}", spare_job, "", "", 200},
      {"DELETE", "/api/v1/repositories/{id}", spare_repo, "", "", 200},
      {"DELETE", "/api/v1/workers/{id}", worker, "", "", 200},
      {"DELETE", "/api/v1/hosts/{id}", spare_host, "", "", 200},
  };
  std::set<std::pair<std::string, std::string>> hit;
  for (const Step& step : steps) {
    Reply r = Call(step.method, Concrete(step.pattern, step.id) + step.query, step.body);
    EXPECT_EQ(r.status, step.expect) << step.method << " " << step.pattern << ": " << r;
    hit.insert({step.method, step.pattern});
  }
  EXPECT_EQ(hit, DocumentedOperations(Document().doc())) << "every documented route is exercised here";

  // The session has a snapshot and tasks now: their schemas were checked.
  Reply session = Get("/api/v1/sessions/1");
  EXPECT_EQ(session.json.at("snapshots").as_array().size(), 1u) << session;
  EXPECT_EQ(session.json.at("tasks").as_array().size(), 2u) << session;
  // So were a restore session's, and a point's disks.
  Reply restore = Get("/api/v1/sessions/3");
  EXPECT_EQ(restore.Str("kind"), "restore") << restore;
  EXPECT_EQ(restore.Str("state"), "stopped") << restore;
  EXPECT_EQ(restore.json.at("tasks").as_array().size(), 1u) << restore;
  EXPECT_TRUE(restore.json.at("restore").is_object()) << restore;
  Reply points = Get("/api/v1/points");
  ASSERT_EQ(points.json.at("points").as_array().size(), 1u) << points;
  EXPECT_EQ(points.json.at("points").as_array()[0].at("disks"),
            json::parse(R"([{"name":"vda","size_bytes":10737418240},{"name":"vdb","size_bytes":1073741824}])"));
}

// ===========================================================================
// Authentication.

TEST_F(ApiTest, EveryRouteButOpenApiRefusesMissingOrWrongTokens) {
  auto worker_token = CreateWorker("w1").second;
  const std::vector<std::optional<std::string>> credentials = {
      std::nullopt, "Bearer fy_wrong", "Basic x", "Bearer ", "Bearer", "Bearer " + worker_token,
      "Bearer " + token_ + "x", "Token " + token_, token_};
  for (const auto& route : ferry::coordinator::Api::Routes()) {
    if (route.pattern == "/api/v1/openapi.json") continue;
    for (const auto& credential : credentials) {
      Headers headers;
      if (credential) headers.emplace_back("Authorization", *credential);
      std::string body = route.method == "GET" || route.method == "DELETE" ? "" : "{}";
      Reply r = Call(route.method, Concrete(route.pattern, 1), body, Auth::kNone, headers);
      std::string what = route.method + " " + route.pattern + " with " + (credential ? "'" + *credential + "'" : "no header");
      EXPECT_EQ(r.status, 401) << what << ": " << r;
      EXPECT_EQ(r.kind(), "unauthorized") << what;
      bool challenge = false;
      for (const auto& [name, value] : r.headers) challenge = challenge || (name == "WWW-Authenticate" && value == "Bearer");
      EXPECT_TRUE(challenge) << what << ": no WWW-Authenticate: Bearer";
    }
  }
  // Nothing was created by the refused writes.
  EXPECT_TRUE(Get("/api/v1/hosts").json.at("hosts").as_array().empty());
  EXPECT_TRUE(Get("/api/v1/jobs").json.at("jobs").as_array().empty());
}

TEST_F(ApiTest, AuthSchemeIsCaseInsensitive) {
  // RFC 7235: the auth-scheme is case-insensitive.
  Reply r = Call("GET", "/api/v1/status", "", Auth::kNone, {{"Authorization", "bearer " + token_}});
  EXPECT_EQ(r.status, 200) << r;
  r = Call("GET", "/api/v1/status", "", Auth::kNone, {{"Authorization", "BEARER " + token_}});
  EXPECT_EQ(r.status, 200) << r;
}

// ===========================================================================
// Bad input: every case is a 4xx JSON error naming the member, and where the
// document can express the rule, its request schema refuses the body too.

struct BadCase {
  std::string method, target, body;
  int status;
  std::string field;
  bool schema_refuses;  // the documented request schema can tell
};

class BadInputTest : public ApiTest {
 protected:
  void Run(const std::vector<BadCase>& cases) {
    for (const BadCase& c : cases) {
      std::string what = c.method + " " + c.target + " " + c.body.substr(0, 200);
      Reply r = Call(c.method, c.target, c.body);
      EXPECT_EQ(r.status, c.status) << what << " -> " << r;
      EXPECT_EQ(r.field(), c.field) << what << " -> " << r;
      EXPECT_FALSE(r.message().empty()) << what;
      EXPECT_LT(r.status, 500) << what;
      if (c.schema_refuses) {
        const json::object* op = Document().Find(c.method, c.target.substr(0, c.target.find('?')));
        ASSERT_NE(op, nullptr) << what;
        const json::value* schema = Document().RequestSchema(*op);
        ASSERT_NE(schema, nullptr) << what;
        json::error_code ec;
        json::value body = json::parse(c.body, ec);
        if (!ec) {
          EXPECT_FALSE(Document().Check(*schema, body).empty()) << what << ": the documented schema accepts it";
        }
      }
    }
  }
  void SetUp() override {
    ApiTest::SetUp();
    if (HasFatalFailure()) return;
    repo_ = CreateRepository("main");
    host_ = CreateHost("pve1");
    job_ = CreateJob("nightly", repo_);
  }
  std::string R() const { return std::to_string(repo_); }
  std::string JobPath() const { return "/api/v1/jobs/" + std::to_string(job_); }
  std::string RepoPath() const { return "/api/v1/repositories/" + std::to_string(repo_); }
  std::string HostPath() const { return "/api/v1/hosts/" + std::to_string(host_); }
  // A valid job body with `member` (e.g. "\"enabled\":\"yes\"") added.
  std::string Job(const std::string& member) const {
    return R"({"name":"j2","repository":)" + R() + R"(,"selection":{"vms":["web01"]},)" + member + "}";
  }
  int64_t repo_ = 0, host_ = 0, job_ = 0;
};

TEST_F(BadInputTest, MalformedBodiesAndBodiesThatAreNotObjects) {
  Run({
      {"POST", "/api/v1/hosts", R"({"name":)", 400, "body", false},
      {"POST", "/api/v1/hosts", R"({"name":"a",})", 400, "body", false},
      {"POST", "/api/v1/hosts", "\xff\xfe{}", 400, "body", false},
      {"POST", "/api/v1/hosts", R"({"name":"a\xff"})", 400, "body", false},
      {"POST", "/api/v1/hosts", "[]", 400, "body", true},
      {"POST", "/api/v1/repositories", "\"x\"", 400, "body", true},
      {"POST", "/api/v1/jobs", "5", 400, "body", true},
      {"POST", "/api/v1/jobs", "null", 400, "body", true},
      {"PATCH", JobPath(), "true", 400, "body", true},
      {"POST", "/api/v1/workers", R"({"name":"a"} {"name":"b"})", 400, "body", false},
      {"POST", JobPath() + "/start", "[1]", 400, "body", true},
      {"POST", JobPath() + "/stop", "{", 400, "body", false},
      // Nesting deeper than 16 levels.
      {"POST", "/api/v1/jobs", Job(R"("exclude_disks":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]])"), 400, "body", true},
  });
  // An empty body on a create is "malformed", not a crash.
  Reply r = Call("POST", "/api/v1/hosts", "", Auth::kToken);
  ExpectError(r, 400, "body");
}

TEST_F(BadInputTest, WrongTypesNameTheMember) {
  Run({
      {"POST", "/api/v1/hosts", R"({"name":5,"platform":"proxmox"})", 400, "name", true},
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":["proxmox"]})", 400, "platform", true},
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":"proxmox","cluster":7})", 400, "cluster", true},
      {"PATCH", HostPath(), R"({"cluster":false})", 400, "cluster", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","task_slots":"x"})", 400, "task_slots", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","task_slots":4.5})", 400, "task_slots", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","task_slots":4.0})", 400, "task_slots", false},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":{}})", 400, "location", true},
      {"PATCH", RepoPath(), R"({"capacity_bytes":"1"})", 400, "capacity_bytes", true},
      {"POST", "/api/v1/jobs", Job(R"("enabled":"yes")"), 400, "enabled", true},
      {"POST", "/api/v1/jobs", Job(R"("enabled":1)"), 400, "enabled", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":"1","selection":{"vms":["a"]}})", 400, "repository", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1.5,"selection":{"vms":["a"]}})", 400, "repository", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":["a"]})", 400, "selection", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{"tags":"prod"}})", 400, "selection.tags", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{"tags":["a",1]}})", 400, "selection.tags[1]", true},
      {"POST", "/api/v1/jobs", Job(R"("retries":5)"), 400, "retries", true},
      {"POST", "/api/v1/jobs", Job(R"("retries":{"count":"3"})"), 400, "retries.count", true},
      {"POST", "/api/v1/jobs", Job(R"("chain":"c")"), 400, "chain", true},
      {"POST", "/api/v1/jobs", Job(R"("chain":{"name":true})"), 400, "chain.name", true},
      {"POST", "/api/v1/jobs", Job(R"("exclude_disks":{"disk":"vdb"})"), 400, "exclude_disks", true},
      {"POST", "/api/v1/jobs", Job(R"("exclude_disks":[5])"), 400, "exclude_disks[0]", true},
      {"POST", "/api/v1/jobs", Job(R"("exclude_disks":[{"disk":"vda"},{"disk":2}])"), 400, "exclude_disks[1].disk", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":"daily")"), 400, "schedule", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":1})"), 400, "schedule.kind", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":2200})"), 400, "schedule.at", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","days":"mon"})"), 400, "schedule.days", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"every","hours":"6"})"), 400, "schedule.hours", true},
      {"POST", "/api/v1/workers", R"({"name":null})", 400, "name", true},
      {"PATCH", JobPath(), R"({"name":["a"]})", 400, "name", true},
  });
}

TEST_F(BadInputTest, UnknownMembersAreRefusedAtEveryLevel) {
  Run({
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":"proxmox","nam":"x"})", 400, "nam", true},
      {"PATCH", HostPath(), R"({"name":"renamed"})", 400, "name", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","slots":4})", 400, "slots", true},
      {"POST", "/api/v1/workers", R"({"name":"w","token":"fy_x"})", 400, "token", true},
      {"POST", "/api/v1/jobs", Job(R"("retries":{"count":1,"foo":2})"), 400, "retries.foo", true},
      {"POST", "/api/v1/jobs", Job(R"("chain":{"name":"c","kind":"x"})"), 400, "chain.kind", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{"vm":["a"]}})", 400, "selection.vm", true},
      {"POST", "/api/v1/jobs", Job(R"("exclude_disks":[{"disk":"vda","size":1}])"), 400, "exclude_disks[0].size", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","expr":"* * * * *"})"), 400, "schedule.expr", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"0 1 * * *","at":"01:00"})"), 400, "schedule.at", true},
      {"POST", "/api/v1/jobs", Job(R"("description":"x")"), 400, "description", true},
      {"PATCH", JobPath(), R"({"id":5})", 400, "id", true},
      {"POST", JobPath() + "/start", R"({"force":true})", 400, "force", true},
      {"POST", JobPath() + "/stop", R"({"now":true})", 400, "now", true},
  });
}

TEST_F(BadInputTest, MissingRequiredMembers) {
  Run({
      {"POST", "/api/v1/hosts", R"({"name":"h"})", 400, "platform", true},
      {"POST", "/api/v1/hosts", R"({"platform":"proxmox"})", 400, "name", true},
      {"POST", "/api/v1/hosts", "{}", 400, "name", true},
      {"POST", "/api/v1/repositories", R"({"name":"r"})", 400, "location", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"s3://b-1/x?secret_key=abc"})", 400, "location", false},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"s3://b-1/x?colour=blue"})", 400, "location", false},
      {"POST", "/api/v1/workers", "{}", 400, "name", true},
      // selection is required of a backup job only: the server, not the schema, says so.
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1})", 400, "selection", false},
      {"POST", "/api/v1/jobs", R"({"name":"j2","selection":{"vms":["a"]}})", 400, "repository", true},
      {"POST", "/api/v1/jobs", Job(R"("chain":{})"), 400, "chain.name", true},
      {"POST", "/api/v1/jobs", Job(R"("exclude_disks":[{"vm":"web01"}])"), 400, "exclude_disks[0].disk", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{})"), 400, "schedule.kind", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily"})"), 400, "schedule.at", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"every"})"), 400, "schedule.hours", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron"})"), 400, "schedule.expr", true},
  });
}

TEST_F(BadInputTest, OutOfRangeValues) {
  std::string long_name(129, 'a');
  std::string many_vms = "[";
  for (int i = 0; i < 10001; ++i) many_vms += std::string(i ? "," : "") + "\"v" + std::to_string(i) + "\"";
  many_vms += "]";
  Run({
      {"POST", "/api/v1/hosts", R"({"name":"","platform":"proxmox"})", 400, "name", true},
      {"POST", "/api/v1/hosts", R"({"name":")" + long_name + R"(","platform":"proxmox"})", 400, "name", true},
      {"POST", "/api/v1/hosts", R"({"name":"a/b","platform":"proxmox"})", 400, "name", true},
      {"POST", "/api/v1/hosts", R"({"name":"a\u00e9","platform":"proxmox"})", 400, "name", true},
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":"vmware"})", 400, "platform", true},
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":"Proxmox"})", 400, "platform", true},
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":"proxmox","cluster":"c/1"})", 400, "cluster", true},
      {"POST", "/api/v1/hosts", R"({"name":"h","platform":"proxmox","cluster":7})", 400, "cluster", true},
      {"PATCH", HostPath(), R"({"cluster":"a:b"})", 400, "cluster", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"relative/path"})", 400, "location", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":""})", 400, "location", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/)" + std::string(4096, 'x') + R"("})", 400, "location", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","task_slots":0})", 400, "task_slots", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","task_slots":1025})", 400, "task_slots", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","capacity_bytes":-1})", 400, "capacity_bytes", true},
      {"POST", "/api/v1/repositories", R"({"name":"r","location":"/r","capacity_bytes":9223372036854775808})", 400, "capacity_bytes", true},
      {"PATCH", RepoPath(), R"({"task_slots":-5})", 400, "task_slots", true},
      {"POST", "/api/v1/jobs", Job(R"("retries":{"count":101})"), 400, "retries.count", true},
      {"POST", "/api/v1/jobs", Job(R"("retries":{"count":-1})"), 400, "retries.count", true},
      {"POST", "/api/v1/jobs", Job(R"("retries":{"interval_s":86401})"), 400, "retries.interval_s", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":0,"selection":{"vms":["a"]}})", 400, "repository", true},
      // No repository 999: refused naming the member, not 404 (the route exists).
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":999,"selection":{"vms":["a"]}})", 400, "repository", false},
      {"PATCH", JobPath(), R"({"repository":999})", 400, "repository", false},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{}})", 400, "selection", false},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{"vms":[],"tags":[]}})", 400, "selection", false},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{"vms":)" + many_vms + "}}", 400, "selection.vms", true},
      {"POST", "/api/v1/jobs", R"({"name":"j2","repository":1,"selection":{"vms":["ok","bad/name"]}})", 400, "selection.vms[1]", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"every","hours":25})"), 400, "schedule.hours", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"every","hours":0})"), 400, "schedule.hours", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"every","hours":6.5})"), 400, "schedule.hours", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"weekly"})"), 400, "schedule.kind", true},
      {"POST", "/api/v1/jobs", Job(R"("retention":{})"), 400, "retention", true},
      {"POST", "/api/v1/jobs", Job(R"("retention":7)"), 400, "retention", true},
      {"POST", "/api/v1/jobs", Job(R"("retention":{"keep_daily":0})"), 400, "retention.keep_daily", true},
      {"POST", "/api/v1/jobs", Job(R"("retention":{"keep_last":100001})"), 400, "retention.keep_last", true},
      {"POST", "/api/v1/jobs", Job(R"("retention":{"keep_hourly":3})"), 400, "retention.keep_hourly", true},
      {"POST", "/api/v1/jobs", Job(R"("lock_days":-1)"), 400, "lock_days", true},
      {"POST", "/api/v1/jobs", Job(R"("health_check":{})"), 400, "health_check.schedule", true},
      {"POST", "/api/v1/jobs", Job(R"("health_check":{"schedule":{"kind":"daily","at":"25:00"}})"), 400,
       "health_check.schedule.at", true},
      {"PATCH", JobPath(), R"({"health_check":{"schedule":{"kind":"daily","at":"03:00"},"skip_verified_within_days":-2}})", 400,
       "health_check.skip_verified_within_days", true},
      {"PATCH", JobPath(), R"({"name":""})", 400, "name", true},
  });
}

// POST /hosts/{id}/worker: the body is checked before anything else, each
// failure naming its member.
TEST_F(BadInputTest, ApplianceRequestsNameTheField) {
  int64_t host = Post("/api/v1/hosts", R"({"name":"kvm1","platform":"libvirt"})").id();
  const std::string path = "/api/v1/hosts/" + std::to_string(host) + "/worker";
  const std::string vms = R"("worker_config":"libvirt = qemu+ssh://root@kvm1/system")";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"libvirt_uri":"qemu:///system",)" + vms + "}", "coordinator_address"},
      {R"({"coordinator_address":"10.0.2.2:8081",)" + vms + "}", "libvirt_uri"},
      {R"({"libvirt_uri":"system","coordinator_address":"10.0.2.2:8081",)" + vms + "}", "libvirt_uri"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"10.0.2.2",)" + vms + "}", "coordinator_address"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:99999",)" + vms + "}", "coordinator_address"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","pool":"a/b",)" + vms + "}", "pool"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","network":{"type":"tap"},)" + vms + "}", "network.type"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","network":{"type":"bridge"},)" + vms + "}", "network.source"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","network":{"type":"user","source":"x"},)" + vms + "}", "network.source"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","network":{"type":"user","mac":"x"},)" + vms + "}", "network.mac"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","memory_mib":64,)" + vms + "}", "memory_mib"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","idle_shutdown_s":-1,)" + vms + "}", "idle_shutdown_s"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1"})", "worker_config"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","worker_config":"qmp-dir = /x\ntoken-file = t"})", "worker_config"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","worker_config":"qmp-dir /x"})", "worker_config"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","retries":1,)" + vms + "}", "retries"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","files":{"../key":"x"},)" + vms + "}", "files.../key"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","files":{"token":"x"},)" + vms + "}", "files.token"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","files":{"ssh_key":1},)" + vms + "}", "files.ssh_key"},
      {R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","files":[],)" + vms + "}", "files"},
  };
  for (const auto& [body, field] : cases) {
    Reply r = Post(path, body);
    EXPECT_EQ(r.status, 400) << body << ": " << r;
    EXPECT_EQ(r.field(), field) << body << ": " << r;
  }
  // Nothing was made: no worker record, no appliance.
  EXPECT_EQ(Get("/api/v1/workers").json.at("workers").as_array().size(), 0u);
  EXPECT_TRUE(Get("/api/v1/hosts/" + std::to_string(host)).json.at("appliance").is_null());
}

TEST_F(BadInputTest, ImpossibleSchedulesAreRefusedNamingTheSchedule) {
  Run({
      // Never runs: February has no 31st.
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"0 0 31 2 *"})"), 400, "schedule", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"0 0 30 feb *"})"), 400, "schedule", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"25:00"})"), 400, "schedule.at", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:60"})"), 400, "schedule.at", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"7:30"})"), 400, "schedule.at", true},
      // Its only start time is outside the permitted hours.
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","permitted_hours":"0-6"})"), 400, "schedule", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"every","hours":12,"from":"03:00","permitted_hours":"4-14"})"), 400, "schedule", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"0 12 * * *","permitted_hours":"0-6"})"), 400, "schedule", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","permitted_hours":"23-1"})"), 400, "schedule.permitted_hours", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","permitted_hours":"24"})"), 400, "schedule.permitted_hours", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","days":["mon","MON"]})"), 400, "schedule.days[1]", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","days":["mon","funday"]})"), 400, "schedule.days[1]", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","days":[]})"), 400, "schedule.days", true},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"0 0 * *"})"), 400, "schedule.expr", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"61 * * * *"})"), 400, "schedule.expr", false},
      {"POST", "/api/v1/jobs", Job(R"("schedule":{"kind":"cron","expr":"*/0 * * * *"})"), 400, "schedule.expr", false},
      {"PATCH", JobPath(), R"({"schedule":{"kind":"cron","expr":"0 0 31 2 *"}})", 400, "schedule", false},
      {"PATCH", JobPath(), R"({"schedule":{"kind":"daily","at":"25:00"}})", 400, "schedule.at", true},
  });
  // The message says why; the job was not changed by the refused PATCH.
  Reply r = Post("/api/v1/jobs", Job(R"("schedule":{"kind":"daily","at":"22:00","permitted_hours":"0-6"})"));
  EXPECT_NE(r.message().find("permitted"), std::string::npos) << r;
  EXPECT_TRUE(Get(JobPath()).json.at("schedule").is_null());
  EXPECT_EQ(Get("/api/v1/jobs").json.at("jobs").as_array().size(), 1u);
}

// Every list pages: hosts, repositories and jobs as the others.
TEST_F(ApiTest, HostsRepositoriesAndJobsPage) {
  for (const char* name : {"p1", "p2", "p3"})
    Post("/api/v1/hosts", std::string(R"({"name":")") + name + R"(","platform":"libvirt"})");
  const json::array all = Get("/api/v1/hosts").json.at("hosts").as_array();
  ASSERT_GE(all.size(), 3u);
  const json::array page = Get("/api/v1/hosts?limit=2&offset=1").json.at("hosts").as_array();
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].at("id"), all[1].at("id"));
  EXPECT_EQ(page[1].at("id"), all[2].at("id"));
  EXPECT_EQ(Get("/api/v1/repositories?limit=1").json.at("repositories").as_array().size(),
            std::min<size_t>(1, Get("/api/v1/repositories").json.at("repositories").as_array().size()));
  EXPECT_LE(Get("/api/v1/jobs?limit=1").json.at("jobs").as_array().size(), 1u);
}

TEST_F(BadInputTest, BadQueryParameters) {
  Run({
      {"GET", "/api/v1/vms?limit=0", "", 400, "limit", false},
      {"GET", "/api/v1/vms?limit=abc", "", 400, "limit", false},
      {"GET", "/api/v1/vms?limit=100001", "", 400, "limit", false},
      {"GET", "/api/v1/vms?offset=-1", "", 400, "offset", false},
      {"GET", "/api/v1/workers?offset=1x", "", 400, "offset", false},
      {"GET", "/api/v1/hosts?limit=0", "", 400, "limit", false},
      {"GET", "/api/v1/repositories?offset=x", "", 400, "offset", false},
      {"GET", "/api/v1/jobs?limit=100001", "", 400, "limit", false},
      {"GET", "/api/v1/sessions?job=x", "", 400, "job", false},
      {"GET", "/api/v1/sessions?limit=10001", "", 400, "limit", false},
      {"GET", "/api/v1/sessions/1/log?after=-1", "", 404, "", false},  // no session 1 yet: 404 first
      {"GET", "/api/v1/points?repository=0", "", 400, "repository", false},
      {"GET", "/api/v1/points?job=1.5", "", 400, "job", false},
  });
  int64_t session = Post(JobPath() + "/start", "").json.at("session").to_number<int64_t>();
  Run({{"GET", "/api/v1/sessions/" + std::to_string(session) + "/log?after=-1", "", 400, "after", false},
       {"GET", "/api/v1/sessions/" + std::to_string(session) + "/log?limit=", "", 400, "limit", false}});
}

TEST_F(BadInputTest, BodiesOverOneMebibyteAre413) {
  // Exactly at the limit is accepted.
  std::string body = R"({"name":"big","platform":"libvirt"})";
  std::string at_limit = body + std::string((1u << 20) - body.size(), ' ');
  Reply ok = Post("/api/v1/hosts", at_limit);
  EXPECT_EQ(ok.status, 201) << ok;
  for (const std::string& target : {std::string("/api/v1/hosts"), std::string("/api/v1/jobs"), JobPath()}) {
    std::string method = target == JobPath() ? "PATCH" : "POST";
    Reply r = Call(method, target, at_limit + " ");
    EXPECT_EQ(r.status, 413) << method << " " << target << ": " << r;
    EXPECT_EQ(r.kind(), "too_large") << r;
    // Far over it, too.
    r = Call(method, target, std::string(3u << 20, '['));
    EXPECT_EQ(r.status, 413) << method << " " << target << ": " << r.status;
  }
  // The connection is usable afterwards.
  EXPECT_EQ(Get("/api/v1/status").status, 200);
}

TEST_F(BadInputTest, UnknownIdsAre404) {
  for (const auto& route : ferry::coordinator::Api::Routes()) {
    if (route.pattern.find("{id}") == std::string::npos) continue;
    std::string body = route.method == "PATCH" ? R"({"enabled":true})" : "";
    if (route.pattern.find("hosts") != std::string::npos && route.method == "PATCH") body = R"({"cluster":"c"})";
    if (route.pattern.find("repositories") != std::string::npos && route.method == "PATCH") body = R"({"task_slots":2})";
    if (route.pattern.find("workers") != std::string::npos && route.method == "PATCH") body = R"({"bandwidth":"1MiB/s"})";
    if (route.pattern == "/api/v1/hosts/{id}/worker" && route.method == "POST")
      body = R"({"libvirt_uri":"qemu:///system","coordinator_address":"h:1","worker_config":"qmp-dir = /x"})";
    Reply r = Call(route.method, Concrete(route.pattern, 999), body);
    EXPECT_EQ(r.status, 404) << route.method << " " << route.pattern << ": " << r;
    EXPECT_EQ(r.kind(), "not_found") << r;
    EXPECT_NE(r.message().find("999"), std::string::npos) << r;
  }
}

TEST_F(BadInputTest, NonIntegerIdsAre400NamingId) {
  for (std::string id : {"abc", "0", "-1", "1.5", "1e3", "0x10", "+1", "%20", "99999999999999999999"}) {
    for (const std::string& target : {"/api/v1/jobs/" + id, "/api/v1/jobs/" + id + "/start", "/api/v1/sessions/" + id + "/log",
                                      "/api/v1/hosts/" + id}) {
      std::string method = target.find("start") != std::string::npos ? "POST" : "GET";
      Reply r = Call(method, target);
      ExpectError(r, 400, "id", method + " " + target);
    }
  }
}

TEST_F(BadInputTest, UnknownRoutesAre404AndWrongMethods405) {
  for (std::string target : {"/", "/api", "/api/v1", "/api/v1/", "/api/v2/jobs", "/api/v1/nope", "/api/v1/jobs/1/restart",
                                    "/api/v1/jobs/1/start/now", "/API/V1/JOBS", "/api/v1//jobs"}) {
    Reply r = Get(target);
    EXPECT_EQ(r.status, 404) << target << ": " << r;
    EXPECT_EQ(r.kind(), "not_found") << target;
  }
  // Unknown routes are 404 whether or not the caller is authenticated.
  EXPECT_EQ(Call("GET", "/api/v1/nope", "", Auth::kNone).status, 404);
  const std::vector<std::pair<std::string, std::string>> wrong = {
      {"PUT", "/api/v1/jobs/1"},     {"DELETE", "/api/v1/jobs"},     {"POST", "/api/v1/status"},
      {"GET", "/api/v1/jobs/1/start"}, {"PUT", "/api/v1/workers/1"}, {"POST", "/api/v1/openapi.json"},
      {"DELETE", "/api/v1/vms/1"},   {"POST", "/api/v1/sessions"}};
  for (const auto& [method, target] : wrong) {
    Reply r = Call(method, target, method == "POST" || method == "PUT" || method == "PATCH" ? "{}" : "");
    EXPECT_EQ(r.status, 405) << method << " " << target << ": " << r;
    EXPECT_EQ(r.kind(), "method_not_allowed") << method << " " << target;
  }
  // A 405 says what is allowed (RFC 9110).
  auto allow = [&](const std::string& method, const std::string& target) {
    Reply r = Call(method, target);
    for (const auto& [name, value] : r.headers)
      if (name == "Allow") return value;
    return std::string("<no Allow header>");
  };
  EXPECT_EQ(allow("PUT", "/api/v1/jobs/1"), "GET, PATCH, DELETE");
  EXPECT_EQ(allow("DELETE", "/api/v1/jobs"), "GET, POST");
  EXPECT_EQ(allow("GET", "/api/v1/jobs/7/stop"), "POST");
  EXPECT_EQ(allow("PATCH", "/api/v1/openapi.json"), "GET");
}

TEST_F(BadInputTest, WritesWithBodiesMustBeJson) {
  const std::string host = R"({"name":"h2","platform":"proxmox"})";
  for (std::string type : {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "json",
                                "application/jsonx", "application/json-seq", "text/json"}) {
    Reply r = Call("POST", "/api/v1/hosts", host, Auth::kToken, {{"Content-Type", type}});
    ExpectError(r, 415, "Content-Type", "POST with Content-Type '" + type + "'");
    r = Call("PATCH", JobPath(), R"({"enabled":false})", Auth::kToken, {{"Content-Type", type}});
    ExpectError(r, 415, "Content-Type", "PATCH with Content-Type '" + type + "'");
  }
  EXPECT_TRUE(Get(JobPath()).json.at("enabled").as_bool()) << "a refused PATCH changed the job";
  // Parameters and case do not matter.
  Reply r = Call("POST", "/api/v1/hosts", host, Auth::kToken, {{"Content-Type", "application/json; charset=utf-8"}});
  EXPECT_EQ(r.status, 201) << r;
  r = Call("PATCH", HostPath(), R"({"cluster":"c7"})", Auth::kToken, {{"Content-Type", "Application/JSON"}});
  EXPECT_EQ(r.status, 200) << r;
  // Start and stop take no body: none, whatever the Content-Type.
  r = Call("POST", JobPath() + "/start", "", Auth::kToken);
  EXPECT_EQ(r.status, 202) << r;
}

TEST_F(BadInputTest, NameConflictsAre409) {
  auto conflict = [&](const Reply& r, const std::string& what) {
    EXPECT_EQ(r.status, 409) << what << ": " << r;
    EXPECT_EQ(r.kind(), "conflict") << what;
  };
  conflict(Post("/api/v1/hosts", R"({"name":"pve1","platform":"libvirt"})"), "host");
  conflict(Post("/api/v1/repositories", R"({"name":"main","location":"/elsewhere"})"), "repository");
  conflict(Post("/api/v1/jobs", R"({"name":"nightly","repository":)" + R() + R"(,"selection":{"vms":["x"]}})"), "job");
  CreateWorker("w1");
  conflict(Post("/api/v1/workers", R"({"name":"w1"})"), "worker");
  int64_t other_repo = CreateRepository("other");
  conflict(Patch("/api/v1/repositories/" + std::to_string(other_repo), R"({"name":"main"})"), "repository rename");
  int64_t other_job = CreateJob("weekly", repo_);
  conflict(Patch("/api/v1/jobs/" + std::to_string(other_job), R"({"name":"nightly"})"), "job rename");
  // Renaming to its own name is no conflict.
  EXPECT_EQ(Patch("/api/v1/jobs/" + std::to_string(other_job), R"({"name":"weekly"})").status, 200);
  // Names are case-sensitive.
  EXPECT_EQ(Post("/api/v1/hosts", R"({"name":"PVE1","platform":"libvirt"})").status, 201);
  EXPECT_EQ(Get("/api/v1/repositories").json.at("repositories").as_array().size(), 2u);
}

TEST_F(BadInputTest, StateConflictsAre409) {
  // A repository in use by a job.
  Reply r = Delete(RepoPath());
  EXPECT_EQ(r.status, 409) << r;
  EXPECT_EQ(r.kind(), "conflict");
  EXPECT_NE(r.message().find("job"), std::string::npos) << r;
  EXPECT_EQ(Get(RepoPath()).status, 200);
  // Stop with nothing running.
  r = Post(JobPath() + "/stop", "");
  EXPECT_EQ(r.status, 409) << r;
  EXPECT_EQ(r.kind(), "conflict");
  // Once the job is gone the repository can go.
  EXPECT_EQ(Delete(JobPath()).status, 200);
  EXPECT_EQ(Delete(RepoPath()).status, 200);
  EXPECT_EQ(Get(RepoPath()).status, 404);
}

// ===========================================================================
// CRUD happy paths.

TEST_F(ApiTest, HostsCrud) {
  Reply created = Post("/api/v1/hosts", R"({"name":"pve 1.a_b-c","platform":"proxmox","cluster":"c1"})");
  ASSERT_EQ(created.status, 201) << created;
  int64_t id = created.id();
  EXPECT_GT(id, 0);
  EXPECT_EQ(created.Str("name"), "pve 1.a_b-c");
  EXPECT_EQ(created.Str("platform"), "proxmox");
  EXPECT_EQ(created.Str("cluster"), "c1");
  EXPECT_EQ(created.json.at("workers"), 0);
  EXPECT_EQ(created.json.at("vms"), 0);
  std::string path = "/api/v1/hosts/" + std::to_string(id);
  EXPECT_EQ(Get(path).json, created.json);
  Reply no_cluster = Post("/api/v1/hosts", R"({"name":"kvm2","platform":"libvirt"})");
  EXPECT_EQ(no_cluster.Str("cluster"), "");
  // "" means no cluster, as in PATCH (it used to be refused here).
  Reply empty_cluster = Post("/api/v1/hosts", R"({"name":"kvm3","platform":"libvirt","cluster":""})");
  ASSERT_EQ(empty_cluster.status, 201) << empty_cluster;
  EXPECT_EQ(empty_cluster.Str("cluster"), "");
  EXPECT_EQ(Delete("/api/v1/hosts/" + std::to_string(empty_cluster.json.at("id").to_number<int64_t>())).status, 200);

  Reply list = Get("/api/v1/hosts");
  ASSERT_EQ(list.status, 200);
  ASSERT_EQ(list.json.at("hosts").as_array().size(), 2u);
  EXPECT_EQ(list.json.at("hosts").as_array()[0], created.json);

  Reply patched = Patch(path, R"({"platform":"ovirt","cluster":"c2"})");
  ASSERT_EQ(patched.status, 200) << patched;
  EXPECT_EQ(patched.Str("platform"), "ovirt");
  EXPECT_EQ(patched.Str("cluster"), "c2");
  EXPECT_EQ(patched.Str("name"), "pve 1.a_b-c");
  EXPECT_EQ(Patch(path, R"({"cluster":""})").Str("cluster"), "");
  EXPECT_EQ(Patch(path, "{}").Str("platform"), "ovirt") << "an empty PATCH changes nothing";
  EXPECT_EQ(Get(path).Str("platform"), "ovirt");

  Reply deleted = Delete(path);
  ASSERT_EQ(deleted.status, 200) << deleted;
  EXPECT_EQ(deleted.json, json::parse(R"({"deleted":)" + std::to_string(id) + "}"));
  EXPECT_EQ(Get(path).status, 404);
  EXPECT_EQ(Delete(path).status, 404);
  EXPECT_EQ(Get("/api/v1/hosts").json.at("hosts").as_array().size(), 1u);
}

TEST_F(ApiTest, RepositoriesCrud) {
  Reply created = Post("/api/v1/repositories", R"({"name":"main","location":"/srv/backup/main"})");
  ASSERT_EQ(created.status, 201) << created;
  EXPECT_EQ(created.Str("location"), "/srv/backup/main");
  EXPECT_EQ(created.json.at("task_slots"), 4) << "default";
  EXPECT_EQ(created.json.at("capacity_bytes"), 0);
  EXPECT_EQ(created.json.at("points"), 0);
  EXPECT_EQ(created.json.at("stored_bytes"), 0);
  EXPECT_EQ(created.json.at("running_tasks"), 0);
  Reply full = Post("/api/v1/repositories",
                    R"({"name":"big","location":"/mnt/big","task_slots":1024,"capacity_bytes":9223372036854775807})");
  ASSERT_EQ(full.status, 201) << full;
  EXPECT_EQ(full.json.at("task_slots"), 1024);
  EXPECT_EQ(full.json.at("capacity_bytes"), INT64_MAX);

  std::string path = "/api/v1/repositories/" + std::to_string(created.id());
  EXPECT_EQ(Get(path).json, created.json);
  Reply list = Get("/api/v1/repositories");
  ASSERT_EQ(list.json.at("repositories").as_array().size(), 2u);
  EXPECT_TRUE(ArrayHasId(list.json.at("repositories"), full.id()));

  Reply patched = Patch(path, R"({"name":"primary","task_slots":1,"location":"/srv/p","capacity_bytes":100})");
  ASSERT_EQ(patched.status, 200) << patched;
  EXPECT_EQ(patched.Str("name"), "primary");
  EXPECT_EQ(patched.json.at("task_slots"), 1);
  EXPECT_EQ(patched.Str("location"), "/srv/p");
  EXPECT_EQ(patched.json.at("capacity_bytes"), 100);
  EXPECT_EQ(Get(path).json, patched.json);

  EXPECT_EQ(Delete(path).status, 200);
  EXPECT_EQ(Get(path).status, 404);
  EXPECT_EQ(Get("/api/v1/repositories").json.at("repositories").as_array().size(), 1u);
}

TEST_F(ApiTest, JobsCrud) {
  int64_t repo = CreateRepository("main");
  int64_t repo2 = CreateRepository("second");
  const int far = FarHour();
  const std::string hh = TwoDigits(far);
  Reply created = Post("/api/v1/jobs", R"({"name":"nightly","repository":)" + std::to_string(repo) +
                                           R"(,"selection":{"tags":["prod"],"clusters":["c1"]},)"
                                           R"("schedule":{"kind":"daily","at":")" + hh + R"(:00","days":["FRI","mon"]}})");
  ASSERT_EQ(created.status, 201) << created;
  const json::value& job = created.json;
  EXPECT_EQ(job.at("repository"), repo);
  EXPECT_EQ(job.at("selection"), json::parse(R"({"vms":[],"tags":["prod"],"hosts":[],"clusters":["c1"]})"));
  EXPECT_EQ(job.at("exclude_disks"), json::array{});
  // The canonical schedule: days lower case, Monday first.
  EXPECT_EQ(job.at("schedule"), json::parse(R"({"kind":"daily","at":")" + hh + R"(:00","days":["mon","fri"]})"));
  EXPECT_EQ(job.at("schedule_description").as_string(), "daily at " + hh + ":00 on mon,fri");
  EXPECT_EQ(job.at("retries"), json::parse(R"({"count":3,"interval_s":600})")) << "defaults";
  EXPECT_EQ(job.at("chain"), json::parse(R"({"name":"nightly"})")) << "the chain defaults to the job's name";
  EXPECT_EQ(job.at("enabled"), true);
  EXPECT_TRUE(job.at("next_run_at").is_string()) << created;
  EXPECT_TRUE(job.at("last_session").is_null());

  std::string path = "/api/v1/jobs/" + std::to_string(created.id());
  EXPECT_EQ(Get(path).json, created.json);
  EXPECT_EQ(Get("/api/v1/jobs").json.at("jobs").as_array()[0], created.json);

  Reply patched = Patch(path, R"({"name":"nightly-2","repository":)" + std::to_string(repo2) +
                                  R"(,"selection":{"vms":["web01"]},"exclude_disks":[{"vm":"web01","disk":"vdb"}],)"
                                  R"("retries":{"count":0},"chain":{"name":"chain-x"}})");
  ASSERT_EQ(patched.status, 200) << patched;
  EXPECT_EQ(patched.Str("name"), "nightly-2");
  EXPECT_EQ(patched.json.at("repository"), repo2);
  EXPECT_EQ(patched.json.at("selection").at("vms"), json::parse(R"(["web01"])"));
  EXPECT_EQ(patched.json.at("selection").at("tags"), json::array{}) << "selection is replaced as a whole";
  EXPECT_EQ(patched.json.at("exclude_disks"), json::parse(R"([{"vm":"web01","disk":"vdb"}])"));
  EXPECT_EQ(patched.json.at("retries"), json::parse(R"({"count":0,"interval_s":600})")) << "members not given stay";
  EXPECT_EQ(patched.json.at("chain").at("name"), "chain-x");
  EXPECT_EQ(patched.json.at("schedule"), job.at("schedule")) << "an absent schedule stays";

  Reply disabled = Patch(path, R"({"enabled":false})");
  EXPECT_EQ(disabled.json.at("enabled"), false);
  EXPECT_TRUE(disabled.json.at("next_run_at").is_null()) << "a disabled job has no next run: " << disabled;
  // Every 24 hours from the far hour, and only then: fires once a day, far off.
  Reply every = Patch(path, R"({"enabled":true,"schedule":{"kind":"every","hours":24,"from":")" + hh +
                                R"(:30","permitted_hours":" )" + std::to_string(far) + R"( "}})");
  EXPECT_EQ(every.json.at("schedule"), json::parse(R"({"kind":"every","hours":24,"from":")" + hh +
                                                   R"(:30","permitted_hours":")" + std::to_string(far) + R"("})"))
      << every;
  EXPECT_EQ(every.json.at("schedule_description").as_string(),
            "every 24 hours from " + hh + ":30 each day, permitted hours " + std::to_string(far));
  EXPECT_TRUE(every.json.at("next_run_at").is_string());
  Reply cron = Patch(path, R"({"schedule":{"kind":"cron","expr":"  30   )" + std::to_string(far) + R"( * * MON-fri "}})");
  EXPECT_EQ(cron.json.at("schedule"), json::parse(R"({"kind":"cron","expr":"30 )" + std::to_string(far) + R"( * * mon-fri"})"))
      << cron;
  Reply manual = Patch(path, R"({"schedule":null})");
  EXPECT_TRUE(manual.json.at("schedule").is_null()) << manual;
  EXPECT_EQ(manual.json.at("schedule_description"), "manual only");
  EXPECT_TRUE(manual.json.at("next_run_at").is_null());

  // The repository lifecycle's settings: none by default; set, shown, turned off.
  EXPECT_TRUE(job.at("retention").is_null());
  EXPECT_EQ(job.at("retention_description"), "keep every point");
  EXPECT_EQ(job.at("lock_days"), 0);
  EXPECT_TRUE(job.at("health_check").is_null());
  EXPECT_TRUE(job.at("last_check").is_null());
  Reply lifecycle = Patch(path, R"({"retention":{"keep_last":3,"keep_weekly":4},"lock_days":14,)"
                                R"("health_check":{"schedule":{"kind":"daily","at":")" + hh + R"(:15"},"skip_verified_within_days":7}})");
  ASSERT_EQ(lifecycle.status, 200) << lifecycle;
  EXPECT_EQ(lifecycle.json.at("retention"), json::parse(R"({"keep_last":3,"keep_weekly":4})"));
  EXPECT_EQ(lifecycle.json.at("retention_description"), "keep-last 3, keep-weekly 4");
  EXPECT_EQ(lifecycle.json.at("lock_days"), 14);
  EXPECT_EQ(lifecycle.json.at("health_check").at("schedule"), json::parse(R"({"kind":"daily","at":")" + hh + R"(:15"})"));
  EXPECT_EQ(lifecycle.json.at("health_check").at("skip_verified_within_days"), 7);
  EXPECT_TRUE(lifecycle.json.at("health_check").at("next_run_at").is_string()) << lifecycle;
  Reply retention_only = Patch(path, R"({"retention":{"keep_daily":7}})");
  EXPECT_EQ(retention_only.json.at("retention"), json::parse(R"({"keep_daily":7})")) << "the policy is replaced as a whole";
  EXPECT_EQ(retention_only.json.at("lock_days"), 14) << "members not given stay";
  Reply off = Patch(path, R"({"retention":null,"health_check":null,"lock_days":0})");
  EXPECT_TRUE(off.json.at("retention").is_null()) << off;
  EXPECT_TRUE(off.json.at("health_check").is_null()) << off;
  EXPECT_EQ(off.json.at("lock_days"), 0);

  Reply deleted = Delete(path);
  EXPECT_EQ(deleted.json, json::parse(R"({"deleted":)" + std::to_string(created.id()) + "}"));
  EXPECT_EQ(Get(path).status, 404);
  EXPECT_TRUE(Get("/api/v1/jobs").json.at("jobs").as_array().empty());
}

TEST_F(ApiTest, CopyJobsAreCheckedAndShownWithTheirSource) {
  int64_t repo = CreateRepository("main");
  int64_t offsite = CreateRepository("offsite");
  int64_t nightly = CreateJob("nightly", repo, R"(,"chain":{"name":"night-chain"})");
  const std::string src = std::to_string(nightly), off = std::to_string(offsite);
  auto copy_job = [&](const std::string& members) {
    return Post("/api/v1/jobs", R"({"name":"offsite","kind":"copy",)" + members + "}");
  };
  struct Bad {
    std::string members, field;
  };
  for (const Bad& b : std::vector<Bad>{
           {R"("repository":)" + off, "source_job"},  // required for a copy job
           {R"("source_job":)" + src + R"(,"repository":)" + std::to_string(repo), "repository"},  // its own
           {R"("source_job":999,"repository":)" + off, "source_job"},
           {R"("source_job":)" + src + R"(,"repository":)" + off + R"(,"selection":{"vms":["a"]})", "selection"},
           {R"("source_job":)" + src + R"(,"repository":)" + off + R"(,"retries":{"count":1})", "retries"},
           {R"("source_job":)" + src + R"(,"repository":)" + off + R"(,"chain":{"name":"x"})", "chain"},
           {R"("source_job":)" + src + R"(,"repository":)" + off + R"(,"exclude_disks":[])", "exclude_disks"},
       }) {
    Reply r = copy_job(b.members);
    EXPECT_EQ(r.status, 400) << b.members << ": " << r;
    EXPECT_EQ(r.field(), b.field) << b.members << ": " << r;
  }
  Reply kind = Post("/api/v1/jobs", R"({"name":"x","kind":"mirror","repository":1,"selection":{"vms":["a"]}})");
  EXPECT_EQ(kind.field(), "kind") << kind;
  Reply backup_with_source = Post("/api/v1/jobs", R"({"name":"x","repository":1,"source_job":)" + src +
                                                      R"(,"selection":{"vms":["a"]}})");
  EXPECT_EQ(backup_with_source.field(), "source_job") << backup_with_source;

  Reply created = copy_job(R"("source_job":)" + src + R"(,"repository":)" + off + R"(,"retention":{"keep_daily":30})");
  ASSERT_EQ(created.status, 201) << created;
  EXPECT_EQ(created.Str("kind"), "copy");
  EXPECT_EQ(created.json.at("source_job"), nightly);
  EXPECT_TRUE(created.json.at("selection").is_null()) << created;
  EXPECT_EQ(created.json.at("chain").at("name"), "night-chain") << "a copy keeps its source job's chain";
  EXPECT_EQ(created.json.at("retention_description"), "keep-daily 30");
  EXPECT_EQ(Get("/api/v1/jobs/" + src).Str("kind"), "backup");
  EXPECT_TRUE(Get("/api/v1/jobs/" + src).json.at("source_job").is_null());
  // A copy of a copy is refused; so is changing the kind.
  Reply of_copy = Post("/api/v1/jobs", R"({"name":"c2","kind":"copy","repository":)" + std::to_string(repo) +
                                           R"(,"source_job":)" + std::to_string(created.id()) + "}");
  EXPECT_EQ(of_copy.field(), "source_job") << of_copy;
  const std::string path = "/api/v1/jobs/" + std::to_string(created.id());
  EXPECT_EQ(Patch(path, R"({"kind":"backup"})").field(), "kind");
  EXPECT_EQ(Patch(path, R"({"selection":{"vms":["a"]}})").field(), "selection");
  EXPECT_EQ(Patch(path, R"({"repository":)" + std::to_string(repo) + "}").field(), "repository");
  // The source cannot move into its copy's repository, nor go while copied.
  EXPECT_EQ(Patch("/api/v1/jobs/" + src, R"({"repository":)" + off + "}").field(), "repository");
  Reply busy = Delete("/api/v1/jobs/" + src);
  EXPECT_EQ(busy.status, 409) << busy;
  EXPECT_NE(busy.message().find("source of copy job 'offsite'"), std::string::npos) << busy;
  // Its sessions are of kind copy.
  Reply started = Post(path + "/start", "");
  ASSERT_EQ(started.status, 202) << started;
  const std::string session = std::to_string(started.json.at("session").to_number<int64_t>());
  EXPECT_EQ(Get("/api/v1/sessions/" + session).Str("kind"), "copy");
  EXPECT_EQ(Get("/api/v1/sessions?kind=copy").json.at("sessions").as_array().size(), 1u);
  EXPECT_TRUE(Get("/api/v1/sessions").json.at("sessions").as_array().empty()) << "backup sessions by default";
  // The repositories here are paths that do not exist: the copy fails, naming the source.
  Reply ended;
  for (int i = 0; i < 200; ++i) {
    ended = Get("/api/v1/sessions/" + session);
    if (ended.Str("state") != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(ended.Str("state"), "failed") << ended;
  EXPECT_NE(ended.Str("reason").find("repository 'main'"), std::string::npos) << ended;
  EXPECT_EQ(Get(path).json.at("last_session").at("id"), started.json.at("session"));
  EXPECT_EQ(Delete(path).status, 200);
  EXPECT_EQ(Delete("/api/v1/jobs/" + src).status, 200) << "no copy job refers to it any more";
}

TEST_F(ApiTest, WorkerTokenIsShownOnceOnly) {
  Reply created = Post("/api/v1/workers", R"({"name":"pve1-worker"})");
  ASSERT_EQ(created.status, 201) << created;
  std::string token = created.Str("token");
  EXPECT_TRUE(std::regex_match(token, std::regex("fy_[0-9a-f]{40}"))) << token;
  EXPECT_NE(token, token_);
  EXPECT_EQ(created.Str("state"), "new");
  EXPECT_TRUE(created.json.at("host").is_null());
  EXPECT_TRUE(created.json.at("registered_at").is_null());
  EXPECT_EQ(created.json.at("task_slots"), 0);

  std::string path = "/api/v1/workers/" + std::to_string(created.id());
  Reply got = Get(path);
  ASSERT_EQ(got.status, 200);
  EXPECT_FALSE(got.json.as_object().contains("token")) << got;
  EXPECT_EQ(got.body.find(token), std::string::npos);
  json::object without = created.json.as_object();
  without.erase("token");
  EXPECT_EQ(got.json, without);
  Reply list = Get("/api/v1/workers");
  EXPECT_EQ(list.body.find(token), std::string::npos);
  EXPECT_EQ(list.body.find("\"token\""), std::string::npos);
  EXPECT_EQ(list.json.at("workers").as_array().size(), 1u);
  // Each worker gets its own token.
  EXPECT_NE(Post("/api/v1/workers", R"({"name":"w2"})").Str("token"), token);
  EXPECT_EQ(Get("/api/v1/workers?limit=1&offset=1").json.at("workers").as_array()[0].at("name"), "w2");

  EXPECT_EQ(Delete(path).status, 200);
  EXPECT_EQ(Get(path).status, 404);
}

TEST_F(ApiTest, StartWithAnEmptyInventoryEndsFailedNamingTheSelection) {
  int64_t repo = CreateRepository("main");
  int64_t job = CreateJob("nightly", repo);
  Reply started = Post("/api/v1/jobs/" + std::to_string(job) + "/start", "");
  ASSERT_EQ(started.status, 202) << started;
  int64_t session = started.json.at("session").to_number<int64_t>();
  EXPECT_GT(session, 0);

  Reply s = Get("/api/v1/sessions/" + std::to_string(session));
  ASSERT_EQ(s.status, 200) << s;
  EXPECT_EQ(s.json.at("job_id"), job);
  EXPECT_EQ(s.json.at("job"), "nightly");
  EXPECT_EQ(s.json.at("trigger"), "manual");
  EXPECT_EQ(s.json.at("state"), "failed") << s;
  EXPECT_NE(s.Str("reason").find("selection"), std::string::npos) << s;
  EXPECT_TRUE(s.json.at("ended_at").is_string());
  EXPECT_EQ(s.json.at("totals").at("tasks"), 0);
  EXPECT_TRUE(s.json.at("snapshots").as_array().empty());
  EXPECT_TRUE(s.json.at("tasks").as_array().empty());

  Reply j = Get("/api/v1/jobs/" + std::to_string(job));
  EXPECT_EQ(j.json.at("last_session").at("id"), session) << j;
  EXPECT_EQ(j.json.at("last_session").at("state"), "failed") << j;
  EXPECT_EQ(j.json.at("last_session").at("started_at"), s.json.at("created_at")) << j;
  EXPECT_EQ(j.json.at("last_session").at("ended_at"), s.json.at("ended_at")) << j;
  EXPECT_EQ(j.json.at("last_session").at("bytes_total"), 0) << j;

  // The session ended, so the job can start again (and be stopped: 409).
  Reply again = Post("/api/v1/jobs/" + std::to_string(job) + "/start", "{}");
  ASSERT_EQ(again.status, 202) << again;
  int64_t second = again.json.at("session").to_number<int64_t>();
  EXPECT_GT(second, session);
  EXPECT_EQ(Post("/api/v1/jobs/" + std::to_string(job) + "/stop", "").status, 409);

  Reply list = Get("/api/v1/sessions");
  ASSERT_EQ(list.json.at("sessions").as_array().size(), 2u);
  EXPECT_EQ(list.json.at("sessions").as_array()[0].at("id"), second) << "newest first";
  EXPECT_EQ(Get("/api/v1/sessions?limit=1").json.at("sessions").as_array().size(), 1u);
  Reply page2 = Get("/api/v1/sessions?limit=1&offset=1");
  ASSERT_EQ(page2.json.at("sessions").as_array().size(), 1u) << page2;
  EXPECT_EQ(page2.json.at("sessions").as_array()[0].at("id"), session) << "offset pages past the newest";
  EXPECT_TRUE(Get("/api/v1/sessions?offset=2").json.at("sessions").as_array().empty());
  EXPECT_EQ(Get("/api/v1/sessions?offset=-1").status, 400);
  EXPECT_EQ(Get("/api/v1/sessions?job=" + std::to_string(job)).json.at("sessions").as_array().size(), 2u);
  EXPECT_TRUE(Get("/api/v1/sessions?job=999").json.at("sessions").as_array().empty());

  Reply log = Get("/api/v1/sessions/" + std::to_string(session) + "/log");
  ASSERT_EQ(log.status, 200) << log;
  const json::array& entries = log.json.at("log").as_array();
  ASSERT_GE(entries.size(), 2u) << log;
  bool mentions = false;
  for (const auto& e : entries) mentions = mentions || std::string(e.at("message").as_string()).find("selection") != std::string::npos;
  EXPECT_TRUE(mentions) << log;
  int64_t first_id = entries[0].at("id").to_number<int64_t>();
  Reply after = Get("/api/v1/sessions/" + std::to_string(session) + "/log?after=" + std::to_string(first_id));
  EXPECT_EQ(after.json.at("log").as_array().size(), entries.size() - 1);
  EXPECT_EQ(Get("/api/v1/sessions/" + std::to_string(session) + "/log?limit=1").json.at("log").as_array().size(), 1u);

  Reply points = Get("/api/v1/points");
  ASSERT_EQ(points.status, 200);
  EXPECT_EQ(points.json, json::parse(R"({"points":[]})"));
  EXPECT_EQ(Get("/api/v1/points?job=" + std::to_string(job) + "&vm=web01").json.at("points").as_array().size(), 0u);
  EXPECT_EQ(Get("/api/v1/points?offset=3").status, 200);
  EXPECT_EQ(Get("/api/v1/points?offset=x").status, 400);

  Reply status = Get("/api/v1/status");
  ASSERT_EQ(status.status, 200);
  EXPECT_EQ(status.json.at("sessions_running"), 0);
  EXPECT_EQ(status.json.at("workers"), 0);
  EXPECT_EQ(status.json.at("hosts"), 0);
  EXPECT_EQ(status.json.at("vms"), 0);
  EXPECT_FALSE(status.Str("version").empty());
  EXPECT_GE(status.json.at("schema_version").to_number<int64_t>(), 1);

  // Deleting the job takes its sessions along.
  EXPECT_EQ(Delete("/api/v1/jobs/" + std::to_string(job)).status, 200);
  EXPECT_EQ(Get("/api/v1/sessions/" + std::to_string(session)).status, 404);
  EXPECT_EQ(Get("/api/v1/sessions/" + std::to_string(session) + "/log").status, 404);
}

// A worker registered over RPC reports VMs; a job selecting one runs a
// session that stays running (the worker pulls no work) until stopped.
TEST_F(ApiTest, WorkerInventorySessionAndStop) {
  int64_t host = CreateHost("pve1", "c1");
  int64_t worker = ConnectWorkerWithVms();

  Reply w = Get("/api/v1/workers/" + std::to_string(worker));
  EXPECT_EQ(w.Str("state"), "connected") << w;
  EXPECT_EQ(w.Str("host"), "pve1");
  EXPECT_EQ(w.Str("cluster"), "c1") << "the configured cluster stays";
  EXPECT_EQ(w.json.at("task_slots"), 2);
  EXPECT_EQ(w.Str("version"), "api-test-1");
  EXPECT_TRUE(w.json.at("registered_at").is_string());

  Reply h = Get("/api/v1/hosts/" + std::to_string(host));
  EXPECT_EQ(h.json.at("workers"), 1);
  EXPECT_EQ(h.json.at("vms"), 2);

  Reply vms = Get("/api/v1/vms");
  ASSERT_EQ(vms.json.at("vms").as_array().size(), 2u) << vms;
  Reply web = Get("/api/v1/vms?host=pve1&name=web01");
  ASSERT_EQ(web.json.at("vms").as_array().size(), 1u) << web;
  const json::value& vm = web.json.at("vms").as_array()[0];
  EXPECT_EQ(vm.at("uuid"), "7d1b5a3c-0000-4000-8000-000000000001");
  EXPECT_EQ(vm.at("state"), "running");
  EXPECT_EQ(vm.at("tags"), json::parse(R"(["prod","web"])"));
  EXPECT_EQ(vm.at("host"), "pve1");
  EXPECT_EQ(vm.at("host_id"), host);
  EXPECT_EQ(vm.at("cluster"), "c1");
  EXPECT_EQ(vm.at("disks"), json::parse(R"([{"name":"vda","size_bytes":10737418240,"format":"qcow2"},)"
                                        R"({"name":"vdb","size_bytes":1073741824,"format":"raw"}])"));
  EXPECT_EQ(Get("/api/v1/vms/" + std::to_string(vm.at("id").to_number<int64_t>())).json, vm);
  EXPECT_TRUE(Get("/api/v1/vms?host=other").json.at("vms").as_array().empty());
  EXPECT_EQ(Get("/api/v1/vms?limit=1").json.at("vms").as_array().size(), 1u);
  EXPECT_EQ(Get("/api/v1/vms?limit=1&offset=1").json.at("vms").as_array()[0].at("name"), "db01");
  EXPECT_TRUE(Get("/api/v1/vms?offset=2").json.at("vms").as_array().empty());

  // A connected worker, and a host with workers and VMs, cannot be deleted.
  EXPECT_EQ(Delete("/api/v1/workers/" + std::to_string(worker)).status, 409);
  EXPECT_EQ(Delete("/api/v1/hosts/" + std::to_string(host)).status, 409);
  // The worker's token is not an API token.
  Reply status = Get("/api/v1/status");
  EXPECT_EQ(status.json.at("workers_connected"), 1);
  EXPECT_EQ(status.json.at("vms"), 2);

  int64_t repo = CreateRepository("main");
  int64_t job = CreateJob("web", repo, R"(,"exclude_disks":[{"vm":"web01","disk":"vdb"}])");
  std::string job_path = "/api/v1/jobs/" + std::to_string(job);
  Reply started = Post(job_path + "/start", "");
  ASSERT_EQ(started.status, 202) << started;
  int64_t session = started.json.at("session").to_number<int64_t>();
  Reply s = Get("/api/v1/sessions/" + std::to_string(session));
  EXPECT_EQ(s.Str("state"), "running") << s;
  ASSERT_EQ(s.json.at("snapshots").as_array().size(), 1u) << s;
  EXPECT_EQ(s.json.at("snapshots").as_array()[0].at("vm"), "web01");
  EXPECT_EQ(s.json.at("snapshots").as_array()[0].at("state"), "pending");
  ASSERT_EQ(s.json.at("tasks").as_array().size(), 1u) << "vdb is excluded: " << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("disk"), "vda");
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("state"), "waiting");
  EXPECT_EQ(s.json.at("totals").at("tasks"), 1);
  EXPECT_EQ(s.json.at("totals").at("queued"), 1);
  EXPECT_EQ(s.json.at("totals").at("bytes_total"), 10737418240);
  EXPECT_EQ(Get("/api/v1/status").json.at("sessions_running"), 1);

  // While it runs: no second session, no deleting the job.
  Reply twice = Post(job_path + "/start", "");
  EXPECT_EQ(twice.status, 409) << twice;
  EXPECT_EQ(twice.kind(), "conflict");
  EXPECT_EQ(Delete(job_path).status, 409);

  Reply stopped = Post(job_path + "/stop", "");
  ASSERT_EQ(stopped.status, 202) << stopped;
  EXPECT_EQ(stopped.json, json::parse(R"({"session":)" + std::to_string(session) + R"(,"state":"stopping"})"));
  s = Get("/api/v1/sessions/" + std::to_string(session));
  EXPECT_EQ(s.Str("state"), "stopped") << "nothing ran, so nothing drains: " << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("state"), "canceled");
  EXPECT_EQ(s.json.at("snapshots").as_array()[0].at("state"), "canceled");
  EXPECT_EQ(s.json.at("totals").at("canceled"), 1);
  EXPECT_EQ(Post(job_path + "/stop", "").status, 409);
  EXPECT_EQ(Get(job_path).json.at("last_session").at("state"), "stopped");

  // Once the worker disconnects it can be deleted.
  worker_.reset();
  // The coordinator notices the closed connection asynchronously; deletion
  // is retried until it does (bounded; not a timing assertion).
  Reply deleted;
  for (int i = 0; i < 3000; ++i) {
    deleted = Delete("/api/v1/workers/" + std::to_string(worker));
    if (deleted.status != 409) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(deleted.status, 200) << deleted;
}

// A disk task's statistics from its worker's progress (live) and result
// (final): bytes, each stage's busy share, the task's and the session's
// bottleneck, in the shape openapi.json documents (Call checks it).
TEST_F(ApiTest, TaskStatisticsNameTheBottleneck) {
  CreateHost("pve1", "c1");
  ConnectWorkerWithVms();
  int64_t repo = CreateRepository("main");
  int64_t job = CreateJob("web", repo, R"(,"exclude_disks":[{"vm":"web01","disk":"vdb"}])");
  Reply started = Post("/api/v1/jobs/" + std::to_string(job) + "/start", "");
  ASSERT_EQ(started.status, 202) << started;
  const std::string session = "/api/v1/sessions/" + std::to_string(started.json.at("session").to_number<int64_t>());

  Reply before = Get(session);
  ASSERT_EQ(before.json.at("tasks").as_array().size(), 1u) << before;
  const json::value& waiting = before.json.at("tasks").as_array()[0];
  EXPECT_TRUE(waiting.at("busy").is_null()) << "no statistics before its worker reports";
  EXPECT_TRUE(waiting.at("bottleneck").is_null());
  EXPECT_EQ(waiting.at("bytes_read"), 0);
  EXPECT_TRUE(before.json.at("stats").at("busy").is_null());
  EXPECT_TRUE(before.json.at("stats").at("bottleneck").is_null());
  EXPECT_EQ(before.json.at("stats").at("tasks_measured"), 0);

  worker_->SnapshotDone(worker_->PullUntil("snapshot"), {"vda"});
  std::string disk = worker_->PullUntil("disk");
  ASSERT_FALSE(disk.empty());

  // Live: a slow source, into a local repository.
  ferry::StageBusy live;
  live.wall_us = 10'000'000;
  live.source_us = 9'000'000;
  live.compute_us = 3'000'000;
  live.target_us = 1'000'000;
  worker_->Progress(disk, 5ull << 30, 10ull << 30, 5ull << 30, 1ull << 30, live);
  Reply running;  // progress is written once per tick: wait for it (bounded)
  for (int i = 0; i < 1000; ++i) {
    running = Get(session);
    if (!running.json.at("tasks").as_array()[0].at("busy").is_null()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const json::value& task = running.json.at("tasks").as_array()[0];
  EXPECT_EQ(task.at("state"), "running");
  EXPECT_EQ(task.at("busy"), json::parse(R"({"source":90.0,"compute":30.0,"network":null,"target":10.0})")) << running;
  EXPECT_EQ(task.at("bottleneck"), "source");
  EXPECT_EQ(task.at("bytes_read"), 5ll << 30);
  EXPECT_EQ(task.at("bytes_sent"), 1ll << 30);
  EXPECT_EQ(running.json.at("stats").at("bottleneck"), "source");
  EXPECT_EQ(running.json.at("stats").at("tasks_measured"), 1);

  // Final: a repository service that could not keep up.
  ferry::StageBusy final_busy;
  final_busy.wall_us = 20'000'000;
  final_busy.source_us = 4'000'000;
  final_busy.compute_us = 6'000'000;
  final_busy.network_us = 15'000'000;
  final_busy.remote_store = true;
  worker_->DiskDone(disk, 10ull << 30, 3ull << 30, 3500ull << 20, final_busy);
  Reply done = Get(session);
  const json::value& finished = done.json.at("tasks").as_array()[0];
  EXPECT_EQ(finished.at("state"), "succeeded") << done;
  EXPECT_EQ(finished.at("busy"), json::parse(R"({"source":20.0,"compute":30.0,"network":75.0,"target":null})")) << done;
  EXPECT_EQ(finished.at("bottleneck"), "network");
  EXPECT_EQ(finished.at("bytes_read"), 10ll << 30);
  EXPECT_EQ(finished.at("bytes_sent"), 3500ll << 20);
  EXPECT_EQ(finished.at("bytes_stored"), 3ll << 30);
  const json::value& stats = done.json.at("stats");
  EXPECT_EQ(stats.at("bottleneck"), "network") << done;
  EXPECT_EQ(stats.at("busy"), json::parse(R"({"source":20.0,"compute":30.0,"network":75.0,"target":null})"));
  EXPECT_EQ(stats.at("bottleneck_bytes"), json::parse(R"({"source":0,"compute":0,"network":10737418240,"target":0})"));
  EXPECT_EQ(stats.at("bytes_read"), 10ll << 30);
  EXPECT_EQ(stats.at("bytes_sent"), 3500ll << 20);
  EXPECT_EQ(stats.at("bytes_stored"), 3ll << 30);
  // The jobs list gives the same figures for the job's last session.
  Reply job_now = Get("/api/v1/jobs/" + std::to_string(job));
  const json::value& last = job_now.json.at("last_session");
  EXPECT_EQ(last.at("bytes_stored"), done.json.at("tasks").as_array()[0].at("bytes_stored")) << last;
  EXPECT_EQ(last.at("bytes_done"), done.json.at("totals").at("bytes_done")) << last;
  EXPECT_EQ(last.at("ended_at"), done.json.at("ended_at")) << last;
  // The session log names it too.
  Reply log = Get(session + "/log");
  bool named = false;
  for (const auto& e : log.json.at("log").as_array())
    named = named || std::string(e.at("message").as_string()).find("bottleneck: network") != std::string::npos;
  EXPECT_TRUE(named) << log;
}

// ===========================================================================
// Restores: POST /restores is checked against the request's form and the
// database, and the restore goes to a worker of its target host only.

TEST_F(ApiTest, RestoresAreCheckedAndRunOnTheTargetHostsWorker) {
  // Two hosts with a worker each in one cluster: pve1 (proxmox) has web01;
  // pve2 (libvirt) has nothing. Host "bare" has no worker.
  CreateHost("pve1", "c1");
  ASSERT_EQ(Post("/api/v1/hosts", R"({"name":"pve2","platform":"libvirt","cluster":"c1"})").status, 201);
  ASSERT_EQ(Post("/api/v1/hosts", R"({"name":"bare","platform":"libvirt","cluster":"c1"})").status, 201);
  auto [a_id, a_token] = CreateWorker("wa");
  auto [b_id, b_token] = CreateWorker("wb");
  kj::AsyncIoContext io = kj::setupAsyncIo();
  FakeWorker a(daemon_->rpc(), a_token, "pve1", "proxmox",
               {{"web01", "7d1b5a3c-0000-4000-8000-000000000001", "running", {"prod"},
                 {{"vda", 10737418240, "qcow2"}, {"vdb", 1073741824, "raw"}}}},
               &io);
  FakeWorker b(daemon_->rpc(), b_token, "pve2", "libvirt", {}, &io);
  int64_t repo = CreateRepository("main");
  int64_t job = CreateJob("web", repo);
  ASSERT_EQ(Post("/api/v1/jobs/" + std::to_string(job) + "/start", "").status, 202);
  ASSERT_EQ(a.CompleteBackups().size(), 1u);
  Reply points = Get("/api/v1/points");
  ASSERT_EQ(points.json.at("points").as_array().size(), 1u) << points;
  const json::value& point = points.json.at("points").as_array()[0];
  const std::string P = std::to_string(point.at("id").to_number<int64_t>());
  const std::string point_id(point.at("point_id").as_string());

  // --- bad input: 400 naming the field, and nothing is started ---
  const std::string file = R"("target":{"type":"file","path":"/restore/vda.raw"})";
  struct Bad {
    std::string body, field;
  };
  const std::vector<Bad> bad = {
      {R"({})", "point"},
      {R"({"disk":"vda","host":"pve2",)" + file + "}", "point"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2"})", "target"},
      {R"({"point":999,"disk":"vda","host":"pve2",)" + file + "}", "point"},
      {R"({"point":0,"disk":"vda","host":"pve2",)" + file + "}", "point"},
      {R"({"point":")" + P + R"(","disk":"vda","host":"pve2",)" + file + "}", "point"},
      {R"({"point":)" + P + R"(,"disk":"vdz","host":"pve2",)" + file + "}", "disk"},
      {R"({"point":)" + P + R"(,"host":"pve2",)" + file + "}", "disk"},
      {R"({"point":)" + P + R"(,"disk":"vda",)" + file + "}", "host"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"nowhere",)" + file + "}", "host"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"bare",)" + file + "}", "host"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"file","path":"restore/vda.raw"}})", "target.path"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"file"}})", "target.path"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"file","path":"/r/x","format":"vmdk"}})", "target.format"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"file","path":"/r/x","vm":"web01"}})", "target.vm"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"tape"}})", "target.type"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":"/r/x"})", "target"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"libvirt_domain"}})", "target.vm"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","target":{"type":"new_domain","directory":"/r"}})", "disk"},
      {R"({"point":)" + P + R"(,"host":"pve2","target":{"type":"new_domain"}})", "target.directory"},
      {R"({"point":)" + P + R"(,"host":"pve2","target":{"type":"new_domain","directory":"/r","pool":"p"}})", "target.pool"},
      {R"({"point":)" + P + R"(,"host":"pve1","target":{"type":"new_domain","directory":"/r"}})", "host"},
      {R"({"point":)" + P + R"(,"target":{"type":"original_domain","confirm":false}})", "target.confirm"},
      {R"({"point":)" + P + R"(,"target":{"type":"original_domain"}})", "target.confirm"},
      // Over the original, the host defaults to the VM's: pve1, a proxmox host.
      {R"({"point":)" + P + R"(,"target":{"type":"original_domain","confirm":true}})", "host"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","retries":{"count":101},)" + file + "}", "retries.count"},
      {R"({"point":)" + P + R"(,"disk":"vda","host":"pve2","since":"yesterday",)" + file + "}", "since"},
  };
  for (const Bad& c : bad) ExpectError(Post("/api/v1/restores", c.body), 400, c.field, c.body);
  EXPECT_NE(Post("/api/v1/restores", bad[10].body).message().find("no worker"), std::string::npos);
  EXPECT_NE(Post("/api/v1/restores", bad[6].body).message().find("vda, vdb"), std::string::npos)
      << "the message lists the point's disks";
  EXPECT_TRUE(Get("/api/v1/sessions?kind=restore").json.at("sessions").as_array().empty());

  // --- one disk into a file on pve2: only pve2's worker gets it ---
  Reply started = Post("/api/v1/restores", R"({"point":)" + P + R"(,"disk":"vda","host":"pve2",)" + file + "}");
  ASSERT_EQ(started.status, 202) << started;
  const std::string R1 = std::to_string(started.json.at("session").to_number<int64_t>());
  Reply s = Get("/api/v1/sessions/" + R1);
  EXPECT_EQ(s.Str("kind"), "restore") << s;
  EXPECT_TRUE(s.json.at("job_id").is_null());
  EXPECT_TRUE(s.json.at("job").is_null());
  EXPECT_EQ(s.Str("state"), "running");
  EXPECT_TRUE(s.json.at("snapshots").as_array().empty());
  ASSERT_EQ(s.json.at("tasks").as_array().size(), 1u) << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("state"), "queued");
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("disk"), "vda");
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("vm"), "web01");
  EXPECT_TRUE(s.json.at("tasks").as_array()[0].at("snapshot_id").is_null());
  EXPECT_EQ(s.json.at("totals").at("bytes_total"), 10737418240);
  EXPECT_EQ(s.json.at("restore"),
            json::parse(R"({"point":)" + P + R"(,"point_id":")" + point_id + R"(","repository_id":)" +
                        std::to_string(repo) + R"(,"vm":"web01","disk":"vda","host":"pve2",)"
                        R"("target":{"type":"file","path":"/restore/vda.raw","format":"raw"},)"
                        R"("retries":{"count":3,"interval_s":60}})"));
  EXPECT_TRUE(a.PullItems(2).empty()) << "a worker of another host in the cluster must not take it";
  std::vector<PulledItem> got = b.PullItems(2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].kind, "restore");
  EXPECT_EQ(got[0].tier, "host");
  EXPECT_EQ(got[0].target, "file");
  EXPECT_EQ(got[0].path, "/restore/vda.raw");
  EXPECT_EQ(got[0].format, "raw");
  EXPECT_EQ(got[0].disk, "vda");
  EXPECT_EQ(got[0].point_id, point_id);
  EXPECT_EQ(got[0].vm, "web01");
  EXPECT_EQ(got[0].attempt, 1u);
  // A local path: through the coordinator's own repository service, as for backups.
  EXPECT_TRUE(got[0].repository_location.rfind("ferry://", 0) == 0 &&
              got[0].repository_location.size() > 5 &&
              got[0].repository_location.substr(got[0].repository_location.size() - 5) == "/main")
      << got[0].repository_location;
  s = Get("/api/v1/sessions/" + R1);
  const json::value& task = s.json.at("tasks").as_array()[0];
  EXPECT_EQ(task.at("state"), "running");
  EXPECT_EQ(task.at("worker_id"), b_id);
  EXPECT_EQ(task.at("tier"), "host");
  EXPECT_EQ(task.at("tier_reason"), "worker on the target host");
  EXPECT_EQ(Get("/api/v1/workers/" + std::to_string(b_id)).json.at("running_tasks"), 1);
  // Progress shows on the task (the coordinator writes it once per tick).
  b.ReportProgress(got[0].assignment, 4096, 10737418240);
  Reply progressed;
  for (int i = 0; i < 1000; ++i) {
    progressed = Get("/api/v1/sessions/" + R1);
    if (progressed.json.at("tasks").as_array()[0].at("bytes_done") == 4096) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(progressed.json.at("tasks").as_array()[0].at("bytes_done"), 4096) << progressed;
  EXPECT_EQ(progressed.json.at("totals").at("bytes_done"), 4096);
  EXPECT_TRUE(b.Report(got[0].assignment, true, {}, "", "", "", 10737418240));
  s = Get("/api/v1/sessions/" + R1);
  EXPECT_EQ(s.Str("state"), "succeeded") << s;
  EXPECT_NE(s.Str("reason").find("restored web01/vda of point " + point_id), std::string::npos) << s;
  EXPECT_NE(s.Str("reason").find("pve2:/restore/vda.raw"), std::string::npos) << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("state"), "succeeded");
  EXPECT_EQ(s.json.at("totals").at("succeeded"), 1);
  std::string log = Get("/api/v1/sessions/" + R1 + "/log").body;
  for (const char* want : {"restore started: disk vda of VM web01", "on worker", "fake worker: ", "session succeeded"})
    EXPECT_NE(log.find(want), std::string::npos) << want << " not in " << log;

  // --- a whole VM as a new domain on pve2: a retryable failure is retried, then it ends ---
  started = Post("/api/v1/restores", R"({"point":)" + P +
                                         R"(,"host":"pve2","target":{"type":"new_domain","directory":"/var/vms"},)"
                                         R"("retries":{"count":1,"interval_s":0}})");
  ASSERT_EQ(started.status, 202) << started;
  const std::string R2 = std::to_string(started.json.at("session").to_number<int64_t>());
  s = Get("/api/v1/sessions/" + R2);
  EXPECT_TRUE(s.json.at("tasks").as_array()[0].at("disk").is_null()) << s;
  EXPECT_EQ(s.json.at("totals").at("bytes_total"), 10737418240 + 1073741824) << "every disk of the point";
  EXPECT_EQ(s.json.at("restore").at("target"),
            json::parse(R"({"type":"new_domain","name":"web01-restored","directory":"/var/vms","format":"qcow2","keep_macs":false})"));
  got = b.PullItems(2);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].target, "new_domain");
  EXPECT_EQ(got[0].name, "web01-restored");
  EXPECT_EQ(got[0].directory, "/var/vms");
  EXPECT_EQ(got[0].disk, "");
  EXPECT_TRUE(b.Report(got[0].assignment, false, {}, "", "retryable", "repository connection lost"));
  got = b.PullItems(2);
  ASSERT_EQ(got.size(), 1u) << "retried at once (interval 0)";
  EXPECT_EQ(got[0].attempt, 2u);
  EXPECT_TRUE(b.Report(got[0].assignment, false, {}, "", "bad_input", "a domain named 'web01-restored' already exists"));
  s = Get("/api/v1/sessions/" + R2);
  EXPECT_EQ(s.Str("state"), "failed") << s;
  EXPECT_NE(s.Str("reason").find("already exists"), std::string::npos) << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("attempt"), 2);
  EXPECT_TRUE(b.PullItems(2).empty()) << "bad_input is not retried";

  // --- stopping: a queued restore, then 409, 404 ---
  started = Post("/api/v1/restores", R"({"point":)" + P + R"(,"disk":"vdb","host":"pve2","target":{"type":"libvirt_domain","vm":"db01"}})");
  ASSERT_EQ(started.status, 202) << started;
  const std::string R3 = std::to_string(started.json.at("session").to_number<int64_t>());
  EXPECT_EQ(Get("/api/v1/sessions/" + R3).json.at("restore").at("target"),
            json::parse(R"({"type":"libvirt_domain","vm":"db01","disk":"vdb"})"))
      << "the domain's disk defaults to the disk restored";
  Reply stop = Post("/api/v1/sessions/" + R3 + "/stop", "");
  ASSERT_EQ(stop.status, 202) << stop;
  EXPECT_EQ(stop.json, json::parse(R"({"session":)" + R3 + R"(,"state":"stopping"})"));
  s = Get("/api/v1/sessions/" + R3);
  EXPECT_EQ(s.Str("state"), "stopped") << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("state"), "canceled");
  EXPECT_TRUE(b.PullItems(2).empty()) << "a stopped restore is not handed out";
  EXPECT_EQ(Post("/api/v1/sessions/" + R3 + "/stop", "").status, 409);
  EXPECT_EQ(Post("/api/v1/sessions/" + R1 + "/stop", "{}").status, 409);
  EXPECT_EQ(Post("/api/v1/sessions/999/stop", "").status, 404);

  // --- listing: backups by default, restores when asked ---
  EXPECT_EQ(Get("/api/v1/sessions").json.at("sessions").as_array().size(), 1u);
  Reply restores = Get("/api/v1/sessions?kind=restore");
  ASSERT_EQ(restores.json.at("sessions").as_array().size(), 3u) << restores;
  EXPECT_EQ(restores.json.at("sessions").as_array()[0].at("id").to_number<int64_t>(), std::stoll(R3)) << "newest first";
  EXPECT_EQ(Get("/api/v1/sessions?kind=all").json.at("sessions").as_array().size(), 4u);
  ExpectError(Get("/api/v1/sessions?kind=restores"), 400, "kind");
  EXPECT_EQ(Get("/api/v1/jobs/" + std::to_string(job)).json.at("last_session").at("state"), "succeeded")
      << "a restore is no job's session";
}

// A restore running when the coordinator is killed -9 is rebuilt from the
// database on restart; its worker, back without it, gets it again (attempt 2).
TEST_F(ApiTest, ARunningRestoreSurvivesACoordinatorRestart) {
  CreateHost("pve1", "c1");
  auto [a_id, a_token] = CreateWorker("wa");
  kj::AsyncIoContext io = kj::setupAsyncIo();
  const std::vector<FakeVm> vms = {{"web01", "7d1b5a3c-0000-4000-8000-000000000001", "running", {"prod"},
                                    {{"vda", 1073741824, "raw"}}}};
  auto a = std::make_unique<FakeWorker>(daemon_->rpc(), a_token, "pve1", "proxmox", vms, &io);
  int64_t job = CreateJob("web", CreateRepository("main"));
  ASSERT_EQ(Post("/api/v1/jobs/" + std::to_string(job) + "/start", "").status, 202);
  ASSERT_EQ(a->CompleteBackups().size(), 1u);
  Reply started = Post("/api/v1/restores", R"({"point":1,"disk":"vda","host":"pve1","target":{"type":"file","path":"/r/vda"}})");
  ASSERT_EQ(started.status, 202) << started;
  const std::string R = std::to_string(started.json.at("session").to_number<int64_t>());
  std::vector<PulledItem> got = a->PullItems(2);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(got[0].attempt, 1u);

  RestartHard();
  a.reset();  // its connection died with the coordinator
  Reply s = Get("/api/v1/sessions/" + R);
  EXPECT_EQ(s.Str("state"), "running") << s;
  EXPECT_EQ(s.json.at("tasks").as_array()[0].at("state"), "running") << "still the worker's until it is back: " << s;
  FakeWorker back(daemon_->rpc(), a_token, "pve1", "proxmox", vms, &io);  // without the assignment
  got = back.PullItems(2);
  ASSERT_EQ(got.size(), 1u) << "requeued when its worker came back without it";
  EXPECT_EQ(got[0].kind, "restore");
  EXPECT_EQ(got[0].attempt, 2u);
  EXPECT_TRUE(back.Report(got[0].assignment, true, {}, "", "", "", 1073741824));
  s = Get("/api/v1/sessions/" + R);
  EXPECT_EQ(s.Str("state"), "succeeded") << s;
  std::string log = Get("/api/v1/sessions/" + R + "/log").body;
  EXPECT_NE(log.find("coordinator restarted"), std::string::npos) << log;
  EXPECT_NE(log.find("requeued: worker wa re-registered without it"), std::string::npos) << log;
}

// ===========================================================================
// Durability: kill -9 and start again on the same data directory.

TEST_F(ApiTest, EverythingSurvivesKillDashNine) {
  int64_t host = CreateHost("pve1", "c1");
  int64_t repo = CreateRepository("main");
  int64_t job = CreateJob("manual", repo, R"(,"retries":{"count":7,"interval_s":9},"enabled":false)");
  int64_t scheduled = CreateJob("scheduled", repo, R"(,"schedule":{"kind":"daily","at":")" + TwoDigits(FarHour()) + R"(:00","days":["sun"]})");
  auto [worker, worker_token] = CreateWorker("w1");
  int64_t session = Post("/api/v1/jobs/" + std::to_string(job) + "/start", "").json.at("session").to_number<int64_t>();

  std::map<std::string, json::value> before;
  for (const std::string& path : std::vector<std::string>{"/api/v1/hosts/" + std::to_string(host), "/api/v1/repositories/" + std::to_string(repo),
                                  "/api/v1/jobs/" + std::to_string(job), "/api/v1/workers/" + std::to_string(worker),
                                  "/api/v1/sessions/" + std::to_string(session),
                                  "/api/v1/sessions/" + std::to_string(session) + "/log", "/api/v1/hosts",
                                  "/api/v1/repositories", "/api/v1/workers", "/api/v1/sessions", "/api/v1/points"}) {
    Reply r = Get(path);
    ASSERT_EQ(r.status, 200) << path;
    before[path] = r.json;
  }
  json::value scheduled_before = Get("/api/v1/jobs/" + std::to_string(scheduled)).json;

  pid_t old_pid = daemon_->pid();
  RestartHard();
  ASSERT_NE(daemon_->pid(), old_pid);

  for (const auto& [path, value] : before) EXPECT_EQ(Get(path).json, value) << path << " changed across kill -9";
  json::value scheduled_after = Get("/api/v1/jobs/" + std::to_string(scheduled)).json;
  EXPECT_EQ(scheduled_after.at("schedule"), scheduled_before.at("schedule"));
  EXPECT_EQ(scheduled_after.at("name"), "scheduled");
  EXPECT_TRUE(scheduled_after.at("next_run_at").is_string());
  // The same admin token still works (the test's Call uses it), and the
  // ids continue: nothing is reused.
  int64_t next_repo = CreateRepository("after-restart");
  EXPECT_GT(next_repo, repo);
  // The worker's token survived too: it can still register.
  FakeWorker registered(daemon_->rpc(), worker_token, "pve1", "proxmox", {});
  EXPECT_EQ(registered.worker_id(), static_cast<uint64_t>(worker));
  EXPECT_EQ(Get("/api/v1/workers/" + std::to_string(worker)).Str("state"), "connected");
}

// ===========================================================================
// Security headers, the web console, the job preview, the dashboard's figures.

std::string HeaderOf(const Headers& headers, const std::string& name) {
  for (const auto& [n, v] : headers)
    if (n.size() == name.size() && std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        }))
      return v;
  return "<none>";
}

const char kCsp[] =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

void ExpectSecurityHeaders(const Headers& h, const std::string& what, const std::string& csp = kCsp) {
  EXPECT_EQ(HeaderOf(h, "Content-Security-Policy"), csp) << what;
  EXPECT_EQ(HeaderOf(h, "X-Content-Type-Options"), "nosniff") << what;
  EXPECT_EQ(HeaderOf(h, "X-Frame-Options"), "DENY") << what;
  EXPECT_EQ(HeaderOf(h, "Referrer-Policy"), "no-referrer") << what;
  // Plain HTTP: no HSTS (a browser ignores it there; with --tls-cert it is sent).
  EXPECT_EQ(HeaderOf(h, "Strict-Transport-Security"), "<none>") << what;
}

TEST_F(ApiTest, EveryResponseCarriesTheSecurityHeaders) {
  ConnectWorkerWithVms();
  Reply ok = Get("/api/v1/status");
  ASSERT_EQ(ok.status, 200) << ok;
  ExpectSecurityHeaders(ok.headers, "200 of the API");
  ExpectSecurityHeaders(Call("GET", "/api/v1/status", "", Auth::kNone).headers, "401 (from the request's head)");
  ExpectSecurityHeaders(Get("/api/v1/nope").headers, "404 of the router");
  ExpectSecurityHeaders(Call("PUT", "/api/v1/jobs/1", "{}").headers, "405");
  ExpectSecurityHeaders(Post("/api/v1/jobs", "{").headers, "400");
  ExpectSecurityHeaders(Call("GET", "/api/v1/openapi.json", "", Auth::kNone).headers, "the document");
  ExpectSecurityHeaders(Raw("GET", "/healthz").headers, "/healthz");
  ExpectSecurityHeaders(Raw("GET", "/").headers, "/ without a console");
  // An error the HTTP server makes itself, before any handler: 413.
  Reply big = Post("/api/v1/hosts", std::string(2 << 20, ' '));
  EXPECT_EQ(big.status, 413);
  ExpectSecurityHeaders(big.headers, "413 of the server");
}

TEST_F(ApiTest, WithoutAConsoleDirTheRootIsA404SayingSo) {
  for (const std::string target : {"/", "/index.html", "/jobs/3"}) {
    ferry::http::Response r = Raw("GET", target);
    EXPECT_EQ(r.status, 404) << target;
    EXPECT_NE(r.body.find("no web console"), std::string::npos) << target << ": " << r.body;
    EXPECT_NE(r.body.find("--console-dir"), std::string::npos) << target << ": " << r.body;
  }
}

// A console directory that does not exist is no console either (logged).
class MissingConsoleDirTest : public ApiTest {
 protected:
  std::vector<std::string> DaemonArgs() override { return {"--console-dir", dir_ + "/no-such-dir"}; }
};

TEST_F(MissingConsoleDirTest, IsNoConsole) {
  ferry::http::Response r = Raw("GET", "/");
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_NE(r.body.find("no web console"), std::string::npos) << r.body;
  EXPECT_NE(daemon_->log().find("no web console: no directory"), std::string::npos) << daemon_->log();
}

void WriteFile(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << content;
}

// A coordinator with a console directory of every kind of asset.
class ConsoleTest : public ApiTest {
 protected:
  std::vector<std::string> DaemonArgs() override {
    console_ = dir_ + "/console";
    WriteFile(console_ + "/index.html", "<!doctype html><title>Ferry</title>");
    WriteFile(console_ + "/api.html", "<!doctype html><title>API</title>");
    WriteFile(console_ + "/app.js", "console.log(1);");
    WriteFile(console_ + "/app.js.map", "{}");
    WriteFile(console_ + "/app.css", "body{}");
    WriteFile(console_ + "/data.json", "{}");
    WriteFile(console_ + "/favicon.svg", "<svg/>");
    WriteFile(console_ + "/logo.png", std::string("\x89PNG\r\n\x1a\n", 8));
    WriteFile(console_ + "/favicon.ico", "ico");
    WriteFile(console_ + "/fonts/inter.woff2", "wOF2");
    WriteFile(console_ + "/notes.bin", "x");
    fs::create_symlink("app.js", console_ + "/alias.js");  // within the directory: served
    // A file beside the console directory: what traversal would reach.
    WriteFile(dir_ + "/secret.txt", "the secret");
    return {"--console-dir", console_};
  }
  std::string console_;
};

TEST_F(ConsoleTest, AssetsAreServedWithTheirTypesAndHeadersWithoutAToken) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/", "text/html; charset=utf-8"},
      {"/index.html", "text/html; charset=utf-8"},
      {"/app.js", "text/javascript; charset=utf-8"},
      {"/alias.js", "text/javascript; charset=utf-8"},
      {"/app.js.map", "application/json"},
      {"/app.css", "text/css; charset=utf-8"},
      {"/data.json", "application/json"},
      {"/favicon.svg", "image/svg+xml"},
      {"/logo.png", "image/png"},
      {"/favicon.ico", "image/x-icon"},
      {"/fonts/inter.woff2", "font/woff2"},
      {"/notes.bin", "application/octet-stream"}};
  for (const auto& [target, type] : cases) {
    ferry::http::Response r = Raw("GET", target);
    EXPECT_EQ(r.status, 200) << target << ": " << r.body;
    EXPECT_EQ(r.content_type, type) << target;
    EXPECT_EQ(HeaderOf(r.headers, "Cache-Control"), "no-cache") << target;
    EXPECT_TRUE(std::regex_match(HeaderOf(r.headers, "ETag"), std::regex("\"[0-9a-f]{32}\""))) << target;
    ExpectSecurityHeaders(r.headers, target);
  }
  EXPECT_EQ(Raw("GET", "/").body, "<!doctype html><title>Ferry</title>");
  EXPECT_EQ(Raw("GET", "/alias.js").body, "console.log(1);");
  EXPECT_EQ(Raw("GET", "/logo.png").body, std::string("\x89PNG\r\n\x1a\n", 8));
  // The API reference page (Redoc) alone may use inline styles.
  ferry::http::Response docs = Raw("GET", "/api.html");
  EXPECT_EQ(docs.status, 200);
  ExpectSecurityHeaders(docs.headers, "/api.html",
                        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                        "connect-src 'self'; font-src 'self'; worker-src 'self' blob:; object-src 'none'; "
                        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'");
  // HEAD: the headers of a GET, no body.
  ferry::http::Response head = Raw("HEAD", "/app.css");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.content_type, "text/css; charset=utf-8");
  EXPECT_EQ(HeaderOf(head.headers, "Content-Length"), "6");
  EXPECT_TRUE(head.body.empty());
  // Other methods are not for files.
  ferry::http::Response post = Raw("POST", "/index.html");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(HeaderOf(post.headers, "Allow"), "GET, HEAD");
  // The API still wants its token.
  EXPECT_EQ(Call("GET", "/api/v1/status", "", Auth::kNone).status, 401);
  EXPECT_EQ(Raw("GET", "/metrics").status, 401);
  EXPECT_EQ(Raw("GET", "/healthz").status, 200);
  // /api itself and anything under it is the API's: JSON 404s, never the app.
  for (const std::string target : {"/api", "/api/", "/api/v1/nope", "/api/jobs/3"}) {
    Reply r = Get(target);
    EXPECT_EQ(r.status, 404) << target << ": " << r;
    EXPECT_EQ(r.kind(), "not_found") << target;
  }
}

TEST_F(ConsoleTest, ClientSideRoutesGetTheAppAndMissingFilesA404) {
  for (const std::string target : {"/jobs", "/jobs/3", "/jobs/", "/sessions/12/log", "/settings?tab=x"}) {
    ferry::http::Response r = Raw("GET", target);
    EXPECT_EQ(r.status, 200) << target;
    EXPECT_EQ(r.body, "<!doctype html><title>Ferry</title>") << target;
    EXPECT_EQ(r.content_type, "text/html; charset=utf-8") << target;
    EXPECT_EQ(HeaderOf(r.headers, "Cache-Control"), "no-cache") << target;
  }
  for (const std::string target : {"/missing.js", "/fonts/other.woff2", "/jobs/3/app.js"}) {
    ferry::http::Response r = Raw("GET", target);
    EXPECT_EQ(r.status, 404) << target << ": " << r.body;
    ExpectSecurityHeaders(r.headers, target);
  }
}

TEST_F(ConsoleTest, TraversalIsRefused) {
  for (const std::string target :
       {"/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/fonts/../../secret.txt",
        "/fonts/%2e%2e/%2e%2e/secret.txt", "/%2e%2e%2fsecret.txt", "/..%5csecret.txt", "/.%2e/secret.txt",
        "/./index.html", "//index.html", "/fonts//inter.woff2", "/index.html%00.png", "/%00", "/a%0d%0ab"}) {
    ferry::http::Response r = Raw("GET", target);
    EXPECT_EQ(r.status, 400) << target << ": " << r.body;
    EXPECT_EQ(r.body.find("the secret"), std::string::npos) << target;
    EXPECT_EQ(r.body.find("<title>Ferry"), std::string::npos) << target;
  }
}

TEST_F(ConsoleTest, AnEtagThatMatchesIsA304) {
  ferry::http::Response first = Raw("GET", "/app.js");
  const std::string etag = HeaderOf(first.headers, "ETag");
  ASSERT_NE(etag, "<none>");
  for (const std::string& value : {etag, "W/" + etag, "\"other\", " + etag, std::string("*")}) {
    ferry::http::Response again = Raw("GET", "/app.js", {{"If-None-Match", value}});
    EXPECT_EQ(again.status, 304) << value;
    EXPECT_TRUE(again.body.empty()) << value;
    EXPECT_EQ(HeaderOf(again.headers, "ETag"), etag) << value;
  }
  EXPECT_EQ(Raw("GET", "/app.js", {{"If-None-Match", "\"other\""}}).status, 200);
  // Another file has another tag.
  EXPECT_NE(HeaderOf(Raw("GET", "/app.css").headers, "ETag"), etag);
  // A client-side route revalidates the app's page.
  const std::string index = HeaderOf(Raw("GET", "/").headers, "ETag");
  EXPECT_EQ(Raw("GET", "/jobs/3", {{"If-None-Match", index}}).status, 304);
}

// A console directory with a symlink that leads out of it: the coordinator
// refuses to start (exit 2) rather than serve what the link points at.
TEST(ConsoleDirTest, ASymlinkOutOfTheDirectoryStopsTheStart) {
  std::string base = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
  std::string tmpl = base + "/ferry-console-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  InitDataDir(dir + "/data", dir + "/init.log");
  WriteFile(dir + "/console/index.html", "x");
  WriteFile(dir + "/secret.txt", "the secret");
  fs::create_symlink("../secret.txt", dir + "/console/leak.txt");
  pid_t pid = Spawn({FERRY_COORDINATOR_BIN, "run", "--data", dir + "/data", "--listen", "127.0.0.1:0", "--rpc-listen",
                     "127.0.0.1:0", "--repository-listen", "off", "--console-dir", dir + "/console"},
                    dir + "/run.log");
  std::optional<int> status = WaitExit(pid, std::chrono::seconds(60));
  if (!status) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  ASSERT_TRUE(status) << "the coordinator started with a symlink out of its console directory";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 2) << ReadWholeFile(dir + "/run.log");
  EXPECT_NE(ReadWholeFile(dir + "/run.log").find("leak.txt is a symlink that leads out of the directory"),
            std::string::npos)
      << ReadWholeFile(dir + "/run.log");
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// With TLS every response adds Strict-Transport-Security.
TEST(TlsSecurityHeadersTest, HttpsResponsesAddHsts) {
  std::string base = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
  std::string tmpl = base + "/ferry-tls-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  const std::string token = InitDataDir(dir + "/data", dir + "/init.log");
  const std::string make_cert = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=c "
                                "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout " + dir + "/c.key -out " + dir +
                                "/c.pem 2>/dev/null";
  ASSERT_EQ(std::system(make_cert.c_str()), 0);
  {
    Daemon daemon(dir + "/data", dir,
                  {"--tls-cert", dir + "/c.pem", "--tls-key", dir + "/c.key", "--console-dir", "", "--repository-listen", "off"});
    ASSERT_NO_THROW(daemon.Start());
    ASSERT_EQ(daemon.api().rfind("https://", 0), 0u) << daemon.api();
    ferry::http::ClientOptions options;
    options.ca_file = dir + "/c.pem";
    ferry::http::Client client(daemon.api(), options);
    for (const std::string target : {"/api/v1/status", "/api/v1/nope", "/"}) {
      ferry::http::Response r = client.Send("GET", target, "", {{"Authorization", "Bearer " + token}});
      EXPECT_EQ(HeaderOf(r.headers, "Strict-Transport-Security"), "max-age=31536000") << target;
      EXPECT_EQ(HeaderOf(r.headers, "Content-Security-Policy"), kCsp) << target;
      EXPECT_EQ(HeaderOf(r.headers, "X-Frame-Options"), "DENY") << target;
    }
    daemon.Stop();
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST_F(ApiTest, JobPreviewShowsWhatASessionBacksUpAndWhen) {
  ConnectWorkerWithVms();  // web01 (prod, web; vda, vdb), db01 (db; sda)
  const std::string what =
      R"("selection":{"tags":["prod","db"]},"exclude_disks":[{"vm":"web01","disk":"vdb"},{"disk":"sda"}])";
  Reply p = Post("/api/v1/jobs/preview", "{" + what + R"(,"schedule":{"kind":"daily","at":"22:00"}})");
  ASSERT_EQ(p.status, 200) << p;
  EXPECT_EQ(p.json.at("vms"), json::parse(R"([
      {"id": 2, "name": "db01", "host": "pve1", "cluster": "", "tags": ["db"],
       "disks": [{"name": "sda", "size_bytes": 21474836480, "excluded": true}], "backed_up": false},
      {"id": 1, "name": "web01", "host": "pve1", "cluster": "", "tags": ["prod", "web"],
       "disks": [{"name": "vda", "size_bytes": 10737418240, "excluded": false},
                 {"name": "vdb", "size_bytes": 1073741824, "excluded": true}], "backed_up": true}])"))
      << p;
  EXPECT_EQ(p.json.at("vms_matched"), 2);
  EXPECT_EQ(p.json.at("vm_count"), 1);
  EXPECT_EQ(p.json.at("disk_count"), 1);
  EXPECT_EQ(p.json.at("schedule_description"), "daily at 22:00");
  const json::array& runs = p.json.at("next_runs").as_array();
  ASSERT_EQ(runs.size(), 5u) << p;
  for (size_t i = 1; i < runs.size(); ++i) EXPECT_LT(runs[i - 1].as_string(), runs[i].as_string()) << p;
  // ... and a job with the same members backs up exactly that.
  int64_t repo = CreateRepository("main");
  Reply job = Post("/api/v1/jobs", R"({"name":"same","repository":)" + std::to_string(repo) + "," + what + "}");
  ASSERT_EQ(job.status, 201) << job;
  Reply started = Post("/api/v1/jobs/" + std::to_string(job.id()) + "/start", "");
  ASSERT_EQ(started.status, 202) << started;
  Reply session = Get("/api/v1/sessions/" + std::to_string(started.json.at("session").to_number<int64_t>()));
  std::set<std::pair<std::string, std::string>> tasks;
  for (const auto& t : session.json.at("tasks").as_array())
    tasks.insert({std::string(t.at("vm").as_string()), std::string(t.at("disk").as_string())});
  EXPECT_EQ(tasks, (std::set<std::pair<std::string, std::string>>{{"web01", "vda"}})) << session;
  // The jobs list shows that session with its times and bytes.
  Reply jobs = Get("/api/v1/jobs");
  const json::value& last = jobs.json.at("jobs").as_array()[0].at("last_session");
  EXPECT_EQ(last.at("state"), "running") << jobs;
  EXPECT_EQ(last.at("started_at"), session.json.at("created_at")) << jobs;
  EXPECT_TRUE(last.at("ended_at").is_null()) << jobs;
  EXPECT_EQ(last.at("bytes_total"), 10737418240) << jobs;
  EXPECT_EQ(last.at("bytes_done"), 0) << jobs;
  EXPECT_EQ(last.at("bytes_stored"), 0) << jobs;

  // Every member is optional: nothing selected, manual only.
  for (const std::string body : {"", "{}", R"({"schedule":null})"}) {
    Reply empty = Post("/api/v1/jobs/preview", body);
    ASSERT_EQ(empty.status, 200) << body << ": " << empty;
    EXPECT_EQ(empty.json, json::parse(R"({"vms": [], "vms_matched": 0, "vm_count": 0, "disk_count": 0,
                                           "schedule_description": "manual only", "next_runs": []})"))
        << body;
  }
  // A selection by host and by cluster resolves as well.
  EXPECT_EQ(Post("/api/v1/jobs/preview", R"({"selection":{"hosts":["pve1"]}})").json.at("disk_count"), 3);
  EXPECT_EQ(Post("/api/v1/jobs/preview", R"({"selection":{"clusters":["none"]}})").json.at("vm_count"), 0);
  // The route is not /jobs/{id}.
  EXPECT_EQ(Get("/api/v1/jobs/preview").status, 405);
  EXPECT_EQ(Get("/api/v1/jobs/" + std::to_string(job.id())).status, 200);
  ExpectError(Get("/api/v1/jobs/previews"), 400, "id");
}

TEST_F(BadInputTest, JobPreviewNamesTheFieldAsPostJobsDoes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"schedule":{"kind":"cron","expr":"0 0 31 2 *"}})", "schedule"},
      {R"({"schedule":{"kind":"daily","at":"25:00"}})", "schedule.at"},
      {R"({"schedule":"daily"})", "schedule"},
      {R"({"selection":{"vms":["bad/name"]}})", "selection.vms[0]"},
      {R"({"selection":{"tags":["ok","a*b"]}})", "selection.tags[1]"},
      {R"({"selection":{"vmz":["a"]}})", "selection.vmz"},
      {R"({"selection":{}})", "selection"},
      {R"({"selection":[]})", "selection"},
      {R"({"exclude_disks":[{"disk":""}]})", "exclude_disks[0].disk"},
      {R"({"exclude_disks":{}})", "exclude_disks"},
      {R"({"name":"x"})", "name"},
      {"[1]", "body"},
      {"{", "body"}};
  for (const auto& [body, field] : cases) {
    ExpectError(Post("/api/v1/jobs/preview", body), 400, field, body);
    // The same member on a job is refused with the same field (but for the
    // members only the preview lacks).
    if (field == "name" || field == "body") continue;
    std::string members = body.substr(1);
    if (members.find("\"selection\"") == std::string::npos) members = R"("selection":{"vms":["a"]},)" + members;
    Reply job = Post("/api/v1/jobs", R"({"name":"j","repository":1,)" + members);
    EXPECT_EQ(job.field(), field) << body << ": " << job;
  }
  Reply text = Call("POST", "/api/v1/jobs/preview", "{}", Auth::kToken, {{"Content-Type", "text/plain"}});
  EXPECT_EQ(text.status, 415) << text;
}

TEST_F(ApiTest, StatusCountsWorkersByState) {
  ConnectWorkerWithVms();
  CreateWorker("spare");
  Reply s = Get("/api/v1/status");
  ASSERT_EQ(s.status, 200) << s;
  EXPECT_EQ(s.json.at("workers_by_state"),
            json::parse(R"({"new": 1, "connected": 1, "disconnected": 0, "unreachable": 0})"))
      << s;
}

}  // namespace
