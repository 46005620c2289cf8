#include "ferry/coordinator/worker_rpc_server.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/tls.h>

#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>
#include <thread>

#include "ferry/common/log.h"
#include "ferry/coordinator/field_error.h"
#include "ferry/rpc/guarded_server.h"
#include "ferry/rpc/protocol.h"
#include "ferry/rpc/tls.h"
#include "ferry/rpc/worker_client.h"
#include "ferry/rpc/worker_protocol.capnp.h"

namespace ferry::coordinator {
namespace {

kj::Exception ToKj(const std::exception& e) {
  std::string message = e.what();
  if (const auto* error = dynamic_cast<const Error*>(&e))
    message = std::string(ErrorKindName(error->kind())) + ": " + message;
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::heapString(message.c_str()));
}

std::vector<std::string> Texts(capnp::List<capnp::Text>::Reader list) {
  std::vector<std::string> out;
  for (auto t : list) out.emplace_back(t.cStr());
  return out;
}

// Long polls waiting for work, woken by the server's tick: only those the
// runner's wakeups concern (their host got work, they hold a release, or
// everyone when work may move between hosts), plus any past their deadline.
struct Waiter {
  kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  int64_t deadline_ms;
  int64_t worker_id;
  int64_t host_id;
};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class WaitList {
 public:
  kj::Promise<void> Wait(int64_t deadline_ms, int64_t worker_id, int64_t host_id) {
    auto paf = kj::newPromiseAndFulfiller<void>();
    waiters_.push_back({kj::mv(paf.fulfiller), deadline_ms, worker_id, host_id});
    return kj::mv(paf.promise);
  }
  void Tick(SessionRunner& runner) {
    uint64_t generation = runner.WorkGeneration();
    SessionRunner::Wakeups wake;
    if (generation != seen_) {
      seen_ = generation;
      wake = runner.TakeWakeups();
    }
    int64_t now = NowMs();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      bool concerned = wake.all || wake.hosts.count(it->host_id) || wake.workers.count(it->worker_id);
      if (concerned || now >= it->deadline_ms || !it->fulfiller->isWaiting()) {
        it->fulfiller->fulfill();
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  std::list<Waiter> waiters_;
  uint64_t seen_ = 0;
};

// Group commit on the event loop: the calls served in one turn of the loop
// write into the runner's open transaction; once no ready event is left,
// one commit stores them all and only then are their answers sent
// (SessionRunner::CommitGroup). Under load a turn serves many workers'
// results and pulls, so the commit (and the pages it writes) is shared.
class GroupCommit {
 public:
  GroupCommit(SessionRunner& runner, kj::TaskSet& tasks) : runner_(runner), tasks_(tasks) {}

  // Resolves once everything written so far is committed.
  kj::Promise<void> Durable() {
    auto paf = kj::newPromiseAndFulfiller<void>();
    waiting_.push_back(kj::mv(paf.fulfiller));
    if (!scheduled_) {
      scheduled_ = true;
      tasks_.add(kj::evalLast([this]() { Flush(); }));
    }
    return kj::mv(paf.promise);
  }

  // Also called by the tick: writes no call waits for (a disconnect) are
  // stored within one tick.
  void Flush() {
    scheduled_ = false;
    std::vector<kj::Own<kj::PromiseFulfiller<void>>> waiting = std::move(waiting_);
    waiting_.clear();
    try {
      runner_.CommitGroup();
      for (auto& f : waiting) f->fulfill();
    } catch (const std::exception& e) {
      for (auto& f : waiting) f->reject(ToKj(e));
    }
  }

 private:
  SessionRunner& runner_;
  kj::TaskSet& tasks_;
  std::vector<kj::Own<kj::PromiseFulfiller<void>>> waiting_;
  bool scheduled_ = false;
};

// A size hint for a reply's first segment. Without one, Cap'n Proto
// allocates and zeroes 8 KiB for every reply; most replies here are a few
// words (a hint too small only costs another segment).
capnp::MessageSize ReplySize(size_t words) { return capnp::MessageSize{words, 0}; }

void FillItem(rpc::WorkItem::Builder item, const WorkOrder& order) {
  item.setAssignmentId(order.assignment);
  item.setSessionId(static_cast<uint64_t>(order.session_id));
  auto vm = item.initVm();
  vm.setName(order.vm_name);
  vm.setUuid(order.vm_uuid);
  vm.setHost(order.host);
  vm.setPlatform(order.platform);
  auto fill_repository = [&](rpc::RepositoryRef::Builder r) {
    r.setId(static_cast<uint64_t>(order.repository_id));
    r.setName(order.repository_name);
    r.setLocation(order.repository_location);
    r.setToken(order.repository_token);
  };
  switch (order.kind) {
    case WorkKind::kSnapshot: {
      auto s = item.initSnapshot();
      s.setSnapshotId(static_cast<uint64_t>(order.snapshot_id));
      auto disks = s.initDisks(static_cast<unsigned>(order.disks.size()));
      for (size_t i = 0; i < order.disks.size(); ++i) disks.set(static_cast<unsigned>(i), order.disks[i]);
      s.setChain(order.chain);
      s.setPointId(order.point_id);
      fill_repository(s.initRepository());
      break;
    }
    case WorkKind::kDisk: {
      auto d = item.initBackupDisk();
      d.setTaskId(static_cast<uint64_t>(order.task_id));
      d.setDisk(order.disk);
      d.setSnapshotId(static_cast<uint64_t>(order.snapshot_id));
      d.setExportUri(order.export_uri);
      fill_repository(d.initRepository());
      d.setChain(order.chain);
      d.setTier(order.tier);
      d.setAttempt(static_cast<uint32_t>(order.attempt));
      d.setPointId(order.point_id);
      d.setReadPlan(order.read_plan);
      d.setWorkerBandwidth(order.worker_bandwidth);
      d.setRepositoryBytesPerS(order.repository_bytes_per_s);
      break;
    }
    case WorkKind::kRelease: {
      auto r = item.initRelease();
      r.setSnapshotId(static_cast<uint64_t>(order.snapshot_id));
      r.setCommit(order.commit);
      fill_repository(r.initRepository());
      r.setPointId(order.point_id);
      break;
    }
    case WorkKind::kRestore: {
      auto r = item.initRestore();
      r.setTaskId(static_cast<uint64_t>(order.task_id));
      fill_repository(r.initRepository());
      r.setPointId(order.point_id);
      r.setDisk(order.disk);
      r.setTier(order.tier);
      r.setAttempt(static_cast<uint32_t>(order.attempt));
      const RestoreTarget& t = order.restore;
      switch (t.type) {
        case RestoreTarget::Type::kFile: {
          auto f = r.initToFile();
          f.setPath(t.path);
          f.setFormat(t.format);
          break;
        }
        case RestoreTarget::Type::kLibvirtDomain: {
          auto d = r.initIntoDomain();
          d.setDomain(t.vm);
          d.setTargetDisk(t.disk);
          break;
        }
        case RestoreTarget::Type::kNewDomain: {
          auto n = r.initNewDomain();
          n.setName(t.name);
          n.setDirectory(t.directory);
          n.setPool(t.pool);
          n.setFormat(t.format);
          n.setKeepMacs(t.keep_macs);
          break;
        }
        case RestoreTarget::Type::kOriginalDomain: r.setOverOriginal(); break;
      }
      break;
    }
  }
}

class WorkerSessionImpl final : public rpc::WorkerSession::Server {
 public:
  WorkerSessionImpl(SessionRunner& runner, WaitList& waiters, GroupCommit& commits, int64_t worker_id,
                    int64_t epoch, int64_t host_id)
      : runner_(runner), waiters_(waiters), commits_(commits), worker_id_(worker_id), epoch_(epoch),
        host_id_(host_id) {}

  ~WorkerSessionImpl() noexcept(false) {
    try {
      runner_.WorkerDisconnected(worker_id_, epoch_);
    } catch (const std::exception& e) {
      LogError("worker " + std::to_string(worker_id_) + " disconnect: " + e.what());
    }
  }

  kj::Promise<void> heartbeat(HeartbeatContext context) override {
    try {
      std::vector<std::string> cancel = runner_.Heartbeat(worker_id_, Texts(context.getParams().getRunning()));
      auto list = context.getResults(ReplySize(8 + 8 * cancel.size())).initCancel(static_cast<unsigned>(cancel.size()));
      for (size_t i = 0; i < cancel.size(); ++i) list.set(static_cast<unsigned>(i), cancel[i]);
      return commits_.Durable();
    } catch (const std::exception& e) {
      return ToKj(e);
    }
  }

  kj::Promise<void> reportInventory(ReportInventoryContext context) override {
    try {
      std::vector<InventoryVm> vms;
      for (auto v : context.getParams().getVms()) {
        InventoryVm vm{v.getName(), v.getUuid(), v.getState(), Texts(v.getTags()), {}};
        if (vm.name.empty()) throw FieldError("vms.name", "a VM without a name");
        for (auto d : v.getDisks())
          vm.disks.push_back({d.getName(), static_cast<int64_t>(d.getSizeBytes()), d.getFormat()});
        vms.push_back(std::move(vm));
      }
      runner_.ReportInventory(worker_id_, vms);
      return kj::READY_NOW;
    } catch (const std::exception& e) {
      return ToKj(e);
    }
  }

  kj::Promise<void> pullWork(PullWorkContext context) override {
    auto params = context.getParams();
    int free_slots = static_cast<int>(std::min<uint32_t>(params.getFreeSlots(), 1024));
    int64_t deadline = NowMs() + std::min<uint32_t>(params.getWaitMs(), 60000);
    return Pull(context, free_slots, deadline);
  }

  kj::Promise<void> reportProgress(ReportProgressContext context) override {
    try {
      auto p = context.getParams().getProgress();
      TaskStats stats;
      stats.bytes_read = static_cast<int64_t>(p.getBytesRead());
      stats.bytes_sent = static_cast<int64_t>(p.getBytesSent());
      if (p.hasStages()) stats.stages = rpc::StageBusyFrom(p.getStages());
      uint64_t share = 0;
      bool valid = runner_.ReportProgress(worker_id_, p.getAssignmentId(), static_cast<int64_t>(p.getBytesDone()),
                                          static_cast<int64_t>(p.getBytesTotal()), static_cast<int64_t>(p.getBytesStored()),
                                          stats, &share);
      auto results = context.getResults(ReplySize(6));
      results.setCancel(!valid);
      results.setRepositoryBytesPerS(share);
      return kj::READY_NOW;
    } catch (const std::exception& e) {
      return ToKj(e);
    }
  }

  kj::Promise<void> reportResult(ReportResultContext context) override {
    try {
      auto r = context.getParams().getResult();
      WorkReport report;
      report.assignment = r.getAssignmentId();
      report.ok = r.getOk();
      report.error_kind = r.getErrorKind();
      report.error = r.getError();
      report.bytes_read = static_cast<int64_t>(r.getBytesRead());
      report.bytes_stored = static_cast<int64_t>(r.getBytesStored());
      report.bytes_sent = static_cast<int64_t>(r.getBytesSent());
      if (r.hasStages()) report.stages = rpc::StageBusyFrom(r.getStages());
      for (auto e : r.getExports())
        report.exports.push_back({e.getDisk(), e.getUri(), e.getReadPlan(), e.getHostLocal()});
      report.point_id = r.getPointId();
      report.log = Texts(r.getLog());
      bool accepted = runner_.ReportResult(worker_id_, report);
      context.getResults(ReplySize(4)).setAccepted(accepted);
      return commits_.Durable();
    } catch (const std::exception& e) {
      return ToKj(e);
    }
  }

 private:
  kj::Promise<void> Pull(PullWorkContext context, int free_slots, int64_t deadline) {
    std::vector<WorkOrder> orders;
    try {
      orders = runner_.PullWork(worker_id_, epoch_, free_slots);
    } catch (const std::exception& e) {
      return ToKj(e);
    }
    if (orders.empty() && NowMs() < deadline) {
      return waiters_.Wait(deadline, worker_id_, host_id_).then([this, context, free_slots, deadline]() mutable {
        return Pull(context, free_slots, deadline);
      });
    }
    auto items = context.getResults(ReplySize(8 + 128 * orders.size())).initItems(static_cast<unsigned>(orders.size()));
    for (size_t i = 0; i < orders.size(); ++i) FillItem(items[static_cast<unsigned>(i)], orders[i]);
    if (orders.empty()) return kj::READY_NOW;
    return commits_.Durable();  // the assignments are stored before the worker hears of them
  }

  SessionRunner& runner_;
  WaitList& waiters_;
  GroupCommit& commits_;
  int64_t worker_id_;
  int64_t epoch_;
  int64_t host_id_;
};

// One per connection: a successful registration tells the connection's
// gate, which lifts the registration deadline and the small frame limit.
class CoordinatorImpl final : public rpc::Coordinator::Server {
 public:
  CoordinatorImpl(SessionRunner& runner, WaitList& waiters, GroupCommit& commits, kj::Own<rpc::ConnectionGate> gate)
      : runner_(runner), waiters_(waiters), commits_(commits), gate_(kj::mv(gate)) {}

  kj::Promise<void> registerWorker(RegisterWorkerContext context) override {
    try {
      auto request = context.getParams().getRequest();
      if (request.getProtocolVersion() != rpc::PROTOCOL_VERSION)
        throw Error(ErrorKind::kBadInput, "worker protocol version " + std::to_string(request.getProtocolVersion()) +
                                              " is not supported (the coordinator speaks " +
                                              std::to_string(rpc::PROTOCOL_VERSION) + ")");
      WorkerHello hello{request.getToken(), request.getHost(), request.getPlatform(), request.getCluster(),
                        static_cast<int>(std::min<uint32_t>(request.getTaskSlots(), 100000)), request.getVersion(),
                        Texts(request.getRunning()), std::nullopt};
      hello.own_host_snapshots_only = request.getOwnHostSnapshotsOnly();
      if (request.getReportsHeld()) {
        hello.held_snapshots.emplace();
        for (uint64_t id : request.getHeldSnapshots()) hello.held_snapshots->push_back(static_cast<int64_t>(id));
      }
      WorkerWelcome welcome = runner_.RegisterWorker(hello);
      gate_->Authenticated();
      auto results = context.getResults();
      results.setSession(kj::heap<WorkerSessionImpl>(runner_, waiters_, commits_, welcome.worker_id, welcome.epoch, welcome.host_id));
      auto reply = results.initReply();
      reply.setWorkerId(static_cast<uint64_t>(welcome.worker_id));
      reply.setWorkerName(welcome.worker_name);
      reply.setHeartbeatIntervalMs(static_cast<uint32_t>(runner_.heartbeat_interval_ms()));
      reply.setHeartbeatDeadlineMs(static_cast<uint32_t>(runner_.heartbeat_deadline_ms()));
      auto resumed = reply.initResumed(static_cast<unsigned>(welcome.resumed.size()));
      for (size_t i = 0; i < welcome.resumed.size(); ++i) resumed.set(static_cast<unsigned>(i), welcome.resumed[i]);
      auto drop = reply.initDropSnapshots(static_cast<unsigned>(welcome.drop_snapshots.size()));
      for (size_t i = 0; i < welcome.drop_snapshots.size(); ++i)
        drop.set(static_cast<unsigned>(i), static_cast<uint64_t>(welcome.drop_snapshots[i]));
      return kj::READY_NOW;
    } catch (const std::exception& e) {
      LogWarning("worker registration from " + gate_->peer() + " refused: " + e.what());
      return ToKj(e);
    }
  }

 private:
  SessionRunner& runner_;
  WaitList& waiters_;
  GroupCommit& commits_;
  kj::Own<rpc::ConnectionGate> gate_;
};

}  // namespace

class WorkerRpcServer::Impl {
 public:
  Impl(SessionRunner& runner, WorkerRpcOptions options) : runner_(runner), options_(std::move(options)) {}

  void Start() {
    thread_ = std::thread([this] { Run(); });
    std::unique_lock lock(mu_);
    started_.wait(lock, [this] { return ready_ || failure_; });
    if (failure_) {
      lock.unlock();
      thread_.join();
      throw *failure_;
    }
  }

  void Stop() {
    {
      std::lock_guard lock(mu_);
      if (!executor_) return;
      executor_->executeSync([this] { stop_fulfiller_->fulfill(); });
    }
    if (thread_.joinable()) thread_.join();
  }

  uint16_t port() const { return port_; }

 private:
  void Run() {
    try {
      auto io = kj::setupAsyncIo();
      kj::Own<kj::TlsContext> tls;
      if (!options_.tls_cert_file.empty() || !options_.tls_key_file.empty()) {
        if (options_.tls_cert_file.empty() || options_.tls_key_file.empty())
          throw Error(ErrorKind::kBadInput, "RPC TLS needs both a certificate and a key file");
        rpc::ServerTlsOptions tls_options;
        tls_options.timer = &io.provider->getTimer();
        tls = rpc::MakeServerTlsContext(options_.tls_cert_file, options_.tls_key_file, tls_options);
      }
      kj::Own<kj::NetworkAddress> address;
      try {
        address = io.provider->getNetwork().parseAddress(options_.listen).wait(io.waitScope);
      } catch (const kj::Exception& e) {
        throw Error(ErrorKind::kBadInput, "RPC listen address '" + options_.listen + "': " + e.getDescription().cStr());
      }
      kj::Own<kj::ConnectionReceiver> listener;
      try {
        listener = address->listen();
      } catch (const kj::Exception& e) {
        throw Error(ErrorKind::kEnvironment, "listening on " + options_.listen + ": " + e.getDescription().cStr());
      }
      port_ = static_cast<uint16_t>(listener->getPort());
      WaitList waiters;
      kj::Timer& timer = io.provider->getTimer();
      kj::TaskSet tasks(error_handler_);
      GroupCommit commits(runner_, tasks);
      rpc::GuardedAcceptor acceptor(
          *listener, timer, tls.get(),
          [this, &waiters, &commits](kj::Own<rpc::ConnectionGate> gate) -> capnp::Capability::Client {
            return kj::heap<CoordinatorImpl>(runner_, waiters, commits, kj::mv(gate));
          },
          Limits());
      // Dropped before the acceptor it runs on.
      kj::Promise<void> accepting = acceptor.Run().eagerlyEvaluate([](kj::Exception&& e) {
        LogError(std::string("worker RPC: accepting stopped: ") + e.getDescription().cStr());
      });
      tasks.add(TickLoop(timer, waiters, commits));
      auto stop = kj::newPromiseAndFulfiller<void>();
      {
        std::lock_guard lock(mu_);
        stop_fulfiller_ = kj::mv(stop.fulfiller);
        executor_ = &kj::getCurrentThreadExecutor();
        ready_ = true;
      }
      started_.notify_all();
      stop.promise.wait(io.waitScope);
      std::lock_guard lock(mu_);
      executor_ = nullptr;
    } catch (const Error& e) {
      std::lock_guard lock(mu_);
      failure_ = e;
      started_.notify_all();
    } catch (const std::exception& e) {
      std::lock_guard lock(mu_);
      failure_ = Error(ErrorKind::kInternal, std::string("worker RPC server: ") + e.what());
      started_.notify_all();
    } catch (const kj::Exception& e) {
      std::lock_guard lock(mu_);
      failure_ = Error(ErrorKind::kEnvironment, std::string("worker RPC server: ") + e.getDescription().cStr());
      started_.notify_all();
    }
  }

  rpc::ConnectionLimits Limits() const {
    rpc::ConnectionLimits l;
    l.what = "worker RPC";
    l.auth_step = "registerWorker";
    l.max_connections = options_.max_connections;
    l.max_per_address = options_.max_connections_per_address;
    l.unauthenticated_message_words = kUnregisteredMessageBytes / sizeof(capnp::word);
    l.max_message_words = kMaxMessageBytes / sizeof(capnp::word);
    l.flow_limit_words = kMaxMessageBytes / sizeof(capnp::word);
    l.auth_timeout = options_.registration_timeout;
    l.idle_timeout = options_.idle_timeout.value_or(
        std::chrono::milliseconds(IdleTimeoutFor(runner_.heartbeat_deadline_ms())));
    return l;
  }

  kj::Promise<void> TickLoop(kj::Timer& timer, WaitList& waiters, GroupCommit& commits) {
    return timer.afterDelay(20 * kj::MILLISECONDS).then([this, &timer, &waiters, &commits]() {
      commits.Flush();
      waiters.Tick(runner_);
      int64_t now = NowMs();
      if (now - last_tick_ >= options_.tick_ms) {
        last_tick_ = now;
        try {
          runner_.Tick();
        } catch (const std::exception& e) {
          LogError(std::string("scheduler tick: ") + e.what());
        }
      }
      return TickLoop(timer, waiters, commits);
    });
  }

  struct ErrorHandler : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override {
      LogWarning(std::string("worker RPC: ") + e.getDescription().cStr());
    }
  };

  SessionRunner& runner_;
  WorkerRpcOptions options_;
  ErrorHandler error_handler_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable started_;
  bool ready_ = false;
  std::optional<Error> failure_;
  const kj::Executor* executor_ = nullptr;
  kj::Own<kj::PromiseFulfiller<void>> stop_fulfiller_;
  uint16_t port_ = 0;
  int64_t last_tick_ = 0;
};

WorkerRpcServer::WorkerRpcServer(SessionRunner& runner, WorkerRpcOptions options)
    : impl_(std::make_unique<Impl>(runner, std::move(options))) {}
WorkerRpcServer::~WorkerRpcServer() { Stop(); }
void WorkerRpcServer::Start() { impl_->Start(); }
uint16_t WorkerRpcServer::port() const { return impl_->port(); }
void WorkerRpcServer::Stop() { impl_->Stop(); }

}  // namespace ferry::coordinator
