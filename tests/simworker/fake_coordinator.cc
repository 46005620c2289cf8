#include "fake_coordinator.h"

#include <kj/debug.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "ferry/common/file_util.h"

namespace ferry::simworker::testing {
namespace {

class IgnoreErrors final : public kj::TaskSet::ErrorHandler {
 public:
  void taskFailed(kj::Exception&&) override {}
};

std::vector<std::string> ToStrings(capnp::List<capnp::Text>::Reader list) {
  std::vector<std::string> out;
  for (auto t : list) out.emplace_back(t.cStr());
  return out;
}

}  // namespace

struct FakeCoordinator::Connection {
  Connection(kj::Own<kj::AsyncIoStream> s, capnp::Capability::Client bootstrap)
      : stream(kj::mv(s)), rpc(*stream, kj::mv(bootstrap), capnp::rpc::twoparty::Side::SERVER) {}
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyClient rpc;
};

class FakeCoordinator::SessionImpl final : public rpc::WorkerSession::Server {
 public:
  SessionImpl(FakeCoordinator& fake, uint64_t worker_id) : fake_(fake), worker_id_(worker_id) {}

  kj::Promise<void> heartbeat(HeartbeatContext context) override {
    auto running = ToStrings(context.getParams().getRunning());
    fake_.heartbeats.push_back(running);
    std::vector<std::string> cancel;
    for (const auto& id : running) {
      if (fake_.cancel.count(id)) cancel.push_back(id);
    }
    auto list = context.getResults().initCancel(static_cast<unsigned>(cancel.size()));
    for (unsigned i = 0; i < cancel.size(); ++i) list.set(i, cancel[i]);
    return kj::READY_NOW;
  }

  kj::Promise<void> reportInventory(ReportInventoryContext context) override {
    std::vector<std::string> names;
    for (auto vm : context.getParams().getVms()) names.emplace_back(vm.getName().cStr());
    fake_.inventories.push_back(names);
    return kj::READY_NOW;
  }

  kj::Promise<void> pullWork(PullWorkContext context) override {
    uint32_t free_slots = context.getParams().getFreeSlots();
    uint32_t wait_ms = std::min(context.getParams().getWaitMs(), fake_.max_wait_ms);
    fake_.pull_free_slots.push_back(free_slots);
    if (Take(free_slots, context)) return kj::READY_NOW;
    return fake_.io_.provider->getTimer()
        .afterDelay(wait_ms * kj::MILLISECONDS)
        .then([this, free_slots, context]() mutable {
          if (!Take(free_slots, context)) context.getResults().initItems(0);
        });
  }

  kj::Promise<void> reportProgress(ReportProgressContext context) override {
    auto p = context.getParams().getProgress();
    std::string id(p.getAssignmentId().cStr());
    fake_.progress.push_back(id);
    fake_.progress_stages.push_back(p.hasStages() ? std::optional(rpc::StageBusyFrom(p.getStages())) : std::nullopt);
    context.getResults().setCancel(fake_.cancel.count(id) > 0);
    return kj::READY_NOW;
  }

  kj::Promise<void> reportResult(ReportResultContext context) override {
    auto r = context.getParams().getResult();
    FakeResult res;
    res.worker_id = worker_id_;
    res.assignment = r.getAssignmentId().cStr();
    res.ok = r.getOk();
    res.error_kind = r.getErrorKind().cStr();
    res.error = r.getError().cStr();
    res.bytes_read = r.getBytesRead();
    res.bytes_stored = r.getBytesStored();
    res.bytes_sent = r.getBytesSent();
    if (r.hasStages()) res.stages = rpc::StageBusyFrom(r.getStages());
    for (auto e : r.getExports()) {
      res.exports.emplace_back(e.getDisk().cStr(), e.getUri().cStr());
      res.read_plans.emplace_back(e.getReadPlan().cStr());
    }
    res.point_id = r.getPointId().cStr();
    fake_.results.push_back(res);
    context.getResults().setAccepted(fake_.accept_results);
    if (fake_.on_result) fake_.on_result(res);
    return kj::READY_NOW;
  }

