// SessionRunner: job sessions, their VM snapshots and per-disk tasks, from
// start to end, and the workers that run them.
//
// Design (docs/coordinator.md):
//   - The database is the truth; the runner keeps an in-memory mirror of live
//     work (workers, assignments, queues) that it rebuilds on start-up.
//   - A session makes one snapshot per VM (crash-consistent across its disks)
//     and one task per disk. Snapshot -> disk tasks read its exports ->
//     release (commit the restore point, remove the snapshot) once the VM's
//     last disk task has ended.
//   - Every hand-out of work is an assignment "<kind><id>.<attempt>"; results
//     that quote a stale assignment are refused, so a requeued task can never
//     be finished twice.
//   - A worker silent past its deadline is unreachable: its disk tasks go back
//     to the queue; snapshots it held are lost, so the VM's disks are re-read
//     from a new snapshot (a point mixing two snapshots would not be
//     crash-consistent).
//   - After a restart, running work stays with its worker if that worker
//     re-registers in time and still runs it; otherwise it is requeued.
//
// Locking: one mutex guards everything here, including the write connection.
// API reads use their own read-only connection and never take it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/json.hpp>

#include "ferry/common/bandwidth.h"
#include "ferry/common/stage_busy.h"
#include "ferry/coordinator/database.h"
#include "ferry/coordinator/local_repositories.h"
#include "ferry/rpc/worker_tokens.h"
#include "ferry/coordinator/host_locality_scheduler.h"
#include "ferry/coordinator/restore_request.h"

namespace ferry::coordinator {

struct RunnerOptions {
  int64_t heartbeat_interval_ms = 5000;
  int64_t heartbeat_deadline_ms = 15000;
};

// What a worker says about itself when it registers.
struct WorkerHello {
  std::string token;
  std::string host;
  std::string platform;
  std::string cluster;
  int task_slots = 0;
  std::string version;
  std::vector<std::string> running;
  // The snapshots the worker holds, when it reports them (RegisterRequest.reportsHeld).
  std::optional<std::vector<int64_t>> held_snapshots;
  bool own_host_snapshots_only = false;
};

struct WorkerWelcome {
  int64_t worker_id = 0;
  std::string worker_name;
  std::vector<std::string> resumed;
  std::vector<int64_t> drop_snapshots;  // of the worker's held snapshots, those not its own any more
  int64_t epoch = 0;  // this registration; pass to WorkerDisconnected
  int64_t host_id = 0;
};

struct InventoryDisk {
  std::string name;
  int64_t size_bytes = 0;
  std::string format;
};
struct InventoryVm {
  std::string name;
  std::string uuid;
  std::string state;
  std::vector<std::string> tags;
  std::vector<InventoryDisk> disks;
};

// One piece of work handed to a worker (mirrors rpc::WorkItem).
struct WorkOrder {
  std::string assignment;
  int64_t session_id = 0;
  WorkKind kind = WorkKind::kDisk;
  std::string vm_name, vm_uuid, host, platform;
  int64_t snapshot_id = 0;
  std::vector<std::string> disks;  // snapshot work
  int64_t task_id = 0;             // disk work
  std::string disk, export_uri;
  std::string read_plan;           // disk work: the snapshot holder's plan, verbatim
  std::string tier;
  int attempt = 0;
  int64_t repository_id = 0;
  std::string repository_name, repository_location;
  std::string repository_token;  // for a service location; never logged
  std::string worker_bandwidth;  // disk work: the worker's cap as configured ("": none set)
  uint64_t repository_bytes_per_s = 0;  // disk work: this task's share of its repository's cap
  std::string chain;
  std::string point_id;            // the restore point reserved for the VM; restore work: the point restored
  bool commit = false;             // release work
  RestoreTarget restore;           // restore work: where to (disk: the point's disk, "" for a whole VM)
};

// One disk's export, as the snapshot's worker reported it.
struct ExportRecord {
  std::string disk, uri;
  std::string read_plan;  // opaque to the coordinator: handed to the disk task as it is
  bool host_local = false;  // only workers on the snapshot's host can read it
};

// A disk task's data-path statistics as its worker reports them: live with
// progress, final with the result (docs/worker-protocol.md, "Statistics").
struct TaskStats {
  int64_t bytes_read = 0;
  int64_t bytes_sent = 0;
  std::optional<StageBusy> stages;  // nullopt: the worker sent none (an older one)
};

// How a session ended, for the daemon log and notifications.
struct SessionOutcome {
  int64_t session_id = 0;
  std::string kind;   // backup, check, restore
  std::string job;    // "" for a restore
  std::string state;  // succeeded, warning, failed, stopped
  std::string reason;
  int64_t ended_at = 0;  // ms
};

struct WorkReport {
  std::string assignment;
  bool ok = false;
  std::string error_kind;
  std::string error;
  int64_t bytes_read = 0;
  int64_t bytes_stored = 0;
  int64_t bytes_sent = 0;
  std::optional<StageBusy> stages;
  std::vector<ExportRecord> exports;
  std::string point_id;
  std::vector<std::string> log;
};

class SessionRunner {
 public:
  using Clock = std::function<int64_t()>;  // milliseconds since the epoch

