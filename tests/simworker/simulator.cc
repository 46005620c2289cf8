#include "simulator.h"

#include <kj/debug.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"

namespace ferry::simworker {
namespace json = boost::json;
using rpc::CoordinatorConnection;
using rpc::WorkerSession;

namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Describe(const kj::Exception& e) { return std::string(e.getDescription().cStr()); }

class LoggingErrorHandler final : public kj::TaskSet::ErrorHandler {
 public:
  void taskFailed(kj::Exception&& e) override {
    LogWarning("simworker: background task failed: " + Describe(e));
  }
};

json::object RecordJson(const ItemRecord& r) {
  json::object o;
  o["assignment"] = r.assignment;
  o["kind"] = r.kind;
  o["vm"] = r.vm;
  o["disk"] = r.disk;  // "" but for disk items
  o["tier"] = r.tier;  // "" but for disk items
  if (r.kind == "disk") {
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
  LoggingErrorHandler error_handler;
};

// ---------------------------------------------------------------------------

class Simulator::Worker final : private kj::TaskSet::ErrorHandler {
 public:
  Worker(Shared& shared, WorkerSpec spec, size_t index)
      : sh_(shared),
        spec_(std::move(spec)),
        tag_("w" + std::to_string(index) + " " + spec_.host),
        tasks_(shared.error_handler) {}

  void Start() {
    life_ = ConnectLoop().eagerlyEvaluate([this](kj::Exception&& e) {
      LogError(tag_ + ": worker loop ended: " + Describe(e));
    });
  }

  size_t active() const { return items_.size(); }
  size_t finished() const { return done_.size(); }
  bool registered() const { return session_ != nullptr; }
  int max_concurrent_disk() const { return max_running_disk_; }
  const std::vector<ItemRecord>& done() const { return done_; }

  json::object Report() const {
    json::object o;
    o["host"] = spec_.host;
    o["worker_id"] = worker_id_;
    o["worker_name"] = worker_name_;
    o["slots"] = spec_.slots;
    o["max_concurrent_disk_tasks"] = max_running_disk_;
    o["registrations"] = registrations_;
    o["connection_losses"] = connection_losses_;
    json::array items;
    for (const ItemRecord& r : done_) items.push_back(RecordJson(r));
    for (const auto& [id, item] : items_) {
      ItemRecord r = item->rec;
      r.outcome = "running";
      items.push_back(RecordJson(r));
    }
    o["items"] = std::move(items);
    return o;
  }

  template <typename F>
  void ForEachRecord(F&& f) const {
    for (const ItemRecord& r : done_) f(r);
    for (const auto& [id, item] : items_) {
      ItemRecord r = item->rec;
      r.outcome = "running";
      f(r);
    }
  }

 private:
  // One received work item, from pullWork until its result is delivered (or
  // it is cancelled or dropped).
  struct Item {
    ItemRecord rec;
    bool is_disk = false;
    bool finished = false;   // simulated work over; result waiting or in flight
    bool reporting = false;  // reportResult in flight
    bool retired = false;    // moved to the graveyard; ignore late events
    uint64_t bytes_total = 0;
    // The result to deliver.
    std::string error_kind;
    uint64_t bytes_read = 0;
    uint64_t bytes_stored = 0;
    std::vector<std::pair<std::string, std::string>> exports;
    kj::Promise<void> work = nullptr;
    kj::Promise<void> progress = nullptr;
    kj::Promise<void> report = nullptr;
  };

  // --- connection lifecycle ---

  kj::Promise<void> ConnectLoop() {
    return CoordinatorConnection::Connect(*sh_.address, sh_.timer, sh_.tls, sh_.tls_server_name)
        .then([this](kj::Own<CoordinatorConnection> conn) {
          conn_ = kj::mv(conn);
          connected_ = true;
          return Register();
        })
        .then([this]() { return Serve(); })
        .catch_([this](kj::Exception&& e) -> kj::Promise<void> {
          OnConnectionLost(e);
          return sh_.timer.afterDelay(sh_.Ms(sh_.options.reconnect_ms)).then([this]() {
            return ConnectLoop();
          });
        });
  }

  CoordinatorConnection& conn() { return *KJ_ASSERT_NONNULL(conn_); }
  WorkerSession::Client& session() { return KJ_ASSERT_NONNULL(session_); }

  kj::Promise<void> Register() {
    auto req = conn().coordinator().registerWorkerRequest();
    auto r = req.initRequest();
    r.setProtocolVersion(rpc::PROTOCOL_VERSION);
    r.setToken(spec_.token);
    r.setHost(spec_.host);
    r.setPlatform(spec_.platform);
    r.setCluster(spec_.cluster);
    r.setTaskSlots(spec_.slots);
    r.setVersion("sim-1");
    auto running = r.initRunning(static_cast<unsigned>(items_.size()));
    unsigned i = 0;
    for (const auto& [id, item] : items_) running.set(i++, id);
    // A coordinator that takes the connection but never answers is given up
    // on after a while, like one that does not answer heartbeats.
    kj::Promise<capnp::Response<rpc::Coordinator::RegisterWorkerResults>> sent =
        sh_.timer.timeoutAfter(30 * kj::SECONDS, req.send());
    return sent.then([this](capnp::Response<rpc::Coordinator::RegisterWorkerResults>&& resp) {
      session_ = resp.getSession();
      auto reply = resp.getReply();
      worker_id_ = reply.getWorkerId();
      worker_name_ = std::string(reply.getWorkerName().cStr());
      hb_interval_ms_ = reply.getHeartbeatIntervalMs() > 0 ? reply.getHeartbeatIntervalMs() : 5000;
      hb_deadline_ms_ = reply.getHeartbeatDeadlineMs() > 0 ? reply.getHeartbeatDeadlineMs()
                                                           : 3 * hb_interval_ms_;
      ++registrations_;
      std::set<std::string> resumed;
      for (auto id : reply.getResumed()) resumed.insert(std::string(id.cStr()));
      LogInfo(tag_ + ": registered as worker " + std::to_string(worker_id_) + " (" +
              worker_name_ + "), heartbeat every " + std::to_string(hb_interval_ms_) +
              " ms, " + std::to_string(resumed.size()) + " of " +
              std::to_string(items_.size()) + " running assignments resumed");
      last_error_.clear();
      failed_attempts_ = 0;

      std::vector<std::string> dropped;
      for (const auto& [id, item] : items_) {
        if (!resumed.count(id)) dropped.push_back(id);
      }
      for (const auto& id : dropped) {
        Retire(id, "dropped", "not resumed by the coordinator after reconnecting");
      }
      for (auto& [id, item] : items_) {
        if (item->finished && !item->reporting) SendResult(*item);
      }

      auto inv = session().reportInventoryRequest();
      auto vms = inv.initVms(static_cast<unsigned>(spec_.vms.size()));
      for (unsigned v = 0; v < spec_.vms.size(); ++v) {
        const SimVm& src = spec_.vms[v];
        auto vm = vms[v];
        vm.setName(src.name);
        vm.setUuid(src.uuid);
        vm.setState(src.state);
        auto tags = vm.initTags(static_cast<unsigned>(src.tags.size()));
        for (unsigned t = 0; t < src.tags.size(); ++t) tags.set(t, src.tags[t]);
        auto disks = vm.initDisks(static_cast<unsigned>(src.disks.size()));
        for (unsigned d = 0; d < src.disks.size(); ++d) {
          disks[d].setName(src.disks[d].name);
          disks[d].setSizeBytes(src.disks[d].size);
          disks[d].setFormat(src.disks[d].format);
        }
      }
      return inv.send().ignoreResult();
    });
  }

  // Runs the registered session until something breaks it (never resolves).
  kj::Promise<void> Serve() {
    auto closed = conn().onDisconnect().then([]() -> kj::Promise<void> {
      return KJ_EXCEPTION(DISCONNECTED, "connection closed");
    });
    auto failed = kj::newPromiseAndFulfiller<void>();
    pull_failed_ = kj::mv(failed.fulfiller);
    pulls_ = kj::heap<kj::TaskSet>(static_cast<kj::TaskSet::ErrorHandler&>(*this));
    positive_pull_ = zero_pull_ = false;
    MaybePull();
    return closed.exclusiveJoin(HeartbeatLoop()).exclusiveJoin(kj::mv(failed.promise));
  }

  // A pullWork call failed: the session is broken.
  void taskFailed(kj::Exception&& e) override {
    KJ_IF_MAYBE(f, pull_failed_) {
      if ((*f)->isWaiting()) {
        (*f)->reject(kj::Exception(e.getType(), __FILE__, __LINE__,
                                   kj::str("pullWork: ", e.getDescription())));
      }
    }
  }

  void OnConnectionLost(const kj::Exception& e) {
    bool was_registered = session_ != nullptr;
    bool was_connected = connected_;
    session_ = nullptr;
    connected_ = false;
    pulls_ = nullptr;
    pull_failed_ = nullptr;
    positive_pull_ = zero_pull_ = false;
    // Calls of the old connection are abandoned; results not yet delivered
    // are sent again if the coordinator resumes their assignments.
    for (auto& [id, item] : items_) {
      item->progress = nullptr;
      if (item->reporting) {
        item->report = nullptr;
        item->reporting = false;
      }
    }
    conn_ = nullptr;
    std::string why = Describe(e);
    if (was_registered) {
      ++connection_losses_;
      LogWarning(tag_ + ": lost the coordinator: " + why + "; reconnecting every " +
                 std::to_string(sh_.options.reconnect_ms) + " ms, " +
                 std::to_string(items_.size()) + " assignments kept");
      last_error_ = why;
      failed_attempts_ = 0;
      return;
    }
    ++failed_attempts_;
    if (why != last_error_) {
      std::string what = was_connected ? "registration failed: " : "cannot connect: ";
      LogInfo(tag_ + ": " + what + why + "; retrying every " +
              std::to_string(sh_.options.reconnect_ms) + " ms");
      last_error_ = why;
    } else if (failed_attempts_ % 100 == 0) {
      LogInfo(tag_ + ": still failing after " + std::to_string(failed_attempts_) +
              " attempts: " + why);
    }
  }

  kj::Promise<void> HeartbeatLoop() {
    return sh_.timer.afterDelay(sh_.Ms(hb_interval_ms_))
        .then([this]() {
          auto req = session().heartbeatRequest();
          auto running = req.initRunning(static_cast<unsigned>(items_.size()));
          unsigned i = 0;
          for (const auto& [id, item] : items_) running.set(i++, id);
          kj::Promise<capnp::Response<WorkerSession::HeartbeatResults>> sent = req.send();
          // Only a coordinator stuck for good (alive at TCP level) is given
          // up on here: a merely slow one answers late, and reconnecting
          // would only add to its load.
          int64_t patience = std::max<int64_t>(2 * int64_t{hb_deadline_ms_}, 30000);
          return sh_.timer.timeoutAfter(sh_.Ms(patience), kj::mv(sent))
              .catch_([](kj::Exception&& e)
                          -> kj::Promise<capnp::Response<WorkerSession::HeartbeatResults>> {
                return kj::Exception(e.getType(), __FILE__, __LINE__,
                                     kj::str("heartbeat: ", e.getDescription()));
              });
        })
        .then([this](capnp::Response<WorkerSession::HeartbeatResults>&& resp) {
          for (auto id : resp.getCancel()) {
            Retire(std::string(id.cStr()), "cancelled", "cancelled by the coordinator (heartbeat)");
          }
          return HeartbeatLoop();
        });
  }

  // Pulls work so that a pull is always outstanding, slots are offered as soon
  // as they free, and disk tasks can never exceed the slots: at most one pull
  // with freeSlots > 0 is outstanding (free slots only grow while it waits),
  // plus at most one with freeSlots = 0 (it gets only snapshot and release
  // work). Outstanding pulls are never cancelled: items chosen for a call
  // whose caller went away would be lost until their deadline.
  void MaybePull() {
    if (session_ == nullptr || pulls_ == nullptr) return;
    uint32_t slots = spec_.slots;
    uint32_t busy = static_cast<uint32_t>(std::max(running_disk_, 0));
    uint32_t free = busy >= slots ? 0 : slots - busy;
    if (free > 0) {
      if (!positive_pull_) SendPull(free);
    } else if (!positive_pull_ && !zero_pull_) {
      SendPull(0);
    }
  }

  void SendPull(uint32_t free) {
    bool positive = free > 0;
    (positive ? positive_pull_ : zero_pull_) = true;
    auto req = session().pullWorkRequest();
    req.setFreeSlots(free);
    req.setWaitMs(static_cast<uint32_t>(sh_.options.pull_wait_ms));
    int64_t start = NowMs();
    KJ_ASSERT_NONNULL(pulls_)->add(req.send().then(
        [this, positive,
         start](capnp::Response<WorkerSession::PullWorkResults>&& resp) -> kj::Promise<void> {
          (positive ? positive_pull_ : zero_pull_) = false;
          auto items = resp.getItems();
          for (auto item : items) StartItem(item);
          if (items.size() == 0 && NowMs() - start < 10) {
            // The coordinator answered an empty pull at once: do not spin.
            int64_t pause = std::clamp(sh_.options.pull_wait_ms, 10, 100);
            return sh_.timer.afterDelay(sh_.Ms(pause)).then([this]() { MaybePull(); });
          }
          MaybePull();
          return kj::READY_NOW;
        }));
  }

  // --- work items ---

  void StartItem(rpc::WorkItem::Reader w) {
    std::string id(w.getAssignmentId().cStr());
    if (id.empty() || items_.count(id)) {
      LogWarning(tag_ + ": ignoring work item with " +
                 (id.empty() ? std::string("an empty assignment id")
                             : "assignment " + id + " already running"));
      return;
    }
    auto owned = kj::heap<Item>();
    Item* item = owned.get();
    ItemRecord& rec = item->rec;
    rec.assignment = id;
    rec.session_id = w.getSessionId();
    rec.vm = std::string(w.getVm().getName().cStr());
    rec.start_ms = NowMs();
    items_.emplace(id, kj::mv(owned));

    switch (w.which()) {
      case rpc::WorkItem::SNAPSHOT: {
        auto s = w.getSnapshot();
        rec.kind = "snapshot";
        rec.snapshot_id = s.getSnapshotId();
        for (auto d : s.getDisks()) rec.disks.emplace_back(d.cStr());
        LogInfo(tag_ + ": " + id + " snapshot " + rec.vm + " (" +
                std::to_string(rec.disks.size()) + " disks)");
        item->work = After(sh_.options.snapshot_ms).then([this, item]() {
          for (const std::string& d : item->rec.disks) {
            item->exports.emplace_back(
                d, "nbd+unix:///" + d + "?socket=/run/ferry/sim/" + item->rec.vm + ".sock");
          }
          Finish(*item, true, "", "");
        });
        break;
      }
      case rpc::WorkItem::BACKUP_DISK: {
        auto d = w.getBackupDisk();
        rec.kind = "disk";
        rec.disk = std::string(d.getDisk().cStr());
        rec.tier = std::string(d.getTier().cStr());
        rec.task_id = d.getTaskId();
        rec.snapshot_id = d.getSnapshotId();
        rec.attempt = d.getAttempt();
        rec.export_uri = std::string(d.getExportUri().cStr());
        item->is_disk = true;
        item->bytes_total = DiskSize(rec.vm, rec.disk);
        ++running_disk_;
        max_running_disk_ = std::max(max_running_disk_, running_disk_);
        bool hang = sh_.Hangs(rec.vm, rec.disk);
        bool fail = !hang && sh_.NextAttemptFails(rec.vm, rec.disk);
        LogInfo(tag_ + ": " + id + " backup " + rec.vm + "/" + rec.disk + " tier " + rec.tier +
                " attempt " + std::to_string(rec.attempt) +
                (hang ? " (will hang)" : fail ? " (will fail)" : "") + ", " +
                std::to_string(running_disk_) + "/" + std::to_string(spec_.slots) +
                " slots busy");
        int half = sh_.options.task_ms / 2;
        int rest = sh_.options.task_ms - half;
        if (hang) {
          item->work = kj::Promise<void>(kj::NEVER_DONE);
        } else if (fail) {
          item->work = After(half).then([this, item]() {
            Finish(*item, false, "retryable",
                   "simulated failure reading " + item->rec.vm + "/" + item->rec.disk +
                       " at offset 0");
          });
        } else {
          item->work = After(half)
                           .then([this, item, rest]() {
                             SendProgress(*item);
                             return After(rest);
                           })
                           .then([this, item]() {
                             item->bytes_read = item->bytes_total;
                             item->bytes_stored = item->bytes_total / 2;
                             Finish(*item, true, "", "");
                           });
        }
        break;
      }
      case rpc::WorkItem::RELEASE: {
        auto r = w.getRelease();
        rec.kind = "release";
        rec.snapshot_id = r.getSnapshotId();
        rec.commit = r.getCommit();
        rec.point_id = r.getPointId();  // the point the coordinator reserved
        LogInfo(tag_ + ": " + id + " release " + rec.vm + " snapshot " +
                std::to_string(rec.snapshot_id) + (rec.commit ? " (commit)" : " (no commit)"));
        item->work = After(sh_.options.release_ms).then([this, item]() {
          if (!item->rec.commit) item->rec.point_id.clear();
          Finish(*item, true, "", "");
        });
        break;
      }
      default: {
        rec.kind = "unknown";
        LogWarning(tag_ + ": " + id + ": work of a kind this simulator does not know");
        item->work = kj::evalLater([this, item]() {
          Finish(*item, false, "internal", "ferry-simworker does not know this kind of work");
        });
        break;
      }
    }
    item->work = item->work.eagerlyEvaluate([this, item](kj::Exception&& e) {
      LogError(tag_ + ": " + item->rec.assignment + ": simulated work failed: " + Describe(e));
    });
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

  void SendProgress(Item& item) {
    if (item.retired || session_ == nullptr) return;
    auto req = session().reportProgressRequest();
    auto p = req.initProgress();
    p.setAssignmentId(item.rec.assignment);
    p.setBytesDone(item.bytes_total / 2);
    p.setBytesTotal(item.bytes_total);
    p.setBytesStored(item.bytes_total / 4);
    Item* raw = &item;
    item.progress =
        req.send()
            .then(
                [this, raw](capnp::Response<WorkerSession::ReportProgressResults>&& resp) {
                  if (resp.getCancel() && !raw->retired && !raw->finished) {
                    Retire(raw->rec.assignment, "cancelled",
                           "cancelled by the coordinator (progress reply)");
                  }
                },
                [](kj::Exception&&) {
                  // Progress is advisory; a lost connection is handled by the session.
                })
            .eagerlyEvaluate(nullptr);
  }

  void Finish(Item& item, bool ok, const std::string& error_kind, const std::string& error) {
    if (item.retired || item.finished) return;
    item.finished = true;
    item.rec.end_ms = NowMs();
    item.rec.ok = ok;
    item.rec.error = error;
    item.error_kind = error_kind;
    if (session_ != nullptr) SendResult(item);
    if (item.is_disk) {
      --running_disk_;
      MaybePull();
    }
  }

  void SendResult(Item& item) {
    auto req = session().reportResultRequest();
    auto r = req.initResult();
    r.setAssignmentId(item.rec.assignment);
    r.setOk(item.rec.ok);
    if (!item.rec.ok) {
      r.setErrorKind(item.error_kind);
      r.setError(item.rec.error);
    }
    r.setBytesRead(item.bytes_read);
    r.setBytesStored(item.bytes_stored);
    auto exports = r.initExports(static_cast<unsigned>(item.exports.size()));
    for (unsigned i = 0; i < item.exports.size(); ++i) {
      exports[i].setDisk(item.exports[i].first);
      exports[i].setUri(item.exports[i].second);
    }
    r.setPointId(item.rec.point_id);
    auto log = r.initLog(1);
    log.set(0, "ferry-simworker " + tag_ + ": " + item.rec.kind + " " +
                   (item.rec.ok ? "done" : "failed") + " in " +
                   std::to_string(item.rec.end_ms - item.rec.start_ms) + " ms");
    item.reporting = true;
    Item* raw = &item;
    item.report =
        req.send()
            .then(
                [this, raw](capnp::Response<WorkerSession::ReportResultResults>&& resp) {
                  raw->reporting = false;
                  raw->rec.accepted = resp.getAccepted();
                  if (raw->rec.accepted) {
                    Retire(raw->rec.assignment, "done", "");
                  } else {
                    Retire(raw->rec.assignment, "rejected",
                           "the coordinator did not accept the result (stale assignment)");
                  }
                },
                [this, raw](kj::Exception&& e) {
                  raw->reporting = false;
                  if (rpc::IsDisconnected(e)) return;  // sent again if resumed
                  Retire(raw->rec.assignment, "report_failed",
                         "reportResult failed: " + Describe(e));
                })
            .eagerlyEvaluate(nullptr);
  }

  // Ends an item's life: records its outcome and stops whatever it was doing.
  // The item is destroyed on a later turn, since this may run inside one of
  // its own callbacks.
  void Retire(const std::string& id, const std::string& outcome, const std::string& reason) {
    auto it = items_.find(id);
    if (it == items_.end()) return;  // e.g. a cancel for something already reported
    kj::Own<Item> item = kj::mv(it->second);
    items_.erase(it);
    item->retired = true;
    bool slot_freed = false;
    if (!item->finished) {
      item->rec.end_ms = NowMs();
      if (item->is_disk) {
        --running_disk_;
        slot_freed = true;
      }
    }
    item->rec.outcome = outcome;
    if (!reason.empty()) {
      item->rec.error = item->rec.error.empty() ? reason : item->rec.error + "; " + reason;
    }
    const ItemRecord& r = item->rec;
    std::string what = r.kind == "disk" ? r.vm + "/" + r.disk : r.vm;
    std::string line = tag_ + ": " + id + " " + r.kind + " " + what + " " + outcome +
                       (outcome == "done" ? (r.ok ? " ok" : " failed") : "") + " after " +
                       std::to_string(r.end_ms - r.start_ms) + " ms" +
                       (r.error.empty() ? "" : ": " + r.error);
    if (outcome == "done" || outcome == "cancelled") {
      LogInfo(line);
    } else {
      LogWarning(line);
    }
    done_.push_back(item->rec);
    graveyard_.push_back(kj::mv(item));
    if (slot_freed) MaybePull();
    if (!sweep_scheduled_) {
      sweep_scheduled_ = true;
      tasks_.add(kj::evalLater([this]() {
        sweep_scheduled_ = false;
        graveyard_.clear();
      }));
    }
  }

  Shared& sh_;
  WorkerSpec spec_;
  std::string tag_;

  std::map<std::string, kj::Own<Item>> items_;  // by assignment id
  std::vector<ItemRecord> done_;
  std::vector<kj::Own<Item>> graveyard_;
  bool sweep_scheduled_ = false;
  int running_disk_ = 0;
  int max_running_disk_ = 0;

  uint64_t worker_id_ = 0;
  std::string worker_name_;
  uint32_t hb_interval_ms_ = 5000;
  uint32_t hb_deadline_ms_ = 15000;
  int registrations_ = 0;
  int connection_losses_ = 0;
  int failed_attempts_ = 0;
  std::string last_error_;
  bool connected_ = false;

  // Destroyed bottom-up: the life loop first, then the session, then the
  // connection.
  kj::Maybe<kj::Own<CoordinatorConnection>> conn_;
  kj::Maybe<WorkerSession::Client> session_;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> pull_failed_;
  kj::Maybe<kj::Own<kj::TaskSet>> pulls_;  // this connection's pulls
  bool positive_pull_ = false;  // a pull with freeSlots > 0 is outstanding
  bool zero_pull_ = false;      // a pull with freeSlots = 0 is outstanding
  kj::TaskSet tasks_;
  kj::Promise<void> life_ = nullptr;
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
  for (const char* kind : {"snapshot", "disk", "release"}) totals[kind] = by_kind[kind];
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
