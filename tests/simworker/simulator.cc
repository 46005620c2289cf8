#include "simulator.h"

#include <algorithm>
#include <chrono>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"

namespace ferry::simworker {
namespace json = boost::json;
using rpc::CoordinatorConnection;

namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Describe(const kj::Exception& e) { return std::string(e.getDescription().cStr()); }

json::object RecordJson(const ItemRecord& r) {
  json::object o;
  o["assignment"] = r.assignment;
  o["kind"] = r.kind;
  o["vm"] = r.vm;
  o["disk"] = r.disk;  // "" but for disk and restore items
  o["tier"] = r.tier;  // "" but for disk and restore items
  if (r.kind == "disk" || r.kind == "restore") {
    o["task_id"] = r.task_id;
    o["attempt"] = r.attempt;
    o["export_uri"] = r.export_uri;
  }
  if (r.kind == "snapshot") {
    json::array disks;
    for (const auto& d : r.disks) disks.emplace_back(d);
    o["disks"] = std::move(disks);
  }
  if (r.kind == "release") {
    o["commit"] = r.commit;
    o["point_id"] = r.point_id;
  }
  if (r.kind == "restore") {
    o["point_id"] = r.point_id;
    o["target"] = r.target;
  }
  o["session_id"] = r.session_id;
  o["snapshot_id"] = r.snapshot_id;
  o["start_ms"] = r.start_ms;
  o["end_ms"] = r.end_ms;
  o["ok"] = r.ok;
  o["accepted"] = r.accepted;
  o["outcome"] = r.outcome;
  if (!r.error.empty()) o["error"] = r.error;
  return o;
}

}  // namespace

// ---------------------------------------------------------------------------

struct Simulator::Shared {
  Shared(kj::AsyncIoContext& io, SimOptions opts, kj::TlsContext* tls_context)
      : timer(io.provider->getTimer()), options(std::move(opts)), tls(tls_context) {
    if (tls != nullptr) {
      rpc::CoordinatorEndpoint endpoint;
      endpoint.address = options.coordinator;
      endpoint.tls = true;
      endpoint.server_name = options.tls_name;
      tls_server_name = rpc::TlsServerName(endpoint);
    }
  }

  kj::Duration Ms(int64_t ms) const { return ms * kj::MILLISECONDS; }

  // How the n-th attempt of a disk ends (process-wide: attempts of one disk
  // may go to different workers).
  bool NextAttemptFails(const std::string& vm, const std::string& disk) {
    for (const FailSpec& f : options.fails) {
      if (f.disk.vm == vm && f.disk.disk == disk) {
        int& seen = fail_seen[vm + "/" + disk];
        return seen++ < f.count;
      }
    }
    return false;
  }
  bool Hangs(const std::string& vm, const std::string& disk) const {
    return std::find(options.hangs.begin(), options.hangs.end(), DiskRef{vm, disk}) !=
           options.hangs.end();
  }

  kj::Timer& timer;
  SimOptions options;
  kj::TlsContext* tls;
  std::string tls_server_name;
  kj::Own<kj::NetworkAddress> address;  // resolved once, shared by all workers
  std::map<std::string, int> fail_seen;
};

// ---------------------------------------------------------------------------

// One simulated worker: an executor of the real protocol client (WorkerAgent)
// whose work is timers, plus the records of the report.
class Simulator::Worker final : public rpc::WorkExecutor {
 public:
  Worker(Shared& shared, WorkerSpec spec, size_t index)
      : sh_(shared),
        spec_(std::move(spec)),
        tag_("w" + std::to_string(index) + " " + spec_.host),
        agent_(sh_.timer, [this]() { return Connect(); }, *this, AgentOptions()) {}

  void Start() { agent_.Start(); }

  size_t active() const { return held_.size(); }
  size_t finished() const { return done_.size(); }
  bool registered() const { return agent_.registered(); }
  int max_concurrent_disk() const { return max_running_disk_; }