  SessionRunner(Database db, RunnerOptions options, Clock clock);
  ~SessionRunner();  // commits the open group

  // Rebuilds the in-memory state from the database (call once, at start).
  void Recover();

  // --- worker side (called by the RPC server) ---
  // Throws Error kBadInput (unknown token: refused) or kBadInput naming a field.
  WorkerWelcome RegisterWorker(const WorkerHello& hello);
  void WorkerDisconnected(int64_t worker_id, int64_t epoch);
  std::vector<std::string> Heartbeat(int64_t worker_id, const std::vector<std::string>& running);
  void ReportInventory(int64_t worker_id, const std::vector<InventoryVm>& vms);
  // `epoch` is the registration the pull came through (WorkerWelcome).
  std::vector<WorkOrder> PullWork(int64_t worker_id, int64_t epoch, int free_slots);
  // False: the assignment is not the worker's (any more). `repository_share`
  // (disk work): the task's share of its repository's bandwidth cap now.
  bool ReportProgress(int64_t worker_id, const std::string& assignment, int64_t done,
                      int64_t total, int64_t stored, const TaskStats& stats = {},
                      uint64_t* repository_share = nullptr);
  bool ReportResult(int64_t worker_id, const WorkReport& report);

  // --- API side ---
  // Starts a session of the job; returns its id: of kind backup, or of kind
  // copy for a copy job (run by the repository lifecycle). kNotFound for an
  // unknown job, ConflictError while one of its sessions runs.
  int64_t StartJob(int64_t job_id, const std::string& trigger);
  // Stops the job's running session; returns its id, or nullopt if none runs.
  std::optional<int64_t> StopJob(int64_t job_id);
  // Starts a restore session (POST /restores); returns its id. The request's
  // form is checked already (ParseRestoreRequest); what the database refutes
  // is a FieldError: no such point, the point has no such disk, no such host,
  // no worker on it, a libvirt target on a host of another platform.
  int64_t StartRestore(const RestoreRequest& request);
  // Stops a session of any kind (POST /sessions/{id}/stop). kNotFound for an
  // unknown session; false if it is not running (ended, or stopping already).
  bool StopSession(int64_t session_id);
  // Configuration changes that the scheduler must see.
  void RepositoryChanged(int64_t repository_id, int task_slots, const std::string& bandwidth);
  void RepositoryRemoved(int64_t repository_id);
  // From now on, repositories at local paths are handed to workers as
  // `service_base`/NAME (ferry+tls://HOST:PORT) with a token of `local` for
  // that worker and repository (local_repositories.h). Call before serving.
  void ServeLocalRepositories(std::string service_base, std::shared_ptr<LocalRepositories> local);
  void HostChanged(int64_t host_id, const std::string& name, const std::string& cluster);
  void JobScheduleChanged(int64_t job_id);