 private:
  // Moves items into the reply: any snapshot/release, disks up to free_slots.
  bool Take(uint32_t free_slots, PullWorkContext& context) {
    std::vector<FakeItem> taken;
    for (auto it = fake_.queue.begin(); it != fake_.queue.end();) {
      if (it->kind == FakeItem::kDisk || it->kind == FakeItem::kRestore) {
        if (free_slots == 0) {
          ++it;
          continue;
        }
        --free_slots;
      }
      taken.push_back(*it);
      it = fake_.queue.erase(it);
    }
    if (taken.empty()) return false;
    auto items = context.getResults().initItems(static_cast<unsigned>(taken.size()));
    for (unsigned i = 0; i < taken.size(); ++i) {
      const FakeItem& f = taken[i];
      auto w = items[i];
      w.setAssignmentId(f.assignment);
      w.setSessionId(f.session_id);
      w.getVm().setName(f.vm);
      w.getVm().setHost("h1");
      switch (f.kind) {
        case FakeItem::kSnapshot: {
          auto s = w.initSnapshot();
          s.setSnapshotId(f.snapshot_id);
          auto disks = s.initDisks(static_cast<unsigned>(f.disks.size()));
          for (unsigned d = 0; d < f.disks.size(); ++d) disks.set(d, f.disks[d]);
          break;
        }
        case FakeItem::kDisk: {
          auto d = w.initBackupDisk();
          d.setTaskId(f.task_id);
          d.setDisk(f.disk);
          d.setSnapshotId(f.snapshot_id);
          d.setExportUri(f.export_uri);
          d.setTier(f.tier);
          d.setAttempt(f.attempt);
          d.setReadPlan(f.read_plan);
          break;
        }
        case FakeItem::kRelease: {
          auto r = w.initRelease();
          r.setSnapshotId(f.snapshot_id);
          r.setCommit(f.commit);
          r.setPointId(f.point_id);
          break;
        }
        case FakeItem::kRestore: {
          auto r = w.initRestore();
          r.setTaskId(f.task_id);
          r.setPointId(f.point_id);
          r.setDisk(f.disk);
          r.setTier(f.tier);
          r.setAttempt(f.attempt);
          r.initRepository().setLocation("/srv/repo");
          auto t = r.initToFile();
          t.setPath(f.export_uri);  // the target path, for restore items
          t.setFormat("qcow2");
          break;
        }
      }
    }
    return true;
  }

  FakeCoordinator& fake_;
  uint64_t worker_id_;
};

class FakeCoordinator::CoordinatorImpl final : public rpc::Coordinator::Server {
 public:
  explicit CoordinatorImpl(FakeCoordinator& fake) : fake_(fake) {}

  kj::Promise<void> registerWorker(RegisterWorkerContext context) override {
    auto req = context.getParams().getRequest();
    FakeRegistration reg;
    reg.protocol_version = req.getProtocolVersion();
    reg.token = req.getToken().cStr();
    reg.host = req.getHost().cStr();
    reg.platform = req.getPlatform().cStr();
    reg.cluster = req.getCluster().cStr();
    reg.version = req.getVersion().cStr();
    reg.slots = req.getTaskSlots();
    reg.running = ToStrings(req.getRunning());
    if (fake_.refuse_tokens.count(reg.token)) {
      ++fake_.refused_registrations;
      return KJ_EXCEPTION(FAILED, "unknown worker token");
    }
    fake_.registrations.push_back(reg);
    uint64_t id = fake_.next_worker_id_++;
    auto results = context.getResults();
    results.setSession(kj::heap<SessionImpl>(fake_, id));
    auto reply = results.initReply();
    reply.setWorkerId(id);
    reply.setWorkerName("worker-" + reg.host);
    reply.setHeartbeatIntervalMs(fake_.heartbeat_interval_ms);
    reply.setHeartbeatDeadlineMs(fake_.heartbeat_deadline_ms);
    std::vector<std::string> resumed;
    for (const auto& r : reg.running) {
      if (!fake_.resume || fake_.resume(r)) resumed.push_back(r);
    }
    auto list = reply.initResumed(static_cast<unsigned>(resumed.size()));
    for (unsigned i = 0; i < resumed.size(); ++i) list.set(i, resumed[i]);
    return kj::READY_NOW;
  }

