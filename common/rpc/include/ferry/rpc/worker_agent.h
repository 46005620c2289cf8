// One worker's protocol client (docs/worker-protocol.md): the part of a worker
// that talks to the coordinator, apart from the part that does the work.
//
// Design
// - WorkerAgent speaks the protocol: connect, registerWorker (with the
//   assignments it still holds as `running`), drop what was not `resumed`,
//   reportInventory, heartbeat (and stop what `cancel` names), pullWork under
//   the two-pull rule, reportProgress, reportResult (kept and sent again after
//   a reconnection when the assignment is resumed), and the reconnect loop.
//   It is the only copy of that logic: the worker daemon and the simulator
//   (tests/simworker) both run it.
// - WorkExecutor is what the worker does with a work item. The agent calls it
//   for what to register with (host, slots, inventory) and hands it each
//   item; it knows nothing of connections, sessions or retries.
// - An item's work is a kj::Promise<WorkOutcome> that the executor returns and
//   the agent owns. The promise resolving is the item finishing (ok or failed
//   with an error kind); the agent destroying it is the item being cancelled
//   (kj's cancellation: the executor attaches whatever must stop the work, e.g.
//   a flag a worker thread polls). After either, the agent calls
//   WorkExecutor::Ended once with how the assignment left the worker. A
//   promise that rejects is reported as failed, kind internal.
// - The agent is the one record of what the worker holds: an item is held from
//   pullWork until Ended, including after its work finished while its result
//   waits for delivery. Disk and restore items take a slot from receipt until
//   their work ends or they are cancelled.
//
// Threading: everything runs on the caller's KJ event loop thread. No call
// blocks, and the executor is only ever called on that thread and must not
// block it (run blocking work elsewhere and resolve the promise through
// kj::Executor or a cross-thread fulfiller). Many agents may share one loop
// (the simulator runs a thousand); they share nothing but what the caller
// gives them (timer, network address, TLS context).
//
// Lifetime: the executor, the timer and whatever the connector uses must
// outlive the agent. Destroying the agent cancels every item's work (without
// calling Ended) and closes its connection.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/time.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/rpc/protocol.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::rpc {

// --- what the coordinator hands out (WorkItem, decoded) ---

struct AssignedVm {
  std::string name;
  std::string uuid;
  std::string host;
  std::string platform;
};

struct AssignedRepository {
  uint64_t id = 0;
  std::string name;
  std::string location;  // a path reachable from the worker, or a repository service address
  std::string token;     // for a service address; never logged
};

// The fields every kind of work item has.
struct Assignment {
  std::string id;  // assignmentId: unique per attempt, opaque
  uint64_t session_id = 0;
  AssignedVm vm;
};

struct SnapshotAssignment : Assignment {
  uint64_t snapshot_id = 0;
  std::vector<std::string> disks;
  std::string chain;
  std::string point_id;
  AssignedRepository repository;  // where the point is staged
};

struct DiskAssignment : Assignment {
  uint64_t task_id = 0;
  std::string disk;
  uint64_t snapshot_id = 0;
  std::string export_uri;
  AssignedRepository repository;
  std::string chain;
  std::string tier;  // host | cluster | any
  uint32_t attempt = 0;
  std::string point_id;
  std::string read_plan;  // the snapshot holder's DiskExportUri::read_plan, verbatim
  std::string worker_bandwidth;       // the API's cap for this worker ("": its own setting)
  uint64_t repository_bytes_per_s = 0;  // this task's share of the repository's cap (0: none)
};

struct ReleaseAssignment : Assignment {
  uint64_t snapshot_id = 0;
  bool commit = false;
  AssignedRepository repository;
  std::string point_id;
};

// Restore from a committed point onto the worker's own host (RestoreWork).
struct RestoreAssignment : Assignment {
  enum class Target { kFile, kIntoDomain, kNewDomain, kOverOriginal };
  uint64_t task_id = 0;
  AssignedRepository repository;
  std::string point_id;
  std::string disk;  // the point's disk; empty: the whole VM (kNewDomain, kOverOriginal)
  std::string tier;  // host
  uint32_t attempt = 0;
  Target target = Target::kFile;
  std::string path;         // kFile: absolute, must not exist
  std::string format;       // kFile: raw | qcow2; kNewDomain: qcow2 | raw
  std::string domain;       // kIntoDomain: a shut-off domain, by name or UUID
  std::string target_disk;  // kIntoDomain: its disk to replace
  std::string name;         // kNewDomain: the new domain's name
  std::string directory;    // kNewDomain: where the images go, or
  std::string pool;         //   a directory-backed storage pool
  bool keep_macs = false;   // kNewDomain
};

// "file", "into_domain", "new_domain", "over_original".
const char* RestoreTargetName(RestoreAssignment::Target target);

// --- what the worker reports ---