  json::object Report() const {
    json::object o;
    o["host"] = spec_.host;
    o["worker_id"] = agent_.worker_id();
    o["worker_name"] = agent_.worker_name();
    o["slots"] = spec_.slots;
    o["max_concurrent_disk_tasks"] = max_running_disk_;
    o["registrations"] = agent_.registrations();
    o["connection_losses"] = agent_.connection_losses();
    json::array items;
    ForEachRecord([&](const ItemRecord& r) { items.push_back(RecordJson(r)); });
    o["items"] = std::move(items);
    return o;
  }

  // Ended items in the order they ended, then those still held.
  template <typename F>
  void ForEachRecord(F&& f) const {
    for (const ItemRecord& r : done_) f(r);
    for (const auto& [id, held] : held_) {
      ItemRecord r = held.rec;
      r.outcome = "running";
      f(r);
    }
  }

  // --- rpc::WorkExecutor ---

  rpc::WorkerIdentity Identity() override {
    rpc::WorkerIdentity id;
    id.host = spec_.host;
    id.platform = spec_.platform;
    id.cluster = spec_.cluster;
    id.task_slots = spec_.slots;
    id.version = "sim-1";
    return id;
  }

  std::vector<rpc::InventoryVm> Inventory() override {
    std::vector<rpc::InventoryVm> vms;
    for (const SimVm& src : spec_.vms) {
      rpc::InventoryVm vm;
      vm.name = src.name;
      vm.uuid = src.uuid;
      vm.state = src.state;
      vm.tags = src.tags;
      for (const SimDisk& d : src.disks) vm.disks.push_back({d.name, d.size, d.format});
      vms.push_back(std::move(vm));
    }
    return vms;
  }

  kj::Promise<rpc::WorkOutcome> TakeSnapshot(const rpc::SnapshotAssignment& a,
                                             rpc::WorkContext&) override {
    ItemRecord& rec = NewRecord(a, "snapshot");
    rec.snapshot_id = a.snapshot_id;
    rec.disks = a.disks;
    LogInfo(tag_ + ": " + a.id + " snapshot " + rec.vm + " (" + std::to_string(rec.disks.size()) +
            " disks)");
    return After(sh_.options.snapshot_ms)
        .then([this, id = a.id, vm = a.vm.name, disks = a.disks]() {
          rpc::WorkOutcome o = rpc::WorkOutcome::Ok();
          for (const std::string& d : disks) {
            // No read plan: a full read of the export.
            o.exports.push_back(
                {d, "nbd+unix:///" + d + "?socket=/run/ferry/sim/" + vm + ".sock", ""});
          }
          return Done(id, std::move(o));
        });
  }

  kj::Promise<rpc::WorkOutcome> BackupDisk(const rpc::DiskAssignment& a,
                                           rpc::WorkContext& context) override {
    ItemRecord& rec = NewRecord(a, "disk");
    rec.disk = a.disk;
    rec.tier = a.tier;
    rec.task_id = a.task_id;
    rec.snapshot_id = a.snapshot_id;
    rec.attempt = a.attempt;
    rec.export_uri = a.export_uri;
    held_.at(a.id).is_disk = true;
    uint64_t total = DiskSize(rec.vm, rec.disk);
    ++running_disk_;
    max_running_disk_ = std::max(max_running_disk_, running_disk_);
    bool hang = sh_.Hangs(rec.vm, rec.disk);
    bool fail = !hang && sh_.NextAttemptFails(rec.vm, rec.disk);
    LogInfo(tag_ + ": " + a.id + " backup " + rec.vm + "/" + rec.disk + " tier " + rec.tier +
            " attempt " + std::to_string(rec.attempt) +
            (hang ? " (will hang)" : fail ? " (will fail)" : "") + ", " +
            std::to_string(running_disk_) + "/" + std::to_string(spec_.slots) + " slots busy");
    int half = sh_.options.task_ms / 2;
    int rest = sh_.options.task_ms - half;
    if (hang) return kj::Promise<rpc::WorkOutcome>(kj::NEVER_DONE);
    if (fail) {
      return After(half).then([this, id = a.id, what = rec.vm + "/" + rec.disk]() {
        return Done(id, rpc::WorkOutcome::Failed(ErrorKind::kRetryable,
                                                 "simulated failure reading " + what +
                                                     " at offset 0"));
      });
    }
    return After(half)
        .then([this, &context, total, half, rest]() {
          rpc::ProgressReport p;
          p.bytes_done = total / 2;
          p.bytes_total = total;
          p.bytes_stored = total / 4;
          p.bytes_read = total / 2;
          p.bytes_sent = total / 4;
          p.stages = SimulatedStages(half);
          context.ReportProgress(p);
          return After(rest);
        })
        .then([this, id = a.id, total]() {
          rpc::WorkOutcome o = rpc::WorkOutcome::Ok();
          o.bytes_read = total;
          o.bytes_stored = total / 2;
          o.bytes_sent = total / 2;
          o.stages = SimulatedStages(sh_.options.task_ms);
          return Done(id, std::move(o));
        });
  }

