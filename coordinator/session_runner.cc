#include "ferry/coordinator/session_runner.h"

#include "ferry/coordinator/job_lifecycle.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstdio>

#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/schedule.h"
#include "ferry/coordinator/selection.h"

namespace json = boost::json;

namespace ferry::coordinator {
namespace {

std::string Hex(const unsigned char* data, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out += kDigits[data[i] >> 4];
    out += kDigits[data[i] & 15];
  }
  return out;
}

// Assignments are "<kind letter><id>.<attempt>"; the attempt is appended by
// the UPDATE that counts it (BuildOrder).
std::string AssignmentPrefix(WorkKind kind, int64_t id) {
  char letter = kind == WorkKind::kSnapshot ? 's'
                : kind == WorkKind::kDisk   ? 't'
                : kind == WorkKind::kRelease ? 'r'
                                             : 'x';  // a restore's task
  return letter + std::to_string(id) + ".";
}

std::string FormatBytes(int64_t bytes) {
  char buf[32];
  if (bytes >= (int64_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / 1073741824.0);
  else std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  return buf;
}

// The statistics columns of `tasks` (migration 4), bound in this order by
// BindStats: the busy times and remote_store are NULL when no stages came.
constexpr const char* kSetStats =
    "bytes_read = ?, bytes_sent = ?, wall_us = ?, source_busy_us = ?, compute_busy_us = ?, network_busy_us = ?, "
    "target_busy_us = ?, remote_store = ?";
constexpr int kStatsParams = 8;

int64_t Column(uint64_t v) { return static_cast<int64_t>(std::min<uint64_t>(v, INT64_MAX)); }

void BindStats(Statement& s, int first, int64_t bytes_read, int64_t bytes_sent, const std::optional<StageBusy>& b) {
  s.Bind(first, bytes_read).Bind(first + 1, bytes_sent);
  if (!b) {
    for (int i = 2; i < kStatsParams; ++i) s.BindNull(first + i);
    return;
  }
  s.Bind(first + 2, Column(b->wall_us)).Bind(first + 3, Column(b->source_us)).Bind(first + 4, Column(b->compute_us))
      .Bind(first + 5, Column(b->network_us)).Bind(first + 6, Column(b->target_us))
      .Bind(first + 7, int64_t{b->remote_store});
}

bool Retriable(const std::string& error_kind) {
  return error_kind != "bad_input" && error_kind != "not_found" && error_kind != "interrupted";
}

const std::set<std::string> kPlatforms = {"proxmox", "ovirt", "ahv", "libvirt"};

}  // namespace

std::string NewToken() {
  unsigned char raw[20];
  if (RAND_bytes(raw, sizeof raw) != 1) throw Error(ErrorKind::kEnvironment, "no randomness for a token");
  return "fy_" + Hex(raw, sizeof raw);
}

std::string HashToken(const std::string& token) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(token.data(), token.size(), digest, &n, EVP_sha256(), nullptr);
  return Hex(digest, n);
}

SessionRunner::SessionRunner(Database db, RunnerOptions options, Clock clock)
    : db_(std::move(db)), options_(options), clock_(std::move(clock)) {}

SessionRunner::~SessionRunner() {
  std::lock_guard lock(mu_);
  try {
    EndGroupLocked();
  } catch (const std::exception& e) {
    LogError(std::string("closing the database: ") + e.what());
  }
}

// ---------------------------------------------------------------------------
// Group commit

void SessionRunner::CheckUsableLocked() const {
  if (!fatal_.empty())
    throw Error(ErrorKind::kEnvironment, "the coordinator stopped scheduling: " + fatal_);
}

void SessionRunner::JoinGroupLocked() {
  CheckUsableLocked();
  if (group_open_) return;
  db_.Begin();
  group_open_ = true;
}

void SessionRunner::EndGroupLocked() {
  CheckUsableLocked();
  if (!group_open_) return;
  try {
    FlushLogLocked();
    db_.Commit();
    group_open_ = false;
  } catch (const std::exception& e) {
    FailLocked(std::string("committing to the database failed: ") + e.what());
  }
}

void SessionRunner::FailLocked(const std::string& what) {
  // The in-memory mirror holds changes the database refused (disk full, I/O
  // error): nothing more may be handed out from it. The open group is rolled
  // back unanswered; the daemon stops, and on restart Recover() rebuilds the
  // mirror from what was stored.
  if (group_open_) {
    group_open_ = false;
    db_.Rollback();
  }
  pending_log_.clear();
  fatal_ = what;
  LogError(fatal_ + "; stopping so that a restart rebuilds the state from the database");
  if (on_fatal_) on_fatal_(fatal_);
  throw Error(ErrorKind::kEnvironment, fatal_);
}

void SessionRunner::CommitGroup() {
  WorkerSideLock lock(*this);
  EndGroupLocked();
}

void SessionRunner::SetLifecycleNotifier(std::function<void()> notify, std::function<void(int64_t)> stopped) {
  std::lock_guard lock(mu_);
  on_lifecycle_due_ = std::move(notify);
  on_check_stop_ = std::move(stopped);
}

void SessionRunner::AddSessionLog(int64_t session_id, const std::string& level, const std::string& message) {
  std::lock_guard lock(mu_);
  OwnTransaction tx(*this);
  Log(session_id, std::nullopt, std::nullopt, level, message);
  tx.Commit();
}

void SessionRunner::SetSessionEndHandler(std::function<void(const SessionOutcome&)> handler) {
  std::lock_guard lock(mu_);
  on_session_end_ = std::move(handler);
}

void SessionRunner::NoteSessionEnded(const SessionOutcome& outcome) {
  std::lock_guard lock(mu_);
  ReportEndLocked(outcome);
}

void SessionRunner::SessionEndedLocked(int64_t session_id, const std::string& state, const std::string& reason) {
  SessionOutcome o;
  o.session_id = session_id;
  o.state = state;
  o.reason = reason;
  o.ended_at = clock_();
  Statement s = db_.Prepare("SELECT s.kind, COALESCE(j.name, '') FROM sessions s LEFT JOIN jobs j ON j.id = s.job_id WHERE s.id = ?");
  s.Bind(1, session_id);
  if (s.Step()) {
    o.kind = s.Text(0);
    o.job = s.Text(1);
  }
  ReportEndLocked(o);
}

void SessionRunner::ReportEndLocked(const SessionOutcome& o) {
  // The daemon log has every outcome: what an operator greps for.
  std::string line = o.kind + " session " + std::to_string(o.session_id) +
                     (o.job.empty() ? std::string() : " of job '" + o.job + "'") + " " + o.state + ": " + o.reason;
  if (o.state == "succeeded") LogInfo(line);
  else LogWarning(line);
  if (on_session_end_) on_session_end_(o);
}

void SessionRunner::SetFatalHandler(std::function<void(const std::string&)> handler) {
  std::lock_guard lock(mu_);
  on_fatal_ = std::move(handler);
}

std::string SessionRunner::FatalError() {
  std::lock_guard lock(mu_);
  return fatal_;
}

void SessionRunner::Log(int64_t session_id, std::optional<int64_t> task_id,
                        std::optional<int64_t> snapshot_id, const std::string& level,
                        const std::string& message) {
  pending_log_.push_back({session_id, task_id, snapshot_id, clock_(), level, message});
}

void SessionRunner::LogWorkerLines(int64_t session_id, std::optional<int64_t> task_id,
                                   std::optional<int64_t> snapshot_id, const std::vector<std::string>& lines) {
  // A worker's task log (WorkResult.log): "LEVEL message" lines, as
  // ferry::LogCapture keeps them; anything else is info.
  for (const std::string& line : lines) {
    std::string level = "info";
    std::string message = line;
    for (const auto& [prefix, name] : {std::pair<const char*, const char*>{"INFO ", "info"}, {"WARN ", "warning"},
                                       {"ERROR ", "error"}}) {
      if (line.starts_with(prefix)) {
        level = name;
        message = line.substr(std::char_traits<char>::length(prefix));
        break;
      }
    }
    Log(session_id, task_id, snapshot_id, level, message);
  }
}

void SessionRunner::FlushLogLocked() {
  // Multi-row INSERTs: per row far cheaper than one statement each, and a
  // 10,000-VM session writes about 70,000 rows.
  constexpr size_t kRowsPerInsert = 32;
  auto sql_for = [](size_t rows) {
    std::string sql = "INSERT INTO task_log (session_id, task_id, snapshot_id, at, level, message) VALUES ";
    for (size_t i = 0; i < rows; ++i) sql += i == 0 ? "(?, ?, ?, ?, ?, ?)" : ", (?, ?, ?, ?, ?, ?)";
    return sql;
  };
  static const std::string kFull = sql_for(kRowsPerInsert), kOne = sql_for(1);
  size_t done = 0;
  while (done < pending_log_.size()) {
    size_t rows = pending_log_.size() - done >= kRowsPerInsert ? kRowsPerInsert : 1;
    Statement& insert = db_.Cached(rows == kRowsPerInsert ? kFull : kOne);
    for (size_t i = 0; i < rows; ++i) {
      const LogRow& row = pending_log_[done + i];
      int base = static_cast<int>(i) * 6;
      insert.Bind(base + 1, row.session_id).Bind(base + 2, row.task_id).Bind(base + 3, row.snapshot_id)
          .Bind(base + 4, row.at).Bind(base + 5, row.level).Bind(base + 6, row.message);
    }
    insert.Run();
    done += rows;
  }
  pending_log_.clear();
}

SessionRunner::OwnTransaction::OwnTransaction(SessionRunner& runner) : runner_(runner) {
  runner_.EndGroupLocked();  // also writes the group's log rows: none are pending now
  tx_.emplace(runner_.db_);
}

SessionRunner::OwnTransaction::~OwnTransaction() {
  if (!committed_) runner_.pending_log_.clear();  // rolled back with it
}

void SessionRunner::OwnTransaction::Commit() {
  try {
    runner_.FlushLogLocked();
    tx_->Commit();
  } catch (const std::exception& e) {
    // Callers change the runner's memory inside their transaction.
    runner_.FailLocked(std::string("committing to the database failed: ") + e.what());
  }
  committed_ = true;
}

// ---------------------------------------------------------------------------
// Start-up

void SessionRunner::LoadTopology() {
  Statement hosts = db_.Prepare("SELECT id, name, cluster FROM hosts");
  while (hosts.Step()) scheduler_.SetHost(hosts.Int(0), hosts.Text(1), hosts.Text(2));
  Statement repos = db_.Prepare("SELECT id, task_slots, bandwidth FROM repositories");
  while (repos.Step()) {
    scheduler_.SetRepositorySlots(repos.Int(0), static_cast<int>(repos.Int(1)));
    if (!repos.Text(2).empty()) repository_bandwidth_[repos.Int(0)] = BandwidthSchedule::Parse(repos.Text(2));
  }
  int64_t now = clock_();
  Statement workers = db_.Prepare("SELECT id, host_id, task_slots FROM workers WHERE host_id IS NOT NULL");
  while (workers.Step()) {
    scheduler_.SetWorker(workers.Int(0), workers.Int(1), static_cast<int>(workers.Int(2)));
    // Everyone gets one deadline from now to come back after a restart.
    workers_[workers.Int(0)] = WorkerLive{workers.Int(1), false, now, false, 0};
  }
}