struct DiskExportUri {
  std::string disk;
  std::string uri;
  std::string read_plan;  // how to read it (docs/worker-protocol.md, "Read plans"); may be empty
  bool host_local = false;  // only a worker on the snapshot's host can open it
};

// How an item's work ended (WorkResult without the assignment id).
struct WorkOutcome {
  bool ok = false;
  ErrorKind error_kind = ErrorKind::kInternal;  // when !ok
  std::string error;                            // when !ok
  uint64_t bytes_read = 0;                      // disk work; restore: the bytes restored
  uint64_t bytes_stored = 0;                    // disk work; restore: data bytes written
  uint64_t bytes_sent = 0;                      // disk work: encoded, to the repository
  std::optional<StageBusy> stages;              // disk work: the stages' busy time
  std::vector<DiskExportUri> exports;           // snapshot work: one per disk
  std::string point_id;                         // release work with commit
  std::vector<std::string> log;                 // kept with the task

  static WorkOutcome Ok() {
    WorkOutcome o;
    o.ok = true;
    return o;
  }
  static WorkOutcome Failed(ErrorKind kind, std::string message) {
    WorkOutcome o;
    o.error_kind = kind;
    o.error = std::move(message);
    return o;
  }
};

struct InventoryDisk {
  std::string name;
  uint64_t size_bytes = 0;
  std::string format;
};

struct InventoryVm {
  std::string name;
  std::string uuid;
  std::string state;  // running | shut-off | paused
  std::vector<std::string> tags;
  std::vector<InventoryDisk> disks;
};

// RegisterRequest without the token, the version and `running` (the agent's).
struct WorkerIdentity {
  std::string host;
  std::string platform;  // proxmox | ovirt | ahv | libvirt
  std::string cluster;   // empty: keep the cluster configured for the host
  uint32_t task_slots = 1;
  std::string version;  // the worker software's
  bool own_host_snapshots_only = false;  // it cannot snapshot other hosts' VMs
};

// How an assignment left the worker.
enum class AssignmentEnd {
  kDone,          // result delivered and accepted
  kRejected,      // result delivered, accepted = false (stale): undo what only
                  // the worker knows about (e.g. remove a snapshot it took)
  kCancelled,     // by a heartbeat's cancel or a progress reply
  kDropped,       // not resumed after a reconnection
  kReportFailed,  // reportResult failed other than by a lost connection
};

// "done", "rejected", "cancelled", "dropped", "report_failed".
const char* AssignmentEndName(AssignmentEnd end);

// A disk task's progress (Progress without the assignment id).
struct ProgressReport {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  uint64_t bytes_stored = 0;
  uint64_t bytes_read = 0;          // from the source, so far
  uint64_t bytes_sent = 0;          // to the repository, so far
  std::optional<StageBusy> stages;  // the stages' busy time so far
};

// Given with each item; valid until its work promise is resolved or destroyed.
class WorkContext {
 public:
  virtual const std::string& assignment_id() const = 0;
  // Advisory (reportProgress). Not sent while unregistered. A reply saying
  // cancel ends the assignment as kCancelled.
  virtual void ReportProgress(const ProgressReport& report) = 0;
  void ReportProgress(uint64_t bytes_done, uint64_t bytes_total, uint64_t bytes_stored) {
    ProgressReport r;
    r.bytes_done = bytes_done;
    r.bytes_total = bytes_total;
    r.bytes_stored = bytes_stored;
    ReportProgress(r);
  }
  // Disk work: the share of its repository's bandwidth cap the coordinator
  // gave it last (the item's, then each progress reply's); 0: no cap.
  virtual uint64_t RepositoryShare() const = 0;

 protected:
  ~WorkContext() = default;
};

class WorkExecutor {
 public:
  // noexcept(false) as in kj: an executor may own promises (or an agent),
  // whose destructors are noexcept(false).
  virtual ~WorkExecutor() noexcept(false) = default;

  // Asked before every registerWorker.
  virtual WorkerIdentity Identity() = 0;
  // The VMs on the host; asked after every registration (reportInventory).
  virtual std::vector<InventoryVm> Inventory() = 0;
  // The snapshots it holds (taken, not yet released), asked before every
  // registerWorker; nullopt: it does not keep track (the coordinator then
  // assumes what it counts as held still is).
  virtual std::optional<std::vector<uint64_t>> HeldSnapshots() { return std::nullopt; }
  // Of those, the ones the coordinator does not count as this worker's
  // (RegisterReply.dropSnapshots): remove them. Called after registering,
  // before Ended of the assignments that were not resumed.
  virtual void DropSnapshots(const std::vector<uint64_t>& snapshot_ids) { (void)snapshot_ids; }

