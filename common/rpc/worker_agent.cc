// WorkerAgent: see the design notes in worker_agent.h and the protocol in
// docs/worker-protocol.md.
#include "ferry/rpc/worker_agent.h"

#include <kj/debug.h>

#include <algorithm>
#include <set>

#include "ferry/common/log.h"

namespace ferry::rpc {

namespace {

std::string Describe(const kj::Exception& e) { return std::string(e.getDescription().cStr()); }

int64_t ToMs(kj::Duration d) { return d / kj::MILLISECONDS; }

}  // namespace

const char* AssignmentEndName(AssignmentEnd end) {
  switch (end) {
    case AssignmentEnd::kDone: return "done";
    case AssignmentEnd::kRejected: return "rejected";
    case AssignmentEnd::kCancelled: return "cancelled";
    case AssignmentEnd::kDropped: return "dropped";
    case AssignmentEnd::kReportFailed: return "report_failed";
  }
  return "unknown";
}

const char* RestoreTargetName(RestoreAssignment::Target target) {
  switch (target) {
    case RestoreAssignment::Target::kFile: return "file";
    case RestoreAssignment::Target::kIntoDomain: return "into_domain";
    case RestoreAssignment::Target::kNewDomain: return "new_domain";
    case RestoreAssignment::Target::kOverOriginal: return "over_original";
  }
  return "unknown";
}

kj::Promise<WorkOutcome> WorkExecutor::Unsupported(const Assignment&, WorkContext&) {
  return WorkOutcome::Failed(ErrorKind::kInternal, "this worker does not know this kind of work");
}

// One received work item, from pullWork until Ended.
struct WorkerAgent::Item final : WorkContext {
  Item(WorkerAgent& a, std::string assignment) : agent(a), id(std::move(assignment)) {}

  const std::string& assignment_id() const override { return id; }
  using WorkContext::ReportProgress;
  void ReportProgress(const ProgressReport& report) override { agent.SendProgress(*this, report); }
  uint64_t RepositoryShare() const override { return repository_share; }