  // A disk read from a slow source into a local repository: source 90%,
  // compute 35%, target 20% busy over `ms` (docs/worker-protocol.md).
  static StageBusy SimulatedStages(int ms) {
    StageBusy b;
    b.wall_us = static_cast<uint64_t>(ms) * 1000;
    b.source_us = b.wall_us * 9 / 10;
    b.compute_us = b.wall_us * 35 / 100;
    b.target_us = b.wall_us / 5;
    return b;
  }

  kj::Promise<rpc::WorkOutcome> Release(const rpc::ReleaseAssignment& a,
                                        rpc::WorkContext&) override {
    ItemRecord& rec = NewRecord(a, "release");
    rec.snapshot_id = a.snapshot_id;
    rec.commit = a.commit;
    rec.point_id = a.point_id;  // the point the coordinator reserved
    LogInfo(tag_ + ": " + a.id + " release " + rec.vm + " snapshot " +
            std::to_string(rec.snapshot_id) + (rec.commit ? " (commit)" : " (no commit)"));
    return After(sh_.options.release_ms).then([this, id = a.id, commit = a.commit,
                                               point = a.point_id]() {
      rpc::WorkOutcome o = rpc::WorkOutcome::Ok();
      if (commit) {
        o.point_id = point;
      } else {
        held_.at(id).rec.point_id.clear();
      }
      return Done(id, std::move(o));
    });
  }

  // Like a disk item: one slot, progress half way, then ok after --task-ms,
  // with bytesRead the disk's inventory size (1 GiB if unknown; a whole VM:
  // the sum of its disks). Nothing is written anywhere.
  kj::Promise<rpc::WorkOutcome> Restore(const rpc::RestoreAssignment& a,
                                        rpc::WorkContext& context) override {
    ItemRecord& rec = NewRecord(a, "restore");
    rec.disk = a.disk;
    rec.tier = a.tier;
    rec.task_id = a.task_id;
    rec.attempt = a.attempt;
    rec.point_id = a.point_id;
    rec.target = rpc::RestoreTargetName(a.target);
    held_.at(a.id).is_disk = true;
    uint64_t total = 0;
    if (!a.disk.empty()) {
      total = DiskSize(rec.vm, rec.disk);
    } else {
      for (const SimVm& v : spec_.vms)
        if (v.name == rec.vm)
          for (const SimDisk& d : v.disks) total += d.size > 0 ? d.size : kGiB;
      if (total == 0) total = kGiB;
    }
    ++running_disk_;
    max_running_disk_ = std::max(max_running_disk_, running_disk_);
    LogInfo(tag_ + ": " + a.id + " restore " + rec.vm + (rec.disk.empty() ? "" : "/" + rec.disk) +
            " of point " + a.point_id + " (" + rec.target + ") tier " + rec.tier);
    int half = sh_.options.task_ms / 2;
    int rest = sh_.options.task_ms - half;
    return After(half)
        .then([this, &context, total, rest]() {
          context.ReportProgress(total / 2, total, 0);
          return After(rest);
        })
        .then([this, id = a.id, total]() {
          rpc::WorkOutcome o = rpc::WorkOutcome::Ok();
          o.bytes_read = total;
          o.bytes_stored = total / 2;
          return Done(id, std::move(o));
        });
  }