  // Runs fn(Database&) under the runner's lock in one transaction: for
  // configuration changes, which must not interleave with scheduling.
  template <typename Fn>
  auto Write(Fn&& fn) {
    std::lock_guard lock(mu_);
    OwnTransaction tx(*this);
    auto result = fn(db_);
    tx.Commit();
    return result;
  }

  // Time-driven work: heartbeat deadlines, due retries, due schedules.
  void Tick();

  // Group commit. The hot worker calls (PullWork, ReportResult, Heartbeat,
  // WorkerDisconnected) write into one open transaction, each inside its
  // own savepoint, instead of committing one by one; CommitGroup() ends it.
  // The RPC server calls it once its event loop has run every ready call
  // and only then answers those calls, so nothing is acknowledged before it
  // is stored. Every other writer commits the open group first.
  // If a commit fails the runner refuses all further work (FatalError(),
  // the fatal handler is called once): its memory no longer matches the
  // database, and a restart rebuilds it from there.
  void CommitGroup();
  void SetFatalHandler(std::function<void(const std::string&)> handler);
  // Called, under the runner's lock (so: only a notification), when a
  // backup session ends with its lifecycle step due (repository_lifecycle.h).
  // `stopped`: a session of kind check was asked to stop (its check is
  // interrupted; repository_lifecycle.h).
  void SetLifecycleNotifier(std::function<void()> notify, std::function<void(int64_t session_id)> stopped = {});
  // A line in a session's log, in a transaction of its own.
  void AddSessionLog(int64_t session_id, const std::string& level, const std::string& message);
  // Called, under the runner's lock (so: quick), each time a session of any
  // kind ends, after the daemon log says so (session_webhook.h takes it).
  void SetSessionEndHandler(std::function<void(const SessionOutcome&)> handler);
  // A session ended outside the runner (a health check): logged and handed on.
  void NoteSessionEnded(const SessionOutcome& outcome);
  std::string FatalError();  // empty while healthy

  // Bumped whenever new work may be available (long polls re-check).
  uint64_t WorkGeneration() const { return work_generation_.load(); }

  // Which parked pulls may now find work: those of workers on `hosts`, the
  // `workers` named, or everyone. Taken (and cleared) by the RPC server, so a
  // burst of results wakes the few workers concerned, not all 1,000.
  struct Wakeups {
    bool all = false;
    std::set<int64_t> hosts;
    std::set<int64_t> workers;
  };
  Wakeups TakeWakeups();

  struct Stats {
    size_t queued = 0;
    size_t live_assignments = 0;
    uint64_t assignments_made = 0;
  };
  Stats GetStats();

  int64_t heartbeat_interval_ms() const { return options_.heartbeat_interval_ms; }
  int64_t heartbeat_deadline_ms() const { return options_.heartbeat_deadline_ms; }

 private:
  struct Live {  // a live assignment
    WorkKind kind;
    int64_t id;
    int64_t worker_id;
    bool draining = false;  // canceled; its slot frees once the worker lets go
    int64_t repository_id = 0;
  };
  struct WorkerLive {
    int64_t host_id = 0;
    bool connected = false;
    int64_t last_heartbeat = 0;
    bool heartbeat_dirty = false;
    int64_t epoch = 0;
    bool unreachable = false;  // marked; its work already requeued
    // Marked unreachable while holding snapshots, now lost: if it comes back
    // on the same connection it must register again, so that the snapshots
    // it still holds are reconciled (RegisterReply.dropSnapshots).
    bool must_reregister = false;
  };

  void LoadTopology();
  // Session log rows wait in memory and are written in a few multi-row
  // INSERTs just before the transaction they belong to commits.
  struct LogRow {
    int64_t session_id;
    std::optional<int64_t> task_id, snapshot_id;
    int64_t at;
    std::string level, message;
  };
  void LogWorkerLines(int64_t session_id, std::optional<int64_t> task_id, std::optional<int64_t> snapshot_id,
                      const std::vector<std::string>& lines);
  void FlushLogLocked();
  // A transaction of its own (configuration changes, session set-up, the
  // tick): commits the open group first; its log rows are written at its
  // commit, or dropped with it.
  class OwnTransaction {
   public:
    explicit OwnTransaction(SessionRunner& runner);
    ~OwnTransaction();
    void Commit();