  // Start one item's work. They must return at once; the work goes on in the
  // promise (see the design note above). `item` is valid only during the
  // call (copy what the work needs); `context` until the promise resolves or
  // is destroyed.
  virtual kj::Promise<WorkOutcome> TakeSnapshot(const SnapshotAssignment& item,
                                                WorkContext& context) = 0;
  virtual kj::Promise<WorkOutcome> BackupDisk(const DiskAssignment& item, WorkContext& context) = 0;
  virtual kj::Promise<WorkOutcome> Release(const ReleaseAssignment& item, WorkContext& context) = 0;
  // Takes a slot, like a disk item.
  virtual kj::Promise<WorkOutcome> Restore(const RestoreAssignment& item, WorkContext& context) = 0;
  // A kind of WorkItem this build does not know (a newer coordinator). The
  // default fails it as internal, as the protocol asks.
  virtual kj::Promise<WorkOutcome> Unsupported(const Assignment& item, WorkContext& context);

  // The assignment is no longer held, its work promise already destroyed.
  // `reason` says why for every end but kDone.
  virtual void Ended(const std::string& assignment_id, AssignmentEnd end,
                     const std::string& reason) = 0;
};

struct WorkerAgentOptions {
  std::string token;    // the worker's token; never logged
  std::string log_tag;  // names this worker in log lines
  kj::Duration reconnect_delay = 500 * kj::MILLISECONDS;
  uint32_t pull_wait_ms = 1000;  // pullWork's waitMs
  // A coordinator that takes the connection but does not answer registerWorker
  // within this is given up on (the connection is retried).
  kj::Duration register_timeout = 30 * kj::SECONDS;
};

class WorkerAgent final : private kj::TaskSet::ErrorHandler {
 public:
  // Opens a new connection each time the agent (re)connects; e.g.
  // CoordinatorConnection::Connect on an address resolved once.
  using Connector = kj::Function<kj::Promise<kj::Own<CoordinatorConnection>>()>;

  WorkerAgent(kj::Timer& timer, Connector connect, WorkExecutor& executor,
              WorkerAgentOptions options);
  ~WorkerAgent();
  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;

  // Starts connecting; from then on the agent keeps itself registered until
  // destroyed.
  void Start();
  // The host's VMs changed (one appeared, went, or changed state): reports
  // executor.Inventory() now if registered; otherwise the next registration
  // reports it anyway.
  void InventoryChanged();

  bool registered() const { return session_ != nullptr; }
  size_t held() const { return items_.size(); }      // assignments not yet Ended
  uint64_t worker_id() const { return worker_id_; }  // of the last registration
  const std::string& worker_name() const { return worker_name_; }
  int registrations() const { return registrations_; }
  int connection_losses() const { return connection_losses_; }  // of registered sessions

 private:
  struct Item;

  kj::Promise<void> ConnectLoop();
  kj::Promise<void> Register();
  kj::Promise<void> SendInventory();
  kj::Promise<void> Serve();
  // A pullWork call failed: the session is broken.
  void taskFailed(kj::Exception&& e) override;
  void OnConnectionLost(const kj::Exception& e);
  kj::Promise<void> HeartbeatLoop();
  void MaybePull();
  void SendPull(uint32_t free_slots);
  void StartItem(WorkItem::Reader w);
  void SendProgress(Item& item, const ProgressReport& report);
  void Finish(Item& item, WorkOutcome outcome);
  void SendResult(Item& item);
  void Retire(const std::string& id, AssignmentEnd end, const std::string& reason);

  CoordinatorConnection& conn() { return *KJ_ASSERT_NONNULL(conn_); }
  WorkerSession::Client& session() { return KJ_ASSERT_NONNULL(session_); }

  kj::Timer& timer_;
  Connector connect_;
  WorkExecutor& executor_;
  WorkerAgentOptions options_;
  uint32_t slots_ = 1;  // of the last registration

  std::map<std::string, kj::Own<Item>> items_;  // held, by assignment id
  // Ended items, destroyed on a later turn: an item may end inside one of its
  // own callbacks.
  std::vector<kj::Own<Item>> graveyard_;
  kj::Promise<void> sweep_ = nullptr;
  bool sweep_scheduled_ = false;
  int running_disk_ = 0;  // slot-taking items (disk, restore) whose work has not ended

  uint64_t worker_id_ = 0;
  std::string worker_name_;
  uint32_t hb_interval_ms_ = 5000;
  uint32_t hb_deadline_ms_ = 15000;
  int registrations_ = 0;
  int connection_losses_ = 0;
  int failed_attempts_ = 0;
  std::string last_error_;
  bool connected_ = false;

  // Destroyed bottom-up: the life loop first, then the pulls, the session,
  // the connection.
  kj::Maybe<kj::Own<CoordinatorConnection>> conn_;
  kj::Maybe<WorkerSession::Client> session_;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> pull_failed_;
  kj::Maybe<kj::Own<kj::TaskSet>> pulls_;  // this connection's pulls
  bool positive_pull_ = false;             // a pull with freeSlots > 0 is outstanding
  bool zero_pull_ = false;                 // a pull with freeSlots = 0 is outstanding
  kj::Promise<void> life_ = nullptr;
};

}  // namespace ferry::rpc