  kj::Promise<rpc::WorkOutcome> Unsupported(const rpc::Assignment& a, rpc::WorkContext&) override {
    NewRecord(a, "unknown");
    return kj::evalLater([this, id = a.id]() {
      return Done(id, rpc::WorkOutcome::Failed(ErrorKind::kInternal,
                                               "ferry-simworker does not know this kind of work"));
    });
  }

  void Ended(const std::string& assignment_id, rpc::AssignmentEnd end,
             const std::string& reason) override {
    auto it = held_.find(assignment_id);
    if (it == held_.end()) return;
    Held& held = it->second;
    ItemRecord& rec = held.rec;
    if (!held.finished) {
      rec.end_ms = NowMs();
      if (held.is_disk) --running_disk_;
    }
    rec.outcome = rpc::AssignmentEndName(end);
    rec.accepted = end == rpc::AssignmentEnd::kDone;
    if (!reason.empty()) rec.error = rec.error.empty() ? reason : rec.error + "; " + reason;
    done_.push_back(std::move(rec));
    held_.erase(it);
  }

 private:
  // An item from receipt until Ended.
  struct Held {
    ItemRecord rec;
    bool is_disk = false;
    bool finished = false;  // simulated work over
  };

  rpc::WorkerAgentOptions AgentOptions() const {
    rpc::WorkerAgentOptions o;
    o.token = spec_.token;
    o.log_tag = tag_;
    o.reconnect_delay = sh_.Ms(sh_.options.reconnect_ms);
    o.pull_wait_ms = static_cast<uint32_t>(sh_.options.pull_wait_ms);
    return o;
  }

  kj::Promise<kj::Own<CoordinatorConnection>> Connect() {
    return CoordinatorConnection::Connect(*sh_.address, sh_.timer, sh_.tls, sh_.tls_server_name);
  }

  ItemRecord& NewRecord(const rpc::Assignment& a, const std::string& kind) {
    Held& held = held_[a.id];
    held.rec.assignment = a.id;
    held.rec.kind = kind;
    held.rec.session_id = a.session_id;
    held.rec.vm = a.vm.name;
    held.rec.start_ms = NowMs();
    return held.rec;
  }

  // The simulated work of `id` is over: record it, free its slot, and return
  // the outcome for the agent to report.
  rpc::WorkOutcome Done(const std::string& id, rpc::WorkOutcome o) {
    Held& held = held_.at(id);  // the agent destroys the work of an ended item
    ItemRecord& rec = held.rec;
    held.finished = true;
    rec.end_ms = NowMs();
    rec.ok = o.ok;
    rec.error = o.error;
    if (held.is_disk) --running_disk_;
    o.log.push_back("ferry-simworker " + tag_ + ": " + rec.kind + " " +
                    (rec.ok ? "done" : "failed") + " in " +
                    std::to_string(rec.end_ms - rec.start_ms) + " ms");
    return o;
  }

  kj::Promise<void> After(int ms) { return sh_.timer.afterDelay(sh_.Ms(ms)); }

  uint64_t DiskSize(const std::string& vm, const std::string& disk) const {
    for (const SimVm& v : spec_.vms) {
      if (v.name != vm) continue;
      for (const SimDisk& d : v.disks) {
        if (d.name == disk && d.size > 0) return d.size;
      }
    }
    return kGiB;
  }

  Shared& sh_;
  WorkerSpec spec_;
  std::string tag_;

  std::map<std::string, Held> held_;  // by assignment id
  std::vector<ItemRecord> done_;
  int running_disk_ = 0;
  int max_running_disk_ = 0;

  // Last: destroyed first, cancelling the work that refers to the above.
  rpc::WorkerAgent agent_;
};

// ---------------------------------------------------------------------------

Simulator::Simulator(kj::AsyncIoContext& io, SimOptions options, std::vector<WorkerSpec> workers,
                     kj::TlsContext* tls)
    : io_(io), shared_(std::make_unique<Shared>(io, std::move(options), tls)) {
  workers_.reserve(workers.size());
  for (size_t i = 0; i < workers.size(); ++i) {
    workers_.push_back(kj::heap<Worker>(*shared_, std::move(workers[i]), i));
  }
}