  WorkerAgent& agent;
  std::string id;
  std::string what;  // "disk vm1/vda", for log lines
  bool is_disk = false;    // takes a slot (disk and restore items)
  uint64_t repository_share = 0;  // bytes/s; 0: no cap
  bool finished = false;   // work over; result waiting or in flight
  bool reporting = false;  // reportResult in flight
  bool retired = false;    // in the graveyard; ignore late events
  kj::TimePoint start = kj::origin<kj::TimePoint>();
  kj::TimePoint end = kj::origin<kj::TimePoint>();
  WorkOutcome outcome;
  kj::Promise<void> work = nullptr;
  kj::Promise<void> progress = nullptr;
  kj::Promise<void> report = nullptr;
};

WorkerAgent::WorkerAgent(kj::Timer& timer, Connector connect, WorkExecutor& executor,
                         WorkerAgentOptions options)
    : timer_(timer), connect_(kj::mv(connect)), executor_(executor), options_(std::move(options)) {}

WorkerAgent::~WorkerAgent() = default;

void WorkerAgent::Start() {
  life_ = ConnectLoop().eagerlyEvaluate([this](kj::Exception&& e) {
    LogError(options_.log_tag + ": worker loop ended: " + Describe(e));
  });
}

// --- connection lifecycle ---

kj::Promise<void> WorkerAgent::ConnectLoop() {
  return kj::evalNow([this]() { return connect_(); })
      .then([this](kj::Own<CoordinatorConnection> conn) {
        conn_ = kj::mv(conn);
        connected_ = true;
        return Register();
      })
      .then([this]() { return Serve(); })
      .catch_([this](kj::Exception&& e) -> kj::Promise<void> {
        OnConnectionLost(e);
        return timer_.afterDelay(options_.reconnect_delay).then([this]() { return ConnectLoop(); });
      });
}

kj::Promise<void> WorkerAgent::Register() {
  WorkerIdentity identity = executor_.Identity();
  auto req = conn().coordinator().registerWorkerRequest();
  auto r = req.initRequest();
  r.setProtocolVersion(kProtocolVersion);
  r.setToken(options_.token);
  r.setHost(identity.host);
  r.setPlatform(identity.platform);
  r.setCluster(identity.cluster);
  r.setTaskSlots(identity.task_slots);
  r.setVersion(identity.version);
  r.setOwnHostSnapshotsOnly(identity.own_host_snapshots_only);
  auto running = r.initRunning(static_cast<unsigned>(items_.size()));
  unsigned i = 0;
  for (const auto& [id, item] : items_) running.set(i++, id);
  if (std::optional<std::vector<uint64_t>> held = executor_.HeldSnapshots()) {
    r.setReportsHeld(true);
    auto list = r.initHeldSnapshots(static_cast<unsigned>(held->size()));
    for (unsigned j = 0; j < held->size(); ++j) list.set(j, (*held)[j]);
  }
  uint32_t slots = identity.task_slots;
  // A coordinator that takes the connection but never answers is given up
  // on after a while, like one that does not answer heartbeats.
  kj::Promise<capnp::Response<Coordinator::RegisterWorkerResults>> sent =
      timer_.timeoutAfter(options_.register_timeout, req.send());
  return sent.then([this, slots](capnp::Response<Coordinator::RegisterWorkerResults>&& resp) {
    session_ = resp.getSession();
    slots_ = slots;
    auto reply = resp.getReply();
    worker_id_ = reply.getWorkerId();
    worker_name_ = std::string(reply.getWorkerName().cStr());
    hb_interval_ms_ = reply.getHeartbeatIntervalMs() > 0 ? reply.getHeartbeatIntervalMs() : 5000;
    hb_deadline_ms_ =
        reply.getHeartbeatDeadlineMs() > 0 ? reply.getHeartbeatDeadlineMs() : 3 * hb_interval_ms_;
    ++registrations_;
    std::set<std::string> resumed;
    for (auto id : reply.getResumed()) resumed.insert(std::string(id.cStr()));
    LogInfo(options_.log_tag + ": registered as worker " + std::to_string(worker_id_) + " (" +
            worker_name_ + "), heartbeat every " + std::to_string(hb_interval_ms_) + " ms, " +
            std::to_string(resumed.size()) + " of " + std::to_string(items_.size()) +
            " running assignments resumed");
    last_error_.clear();
    failed_attempts_ = 0;

    std::vector<uint64_t> drop_snapshots;
    for (uint64_t id : reply.getDropSnapshots()) drop_snapshots.push_back(id);
    if (!drop_snapshots.empty()) executor_.DropSnapshots(drop_snapshots);

    std::vector<std::string> dropped;
    for (const auto& [id, item] : items_) {
      if (!resumed.count(id)) dropped.push_back(id);
    }
    for (const auto& id : dropped) {
      Retire(id, AssignmentEnd::kDropped, "not resumed by the coordinator after reconnecting");
    }
    for (auto& [id, item] : items_) {
      if (item->finished && !item->reporting) SendResult(*item);
    }

    return SendInventory();
  });
}

kj::Promise<void> WorkerAgent::SendInventory() {
  std::vector<InventoryVm> vms = executor_.Inventory();
  auto inv = session().reportInventoryRequest();
  auto out = inv.initVms(static_cast<unsigned>(vms.size()));
  for (unsigned v = 0; v < vms.size(); ++v) {
    const InventoryVm& src = vms[v];
    auto vm = out[v];
    vm.setName(src.name);
    vm.setUuid(src.uuid);
    vm.setState(src.state);
    auto tags = vm.initTags(static_cast<unsigned>(src.tags.size()));
    for (unsigned t = 0; t < src.tags.size(); ++t) tags.set(t, src.tags[t]);
    auto disks = vm.initDisks(static_cast<unsigned>(src.disks.size()));
    for (unsigned d = 0; d < src.disks.size(); ++d) {
      disks[d].setName(src.disks[d].name);
      disks[d].setSizeBytes(src.disks[d].size_bytes);
      disks[d].setFormat(src.disks[d].format);
    }
  }
  // The coordinator would close the connection on a frame this large (and
  // again after each reconnection): say so here instead.
  const uint64_t bytes = inv.totalSize().wordCount * sizeof(capnp::word);
  if (bytes + 4096 > kMaxMessageBytes) {
    LogError(options_.log_tag + ": the inventory of " + std::to_string(vms.size()) + " VMs is " +
             std::to_string(bytes >> 20) + " MiB, over the worker protocol's limit of " +
             std::to_string(kMaxMessageBytes >> 20) + " MiB: not reported (split the VMs among workers)");
    return kj::READY_NOW;
  }
  return inv.send().ignoreResult();
}

void WorkerAgent::InventoryChanged() {
  if (session_ == nullptr || pulls_ == nullptr) return;  // the next registration reports it
  KJ_ASSERT_NONNULL(pulls_)->add(SendInventory());
}

// Runs the registered session until something breaks it (never resolves).
kj::Promise<void> WorkerAgent::Serve() {
  auto closed = conn().onDisconnect().then(
      []() -> kj::Promise<void> { return KJ_EXCEPTION(DISCONNECTED, "connection closed"); });
  auto failed = kj::newPromiseAndFulfiller<void>();
  pull_failed_ = kj::mv(failed.fulfiller);
  pulls_ = kj::heap<kj::TaskSet>(static_cast<kj::TaskSet::ErrorHandler&>(*this));
  positive_pull_ = zero_pull_ = false;
  MaybePull();
  return closed.exclusiveJoin(HeartbeatLoop()).exclusiveJoin(kj::mv(failed.promise));
}

void WorkerAgent::taskFailed(kj::Exception&& e) {
  KJ_IF_MAYBE(f, pull_failed_) {
    if ((*f)->isWaiting()) {
      (*f)->reject(kj::Exception(e.getType(), __FILE__, __LINE__,
                                 kj::str("pullWork: ", e.getDescription())));
    }
  }
}

void WorkerAgent::OnConnectionLost(const kj::Exception& e) {
  bool was_registered = session_ != nullptr;
  bool was_connected = connected_;
  session_ = nullptr;
  connected_ = false;
  pulls_ = nullptr;
  pull_failed_ = nullptr;
  positive_pull_ = zero_pull_ = false;
  // Calls of the old connection are abandoned; results not yet delivered are
  // sent again if the coordinator resumes their assignments.
  for (auto& [id, item] : items_) {
    item->progress = nullptr;
    if (item->reporting) {
      item->report = nullptr;
      item->reporting = false;
    }
  }
  conn_ = nullptr;
  std::string why = Describe(e);
  std::string every = std::to_string(ToMs(options_.reconnect_delay)) + " ms";
  if (was_registered) {
    ++connection_losses_;
    LogWarning(options_.log_tag + ": lost the coordinator: " + why + "; reconnecting every " +
               every + ", " + std::to_string(items_.size()) + " assignments kept");
    last_error_ = why;
    failed_attempts_ = 0;
    return;
  }
  ++failed_attempts_;
  if (why != last_error_) {
    std::string what = was_connected ? "registration failed: " : "cannot connect: ";
    LogInfo(options_.log_tag + ": " + what + why + "; retrying every " + every);
    last_error_ = why;
  } else if (failed_attempts_ % 100 == 0) {
    LogInfo(options_.log_tag + ": still failing after " + std::to_string(failed_attempts_) +
            " attempts: " + why);
  }
}

kj::Promise<void> WorkerAgent::HeartbeatLoop() {
  return timer_.afterDelay(hb_interval_ms_ * kj::MILLISECONDS)
      .then([this]() {
        auto req = session().heartbeatRequest();
        auto running = req.initRunning(static_cast<unsigned>(items_.size()));
        unsigned i = 0;
        for (const auto& [id, item] : items_) running.set(i++, id);
        kj::Promise<capnp::Response<WorkerSession::HeartbeatResults>> sent = req.send();
        // Only a coordinator stuck for good (alive at TCP level) is given up
        // on here: a merely slow one answers late, and reconnecting would
        // only add to its load.
        int64_t patience = std::max<int64_t>(2 * int64_t{hb_deadline_ms_}, 30000);
        return timer_.timeoutAfter(patience * kj::MILLISECONDS, kj::mv(sent))
            .catch_([](kj::Exception&& e)
                        -> kj::Promise<capnp::Response<WorkerSession::HeartbeatResults>> {
              return kj::Exception(e.getType(), __FILE__, __LINE__,
                                   kj::str("heartbeat: ", e.getDescription()));
            });
      })
      .then([this](capnp::Response<WorkerSession::HeartbeatResults>&& resp) {
        for (auto id : resp.getCancel()) {
          Retire(std::string(id.cStr()), AssignmentEnd::kCancelled,
                 "cancelled by the coordinator (heartbeat)");
        }
        return HeartbeatLoop();
      });
}

// Pulls work so that a pull is always outstanding, slots are offered as soon
// as they free, and disk tasks can never exceed the slots: at most one pull
// with freeSlots > 0 is outstanding (free slots only grow while it waits),
// plus at most one with freeSlots = 0 (it gets only snapshot and release
// work). Outstanding pulls are never cancelled: items chosen for a call whose
// caller went away would be lost until their deadline.
void WorkerAgent::MaybePull() {
  if (session_ == nullptr || pulls_ == nullptr) return;
  uint32_t busy = static_cast<uint32_t>(std::max(running_disk_, 0));
  uint32_t free = busy >= slots_ ? 0 : slots_ - busy;
  if (free > 0) {
    if (!positive_pull_) SendPull(free);
  } else if (!positive_pull_ && !zero_pull_) {
    SendPull(0);
  }
}

void WorkerAgent::SendPull(uint32_t free) {
  bool positive = free > 0;
  (positive ? positive_pull_ : zero_pull_) = true;
  auto req = session().pullWorkRequest();
  req.setFreeSlots(free);
  req.setWaitMs(options_.pull_wait_ms);
  kj::TimePoint start = timer_.now();
  KJ_ASSERT_NONNULL(pulls_)->add(req.send().then(
      [this, positive,
       start](capnp::Response<WorkerSession::PullWorkResults>&& resp) -> kj::Promise<void> {
        (positive ? positive_pull_ : zero_pull_) = false;
        auto items = resp.getItems();
        for (auto item : items) StartItem(item);
        if (items.size() == 0 && timer_.now() - start < 10 * kj::MILLISECONDS) {
          // The coordinator answered an empty pull at once: do not spin.
          int64_t pause = std::clamp<int64_t>(options_.pull_wait_ms, 10, 100);
          return timer_.afterDelay(pause * kj::MILLISECONDS).then([this]() { MaybePull(); });
        }
        MaybePull();
        return kj::READY_NOW;
      }));
}

// --- work items ---

namespace {

void ReadAssignment(WorkItem::Reader w, Assignment& a) {
  a.id = std::string(w.getAssignmentId().cStr());
  a.session_id = w.getSessionId();
  auto vm = w.getVm();
  a.vm.name = std::string(vm.getName().cStr());
  a.vm.uuid = std::string(vm.getUuid().cStr());
  a.vm.host = std::string(vm.getHost().cStr());
  a.vm.platform = std::string(vm.getPlatform().cStr());
}

AssignedRepository ReadRepository(RepositoryRef::Reader r) {
  AssignedRepository out;
  out.id = r.getId();
  out.name = std::string(r.getName().cStr());
  out.location = std::string(r.getLocation().cStr());
  out.token = std::string(r.getToken().cStr());
  return out;
}

}  // namespace

void WorkerAgent::StartItem(WorkItem::Reader w) {
  std::string id(w.getAssignmentId().cStr());
  if (id.empty() || items_.count(id)) {
    LogWarning(options_.log_tag + ": ignoring work item with " +
               (id.empty() ? std::string("an empty assignment id")
                           : "assignment " + id + " already running"));
    return;
  }
  auto owned = kj::heap<Item>(*this, id);
  Item* item = owned.get();
  item->start = timer_.now();
  items_.emplace(id, kj::mv(owned));

  // The executor is called inside evalNow so that a throw fails the item
  // rather than this pull.
  kj::Promise<WorkOutcome> work = nullptr;
  switch (w.which()) {
    case WorkItem::SNAPSHOT: {
      auto s = w.getSnapshot();
      SnapshotAssignment a;
      ReadAssignment(w, a);
      a.snapshot_id = s.getSnapshotId();
      for (auto d : s.getDisks()) a.disks.emplace_back(d.cStr());
      a.chain = std::string(s.getChain().cStr());
      a.point_id = std::string(s.getPointId().cStr());
      a.repository = ReadRepository(s.getRepository());
      item->what = "snapshot " + a.vm.name;
      work = kj::evalNow([&]() { return executor_.TakeSnapshot(a, *item); });
      break;
    }
    case WorkItem::BACKUP_DISK: {
      auto d = w.getBackupDisk();
      DiskAssignment a;
      ReadAssignment(w, a);
      a.task_id = d.getTaskId();
      a.disk = std::string(d.getDisk().cStr());
      a.snapshot_id = d.getSnapshotId();
      a.export_uri = std::string(d.getExportUri().cStr());
      a.repository = ReadRepository(d.getRepository());
      a.chain = std::string(d.getChain().cStr());
      a.tier = std::string(d.getTier().cStr());
      a.attempt = d.getAttempt();
      a.point_id = std::string(d.getPointId().cStr());
      a.read_plan = std::string(d.getReadPlan().cStr());
      a.worker_bandwidth = std::string(d.getWorkerBandwidth().cStr());
      a.repository_bytes_per_s = d.getRepositoryBytesPerS();
      item->repository_share = a.repository_bytes_per_s;
      item->what = "disk " + a.vm.name + "/" + a.disk;
      item->is_disk = true;
      ++running_disk_;
      work = kj::evalNow([&]() { return executor_.BackupDisk(a, *item); });
      break;
    }
    case WorkItem::RELEASE: {
      auto r = w.getRelease();
      ReleaseAssignment a;
      ReadAssignment(w, a);
      a.snapshot_id = r.getSnapshotId();
      a.commit = r.getCommit();
      a.repository = ReadRepository(r.getRepository());
      a.point_id = std::string(r.getPointId().cStr());
      item->what = "release " + a.vm.name;
      work = kj::evalNow([&]() { return executor_.Release(a, *item); });
      break;
    }
    case WorkItem::RESTORE: {
      auto r = w.getRestore();
      RestoreAssignment a;
      ReadAssignment(w, a);
      a.task_id = r.getTaskId();
      a.repository = ReadRepository(r.getRepository());
      a.point_id = std::string(r.getPointId().cStr());
      a.disk = std::string(r.getDisk().cStr());
      a.tier = std::string(r.getTier().cStr());
      a.attempt = r.getAttempt();
      bool known = true;
      switch (r.which()) {
        case RestoreWork::TO_FILE: {
          auto f = r.getToFile();
          a.target = RestoreAssignment::Target::kFile;
          a.path = std::string(f.getPath().cStr());
          a.format = std::string(f.getFormat().cStr());
          break;
        }
        case RestoreWork::INTO_DOMAIN: {
          auto d = r.getIntoDomain();
          a.target = RestoreAssignment::Target::kIntoDomain;
          a.domain = std::string(d.getDomain().cStr());
          a.target_disk = std::string(d.getTargetDisk().cStr());
          break;
        }
        case RestoreWork::NEW_DOMAIN: {
          auto n = r.getNewDomain();
          a.target = RestoreAssignment::Target::kNewDomain;
          a.name = std::string(n.getName().cStr());
          a.directory = std::string(n.getDirectory().cStr());
          a.pool = std::string(n.getPool().cStr());
          a.format = std::string(n.getFormat().cStr());
          a.keep_macs = n.getKeepMacs();
          break;
        }
        case RestoreWork::OVER_ORIGINAL: a.target = RestoreAssignment::Target::kOverOriginal; break;
        default: known = false; break;  // a target of a newer coordinator
      }
      item->what = "restore " + a.vm.name + (a.disk.empty() ? "" : "/" + a.disk);
      item->is_disk = true;
      ++running_disk_;
      if (!known) {
        LogWarning(options_.log_tag + ": " + id + ": a restore target this worker does not know");
        work = kj::evalNow([&]() { return executor_.Unsupported(a, *item); });
      } else {
        work = kj::evalNow([&]() { return executor_.Restore(a, *item); });
      }
      break;
    }
    default: {
      Assignment a;
      ReadAssignment(w, a);
      item->what = "unknown " + a.vm.name;
      LogWarning(options_.log_tag + ": " + id + ": work of a kind this worker does not know");
      work = kj::evalNow([&]() { return executor_.Unsupported(a, *item); });
      break;
    }
  }
  item->work = work.catch_([item](kj::Exception&& e) {
                     return WorkOutcome::Failed(ErrorKind::kInternal,
                                                item->what + " work failed: " + Describe(e));
                   })
                   .then([this, item](WorkOutcome&& outcome) { Finish(*item, kj::mv(outcome)); })
                   .eagerlyEvaluate([this, item](kj::Exception&& e) {
                     LogError(options_.log_tag + ": " + item->id + ": " + Describe(e));
                   });
}

void WorkerAgent::SendProgress(Item& item, const ProgressReport& report) {
  if (item.retired || item.finished || session_ == nullptr) return;
  auto req = session().reportProgressRequest();
  auto p = req.initProgress();
  p.setAssignmentId(item.id);
  p.setBytesDone(report.bytes_done);
  p.setBytesTotal(report.bytes_total);
  p.setBytesStored(report.bytes_stored);
  p.setBytesRead(report.bytes_read);
  p.setBytesSent(report.bytes_sent);
  if (report.stages) SetStageStats(*report.stages, p.initStages());
  Item* raw = &item;
  item.progress =
      req.send()
          .then(
              [this, raw](capnp::Response<WorkerSession::ReportProgressResults>&& resp) {
                if (!raw->retired) raw->repository_share = resp.getRepositoryBytesPerS();
                if (resp.getCancel() && !raw->retired && !raw->finished) {
                  Retire(raw->id, AssignmentEnd::kCancelled,
                         "cancelled by the coordinator (progress reply)");
                }
              },
              [](kj::Exception&&) {
                // Progress is advisory; a lost connection is handled by the session.
              })
          .eagerlyEvaluate(nullptr);
}

void WorkerAgent::Finish(Item& item, WorkOutcome outcome) {
  if (item.retired || item.finished) return;
  item.finished = true;
  item.end = timer_.now();
  item.outcome = kj::mv(outcome);
  if (session_ != nullptr) SendResult(item);
  if (item.is_disk) {
    --running_disk_;
    MaybePull();
  }
}

void WorkerAgent::SendResult(Item& item) {
  const WorkOutcome& o = item.outcome;
  auto req = session().reportResultRequest();
  auto r = req.initResult();
  r.setAssignmentId(item.id);
  r.setOk(o.ok);
  if (!o.ok) {
    r.setErrorKind(WireErrorKind(o.error_kind));
    r.setError(o.error);
  }
  r.setBytesRead(o.bytes_read);
  r.setBytesStored(o.bytes_stored);
  r.setBytesSent(o.bytes_sent);
  if (o.stages) SetStageStats(*o.stages, r.initStages());
  auto exports = r.initExports(static_cast<unsigned>(o.exports.size()));
  for (unsigned i = 0; i < o.exports.size(); ++i) {
    exports[i].setDisk(o.exports[i].disk);
    exports[i].setUri(o.exports[i].uri);
    exports[i].setReadPlan(o.exports[i].read_plan);
    exports[i].setHostLocal(o.exports[i].host_local);
  }
  r.setPointId(o.point_id);
  auto log = r.initLog(static_cast<unsigned>(o.log.size()));
  for (unsigned i = 0; i < o.log.size(); ++i) log.set(i, o.log[i]);
  item.reporting = true;
  Item* raw = &item;
  item.report = req.send()
                    .then(
                        [this, raw](capnp::Response<WorkerSession::ReportResultResults>&& resp) {
                          raw->reporting = false;
                          if (resp.getAccepted()) {
                            Retire(raw->id, AssignmentEnd::kDone, "");
                          } else {
                            Retire(raw->id, AssignmentEnd::kRejected,
                                   "the coordinator did not accept the result (stale assignment)");
                          }
                        },
                        [this, raw](kj::Exception&& e) {
                          raw->reporting = false;
                          if (IsDisconnected(e)) return;  // sent again if resumed
                          Retire(raw->id, AssignmentEnd::kReportFailed,
                                 "reportResult failed: " + Describe(e));
                        })
                    .eagerlyEvaluate(nullptr);
}

// Ends an item's life: cancels its work if it still runs, tells the executor,
// and destroys the item on a later turn (this may run inside one of its own
// callbacks).
void WorkerAgent::Retire(const std::string& id, AssignmentEnd end, const std::string& reason) {
  auto it = items_.find(id);
  if (it == items_.end()) return;  // e.g. a cancel for something already reported
  kj::Own<Item> item = kj::mv(it->second);
  items_.erase(it);
  item->retired = true;
  bool slot_freed = false;
  if (!item->finished) {
    item->end = timer_.now();
    item->work = nullptr;  // cancels the executor's work
    if (item->is_disk) {
      --running_disk_;
      slot_freed = true;
    }
  }
  const WorkOutcome& o = item->outcome;
  std::string error = !item->finished || o.ok ? "" : o.error;
  if (!reason.empty()) error = error.empty() ? reason : error + "; " + reason;
  std::string line =
      options_.log_tag + ": " + id + " " + item->what + " " + AssignmentEndName(end) +
      (end == AssignmentEnd::kDone ? (o.ok ? " ok" : " failed") : "") + " after " +
      std::to_string(ToMs(item->end - item->start)) + " ms" + (error.empty() ? "" : ": " + error);
  if (end == AssignmentEnd::kDone || end == AssignmentEnd::kCancelled) {
    LogInfo(line);
  } else {
    LogWarning(line);
  }
  graveyard_.push_back(kj::mv(item));
  executor_.Ended(id, end, reason);
  if (slot_freed) MaybePull();
  if (!sweep_scheduled_) {
    sweep_scheduled_ = true;
    sweep_ = kj::evalLater([this]() {
               sweep_scheduled_ = false;
               graveyard_.clear();
             }).eagerlyEvaluate(nullptr);
  }
}

}  // namespace ferry::rpc