   private:
    SessionRunner& runner_;
    std::optional<Database::Transaction> tx_;
    bool committed_ = false;
  };
  void CheckUsableLocked() const;
  void JoinGroupLocked();
  void EndGroupLocked();
  // Stops the runner for good (see CommitGroup); always throws.
  [[noreturn]] void FailLocked(const std::string& what);
  void FlushProgress();
  int64_t EnsureHost(const std::string& name, const std::string& platform, const std::string& cluster);
  void Log(int64_t session_id, std::optional<int64_t> task_id, std::optional<int64_t> snapshot_id,
           const std::string& level, const std::string& message);
  void EnqueueSnapshot(int64_t snapshot_id);
  void EnqueueSnapshot(int64_t snapshot_id, int64_t host_id);
  void EnqueueTask(int64_t task_id);
  // `local_holder`: the worker holding a host-local export of the disk (the
  // task goes to it only), or 0.
  void EnqueueTask(int64_t task_id, int64_t host_id, int64_t repository_id, int64_t local_holder);
  // Whether the snapshot's export of `disk` can be read on its host only.
  bool HostLocalExport(int64_t snapshot_id, const std::string& disk);
  void EnqueueRelease(int64_t snapshot_id, int64_t holder, bool commit);
  void MarkUnreachable(int64_t worker_id, const std::string& why);
  void LoseSnapshot(int64_t snapshot_id, const std::string& why);
  void RequeueTask(int64_t task_id, const std::string& why);
  void FinishTask(int64_t task_id, const WorkReport& report);
  void FinishSnapshot(int64_t snapshot_id, const WorkReport& report);
  void FinishRelease(int64_t snapshot_id, const WorkReport& report);
  void FinishRestore(int64_t task_id, const WorkReport& report);
  void EnqueueRestore(int64_t task_id, int64_t host_id, int64_t repository_id);
  WorkOrder BuildRestoreOrder(const Placement& placement, int64_t worker_id);
  // A restore session ends with its task.
  void MaybeEndRestore(int64_t session_id);
  void StopSessionLocked(int64_t session_id);
  void MaybeRelease(int64_t snapshot_id);
  void MaybeEndSession(int64_t session_id);
  void CancelSessionWork(int64_t session_id, const std::string& why);
  void EndAssignment(const std::string& assignment);
  WorkOrder BuildOrder(const Placement& placement, int64_t worker_id);
  // The location and token a worker opens the order's repository with: a
  // local path through the coordinator's own service, a key made into this
  // worker's token; otherwise as recorded.
  void ResolveRepositoryAccess(WorkOrder& order, int64_t worker_id);
  // What every order for a snapshot's VM repeats (VM, host, job, repository,
  // exports), read once per snapshot rather than once per hand-out. Dropped
  // when the snapshot's exports change or it ends, and entirely when hosts,
  // repositories or inventories change.
  struct SnapshotContext {
    int64_t session_id = 0;
    std::string vm_name, vm_uuid, host, platform, chain;
    int64_t repository_id = 0;
    std::string repository_name, repository_location, repository_token;
    std::string point_id;                        // reserved for the VM's disks
    std::map<std::string, ExportRecord> exports;  // by disk, once ready
  };
  const SnapshotContext& ContextOf(int64_t snapshot_id);
  struct PlannedVm {
    int64_t vm_id, host_id;
    std::string name;
    std::vector<std::pair<std::string, int64_t>> disks;  // name, size
  };
  struct SessionPlan {
    int64_t session_id = 0;
    int64_t repository_id = 0;
    std::vector<PlannedVm> vms;
  };
  // Checks the job, resolves its selection, inserts the session row.
  SessionPlan PlanSession(int64_t job_id, const std::string& trigger);
  // A job of kind copy gets a session of kind copy, which the repository
  // lifecycle runs (repository_lifecycle.h); nullopt for a backup job.
  std::optional<int64_t> StartCopyLocked(int64_t job_id, const std::string& trigger);
  std::vector<std::pair<int64_t, std::string>> DueJobs(int64_t now);
  std::vector<std::pair<int64_t, std::string>> TickLocked();
  void PublishStats();
  void RefreshNextRun(int64_t job_id, int64_t after_ms);