Simulator::~Simulator() = default;

kj::Promise<void> Simulator::ResolveLoop() {
  rpc::CoordinatorEndpoint endpoint;
  endpoint.address = shared_->options.coordinator;
  return rpc::ResolveCoordinator(io_.provider->getNetwork(), endpoint)
      .then(
          [this](kj::Own<kj::NetworkAddress> address) -> kj::Promise<void> {
            shared_->address = kj::mv(address);
            return kj::READY_NOW;
          },
          [this](kj::Exception&& e) -> kj::Promise<void> {
            if (resolve_failures_++ % 20 == 0) {
              LogWarning("simworker: " + Describe(e) + "; retrying every " +
                         std::to_string(shared_->options.reconnect_ms) + " ms");
            }
            return shared_->timer.afterDelay(shared_->Ms(shared_->options.reconnect_ms))
                .then([this]() { return ResolveLoop(); });
          });
}

kj::Promise<void> Simulator::Run() {
  LogInfo("simworker: " + std::to_string(workers_.size()) + " workers, coordinator " +
          shared_->options.coordinator +
          (shared_->tls ? " (TLS, server name " + shared_->tls_server_name + ")" : ""));
  return ResolveLoop().then([this]() {
    for (auto& w : workers_) w->Start();
    return IdleWatch();
  });
}

kj::Promise<void> Simulator::IdleWatch() {
  int limit = shared_->options.exit_when_idle_ms;
  if (limit < 0) return kj::NEVER_DONE;
  return shared_->timer.afterDelay(shared_->Ms(std::clamp(limit, 1, 50)))
      .then([this, limit]() -> kj::Promise<void> {
        int64_t now = NowMs();
        if (ActiveItems() == 0 && FinishedItems() > 0) {
          if (idle_since_ms_ < 0) idle_since_ms_ = now;
          if (now - idle_since_ms_ >= limit) {
            LogInfo("simworker: idle for " + std::to_string(limit) + " ms, exiting");
            return kj::READY_NOW;
          }
        } else {
          idle_since_ms_ = -1;
        }
        return IdleWatch();
      });
}

size_t Simulator::ActiveItems() const {
  size_t n = 0;
  for (const auto& w : workers_) n += w->active();
  return n;
}

size_t Simulator::FinishedItems() const {
  size_t n = 0;
  for (const auto& w : workers_) n += w->finished();
  return n;
}

size_t Simulator::RegisteredWorkers() const {
  size_t n = 0;
  for (const auto& w : workers_) n += w->registered() ? 1 : 0;
  return n;
}

json::object Simulator::Report() const {
  json::array workers;
  std::map<std::string, int64_t> by_outcome, by_kind;
  int64_t items = 0, ok = 0, failed = 0, max_concurrent = 0, registered = 0;
  for (const auto& w : workers_) {
    workers.push_back(w->Report());
    max_concurrent = std::max<int64_t>(max_concurrent, w->max_concurrent_disk());
    registered += w->registered() ? 1 : 0;
    w->ForEachRecord([&](const ItemRecord& r) {
      ++items;
      ++by_outcome[r.outcome];
      ++by_kind[r.kind];
      if (r.outcome == "done" || r.outcome == "rejected") (r.ok ? ok : failed) += 1;
    });
  }
  json::object totals;
  totals["workers"] = static_cast<int64_t>(workers_.size());
  totals["registered"] = registered;
  totals["items"] = items;
  for (const char* kind : {"snapshot", "disk", "release", "restore"}) totals[kind] = by_kind[kind];
  totals["ok"] = ok;
  totals["failed"] = failed;
  for (const char* outcome : {"done", "rejected", "cancelled", "dropped", "report_failed",
                              "running"}) {
    totals[outcome] = by_outcome[outcome];
  }
  totals["max_concurrent_disk_tasks"] = max_concurrent;
  json::object out;
  out["workers"] = std::move(workers);
  out["totals"] = std::move(totals);
  return out;
}

void Simulator::WriteReport(const std::string& path) const {
  WriteFileAtomically(path, json::serialize(Report()) + "\n");
}

}  // namespace ferry::simworker