 private:
  FakeCoordinator& fake_;
};

FakeCoordinator::FakeCoordinator(kj::AsyncIoContext& io, kj::TlsContext* tls)
    : io_(io),
      tls_(tls),
      error_handler_(kj::heap<IgnoreErrors>()),
      tasks_(kj::heap<kj::TaskSet>(*error_handler_)) {}

FakeCoordinator::~FakeCoordinator() {
  tasks_ = nullptr;
  connections_.clear();
  listener_ = nullptr;
}

std::string FakeCoordinator::Listen() {
  auto addr = io_.provider->getNetwork().parseAddress("127.0.0.1", 0).wait(io_.waitScope);
  listener_ = addr->listen();
  tasks_->add(AcceptLoop());
  return "127.0.0.1:" + std::to_string(listener_->getPort());
}

kj::Promise<void> FakeCoordinator::AcceptLoop() {
  return listener_->accept().then([this](kj::Own<kj::AsyncIoStream> stream) {
    if (tls_ == nullptr) {
      Serve(kj::mv(stream));
    } else {
      // Handshake each connection on its own so that one bad client does not
      // stop the accept loop.
      tasks_->add(tls_->wrapServer(kj::mv(stream))
                      .then([this](kj::Own<kj::AsyncIoStream> tls_stream) {
                              Serve(kj::mv(tls_stream));
                            },
                            [this](kj::Exception&& e) {
                              handshake_errors.emplace_back(e.getDescription().cStr());
                            }));
    }
    return AcceptLoop();
  });
}

void FakeCoordinator::Serve(kj::Own<kj::AsyncIoStream> stream) {
  connections_.push_back(
      kj::heap<Connection>(kj::mv(stream), kj::heap<CoordinatorImpl>(*this)));
}

void FakeCoordinator::DropConnections() {
  // Deferred: this may be called from inside one of the connections' calls.
  tasks_->add(kj::evalLater([this]() { connections_.clear(); }));
}

// ---------------------------------------------------------------------------

TestPki MakeTestPki() {
  TestPki pki;
  if (std::system("openssl version >/dev/null 2>&1") != 0) return pki;
  char tmpl[] = "/tmp/ferry-simworker-pki-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return pki;
  std::string d = tmpl;
  pki.ca_pem = d + "/ca.pem";
  pki.ca_key = d + "/ca.key";
  pki.server_pem = d + "/server.pem";
  pki.server_key = d + "/server.key";
  pki.other_ca_pem = d + "/other-ca.pem";
  pki.other_ca_key = d + "/other-ca.key";
  std::ofstream(d + "/ext.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  std::string script =
      "set -e; cd " + d + "; exec 2>openssl.log; " +
      "openssl req -x509 " + ec + " -keyout ca.key -out ca.pem -days 2 -subj '/CN=Ferry Test CA'; " +
      "openssl req -x509 " + ec + " -keyout other-ca.key -out other-ca.pem -days 2 -subj '/CN=Other CA'; " +
      "openssl req " + ec + " -keyout server.key -out server.csr -subj '/CN=ferry-test-server'; " +
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem "
      "-days 2 -extfile ext.cnf >/dev/null";
  if (std::system(("bash -c \"" + script + "\"").c_str()) != 0) {
    RemoveTestDir(d);
    return pki;
  }
  pki.dir = d;
  return pki;
}

void RemoveTestDir(const std::string& dir) {
  if (!dir.empty()) ferry::RemoveTree(dir);
}

}  // namespace ferry::simworker::testing