void SessionRunner::Recover() {
  std::lock_guard lock(mu_);
  LoadTopology();
  OwnTransaction tx(*this);
  db_.Cached("UPDATE workers SET state = 'disconnected' WHERE state = 'connected'").Run();
  Statement snaps = db_.Prepare(
      "SELECT s.id, s.state, s.worker_id, s.assignment, s.not_before, s.session_id FROM snapshots s "
      "JOIN sessions se ON se.id = s.session_id WHERE se.state IN ('running', 'stopping') "
      "AND s.state IN ('pending', 'taking', 'releasing')");
  std::set<int64_t> sessions;
  while (snaps.Step()) {
    int64_t id = snaps.Int(0);
    std::string state = snaps.Text(1);
    sessions.insert(snaps.Int(5));
    if (state == "pending") {
      if (snaps.OptInt(4).value_or(0) > clock_()) delayed_snapshots_[id] = *snaps.OptInt(4);
      else EnqueueSnapshot(id);
    } else {
      WorkKind kind = state == "taking" ? WorkKind::kSnapshot : WorkKind::kRelease;
      live_[snaps.Text(3)] = Live{kind, id, snaps.Int(2)};
    }
  }
  Statement tasks = db_.Prepare(
      "SELECT t.id, t.state, t.worker_id, t.assignment, t.not_before, t.repository_id, t.session_id, "
      "t.snapshot_id IS NULL FROM tasks t WHERE t.session_id IN (SELECT id FROM sessions WHERE state IN "
      "('running', 'stopping')) AND t.state IN ('queued', 'running')");
  while (tasks.Step()) {
    int64_t id = tasks.Int(0);
    sessions.insert(tasks.Int(6));
    if (tasks.Text(1) == "queued") {
      if (tasks.OptInt(4).value_or(0) > clock_()) delayed_tasks_[id] = *tasks.OptInt(4);
      else EnqueueTask(id);
    } else {
      WorkKind kind = tasks.Int(7) ? WorkKind::kRestore : WorkKind::kDisk;
      live_[tasks.Text(3)] = Live{kind, id, tasks.Int(2), false, tasks.Int(5)};
      scheduler_.AdoptRunning(tasks.Int(2), tasks.Int(5));
    }
  }
  // Sessions whose VMs were still being set up: stop them, releasing what
  // was already snapshotted.
  Statement half = db_.Prepare("SELECT id FROM sessions WHERE created = 0");
  std::vector<int64_t> half_made;
  while (half.Step()) half_made.push_back(half.Int(0));
  for (int64_t session : half_made) {
    db_.Prepare("UPDATE sessions SET state = 'stopping', created = 1, reason = 'the coordinator stopped while it "
                "was setting up this session' WHERE id = ?").Bind(1, session).Run();
    CancelSessionWork(session, "the coordinator stopped while it was setting up this session");
  }
  for (int64_t session : sessions)
    Log(session, std::nullopt, std::nullopt, "warning",
        "coordinator restarted; running work stays with its worker if it reconnects within " +
            std::to_string(options_.heartbeat_deadline_ms / 1000) + " s, else it is requeued");
  tx.Commit();
  // Sessions whose work all ended while the coordinator was down.
  Statement open = db_.Prepare("SELECT id FROM sessions WHERE state IN ('running', 'stopping')");
  std::vector<int64_t> open_sessions;
  while (open.Step()) open_sessions.push_back(open.Int(0));
  for (int64_t session : open_sessions) {
    OwnTransaction end_tx(*this);
    MaybeEndSession(session);
    end_tx.Commit();
  }
  LogInfo("recovered " + std::to_string(live_.size()) + " running assignments, " +
          std::to_string(scheduler_.QueuedCount()) + " queued work items");
}

// ---------------------------------------------------------------------------
// Queues

void SessionRunner::EnqueueSnapshot(int64_t snapshot_id) {
  Statement& s = db_.Cached("SELECT host_id FROM snapshots WHERE id = ?");
  s.Bind(1, snapshot_id);
  if (s.Step()) EnqueueSnapshot(snapshot_id, s.Int(0));
}

void SessionRunner::EnqueueSnapshot(int64_t snapshot_id, int64_t host_id) {
  scheduler_.Enqueue({WorkKind::kSnapshot, snapshot_id, host_id, 0, 0});
  wakeups_.hosts.insert(host_id);
  if (!scheduler_.HostCanServe(host_id, WorkKind::kSnapshot)) wakeups_.all = true;
  work_generation_++;
}

void SessionRunner::EnqueueTask(int64_t task_id) {
  // A restore's task has no snapshot: it goes to its target host.
  Statement& s = db_.Cached(
      "SELECT sn.host_id, t.repository_id, t.snapshot_id, t.disk, sn.worker_id, r.host_id FROM tasks t "
      "LEFT JOIN snapshots sn ON sn.id = t.snapshot_id LEFT JOIN restores r ON r.session_id = t.session_id "
      "AND t.snapshot_id IS NULL WHERE t.id = ?");
  s.Bind(1, task_id);
  if (!s.Step()) return;
  if (s.IsNull(2)) {
    if (!s.IsNull(5)) EnqueueRestore(task_id, s.Int(5), s.Int(1));
    return;
  }
  int64_t host_id = s.Int(0), repository_id = s.Int(1), snapshot_id = s.Int(2);
  std::string disk = s.Text(3);
  int64_t holder = s.IsNull(4) ? 0 : s.Int(4);
  EnqueueTask(task_id, host_id, repository_id, HostLocalExport(snapshot_id, disk) ? holder : 0);
}

bool SessionRunner::HostLocalExport(int64_t snapshot_id, const std::string& disk) {
  const SnapshotContext& context = ContextOf(snapshot_id);
  auto e = context.exports.find(disk);
  return e != context.exports.end() && e->second.host_local;
}

void SessionRunner::EnqueueTask(int64_t task_id, int64_t host_id, int64_t repository_id, int64_t local_holder) {
  QueuedWork work{WorkKind::kDisk, task_id, host_id, repository_id, local_holder};
  work.host_only = local_holder != 0;
  scheduler_.Enqueue(work);
  wakeups_.hosts.insert(host_id);
  if (!scheduler_.HostCanServe(host_id, WorkKind::kDisk)) wakeups_.all = true;
  work_generation_++;
}

void SessionRunner::EnqueueRestore(int64_t task_id, int64_t host_id, int64_t repository_id) {
  // Only the target host's workers may take it: nobody else needs waking.
  scheduler_.Enqueue({WorkKind::kRestore, task_id, host_id, repository_id, 0});
  wakeups_.hosts.insert(host_id);
  work_generation_++;
}

void SessionRunner::EnqueueRelease(int64_t snapshot_id, int64_t holder, bool commit) {
  scheduler_.Enqueue({WorkKind::kRelease, snapshot_id, 0, 0, holder, commit});
  wakeups_.workers.insert(holder);
  work_generation_++;
}

void SessionRunner::EndAssignment(const std::string& assignment) {
  auto it = live_.find(assignment);
  if (it == live_.end()) return;
  if (TakesSlot(it->second.kind)) {
    progress_.erase(it->second.id);
    // A freed worker slot matters to that worker's host (and to hosts whose
    // work it may take). A freed slot of a full repository may unblock work
    // anywhere, but the worker letting go of it is woken anyway and takes it
    // if its own host still has disks queued; only otherwise is everyone
    // woken (with the repository the bottleneck, waking all 1,000 parked
    // workers for each ended task cost more than the hand-outs).
    bool repository_was_full = scheduler_.RepositoryFull(it->second.repository_id);
    scheduler_.TaskEnded(it->second.worker_id, it->second.repository_id);
    auto worker = workers_.find(it->second.worker_id);
    bool finisher_takes_it = worker != workers_.end() && worker->second.connected &&
                             scheduler_.HostHasQueuedDisks(worker->second.host_id);
    if (repository_was_full && !finisher_takes_it) wakeups_.all = true;
    if (worker != workers_.end()) wakeups_.hosts.insert(worker->second.host_id);
    wakeups_.workers.insert(it->second.worker_id);
  }
  if (it->second.draining) --draining_;
  live_.erase(it);
}

// ---------------------------------------------------------------------------
// Workers

int64_t SessionRunner::EnsureHost(const std::string& name, const std::string& platform,
                                  const std::string& cluster) {
  Statement find = db_.Prepare("SELECT id, cluster FROM hosts WHERE name = ?");
  find.Bind(1, name);
  if (find.Step()) {
    int64_t id = find.Int(0);
    if (find.Text(1).empty() && !cluster.empty()) {
      db_.Cached("UPDATE hosts SET cluster = ? WHERE id = ?").Bind(1, cluster).Bind(2, id).Run();
      scheduler_.SetHost(id, name, cluster);
    }
    return id;
  }
  db_.Cached("INSERT INTO hosts (name, platform, cluster, created_at) VALUES (?, ?, ?, ?)")
      .Bind(1, name).Bind(2, platform).Bind(3, cluster).Bind(4, clock_()).Run();
  int64_t id = db_.LastInsertId();
  scheduler_.SetHost(id, name, cluster);
  return id;
}

WorkerWelcome SessionRunner::RegisterWorker(const WorkerHello& hello) {
  if (hello.host.empty()) throw FieldError("host", "must name the worker's hypervisor host");
  if (!kPlatforms.count(hello.platform))
    throw FieldError("platform", "'" + hello.platform + "' is not one of proxmox, ovirt, ahv, libvirt");
  if (hello.task_slots < 1 || hello.task_slots > 1024)
    throw FieldError("taskSlots", "must be between 1 and 1024");
  std::lock_guard lock(mu_);
  Statement find = db_.Prepare("SELECT id, name FROM workers WHERE token_hash = ?");
  find.Bind(1, HashToken(hello.token));
  if (!find.Step()) throw Error(ErrorKind::kBadInput, "worker token refused");
  WorkerWelcome welcome;
  welcome.worker_id = find.Int(0);
  welcome.worker_name = find.Text(1);
  int64_t now = clock_();

  OwnTransaction tx(*this);
  int64_t host_id = EnsureHost(hello.host, hello.platform, hello.cluster);
  db_.Cached("UPDATE workers SET host_id = ?, task_slots = ?, version = ?, state = 'connected', "
              "registered_at = ?, last_heartbeat_at = ? WHERE id = ?")
      .Bind(1, host_id).Bind(2, int64_t{hello.task_slots}).Bind(3, hello.version).Bind(4, now)
      .Bind(5, now).Bind(6, welcome.worker_id).Run();
  scheduler_.SetWorker(welcome.worker_id, host_id, hello.task_slots, hello.own_host_snapshots_only);
  scheduler_.SetWorkerConnected(welcome.worker_id, true);
  welcome.host_id = host_id;
  wakeups_.workers.insert(welcome.worker_id);
  WorkerLive& live_worker = workers_[welcome.worker_id];
  live_worker = WorkerLive{host_id, true, now, false, live_worker.epoch + 1};
  welcome.epoch = live_worker.epoch;

  // Work the coordinator thinks this worker runs: resumed if the worker still
  // runs it, requeued if not.
  std::set<std::string> still(hello.running.begin(), hello.running.end());
  std::vector<std::pair<std::string, Live>> lost;
  for (const auto& [assignment, live] : live_) {
    if (live.worker_id != welcome.worker_id) continue;
    if (still.count(assignment) && !live.draining) welcome.resumed.push_back(assignment);
    else lost.emplace_back(assignment, live);
  }
  for (const auto& [assignment, live] : lost) {
    EndAssignment(assignment);
    if (live.draining) continue;
    if (TakesSlot(live.kind)) {
      RequeueTask(live.id, "worker " + welcome.worker_name + " re-registered without it");
    } else if (live.kind == WorkKind::kSnapshot) {
      db_.Cached("UPDATE snapshots SET state = 'pending', worker_id = NULL WHERE id = ?").Bind(1, live.id).Run();
      EnqueueSnapshot(live.id);
    } else {
      Statement c = db_.Prepare("SELECT 1 FROM tasks WHERE snapshot_id = ? AND state != 'succeeded'");
      c.Bind(1, live.id);
      EnqueueRelease(live.id, welcome.worker_id, !c.Step());
    }
  }
  if (hello.held_snapshots) {
    // Reconcile what the worker holds with what the coordinator counts as
    // its own. A snapshot whose snapshot or release assignment was resumed
    // is being worked on (a release may already have taken it out of the
    // worker's list): left alone.
    std::set<int64_t> busy;
    for (const std::string& assignment : welcome.resumed) {
      auto live = live_.find(assignment);
      if (live != live_.end() && (live->second.kind == WorkKind::kSnapshot || live->second.kind == WorkKind::kRelease))
        busy.insert(live->second.id);
    }
    std::set<int64_t> held(hello.held_snapshots->begin(), hello.held_snapshots->end());
    Statement mine = db_.Prepare(
        "SELECT id FROM snapshots WHERE worker_id = ? AND state IN ('taking', 'ready', 'releasing')");
    mine.Bind(1, welcome.worker_id);
    std::set<int64_t> counted;
    std::vector<int64_t> gone;
    while (mine.Step()) {
      int64_t id = mine.Int(0);
      counted.insert(id);
      // A process that restarted holds none of its predecessor's.
      if (!held.count(id) && !busy.count(id)) gone.push_back(id);
    }
    for (int64_t snapshot : gone)
      LoseSnapshot(snapshot, "its holder, worker " + welcome.worker_name + ", re-registered without it (restarted)");
    for (int64_t id : held)
      if (!counted.count(id)) welcome.drop_snapshots.push_back(id);
  }
  tx.Commit();
  work_generation_++;
  LogInfo("worker " + welcome.worker_name + " registered: host " + hello.host + ", " +
          std::to_string(hello.task_slots) + " slots, version " + hello.version + ", " +
          std::to_string(welcome.resumed.size()) + " assignments resumed");
  return welcome;
}