  // The workers' RPC thread takes mu_ through this: while it waits, a
  // session being set up (StartJob) ends its batch and lets it in first.
  class WorkerSideLock {
   public:
    explicit WorkerSideLock(SessionRunner& runner) : runner_(runner) {
      runner_.workers_waiting_.fetch_add(1, std::memory_order_relaxed);
      runner_.mu_.lock();
      runner_.workers_waiting_.fetch_sub(1, std::memory_order_relaxed);
    }
    ~WorkerSideLock() { runner_.mu_.unlock(); }
    WorkerSideLock(const WorkerSideLock&) = delete;
    WorkerSideLock& operator=(const WorkerSideLock&) = delete;

   private:
    SessionRunner& runner_;
  };

  std::mutex mu_;
  std::atomic<int> workers_waiting_{0};
  Database db_;
  bool group_open_ = false;  // a group transaction is open on db_
  std::string fatal_;        // set when a commit failed; nothing more is scheduled
  std::function<void(const std::string&)> on_fatal_;
  std::function<void()> on_lifecycle_due_;
  std::function<void(int64_t)> on_check_stop_;
  std::function<void(const SessionOutcome&)> on_session_end_;
  void SessionEndedLocked(int64_t session_id, const std::string& state, const std::string& reason);
  void ReportEndLocked(const SessionOutcome& outcome);
  RunnerOptions options_;
  Clock clock_;
  HostLocalityScheduler scheduler_;
  std::unordered_map<std::string, Live> live_;  // by assignment id
  // Repositories' bandwidth caps (docs/throttling.md); absent: none. A disk
  // task gets cap / (the repository's running disk tasks), again with every
  // progress reply, so the tasks of all workers share the cap.
  std::unordered_map<int64_t, BandwidthSchedule> repository_bandwidth_;
  std::shared_ptr<LocalRepositories> local_repositories_;  // null: workers open local paths themselves
  std::string local_service_base_;
  void UpdateLocalRepository(int64_t repository_id);
  uint64_t RepositoryShare(int64_t repository_id) const;
  std::unordered_map<int64_t, WorkerLive> workers_;
  std::map<int64_t, int64_t> delayed_tasks_;      // task id -> not_before
  std::map<int64_t, int64_t> delayed_snapshots_;  // snapshot id -> not_before
  std::atomic<uint64_t> work_generation_{0};
  Wakeups wakeups_;
  void WakeAll() { wakeups_.all = true; work_generation_++; }
  uint64_t assignments_made_ = 0;
  std::atomic<size_t> stats_queued_{0}, stats_live_{0};
  std::atomic<uint64_t> stats_made_{0};
  int64_t last_schedule_check_ = 0;
  int64_t last_heartbeat_flush_ = 0;
  int64_t last_tick_ = 0;
  struct Progress {
    int64_t started_at = 0, done = 0, total = 0, stored = 0;
    double rate = 0;
    TaskStats stats;
  };
  std::unordered_map<int64_t, SnapshotContext> snapshot_context_;  // by snapshot id
  std::vector<LogRow> pending_log_;
  std::unordered_map<int64_t, Progress> progress_;  // by task id, until the next tick
  size_t draining_ = 0;  // live assignments canceled but not yet let go
};

// Opaque random tokens: "fy_" + 40 hex; stored as hex SHA-256 only.
std::string NewToken();
std::string HashToken(const std::string& token);

}  // namespace ferry::coordinator