void SessionRunner::WorkerDisconnected(int64_t worker_id, int64_t epoch) {
  std::lock_guard lock(mu_);
  auto it = workers_.find(worker_id);
  // A stale connection noticed after the worker re-registered changes nothing;
  // neither does any disconnect once the runner has stopped (a failed commit:
  // every connection closes at once as the daemon exits).
  if (it == workers_.end() || !it->second.connected || it->second.epoch != epoch || !fatal_.empty()) return;
  // No new work; its running work waits for the deadline (it may reconnect).
  it->second.connected = false;
  scheduler_.SetWorkerConnected(worker_id, false);
  JoinGroupLocked();
  db_.Cached("UPDATE workers SET state = 'disconnected' WHERE id = ? AND state = 'connected'")
      .Bind(1, worker_id).Run();
  WakeAll();  // its host's work may now go to workers elsewhere
}

std::vector<std::string> SessionRunner::Heartbeat(int64_t worker_id,
                                                  const std::vector<std::string>& running) {
  WorkerSideLock lock(*this);
  WorkerLive& worker = workers_[worker_id];
  if (worker.must_reregister) {
    throw Error(ErrorKind::kRetryable, "this worker was declared unreachable and the snapshots it held were "
                                       "taken again elsewhere; register again");
  }
  worker.last_heartbeat = clock_();
  worker.heartbeat_dirty = true;
  worker.unreachable = false;
  if (!worker.connected) {
    // Marked unreachable while merely slow: it is back. Its old work was
    // requeued, so all of it is in the cancel list below.
    worker.connected = true;
    scheduler_.SetWorkerConnected(worker_id, true);
    JoinGroupLocked();
    db_.Cached("UPDATE workers SET state = 'connected' WHERE id = ?").Bind(1, worker_id).Run();
  }
  std::vector<std::string> cancel;
  std::set<std::string> reported(running.begin(), running.end());
  for (const std::string& assignment : running) {
    auto it = live_.find(assignment);
    if (it == live_.end() || it->second.worker_id != worker_id || it->second.draining)
      cancel.push_back(assignment);
  }
  // Canceled work the worker has let go of frees its slot now.
  std::vector<std::string> released;
  if (draining_ > 0)
    for (const auto& [assignment, live] : live_)
      if (live.worker_id == worker_id && live.draining && !reported.count(assignment))
        released.push_back(assignment);
  for (const std::string& assignment : released) EndAssignment(assignment);
  if (!released.empty()) work_generation_++;
  return cancel;
}

void SessionRunner::ReportInventory(int64_t worker_id, const std::vector<InventoryVm>& vms) {
  std::lock_guard lock(mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  int64_t host_id = it->second.host_id;
  int64_t now = clock_();
  snapshot_context_.clear();  // a VM's uuid may change
  OwnTransaction tx(*this);
  // VMs no longer reported stay (sessions and points refer to them) as "missing".
  db_.Cached("UPDATE vms SET state = 'missing' WHERE host_id = ?").Bind(1, host_id).Run();
  for (const InventoryVm& vm : vms) {
    json::array tags;
    for (const auto& tag : vm.tags) tags.emplace_back(tag);
    // A VM is one VM by uuid: it may have moved here from another host.
    std::optional<int64_t> vm_id;
    if (!vm.uuid.empty()) {
      Statement by_uuid = db_.Prepare("SELECT id FROM vms WHERE uuid = ? AND uuid != '' LIMIT 1");
      by_uuid.Bind(1, vm.uuid);
      if (by_uuid.Step()) vm_id = by_uuid.Int(0);
    }
    Statement by_name = db_.Prepare("SELECT id FROM vms WHERE host_id = ? AND name = ?");
    by_name.Bind(1, host_id).Bind(2, vm.name);
    std::optional<int64_t> same_name;
    if (by_name.Step()) same_name = by_name.Int(0);
    if (vm_id && same_name && *same_name != *vm_id) {
      // Another VM of that name was here before: keep its row (history refers
      // to it) under a name that frees this one.
      db_.Cached("UPDATE vms SET name = name || '~' || id, state = 'missing' WHERE id = ?").Bind(1, *same_name).Run();
    }
    if (!vm_id) vm_id = same_name;
    if (vm_id) {
      db_.Cached("UPDATE vms SET host_id = ?, name = ?, uuid = ?, state = ?, tags = ?, seen_at = ? WHERE id = ?")
          .Bind(1, host_id).Bind(2, vm.name).Bind(3, vm.uuid).Bind(4, vm.state)
          .Bind(5, json::serialize(tags)).Bind(6, now).Bind(7, *vm_id).Run();
    } else {
      db_.Cached("INSERT INTO vms (host_id, name, uuid, state, tags, seen_at) VALUES (?, ?, ?, ?, ?, ?)")
          .Bind(1, host_id).Bind(2, vm.name).Bind(3, vm.uuid).Bind(4, vm.state)
          .Bind(5, json::serialize(tags)).Bind(6, now).Run();
      vm_id = db_.LastInsertId();
    }
    db_.Cached("DELETE FROM disks WHERE vm_id = ?").Bind(1, *vm_id).Run();
    for (const InventoryDisk& disk : vm.disks)
      db_.Cached("INSERT OR REPLACE INTO disks (vm_id, name, size_bytes, format) VALUES (?, ?, ?, ?)")
          .Bind(1, *vm_id).Bind(2, disk.name).Bind(3, disk.size_bytes).Bind(4, disk.format).Run();
  }
  tx.Commit();
}

void SessionRunner::MarkUnreachable(int64_t worker_id, const std::string& why) {
  WorkerLive& worker = workers_[worker_id];
  worker.connected = false;
  worker.unreachable = true;
  scheduler_.SetWorkerConnected(worker_id, false);
  WakeAll();
  db_.Cached("UPDATE workers SET state = 'unreachable' WHERE id = ?").Bind(1, worker_id).Run();
  LogWarning("worker " + std::to_string(worker_id) + " unreachable: " + why);
  std::vector<std::pair<std::string, Live>> mine;
  for (const auto& [assignment, live] : live_)
    if (live.worker_id == worker_id) mine.emplace_back(assignment, live);
  for (const auto& [assignment, live] : mine) {
    EndAssignment(assignment);
    if (live.draining) continue;
    if (TakesSlot(live.kind)) {
      RequeueTask(live.id, "worker unreachable (" + why + ")");
    } else if (live.kind == WorkKind::kSnapshot) {
      db_.Cached("UPDATE snapshots SET state = 'pending', worker_id = NULL WHERE id = ?").Bind(1, live.id).Run();
      EnqueueSnapshot(live.id);
    }
  }
  // Snapshots it holds are gone with it.
  Statement held = db_.Prepare("SELECT id FROM snapshots WHERE worker_id = ? AND state IN ('ready', 'releasing')");
  held.Bind(1, worker_id);
  std::vector<int64_t> lost;
  while (held.Step()) lost.push_back(held.Int(0));
  for (int64_t snapshot : lost) LoseSnapshot(snapshot, "its holder, worker " + std::to_string(worker_id) + ", is unreachable");
  if (!lost.empty()) worker.must_reregister = true;
}

void SessionRunner::RequeueTask(int64_t task_id, const std::string& why) {
  db_.Cached("UPDATE tasks SET state = 'queued', worker_id = NULL, not_before = NULL WHERE id = ?")
      .Bind(1, task_id).Run();
  Statement s = db_.Prepare("SELECT session_id FROM tasks WHERE id = ?");
  s.Bind(1, task_id);
  if (s.Step()) Log(s.Int(0), task_id, std::nullopt, "warning", "requeued: " + why);
  EnqueueTask(task_id);
}

void SessionRunner::LoseSnapshot(int64_t snapshot_id, const std::string& why) {
  // Every disk of the VM is read again from a new snapshot: a point mixing
  // two snapshots would not be crash-consistent.
  Statement tasks = db_.Prepare("SELECT id, assignment, state FROM tasks WHERE snapshot_id = ?");
  tasks.Bind(1, snapshot_id);
  std::vector<int64_t> ids;
  while (tasks.Step()) {
    ids.push_back(tasks.Int(0));
    if (tasks.Text(2) == "queued") scheduler_.Dequeue(WorkKind::kDisk, tasks.Int(0));
    if (tasks.Text(2) == "running") {
      auto it = live_.find(tasks.Text(1));
      if (it != live_.end() && !it->second.draining) {
        it->second.draining = true;  // its reader fails anyway; the slot frees on let-go
        ++draining_;
      }
    }
    delayed_tasks_.erase(tasks.Int(0));
  }
  scheduler_.Dequeue(WorkKind::kRelease, snapshot_id);
  static const std::string sql = std::string("UPDATE tasks SET state = 'waiting', worker_id = NULL, bytes_done = 0, "
                                             "bytes_stored = 0, ended_at = NULL, error = '', ") +
                                 kSetStats + " WHERE snapshot_id = ? AND state != 'canceled'";
  Statement& reset = db_.Cached(sql);
  BindStats(reset, 1, 0, 0, std::nullopt);
  reset.Bind(1 + kStatsParams, snapshot_id).Run();
  snapshot_context_.erase(snapshot_id);
  db_.Cached("UPDATE snapshots SET state = 'pending', worker_id = NULL, exports = '[]' WHERE id = ?")
      .Bind(1, snapshot_id).Run();
  Statement s = db_.Prepare("SELECT session_id FROM snapshots WHERE id = ?");
  s.Bind(1, snapshot_id);
  if (s.Step())
    Log(s.Int(0), std::nullopt, snapshot_id, "warning",
        "snapshot lost: " + why + "; taking a new one and re-reading all " + std::to_string(ids.size()) + " disks");
  EnqueueSnapshot(snapshot_id);
}

// ---------------------------------------------------------------------------
// Work hand-out

const SessionRunner::SnapshotContext& SessionRunner::ContextOf(int64_t snapshot_id) {
  auto it = snapshot_context_.find(snapshot_id);
  if (it != snapshot_context_.end()) return it->second;
  Statement& s = db_.Cached(
      "SELECT s.session_id, s.vm_name, v.uuid, h.name, h.platform, j.chain, r.id, r.name, r.location, "
      "s.exports, s.planned_point, r.token FROM snapshots s JOIN vms v ON v.id = s.vm_id JOIN hosts h ON h.id = s.host_id "
      "JOIN sessions se ON se.id = s.session_id JOIN jobs j ON j.id = se.job_id "
      "JOIN repositories r ON r.id = j.repository_id WHERE s.id = ?");
  s.Bind(1, snapshot_id);
  if (!s.Step()) throw Error(ErrorKind::kInternal, "snapshot " + std::to_string(snapshot_id) + " vanished");
  SnapshotContext context;
  context.session_id = s.Int(0);
  context.vm_name = s.Text(1);
  context.vm_uuid = s.Text(2);
  context.host = s.Text(3);
  context.platform = s.Text(4);
  context.chain = s.Text(5);
  context.repository_id = s.Int(6);
  context.repository_name = s.Text(7);
  context.repository_location = s.Text(8);
  context.repository_token = s.Text(11);
  json::value exports = json::parse(s.Text(9));
  for (const auto& e : exports.as_array()) {
    const auto& o = e.as_object();
    ExportRecord r{std::string(o.at("disk").as_string()), std::string(o.at("uri").as_string()), "", false};
    if (auto plan = o.find("read_plan"); plan != o.end() && plan->value().is_string()) {
      r.read_plan = std::string(plan->value().as_string());
    }
    if (auto local = o.find("host_local"); local != o.end() && local->value().is_bool()) {
      r.host_local = local->value().as_bool();
    }
    context.exports[r.disk] = std::move(r);
  }
  context.point_id = s.Text(10);
  return snapshot_context_.emplace(snapshot_id, std::move(context)).first->second;
}

void SessionRunner::ResolveRepositoryAccess(WorkOrder& order, int64_t worker_id) {
  if (local_repositories_ && !order.repository_location.empty() && order.repository_location[0] == '/') {
    // A path on this machine: through the coordinator's own service.
    order.repository_location = local_service_base_ + "/" + order.repository_name;
    order.repository_token = local_repositories_->TokenFor(worker_id, order.repository_name);
  } else if (rpc::WorkerTokenKey::LooksLikeKey(order.repository_token)) {
    // A ferry-repository that shares a key with us: a token for this worker
    // and this repository (the name on the service: the address's last part).
    const std::string& location = order.repository_location;
    const std::string remote_name = location.substr(location.rfind('/') + 1);
    order.repository_token = rpc::WorkerTokenKey::FromText(order.repository_token, "the repository's key")
                                 .Mint(worker_id, remote_name);
  }
}

WorkOrder SessionRunner::BuildOrder(const Placement& placement, int64_t worker_id) {
  if (placement.work.kind == WorkKind::kRestore) return BuildRestoreOrder(placement, worker_id);
  WorkOrder order;
  order.kind = placement.work.kind;
  order.tier = TierName(placement.tier);
  int64_t snapshot_id = placement.work.id;
  if (order.kind == WorkKind::kDisk) {
    order.task_id = placement.work.id;
    Statement& t = db_.Cached("SELECT snapshot_id, disk, attempt + 1 FROM tasks WHERE id = ?");
    t.Bind(1, order.task_id);
    if (!t.Step()) throw Error(ErrorKind::kInternal, "task " + std::to_string(order.task_id) + " vanished");
    snapshot_id = t.Int(0);
    order.disk = t.Text(1);
    order.attempt = static_cast<int>(t.Int(2));
    order.assignment = AssignmentPrefix(order.kind, order.task_id) + std::to_string(order.attempt);
    db_.Cached("UPDATE tasks SET state = 'running', worker_id = ?, tier = ?, tier_reason = ?, attempt = ?, "
               "assignment = ?, started_at = ?, not_before = NULL WHERE id = ?")
        .Bind(1, worker_id).Bind(2, order.tier).Bind(3, placement.reason).Bind(4, int64_t{order.attempt})
        .Bind(5, order.assignment).Bind(6, clock_()).Bind(7, order.task_id).Run();
    live_[order.assignment] = Live{WorkKind::kDisk, order.task_id, worker_id, false, placement.work.repository_id};
  } else {
    Statement& a = db_.Cached("SELECT attempt + 1 FROM snapshots WHERE id = ?");
    a.Bind(1, snapshot_id);
    if (!a.Step()) throw Error(ErrorKind::kInternal, "snapshot " + std::to_string(snapshot_id) + " vanished");
    order.attempt = static_cast<int>(a.Int(0));
    order.assignment = AssignmentPrefix(order.kind, snapshot_id) + std::to_string(order.attempt);
    if (order.kind == WorkKind::kSnapshot)
      db_.Cached("UPDATE snapshots SET state = 'taking', worker_id = ?, tier = ?, attempt = ?, assignment = ?, "
                 "not_before = NULL WHERE id = ?")
          .Bind(1, worker_id).Bind(2, order.tier).Bind(3, int64_t{order.attempt}).Bind(4, order.assignment)
          .Bind(5, snapshot_id).Run();
    else
      db_.Cached("UPDATE snapshots SET attempt = ?, assignment = ? WHERE id = ?")
          .Bind(1, int64_t{order.attempt}).Bind(2, order.assignment).Bind(3, snapshot_id).Run();
  }
  const SnapshotContext& context = ContextOf(snapshot_id);
  order.session_id = context.session_id;
  order.vm_name = context.vm_name;
  order.vm_uuid = context.vm_uuid;
  order.host = context.host;
  order.platform = context.platform;
  order.chain = context.chain;
  order.repository_id = context.repository_id;
  order.repository_name = context.repository_name;
  order.repository_location = context.repository_location;
  order.repository_token = context.repository_token;
  ResolveRepositoryAccess(order, worker_id);
  order.snapshot_id = snapshot_id;
  order.point_id = context.point_id;
  if (order.kind == WorkKind::kDisk) {
    Statement& w = db_.Cached("SELECT bandwidth FROM workers WHERE id = ?");
    w.Bind(1, worker_id);
    if (w.Step()) order.worker_bandwidth = w.Text(0);
    order.repository_bytes_per_s = RepositoryShare(order.repository_id);
    Log(order.session_id, order.task_id, std::nullopt, "info",
        order.vm_name + "/" + order.disk + ": attempt " + std::to_string(order.attempt) + " on worker " +
            std::to_string(worker_id) + " (" + order.tier + ": " + placement.reason + ")");
    if (auto e = context.exports.find(order.disk); e != context.exports.end()) {
      order.export_uri = e->second.uri;
      order.read_plan = e->second.read_plan;
    }
    return order;
  }
  if (order.kind == WorkKind::kSnapshot) {
    Statement& d = db_.Cached("SELECT disk FROM tasks WHERE snapshot_id = ? AND state != 'canceled' ORDER BY id");
    d.Bind(1, snapshot_id);
    while (d.Step()) order.disks.push_back(d.Text(0));
    Log(order.session_id, std::nullopt, snapshot_id, "info",
        order.vm_name + ": snapshot of " + std::to_string(order.disks.size()) + " disks by worker " +
            std::to_string(worker_id) + " (" + order.tier + ": " + placement.reason + ")");
  } else {
    order.commit = placement.work.commit;
  }
  live_[order.assignment] = Live{order.kind, snapshot_id, worker_id};
  return order;
}

std::vector<WorkOrder> SessionRunner::PullWork(int64_t worker_id, int64_t epoch, int free_slots) {
  WorkerSideLock lock(*this);
  auto worker = workers_.find(worker_id);
  if (worker == workers_.end() || !worker->second.connected) return {};
  // A pull still parked on a connection the worker has since replaced (it
  // re-registered before the old one was torn down) gets nothing: its answer
  // would go to a dead socket and the work would hang as "running" on a
  // worker that never heard of it.
  if (worker->second.epoch != epoch) return {};
  worker->second.last_heartbeat = clock_();
  worker->second.heartbeat_dirty = true;
  std::vector<Placement> placements = scheduler_.Pick(worker_id, std::max(free_slots, 0));
  if (placements.empty()) return {};
  std::vector<WorkOrder> orders;
  size_t log_rows = pending_log_.size();
  try {
    JoinGroupLocked();
    Database::Savepoint op(db_);
    for (const Placement& placement : placements) orders.push_back(BuildOrder(placement, worker_id));
    op.Release();
  } catch (...) {
    // Nothing was handed out: put everything back as it was.
    pending_log_.resize(log_rows);
    for (const WorkOrder& order : orders) live_.erase(order.assignment);
    for (const Placement& placement : placements) {
      if (TakesSlot(placement.work.kind)) scheduler_.TaskEnded(worker_id, placement.work.repository_id);
      scheduler_.Enqueue(placement.work);
    }
    throw;
  }
  assignments_made_ += orders.size();
  PublishStats();
  return orders;
}

uint64_t SessionRunner::RepositoryShare(int64_t repository_id) const {
  auto it = repository_bandwidth_.find(repository_id);
  if (it == repository_bandwidth_.end()) return 0;
  const uint64_t cap = it->second.BytesPerSecondAt(std::time(nullptr));
  if (cap == 0) return 0;
  const int running = std::max(1, scheduler_.RunningOnRepository(repository_id));
  return std::max<uint64_t>(1, cap / static_cast<uint64_t>(running));
}

bool SessionRunner::ReportProgress(int64_t worker_id, const std::string& assignment, int64_t done,
                                   int64_t total, int64_t stored, const TaskStats& stats,
                                   uint64_t* repository_share) {
  WorkerSideLock lock(*this);
  auto it = live_.find(assignment);
  if (it == live_.end() || it->second.worker_id != worker_id || it->second.draining) return false;
  if (!TakesSlot(it->second.kind)) return true;
  // Restores are not throttled (yet): only disk tasks get a share of the cap.
  if (repository_share && it->second.kind == WorkKind::kDisk) *repository_share = RepositoryShare(it->second.repository_id);
  // Progress is for watching, not for recovery: it is kept here and written
  // in one transaction per tick, not one commit per report.
  Progress& p = progress_[it->second.id];
  if (p.started_at == 0) {
    Statement& t = db_.Cached("SELECT started_at FROM tasks WHERE id = ?");
    t.Bind(1, it->second.id);
    p.started_at = t.Step() ? t.Int(0) : clock_();
  }
  double seconds = static_cast<double>(clock_() - p.started_at) / 1000.0;
  p.done = done;
  p.total = total;
  p.stored = stored;
  p.rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
  p.stats = stats;
  return true;
}

void SessionRunner::FlushProgress() {
  for (const auto& [task_id, p] : progress_) {
    static const std::string sql = std::string("UPDATE tasks SET bytes_done = ?, bytes_total = MAX(bytes_total, ?), "
                                               "bytes_stored = ?, rate = ?, ") +
                                   kSetStats + " WHERE id = ? AND state = 'running'";
    Statement& u = db_.Cached(sql);
    u.Bind(1, p.done).Bind(2, p.total).Bind(3, p.stored).Bind(4, p.rate);
    BindStats(u, 5, p.stats.bytes_read, p.stats.bytes_sent, p.stats.stages);
    u.Bind(5 + kStatsParams, task_id).Run();
  }
  progress_.clear();
}

// ---------------------------------------------------------------------------
// Results

bool SessionRunner::ReportResult(int64_t worker_id, const WorkReport& report) {
  WorkerSideLock lock(*this);
  auto it = live_.find(report.assignment);
  if (it == live_.end() || it->second.worker_id != worker_id) return false;
  Live live = it->second;
  EndAssignment(report.assignment);
  work_generation_++;  // a slot may have freed
  if (live.draining) return false;
  JoinGroupLocked();
  Database::Savepoint op(db_);
  try {
    switch (live.kind) {
      case WorkKind::kDisk: FinishTask(live.id, report); break;
      case WorkKind::kSnapshot: FinishSnapshot(live.id, report); break;
      case WorkKind::kRelease: FinishRelease(live.id, report); break;
      case WorkKind::kRestore: FinishRestore(live.id, report); break;
    }
  } catch (const std::exception& e) {
    // The assignment has ended in memory and the finish step may have queued
    // work before failing: memory and database disagree from here on
    // (FailLocked drops the group and its pending log rows).
    FailLocked("recording the result of " + report.assignment + " failed: " + e.what());
  }
  op.Release();
  return true;
}

void SessionRunner::FinishTask(int64_t task_id, const WorkReport& report) {
  int64_t now = clock_();
  if (report.ok) {
    Statement& t = db_.Cached("SELECT session_id, snapshot_id, disk, started_at FROM tasks WHERE id = ?");
    t.Bind(1, task_id);
    if (!t.Step()) return;
    int64_t session = t.Int(0), snapshot = t.Int(1);
    std::string disk = t.Text(2);
    double seconds = static_cast<double>(now - t.Int(3)) / 1000.0;
    double rate = seconds > 0 ? static_cast<double>(report.bytes_read) / seconds : 0;
    static const std::string sql = std::string("UPDATE tasks SET state = 'succeeded', bytes_done = ?, "
                                               "bytes_stored = ?, rate = ?, ended_at = ?, error = '', ") +
                                   kSetStats + " WHERE id = ?";
    Statement& u = db_.Cached(sql);
    u.Bind(1, report.bytes_read).Bind(2, report.bytes_stored).Bind(3, rate).Bind(4, now);
    BindStats(u, 5, report.bytes_read, report.bytes_sent, report.stages);
    u.Bind(5 + kStatsParams, task_id).Run();
    const SnapshotContext& context = ContextOf(snapshot);
    LogWorkerLines(session, task_id, std::nullopt, report.log);
    Log(session, task_id, std::nullopt, "info",
        context.vm_name + "/" + disk + ": done, " + FormatBytes(report.bytes_read) + " read, " +
            FormatBytes(report.bytes_stored) + " stored" +
            (report.stages ? "; " + report.stages->Describe() : ""));
    MaybeRelease(snapshot);
    return;
  }
  Statement& t = db_.Cached(
      "SELECT t.session_id, t.snapshot_id, t.disk, t.failures, j.retry_count, j.retry_interval_s, t.started_at, "
      "t.tier, s.vm_name FROM tasks t JOIN sessions se ON se.id = t.session_id JOIN jobs j ON j.id = se.job_id "
      "JOIN snapshots s ON s.id = t.snapshot_id WHERE t.id = ?");
  t.Bind(1, task_id);
  if (!t.Step()) return;
  int64_t session = t.Int(0), snapshot = t.Int(1);
  std::string what = t.Text(8) + "/" + t.Text(2);
  LogWorkerLines(session, task_id, std::nullopt, report.log);
  int64_t failures = t.Int(3) + 1;
  int64_t retries = t.Int(4);
  std::string error = report.error.empty() ? "failed without a message" : report.error;
  if (failures <= retries && Retriable(report.error_kind)) {
    int64_t not_before = now + t.Int(5) * 1000;
    db_.Cached("UPDATE tasks SET state = 'queued', worker_id = NULL, failures = ?, error = ?, not_before = ? WHERE id = ?")
        .Bind(1, failures).Bind(2, error).Bind(3, not_before).Bind(4, task_id).Run();
    Log(session, task_id, std::nullopt, "warning",
        what + ": attempt failed (" + error + "); retry " + std::to_string(failures) + " of " +
            std::to_string(retries) + " in " + std::to_string(t.Int(5)) + " s");
    if (t.Int(5) == 0) EnqueueTask(task_id);
    else delayed_tasks_[task_id] = not_before;
    return;
  }
  db_.Cached("UPDATE tasks SET state = 'failed', failures = ?, error = ?, ended_at = ? WHERE id = ?")
      .Bind(1, failures).Bind(2, error).Bind(3, now).Bind(4, task_id).Run();
  Log(session, task_id, std::nullopt, "error",
      what + ": failed after " + std::to_string(failures) + " attempt(s): " + error);
  MaybeRelease(snapshot);
}

void SessionRunner::FinishSnapshot(int64_t snapshot_id, const WorkReport& report) {
  Statement& s = db_.Cached(
      "SELECT s.session_id, s.vm_name, s.failures, j.retry_count, j.retry_interval_s, se.state, s.host_id, s.worker_id "
      "FROM snapshots s JOIN sessions se ON se.id = s.session_id JOIN jobs j ON j.id = se.job_id WHERE s.id = ?");
  s.Bind(1, snapshot_id);
  if (!s.Step()) return;
  int64_t session = s.Int(0);
  std::string vm = s.Text(1);
  int64_t now = clock_();
  LogWorkerLines(session, std::nullopt, snapshot_id, report.log);
  if (report.ok) {
    json::array exports;
    for (const auto& e : report.exports) {
      json::object o{{"disk", e.disk}, {"uri", e.uri}};
      if (!e.read_plan.empty()) o["read_plan"] = e.read_plan;  // old rows lack it: read as ""
      if (e.host_local) o["host_local"] = true;                // old rows lack it: false
      exports.push_back(std::move(o));
    }
    db_.Cached("UPDATE snapshots SET state = 'ready', exports = ? WHERE id = ?")
        .Bind(1, json::serialize(exports)).Bind(2, snapshot_id).Run();
    if (auto context = snapshot_context_.find(snapshot_id); context != snapshot_context_.end()) {
      context->second.exports.clear();
      for (const auto& e : report.exports) context->second.exports[e.disk] = e;
    }
    Log(session, std::nullopt, snapshot_id, "info", vm + ": snapshot ready");
    int64_t host_id = s.Int(6);
    // (Not UPDATE ... RETURNING: SQLite builds a temporary table for that
    // on every run, which cost more than this SELECT.)
    Statement& waiting =
        db_.Cached("SELECT id, repository_id, disk FROM tasks WHERE snapshot_id = ? AND state = 'waiting'");
    waiting.Bind(1, snapshot_id);
    std::vector<std::tuple<int64_t, int64_t, bool>> tasks;
    std::map<std::string, bool> local;
    for (const auto& e : report.exports) local[e.disk] = e.host_local;
    while (waiting.Step()) tasks.emplace_back(waiting.Int(0), waiting.Int(1), local[waiting.Text(2)]);
    db_.Cached("UPDATE tasks SET state = 'queued' WHERE snapshot_id = ? AND state = 'waiting'").Bind(1, snapshot_id).Run();
    int64_t holder = s.IsNull(7) ? 0 : s.Int(7);
    for (const auto& [task_id, repository_id, host_only] : tasks)
      EnqueueTask(task_id, host_id, repository_id, host_only ? holder : 0);
    if (tasks.empty()) MaybeRelease(snapshot_id);  // a stopped session canceled them: release at once
    return;
  }
  int64_t failures = s.Int(2) + 1;
  std::string error = report.error.empty() ? "failed without a message" : report.error;
  if (failures <= s.Int(3) && Retriable(report.error_kind) && s.Text(5) == "running") {
    int64_t not_before = now + s.Int(4) * 1000;
    db_.Cached("UPDATE snapshots SET state = 'pending', worker_id = NULL, failures = ?, error = ?, not_before = ? WHERE id = ?")
        .Bind(1, failures).Bind(2, error).Bind(3, not_before).Bind(4, snapshot_id).Run();
    Log(session, std::nullopt, snapshot_id, "warning",
        vm + ": snapshot failed (" + error + "); retry " + std::to_string(failures) + " of " +
            std::to_string(s.Int(3)) + " in " + std::to_string(s.Int(4)) + " s");
    if (s.Int(4) == 0) EnqueueSnapshot(snapshot_id);
    else delayed_snapshots_[snapshot_id] = not_before;
    return;
  }
  db_.Cached("UPDATE snapshots SET state = 'failed', failures = ?, error = ?, ended_at = ? WHERE id = ?")
      .Bind(1, failures).Bind(2, error).Bind(3, now).Bind(4, snapshot_id).Run();
  snapshot_context_.erase(snapshot_id);
  db_.Cached("UPDATE tasks SET state = 'failed', error = ?, ended_at = ? WHERE snapshot_id = ? AND state = 'waiting'")
      .Bind(1, "no snapshot: " + error).Bind(2, now).Bind(3, snapshot_id).Run();
  Log(session, std::nullopt, snapshot_id, "error", vm + ": snapshot failed: " + error);
  MaybeEndSession(session);
}

void SessionRunner::FinishRelease(int64_t snapshot_id, const WorkReport& report) {
  Statement& s = db_.Cached(
      "SELECT s.session_id, s.vm_name, s.vm_id, se.job_id, j.repository_id, j.chain FROM snapshots s "
      "JOIN sessions se ON se.id = s.session_id JOIN jobs j ON j.id = se.job_id WHERE s.id = ?");
  s.Bind(1, snapshot_id);
  if (!s.Step()) return;
  int64_t session = s.Int(0);
  std::string vm = s.Text(1);
  int64_t now = clock_();
  snapshot_context_.erase(snapshot_id);
  LogWorkerLines(session, std::nullopt, snapshot_id, report.log);
  if (report.ok) {
    db_.Cached("UPDATE snapshots SET state = 'released', point_id = ?, ended_at = ? WHERE id = ?")
        .Bind(1, report.point_id.empty() ? std::optional<std::string>() : report.point_id)
        .Bind(2, now).Bind(3, snapshot_id).Run();
    if (!report.point_id.empty()) {
      Statement& sums = db_.Cached("SELECT SUM(bytes_done), SUM(bytes_stored) FROM tasks WHERE snapshot_id = ?");
      sums.Bind(1, snapshot_id);
      sums.Step();
      // The point's disks, for restore requests to be checked against.
      Statement& disks = db_.Cached("SELECT disk, bytes_total FROM tasks WHERE snapshot_id = ? AND state = 'succeeded' ORDER BY disk");
      disks.Bind(1, snapshot_id);
      json::array disk_list;
      while (disks.Step()) disk_list.push_back(json::object{{"name", disks.Text(0)}, {"size_bytes", disks.Int(1)}});
      db_.Cached("INSERT OR IGNORE INTO points (point_id, repository_id, job_id, session_id, vm_id, vm_name, chain, "
                  "bytes_read, bytes_stored, created_at, disks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
          .Bind(1, report.point_id).Bind(2, s.Int(4)).Bind(3, s.Int(3)).Bind(4, session).Bind(5, s.Int(2))
          .Bind(6, vm).Bind(7, s.Text(5)).Bind(8, sums.Int(0)).Bind(9, sums.Int(1)).Bind(10, now)
          .Bind(11, json::serialize(disk_list)).Run();
      Log(session, std::nullopt, snapshot_id, "info", vm + ": restore point " + report.point_id + " committed; snapshot removed");
    } else {
      Log(session, std::nullopt, snapshot_id, "info", vm + ": snapshot removed, no restore point");
    }
  } else {
    std::string error = report.error.empty() ? "failed without a message" : report.error;
    db_.Cached("UPDATE snapshots SET state = 'failed', error = ?, ended_at = ? WHERE id = ?")
        .Bind(1, "release: " + error).Bind(2, now).Bind(3, snapshot_id).Run();
    Log(session, std::nullopt, snapshot_id, "error",
        vm + ": commit/release failed: " + error + " (the worker's snapshot hunter removes leftovers)");
  }
  MaybeEndSession(session);
}

void SessionRunner::MaybeRelease(int64_t snapshot_id) {
  Statement& s = db_.Cached("SELECT state, worker_id, session_id FROM snapshots WHERE id = ?");
  s.Bind(1, snapshot_id);
  if (!s.Step() || s.Text(0) != "ready") return;
  Statement& open = db_.Cached(
      "SELECT COUNT(*), SUM(state = 'succeeded'), SUM(state IN ('waiting', 'queued', 'running')) FROM tasks WHERE snapshot_id = ?");
  open.Bind(1, snapshot_id);
  open.Step();
  if (open.Int(2) > 0) return;
  Statement& session = db_.Cached("SELECT state FROM sessions WHERE id = ?");
  session.Bind(1, s.Int(2));
  session.Step();
  bool commit = open.Int(0) > 0 && open.Int(1) == open.Int(0) && session.Text(0) == "running";
  db_.Cached("UPDATE snapshots SET state = 'releasing' WHERE id = ?").Bind(1, snapshot_id).Run();
  EnqueueRelease(snapshot_id, s.Int(1), commit);
}

void SessionRunner::MaybeEndSession(int64_t session_id) {
  {
    Statement& kind = db_.Cached("SELECT kind FROM sessions WHERE id = ?");
    kind.Bind(1, session_id);
    if (kind.Step() && kind.Text(0) != "backup") {
      const bool restore = kind.Text(0) == "restore";
      kind.Reset();
      if (restore) MaybeEndRestore(session_id);
      return;  // a health check ends by itself (repository_lifecycle.h)
    }
  }
  Statement& still_open = db_.Cached(
      "SELECT 1 FROM snapshots WHERE session_id = ? AND state IN ('pending', 'taking', 'ready', 'releasing') LIMIT 1");
  still_open.Bind(1, session_id);
  if (still_open.Step()) return;
  Statement& open = db_.Cached(
      "SELECT COUNT(*), SUM(state IN ('pending', 'taking', 'ready', 'releasing')), SUM(point_id IS NOT NULL) "
      "FROM snapshots WHERE session_id = ?");
  open.Bind(1, session_id);
  open.Step();
  if (open.Int(1) > 0) return;
  Statement& session = db_.Cached("SELECT state, reason, created FROM sessions WHERE id = ?");
  session.Bind(1, session_id);
  if (!session.Step() || session.Int(2) == 0) return;
  std::string current = session.Text(0);
  if (current != "running" && current != "stopping") return;
  int64_t vms = open.Int(0), points = open.Int(2);
  std::string state, reason = session.Text(1);
  if (current == "stopping") {
    state = "stopped";
  } else if (vms > 0 && points == vms) {
    state = "succeeded";
    reason = std::to_string(points) + " of " + std::to_string(vms) + " VMs backed up";
  } else {
    Statement failed = db_.Prepare(
        "SELECT s.vm_name, COALESCE((SELECT t.disk || ': ' || t.error FROM tasks t WHERE t.snapshot_id = s.id "
        "AND t.state = 'failed' LIMIT 1), s.error) FROM snapshots s WHERE s.session_id = ? AND s.point_id IS NULL LIMIT 3");
    failed.Bind(1, session_id);
    std::string which;
    while (failed.Step()) which += (which.empty() ? "" : "; ") + failed.Text(0) + " (" + failed.Text(1) + ")";
    state = points > 0 ? "warning" : "failed";
    if (vms == 0 && reason.empty()) reason = "the selection matched no VM with disks";
    else reason = std::to_string(points) + " of " + std::to_string(vms) + " VMs backed up; failed: " + which;
  }
  // With new points, the job's lifecycle step (locks, retention, GC, space)
  // is due: recorded in the same transaction, so a restart finds it.
  db_.Cached("UPDATE sessions SET state = ?, reason = ?, ended_at = ?, lifecycle_state = ? WHERE id = ?")
      .Bind(1, state).Bind(2, reason).Bind(3, clock_())
      .Bind(4, points > 0 ? std::optional<std::string>("pending") : std::nullopt).Bind(5, session_id).Run();
  Log(session_id, std::nullopt, std::nullopt, state == "succeeded" ? "info" : "warning",
      "session " + state + ": " + reason);
  SessionEndedLocked(session_id, state, reason);
  if (points > 0 && on_lifecycle_due_) on_lifecycle_due_();
}

// ---------------------------------------------------------------------------
// Jobs and sessions

int64_t SessionRunner::StartJob(int64_t job_id, const std::string& trigger) {
  // The session row first, then its VMs in batches, each batch one
  // transaction that releases the lock: a job over 10,000 VMs neither stalls
  // the workers' RPC for seconds nor waits for all rows before work starts.
  // `created` stays 0 until the last batch; a restart in between stops the
  // session (Recover).
  SessionPlan plan;
  {
    std::lock_guard lock(mu_);
    if (std::optional<int64_t> copy = StartCopyLocked(job_id, trigger)) return *copy;
    plan = PlanSession(job_id, trigger);
  }
  // Batches of up to 500 VMs, each cut short as soon as the workers' RPC
  // thread waits for the lock; between batches that thread goes first (up
  // to 20 ms), so hand-outs and results keep flowing while a big session
  // is set up (std::mutex alone is not fair: this thread would take it
  // straight back).
  constexpr size_t kBatch = 500;
  size_t task_count = 0, vm_count = 0;
  size_t next = 0;
  while (next < plan.vms.size()) {
    std::lock_guard lock(mu_);
    Statement& state = db_.Cached("SELECT state FROM sessions WHERE id = ?");
    state.Bind(1, plan.session_id);
    if (!state.Step() || state.Text(0) != "running") break;  // stopped meanwhile
    OwnTransaction tx(*this);
    std::vector<std::pair<int64_t, int64_t>> snapshots;  // id, host
    int64_t now = clock_();
    size_t end = std::min(next + kBatch, plan.vms.size());
    for (; next < end; ++next) {
      if (!snapshots.empty() && workers_waiting_.load(std::memory_order_relaxed) > 0) break;
      const PlannedVm& vm = plan.vms[next];
      db_.Cached("INSERT INTO snapshots (session_id, vm_id, vm_name, host_id, state, created_at, planned_point) "
                 "VALUES (?, ?, ?, ?, 'pending', ?, ?)")
          .Bind(1, plan.session_id).Bind(2, vm.vm_id).Bind(3, vm.name).Bind(4, vm.host_id).Bind(5, now)
          .Bind(6, NewPointId()).Run();
      int64_t snapshot_id = db_.LastInsertId();
      snapshots.emplace_back(snapshot_id, vm.host_id);
      for (const auto& [disk, size] : vm.disks) {
        db_.Cached("INSERT INTO tasks (session_id, snapshot_id, vm_id, disk, repository_id, state, bytes_total) "
                   "VALUES (?, ?, ?, ?, ?, 'waiting', ?)")
            .Bind(1, plan.session_id).Bind(2, snapshot_id).Bind(3, vm.vm_id).Bind(4, disk)
            .Bind(5, plan.repository_id).Bind(6, size).Run();
        ++task_count;
      }
    }
    tx.Commit();
    vm_count += snapshots.size();
    for (const auto& [id, host_id] : snapshots) EnqueueSnapshot(id, host_id);
    mu_.unlock();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
    do std::this_thread::sleep_for(std::chrono::microseconds(200));
    while (workers_waiting_.load(std::memory_order_relaxed) > 0 && std::chrono::steady_clock::now() < deadline);
    mu_.lock();
  }
  std::lock_guard lock(mu_);
  OwnTransaction tx(*this);
  db_.Cached("UPDATE sessions SET created = 1 WHERE id = ?").Bind(1, plan.session_id).Run();
  if (vm_count < plan.vms.size())
    Log(plan.session_id, std::nullopt, std::nullopt, "warning",
        "stopped while being set up: " + std::to_string(vm_count) + " of " + std::to_string(plan.vms.size()) +
            " VMs (" + std::to_string(task_count) + " disk tasks) were created");
  MaybeEndSession(plan.session_id);  // nothing selected, or all done already
  tx.Commit();
  return plan.session_id;
}

std::optional<int64_t> SessionRunner::StartCopyLocked(int64_t job_id, const std::string& trigger) {
  Statement job = db_.Prepare("SELECT name, kind FROM jobs WHERE id = ?");
  job.Bind(1, job_id);
  if (!job.Step()) throw Error(ErrorKind::kNotFound, "job " + std::to_string(job_id) + " not found");
  if (job.Text(1) != "copy") return std::nullopt;
  const std::string name = job.Text(0);
  Statement running = db_.Prepare(
      "SELECT id FROM sessions WHERE job_id = ? AND kind = 'copy' AND state IN ('running', 'stopping')");
  running.Bind(1, job_id);
  if (running.Step()) throw ConflictError("job '" + name + "' already runs session " + std::to_string(running.Int(0)));
  OwnTransaction tx(*this);
  db_.Prepare("INSERT INTO sessions (job_id, kind, trigger, state, created_at) VALUES (?, 'copy', ?, 'running', ?)")
      .Bind(1, job_id).Bind(2, trigger).Bind(3, clock_()).Run();
  const int64_t id = db_.LastInsertId();
  tx.Commit();
  // The repository lifecycle runs it (repository_lifecycle.h).
  if (on_lifecycle_due_) on_lifecycle_due_();
  return id;
}

SessionRunner::SessionPlan SessionRunner::PlanSession(int64_t job_id, const std::string& trigger) {
  Statement job = db_.Prepare("SELECT name, repository_id, selection, exclude_disks FROM jobs WHERE id = ?");
  job.Bind(1, job_id);
  if (!job.Step()) throw Error(ErrorKind::kNotFound, "job " + std::to_string(job_id) + " not found");
  std::string job_name = job.Text(0);
  SessionPlan plan;
  plan.repository_id = job.Int(1);
  Statement running = db_.Prepare(
      "SELECT id FROM sessions WHERE job_id = ? AND kind = 'backup' AND state IN ('running', 'stopping')");
  running.Bind(1, job_id);
  if (running.Step())
    throw ConflictError("job '" + job_name + "' already runs session " + std::to_string(running.Int(0)));

  json::object selection = json::parse(job.Text(2)).as_object();
  json::array excludes = json::parse(job.Text(3)).as_array();

  int64_t now = clock_();
  OwnTransaction tx(*this);
  db_.Prepare("INSERT INTO sessions (job_id, trigger, state, created, created_at) VALUES (?, ?, 'running', 0, ?)")
      .Bind(1, job_id).Bind(2, trigger).Bind(3, now).Run();
  plan.session_id = db_.LastInsertId();
  // The resolution the job form's preview shows (selection.h).
  for (SelectedVm& vm : ResolveSelection(db_, selection, excludes)) {
    if (!vm.HasDisksToBackUp()) {
      Log(plan.session_id, std::nullopt, std::nullopt, "warning",
          vm.name + ": no disks to back up (all excluded?); skipped");
      continue;
    }
    plan.vms.push_back({vm.vm_id, vm.host_id, std::move(vm.name), {}});
    for (SelectedDisk& d : vm.disks)
      if (!d.excluded) plan.vms.back().disks.emplace_back(std::move(d.name), d.size_bytes);
  }
  size_t disks = 0;
  for (const PlannedVm& vm : plan.vms) disks += vm.disks.size();
  Log(plan.session_id, std::nullopt, std::nullopt, "info",
      "session started (" + trigger + "): " + std::to_string(plan.vms.size()) + " VMs, " + std::to_string(disks) +
          " disk tasks");
  tx.Commit();
  return plan;
}

void SessionRunner::CancelSessionWork(int64_t session_id, const std::string& why) {
  Statement tasks = db_.Prepare("SELECT id, state, assignment, snapshot_id IS NULL FROM tasks WHERE session_id = ? AND "
                                "state IN ('waiting', 'queued', 'running')");
  tasks.Bind(1, session_id);
  while (tasks.Step()) {
    if (tasks.Text(1) == "queued") scheduler_.Dequeue(tasks.Int(3) ? WorkKind::kRestore : WorkKind::kDisk, tasks.Int(0));
    if (tasks.Text(1) == "running") {
      auto it = live_.find(tasks.Text(2));
      if (it != live_.end() && !it->second.draining) {
        it->second.draining = true;  // the slot frees when the worker lets go
        ++draining_;
      }
    }
    delayed_tasks_.erase(tasks.Int(0));
  }
  db_.Cached("UPDATE tasks SET state = 'canceled', error = ?, ended_at = ? WHERE session_id = ? AND state IN ('waiting', 'queued', 'running')")
      .Bind(1, why).Bind(2, clock_()).Bind(3, session_id).Run();
  Statement snaps = db_.Prepare("SELECT id, state FROM snapshots WHERE session_id = ? AND state IN ('pending', 'ready')");
  snaps.Bind(1, session_id);
  std::vector<int64_t> ready;
  while (snaps.Step()) {
    if (snaps.Text(1) == "pending") {
      scheduler_.Dequeue(WorkKind::kSnapshot, snaps.Int(0));
      delayed_snapshots_.erase(snaps.Int(0));
      snapshot_context_.erase(snaps.Int(0));
    } else {
      ready.push_back(snaps.Int(0));
    }
  }
  db_.Cached("UPDATE snapshots SET state = 'canceled', error = ?, ended_at = ? WHERE session_id = ? AND state = 'pending'")
      .Bind(1, why).Bind(2, clock_()).Bind(3, session_id).Run();
  for (int64_t id : ready) MaybeRelease(id);  // releases without a point
}

std::optional<int64_t> SessionRunner::StopJob(int64_t job_id) {
  std::lock_guard lock(mu_);
  Statement job = db_.Prepare("SELECT name FROM jobs WHERE id = ?");
  job.Bind(1, job_id);
  if (!job.Step()) throw Error(ErrorKind::kNotFound, "job " + std::to_string(job_id) + " not found");
  Statement running = db_.Prepare(
      "SELECT id FROM sessions WHERE job_id = ? AND kind IN ('backup', 'copy') AND state = 'running'");
  running.Bind(1, job_id);
  if (!running.Step()) return std::nullopt;
  int64_t session_id = running.Int(0);
  OwnTransaction tx(*this);
  StopSessionLocked(session_id);
  tx.Commit();
  work_generation_++;
  if (on_check_stop_) on_check_stop_(session_id);  // a copy under way is interrupted
  return session_id;
}

bool SessionRunner::StopSession(int64_t session_id) {
  std::lock_guard lock(mu_);
  Statement session = db_.Prepare("SELECT state FROM sessions WHERE id = ?");
  session.Bind(1, session_id);
  if (!session.Step()) throw Error(ErrorKind::kNotFound, "session " + std::to_string(session_id) + " not found");
  if (session.Text(0) != "running") return false;
  OwnTransaction tx(*this);
  StopSessionLocked(session_id);
  tx.Commit();
  work_generation_++;
  if (on_check_stop_) on_check_stop_(session_id);  // only a running check or copy reacts
  return true;
}

void SessionRunner::StopSessionLocked(int64_t session_id) {
  db_.Cached("UPDATE sessions SET state = 'stopping', reason = 'stopped by request' WHERE id = ?").Bind(1, session_id).Run();
  Log(session_id, std::nullopt, std::nullopt, "warning", "stop requested: canceling queued and running work");
  CancelSessionWork(session_id, "session stopped");
  MaybeEndSession(session_id);
}

// ---------------------------------------------------------------------------
// Restores: one session of kind 'restore', one task, run on the target host.

int64_t SessionRunner::StartRestore(const RestoreRequest& request) {
  std::lock_guard lock(mu_);
  OwnTransaction tx(*this);
  Statement point = db_.Prepare("SELECT point_id, repository_id, vm_id, vm_name, disks, removed_at FROM points WHERE id = ?");
  point.Bind(1, request.point);
  if (!point.Step())
    throw FieldError("point", "no restore point with id " + std::to_string(request.point) + " (GET /points lists them)");
  if (!point.IsNull(5))
    throw FieldError("point", "restore point " + std::to_string(request.point) + " (" + point.Text(0) +
                                  ") was removed from its repository (retention or DELETE /points)");
  const std::string point_id = point.Text(0), vm_name = point.Text(3);
  const int64_t repository_id = point.Int(1);
  const std::optional<int64_t> vm_id = point.OptInt(2);
  const std::string what = "point " + std::to_string(request.point) + " (" + point_id + ", VM " + vm_name + ")";

  // The point's disks, when known (a point recorded by an older coordinator
  // whose session is gone does not say): the disk must be one, and the sizes
  // are the task's total until the worker reports its own.
  int64_t total = 0;
  if (!point.IsNull(4)) {
    std::string names;
    bool found = false;
    const json::value disks = json::parse(point.Text(4));
    for (const json::value& d : disks.as_array()) {
      std::string name(d.at("name").as_string());
      int64_t size = d.at("size_bytes").to_number<int64_t>();
      names += (names.empty() ? "" : ", ") + name;
      if (request.disk.empty() || name == request.disk) {
        total += size;
        found = true;
      }
    }
    if (!request.disk.empty() && !found)
      throw FieldError("disk", what + " has no disk '" + request.disk + "' (its disks: " + names + ")");
  }

  std::string host = request.host;
  if (host.empty()) {  // over the original: where the VM is now
    Statement at = db_.Prepare("SELECT h.name FROM vms v JOIN hosts h ON h.id = v.host_id WHERE v.id = ? AND v.state != 'missing'");
    at.Bind(1, vm_id);
    if (!at.Step())
      throw FieldError("host", "is required here: VM " + vm_name + " is in no host's inventory now, so name the host it is on");
    host = at.Text(0);
  }
  Statement h = db_.Prepare(
      "SELECT id, platform, (SELECT COUNT(*) FROM workers w WHERE w.host_id = hosts.id), "
      "(SELECT COUNT(*) FROM workers w WHERE w.host_id = hosts.id AND w.state = 'connected') FROM hosts WHERE name = ?");
  h.Bind(1, host);
  if (!h.Step()) throw FieldError("host", "no host named '" + host + "'");
  const int64_t host_id = h.Int(0);
  const std::string platform = h.Text(1);
  if (h.Int(2) == 0)
    throw FieldError("host", "host '" + host + "' has no worker: a restore runs on a worker of its target host");
  const bool connected = h.Int(3) > 0;
  RestoreTarget target = request.target;
  if (target.type != RestoreTarget::Type::kFile && platform != "libvirt" && platform != "ovirt")
    throw FieldError("host", std::string("host '") + host + "' is a " + platform + " host; target type " +
                                 RestoreTargetTypeName(target.type) + " needs a libvirt (or ovirt) host");
  if (target.type == RestoreTarget::Type::kNewDomain && target.name.empty()) target.name = vm_name + "-restored";
  if (target.type == RestoreTarget::Type::kLibvirtDomain && target.disk.empty()) target.disk = request.disk;

  int64_t now = clock_();
  db_.Prepare("INSERT INTO sessions (job_id, kind, trigger, state, created, created_at) "
              "VALUES (NULL, 'restore', 'manual', 'running', 1, ?)")
      .Bind(1, now).Run();
  int64_t session_id = db_.LastInsertId();
  db_.Prepare("INSERT INTO tasks (session_id, snapshot_id, vm_id, disk, repository_id, state, bytes_total) "
              "VALUES (?, NULL, ?, ?, ?, 'queued', ?)")
      .Bind(1, session_id).Bind(2, vm_id).Bind(3, request.disk).Bind(4, repository_id).Bind(5, total).Run();
  int64_t task_id = db_.LastInsertId();
  db_.Prepare("INSERT INTO restores (session_id, task_id, point, point_id, repository_id, vm_name, vm_id, disk, host_id, "
              "target, retry_count, retry_interval_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
      .Bind(1, session_id).Bind(2, task_id).Bind(3, request.point).Bind(4, point_id).Bind(5, repository_id)
      .Bind(6, vm_name).Bind(7, vm_id).Bind(8, request.disk).Bind(9, host_id)
      .Bind(10, json::serialize(RestoreTargetToJson(target))).Bind(11, request.retry_count)
      .Bind(12, request.retry_interval_s).Run();
  std::string subject = request.disk.empty() ? "VM " + vm_name : "disk " + request.disk + " of VM " + vm_name;
  Log(session_id, task_id, std::nullopt, "info",
      "restore started: " + subject + " from point " + point_id + " to " + DescribeRestoreTarget(target, host) +
          (total > 0 ? " (" + FormatBytes(total) + ")" : ""));
  if (!connected)
    Log(session_id, task_id, std::nullopt, "warning",
        "no worker of host " + host + " is connected: the restore waits for one (it runs on the target host only)");
  tx.Commit();
  EnqueueRestore(task_id, host_id, repository_id);
  return session_id;
}

WorkOrder SessionRunner::BuildRestoreOrder(const Placement& placement, int64_t worker_id) {
  WorkOrder order;
  order.kind = WorkKind::kRestore;
  order.tier = TierName(placement.tier);
  order.task_id = placement.work.id;
  Statement& t = db_.Cached(
      "SELECT t.attempt + 1, t.session_id, r.point_id, r.disk, r.target, r.vm_name, COALESCE(v.uuid, ''), "
      "COALESCE(vh.name, ''), COALESCE(vh.platform, ''), rp.id, rp.name, rp.location, rp.token, th.name "
      "FROM tasks t JOIN restores r ON r.session_id = t.session_id JOIN repositories rp ON rp.id = r.repository_id "
      "JOIN hosts th ON th.id = r.host_id LEFT JOIN vms v ON v.id = r.vm_id LEFT JOIN hosts vh ON vh.id = v.host_id "
      "WHERE t.id = ?");
  t.Bind(1, order.task_id);
  if (!t.Step()) throw Error(ErrorKind::kInternal, "restore task " + std::to_string(order.task_id) + " vanished");
  order.attempt = static_cast<int>(t.Int(0));
  order.session_id = t.Int(1);
  order.point_id = t.Text(2);
  order.disk = t.Text(3);
  order.restore = RestoreTargetFromJson(json::parse(t.Text(4)));
  order.vm_name = t.Text(5);
  order.vm_uuid = t.Text(6);
  order.host = t.Text(7);  // the VM's host; the restore's own is the worker's
  order.platform = t.Text(8);
  order.repository_id = t.Int(9);
  order.repository_name = t.Text(10);
  order.repository_location = t.Text(11);
  order.repository_token = t.Text(12);
  ResolveRepositoryAccess(order, worker_id);  // as for backups
  std::string target_host = t.Text(13);
  order.assignment = AssignmentPrefix(order.kind, order.task_id) + std::to_string(order.attempt);
  db_.Cached("UPDATE tasks SET state = 'running', worker_id = ?, tier = ?, tier_reason = ?, attempt = ?, "
             "assignment = ?, started_at = ?, not_before = NULL WHERE id = ?")
      .Bind(1, worker_id).Bind(2, order.tier).Bind(3, placement.reason).Bind(4, int64_t{order.attempt})
      .Bind(5, order.assignment).Bind(6, clock_()).Bind(7, order.task_id).Run();
  live_[order.assignment] = Live{WorkKind::kRestore, order.task_id, worker_id, false, placement.work.repository_id};
  Log(order.session_id, order.task_id, std::nullopt, "info",
      "restore: attempt " + std::to_string(order.attempt) + " on worker " + std::to_string(worker_id) + " (" +
          order.tier + ": " + placement.reason + ", " + target_host + ")");
  return order;
}

void SessionRunner::FinishRestore(int64_t task_id, const WorkReport& report) {
  int64_t now = clock_();
  Statement& t = db_.Cached(
      "SELECT t.session_id, t.failures, r.retry_count, r.retry_interval_s, t.started_at, r.vm_name, r.disk, r.target, "
      "h.name, r.point_id FROM tasks t JOIN restores r ON r.session_id = t.session_id JOIN hosts h ON h.id = r.host_id "
      "WHERE t.id = ?");
  t.Bind(1, task_id);
  if (!t.Step()) return;
  int64_t session = t.Int(0);
  std::string subject = t.Text(6).empty() ? "VM " + t.Text(5) : t.Text(5) + "/" + t.Text(6);
  std::string where = DescribeRestoreTarget(RestoreTargetFromJson(json::parse(t.Text(7))), t.Text(8));
  const std::string point_id = t.Text(9);
  const int64_t failures = t.Int(1) + 1, retries = t.Int(2), interval = t.Int(3), started_at = t.Int(4);
  LogWorkerLines(session, task_id, std::nullopt, report.log);
  if (report.ok) {
    double seconds = static_cast<double>(now - started_at) / 1000.0;
    double rate = seconds > 0 ? static_cast<double>(report.bytes_read) / seconds : 0;
    db_.Cached("UPDATE tasks SET state = 'succeeded', bytes_done = ?, bytes_total = MAX(bytes_total, ?), "
               "bytes_stored = ?, rate = ?, ended_at = ?, error = '' WHERE id = ?")
        .Bind(1, report.bytes_read).Bind(2, report.bytes_read).Bind(3, report.bytes_stored).Bind(4, rate)
        .Bind(5, now).Bind(6, task_id).Run();
    std::string reason = "restored " + subject + " of point " + point_id + " to " + where;
    Log(session, task_id, std::nullopt, "info",
        subject + ": restored, " + FormatBytes(report.bytes_read) + " (" + FormatBytes(report.bytes_stored) +
            " of data written)");
    db_.Cached("UPDATE sessions SET reason = ? WHERE id = ?").Bind(1, reason).Bind(2, session).Run();
    MaybeEndRestore(session);
    return;
  }
  std::string error = report.error.empty() ? "failed without a message" : report.error;
  if (failures <= retries && Retriable(report.error_kind)) {
    int64_t not_before = now + interval * 1000;
    db_.Cached("UPDATE tasks SET state = 'queued', worker_id = NULL, failures = ?, error = ?, not_before = ?, "
               "bytes_done = 0, rate = 0 WHERE id = ?")
        .Bind(1, failures).Bind(2, error).Bind(3, not_before).Bind(4, task_id).Run();
    Log(session, task_id, std::nullopt, "warning",
        subject + ": restore attempt failed (" + error + "); retry " + std::to_string(failures) + " of " +
            std::to_string(retries) + " in " + std::to_string(interval) + " s");
    if (interval == 0) EnqueueTask(task_id);
    else delayed_tasks_[task_id] = not_before;
    return;
  }
  db_.Cached("UPDATE tasks SET state = 'failed', failures = ?, error = ?, ended_at = ? WHERE id = ?")
      .Bind(1, failures).Bind(2, error).Bind(3, now).Bind(4, task_id).Run();
  Log(session, task_id, std::nullopt, "error",
      subject + ": restore failed after " + std::to_string(failures) + " attempt(s): " + error);
  db_.Cached("UPDATE sessions SET reason = ? WHERE id = ?")
      .Bind(1, "restore of " + subject + " to " + where + " failed: " + error).Bind(2, session).Run();
  MaybeEndRestore(session);
}

void SessionRunner::MaybeEndRestore(int64_t session_id) {
  Statement& s = db_.Cached(
      "SELECT se.state, se.reason, t.state, t.error FROM sessions se JOIN tasks t ON t.session_id = se.id WHERE se.id = ?");
  s.Bind(1, session_id);
  if (!s.Step()) return;
  std::string current = s.Text(0), reason = s.Text(1), task = s.Text(2), error = s.Text(3);
  if (current != "running" && current != "stopping") return;
  if (task == "waiting" || task == "queued" || task == "running") return;
  std::string state = current == "stopping" ? "stopped"
                      : task == "succeeded" ? "succeeded"
                      : task == "canceled"  ? "stopped"
                                            : "failed";
  if (reason.empty()) reason = task == "failed" ? error : "stopped";
  db_.Cached("UPDATE sessions SET state = ?, reason = ?, ended_at = ? WHERE id = ?")
      .Bind(1, state).Bind(2, reason).Bind(3, clock_()).Bind(4, session_id).Run();
  Log(session_id, std::nullopt, std::nullopt, state == "succeeded" ? "info" : "warning",
      "session " + state + ": " + reason);
  SessionEndedLocked(session_id, state, reason);
}

void SessionRunner::ServeLocalRepositories(std::string service_base, std::shared_ptr<LocalRepositories> local) {
  std::lock_guard lock(mu_);
  local_service_base_ = std::move(service_base);
  local_repositories_ = std::move(local);
  Statement repos = db_.Prepare("SELECT id, name, location FROM repositories");
  while (repos.Step()) local_repositories_->Set(repos.Int(0), repos.Text(1), repos.Text(2));
}

void SessionRunner::UpdateLocalRepository(int64_t repository_id) {
  if (!local_repositories_) return;
  Statement s = db_.Prepare("SELECT name, location FROM repositories WHERE id = ?");
  s.Bind(1, repository_id);
  if (s.Step()) {
    local_repositories_->Set(repository_id, s.Text(0), s.Text(1));
  } else {
    local_repositories_->Remove(repository_id);
  }
}

void SessionRunner::RepositoryRemoved(int64_t repository_id) {
  std::lock_guard lock(mu_);
  snapshot_context_.clear();
  repository_bandwidth_.erase(repository_id);
  UpdateLocalRepository(repository_id);
}

void SessionRunner::RepositoryChanged(int64_t repository_id, int task_slots, const std::string& bandwidth) {
  std::lock_guard lock(mu_);
  UpdateLocalRepository(repository_id);
  snapshot_context_.clear();  // names and locations are read again
  scheduler_.SetRepositorySlots(repository_id, task_slots);
  if (bandwidth.empty()) {
    repository_bandwidth_.erase(repository_id);
  } else {
    repository_bandwidth_[repository_id] = BandwidthSchedule::Parse(bandwidth);
  }
  WakeAll();
}

void SessionRunner::HostChanged(int64_t host_id, const std::string& name, const std::string& cluster) {
  std::lock_guard lock(mu_);
  snapshot_context_.clear();
  scheduler_.SetHost(host_id, name, cluster);
  WakeAll();
}

void SessionRunner::RefreshNextRun(int64_t job_id, int64_t after_ms) {
  Statement job = db_.Prepare("SELECT schedule, enabled FROM jobs WHERE id = ?");
  job.Bind(1, job_id);
  if (!job.Step()) return;
  std::optional<int64_t> next;
  if (!job.IsNull(0) && job.Int(1)) {
    std::optional<int64_t> seconds = NextRun(ParseSchedule(json::parse(job.Text(0))), after_ms / 1000);
    if (seconds) next = *seconds * 1000;
  }
  db_.Cached("UPDATE jobs SET next_run_at = ? WHERE id = ?").Bind(1, next).Bind(2, job_id).Run();
}

void SessionRunner::JobScheduleChanged(int64_t job_id) {
  std::lock_guard lock(mu_);
  EndGroupLocked();
  RefreshNextRun(job_id, clock_());
  // The health check's schedule (repository_lifecycle.h runs it): a changed
  // schedule counts from now.
  Statement job = db_.Prepare("SELECT check_schedule, enabled FROM jobs WHERE id = ?");
  job.Bind(1, job_id);
  if (!job.Step()) return;
  std::optional<int64_t> next = job.Int(1) ? NextCheckAt(job.OptText(0), clock_()) : std::nullopt;
  db_.Prepare("UPDATE jobs SET next_check_at = ? WHERE id = ?").Bind(1, next).Bind(2, job_id).Run();
}

std::vector<std::pair<int64_t, std::string>> SessionRunner::DueJobs(int64_t now) {
  Statement due = db_.Prepare("SELECT id, name FROM jobs WHERE enabled = 1 AND next_run_at IS NOT NULL AND next_run_at <= ?");
  due.Bind(1, now);
  std::vector<std::pair<int64_t, std::string>> jobs;
  while (due.Step()) jobs.emplace_back(due.Int(0), due.Text(1));
  // The next run is computed before starting, so a slow start never fires twice.
  for (const auto& job : jobs) RefreshNextRun(job.first, now);
  return jobs;
}

void SessionRunner::Tick() {
  std::vector<std::pair<int64_t, std::string>> due;
  {
    std::lock_guard lock(mu_);
    due = TickLocked();
  }
  for (const auto& [id, name] : due) {
    try {
      int64_t session = StartJob(id, "schedule");
      LogInfo("job " + name + ": scheduled session " + std::to_string(session) + " started");
    } catch (const Error& e) {
      LogWarning("job " + name + ": scheduled run skipped: " + e.what());
    }
  }
}

std::vector<std::pair<int64_t, std::string>> SessionRunner::TickLocked() {
  int64_t now = clock_();
  PublishStats();
  // If the coordinator itself was not ticking (overloaded, stopped by a
  // debugger, the machine suspended), the workers' silence over that gap is
  // ours, not theirs: move their deadlines on by the gap.
  if (last_tick_ != 0 && now - last_tick_ > 1000) {
    int64_t gap = now - last_tick_;
    LogWarning("scheduler tick came " + std::to_string(gap) + " ms late; worker deadlines extended by as much");
    for (auto& [id, worker] : workers_) worker.last_heartbeat += gap;
  }
  last_tick_ = now;
  {
    OwnTransaction tx(*this);
    FlushProgress();
    bool persist_heartbeats = now - last_heartbeat_flush_ >= 2000;
    if (persist_heartbeats) last_heartbeat_flush_ = now;
    for (auto& [id, worker] : workers_) {
      if (persist_heartbeats && worker.heartbeat_dirty) {
        db_.Cached("UPDATE workers SET last_heartbeat_at = ? WHERE id = ?").Bind(1, worker.last_heartbeat).Bind(2, id).Run();
        worker.heartbeat_dirty = false;
      }
    }
    // Silent past the deadline: unreachable, whether or not it had work
    // (an idle worker that vanished is unreachable too, and checked once).
    std::vector<int64_t> silent;
    for (const auto& [id, worker] : workers_)
      if (!worker.unreachable && now - worker.last_heartbeat > options_.heartbeat_deadline_ms) silent.push_back(id);
    for (int64_t id : silent)
      MarkUnreachable(id, "no heartbeat for " + std::to_string((now - workers_[id].last_heartbeat) / 1000) + " s");
    for (auto it = delayed_tasks_.begin(); it != delayed_tasks_.end();) {
      if (it->second > now) { ++it; continue; }
      EnqueueTask(it->first);
      it = delayed_tasks_.erase(it);
    }
    for (auto it = delayed_snapshots_.begin(); it != delayed_snapshots_.end();) {
      if (it->second > now) { ++it; continue; }
      EnqueueSnapshot(it->first);
      it = delayed_snapshots_.erase(it);
    }
    tx.Commit();
  }
  if (now - last_schedule_check_ < 1000) return {};
  last_schedule_check_ = now;
  OwnTransaction tx(*this);
  auto due = DueJobs(now);
  tx.Commit();
  return due;
}

void SessionRunner::PublishStats() {
  stats_queued_ = scheduler_.QueuedCount();
  stats_live_ = live_.size();
  stats_made_ = assignments_made_;
}

SessionRunner::Wakeups SessionRunner::TakeWakeups() {
  std::lock_guard lock(mu_);
  Wakeups taken = std::move(wakeups_);
  wakeups_ = Wakeups{};
  return taken;
}

SessionRunner::Stats SessionRunner::GetStats() {
  // Published by PullWork and the tick; never waits for the runner's lock.
  return Stats{stats_queued_.load(), stats_live_.load(), stats_made_.load()};
}

}  // namespace ferry::coordinator
