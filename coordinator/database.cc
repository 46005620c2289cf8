#include "ferry/coordinator/database.h"

#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include "ferry/common/error.h"
#include "ferry/common/log.h"

namespace ferry::coordinator {
namespace {

// Numbered schema migrations, applied in order; never edit a released one,
// add a new one. Documented in docs/coordinator-database.md.
const char* const kMigrations[] = {
    // 1: the initial schema.
    R"sql(
CREATE TABLE api_tokens (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  token_hash TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the token; the token itself is never stored
  role TEXT NOT NULL,                -- admin
  created_at INTEGER NOT NULL
);
CREATE TABLE hosts (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  platform TEXT NOT NULL,            -- proxmox | ovirt | ahv | libvirt
  cluster TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL
);
CREATE TABLE vms (
  id INTEGER PRIMARY KEY,
  host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  uuid TEXT NOT NULL,
  state TEXT NOT NULL,
  tags TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
  seen_at INTEGER NOT NULL,
  UNIQUE (host_id, name)
);
CREATE INDEX vms_by_name ON vms(name);
CREATE INDEX vms_by_uuid ON vms(uuid) WHERE uuid != '';
CREATE TABLE disks (
  id INTEGER PRIMARY KEY,
  vm_id INTEGER NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  format TEXT NOT NULL,
  UNIQUE (vm_id, name)
);
CREATE TABLE workers (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  token_hash TEXT NOT NULL UNIQUE,
  host_id INTEGER REFERENCES hosts(id) ON DELETE SET NULL,
  task_slots INTEGER NOT NULL DEFAULT 0,
  version TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'new', -- new | connected | unreachable
  last_heartbeat_at INTEGER,
  registered_at INTEGER,
  created_at INTEGER NOT NULL
);
CREATE TABLE repositories (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  location TEXT NOT NULL,
  task_slots INTEGER NOT NULL,
  capacity_bytes INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL
);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  repository_id INTEGER NOT NULL REFERENCES repositories(id),
  selection TEXT NOT NULL,           -- JSON: {vms, tags, hosts, clusters}
  exclude_disks TEXT NOT NULL,       -- JSON: [{vm, disk}]
  schedule TEXT,                     -- JSON (docs/schedules.md) or NULL: manual only
  retry_count INTEGER NOT NULL,
  retry_interval_s INTEGER NOT NULL,
  chain TEXT NOT NULL,
  enabled INTEGER NOT NULL,
  next_run_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE sessions (
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs(id),
  trigger TEXT NOT NULL,             -- manual | schedule
  state TEXT NOT NULL,               -- running | stopping | succeeded | warning | failed | stopped
  reason TEXT NOT NULL DEFAULT '',
  created INTEGER NOT NULL DEFAULT 1,  -- 0 while its VMs are still being set up (in batches)
  created_at INTEGER NOT NULL,
  ended_at INTEGER
);
CREATE INDEX sessions_by_job ON sessions(job_id, id);
CREATE TABLE snapshots (
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id),
  vm_id INTEGER NOT NULL REFERENCES vms(id),
  vm_name TEXT NOT NULL,
  host_id INTEGER NOT NULL,
  state TEXT NOT NULL,               -- pending | taking | ready | releasing | released | failed | canceled
  worker_id INTEGER,
  tier TEXT,
  attempt INTEGER NOT NULL DEFAULT 0,   -- assignments made so far
  failures INTEGER NOT NULL DEFAULT 0,  -- failed attempts, against the job's retry count
  assignment TEXT,
  not_before INTEGER,
  exports TEXT NOT NULL DEFAULT '[]',
  planned_point TEXT NOT NULL,       -- the restore point id reserved for this VM's disks
  point_id TEXT,                     -- set once committed
  error TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL,
  ended_at INTEGER
);
CREATE INDEX snapshots_by_session ON snapshots(session_id);
-- "Does the session still have open snapshots?" after every release: a
-- partial index keeps that O(log n) in sessions of 10,000 VMs.
CREATE INDEX snapshots_open ON snapshots(session_id) WHERE state IN ('pending', 'taking', 'ready', 'releasing');
CREATE TABLE tasks (
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id),
  snapshot_id INTEGER NOT NULL REFERENCES snapshots(id),
  vm_id INTEGER NOT NULL,
  disk TEXT NOT NULL,
  repository_id INTEGER NOT NULL,
  state TEXT NOT NULL,               -- waiting | queued | running | succeeded | failed | canceled
  worker_id INTEGER,
  tier TEXT,                         -- host | cluster | any
  tier_reason TEXT,
  attempt INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  assignment TEXT,
  not_before INTEGER,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  bytes_done INTEGER NOT NULL DEFAULT 0,
  bytes_stored INTEGER NOT NULL DEFAULT 0,
  rate REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  started_at INTEGER,
  ended_at INTEGER
);
-- Covers the session totals (counts by state, bytes): an index-only scan.
CREATE INDEX tasks_by_session ON tasks(session_id, state, bytes_done, bytes_total, rate);
CREATE INDEX tasks_by_snapshot ON tasks(snapshot_id);
CREATE INDEX tasks_by_worker ON tasks(worker_id) WHERE state = 'running';
CREATE INDEX tasks_by_repository ON tasks(repository_id) WHERE state = 'running';
CREATE INDEX tasks_live ON tasks(state) WHERE state IN ('waiting', 'queued', 'running');
CREATE TABLE task_log (
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL,
  task_id INTEGER,
  snapshot_id INTEGER,
  at INTEGER NOT NULL,
  level TEXT NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX task_log_by_session ON task_log(session_id, id);
CREATE TABLE points (
  id INTEGER PRIMARY KEY,
  point_id TEXT NOT NULL,
  repository_id INTEGER NOT NULL REFERENCES repositories(id),
  job_id INTEGER,
  session_id INTEGER,
  vm_id INTEGER,
  vm_name TEXT NOT NULL,
  chain TEXT NOT NULL,
  bytes_read INTEGER NOT NULL DEFAULT 0,
  bytes_stored INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  UNIQUE (repository_id, point_id)
);
CREATE INDEX points_by_chain ON points(repository_id, chain, vm_name, id);
)sql",
    // 2: session totals kept by triggers, so that listing sessions reads one
    // row per session instead of summing its 20,000 tasks on every call.
    // Fewer index entries rewritten per task update: the covering index that
    // served those sums (rewritten on every progress flush) becomes a plain
    // session index, and the index of live tasks by state goes (start-up
    // finds them through their open sessions).
    R"sql(
CREATE TABLE session_totals (
  session_id INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
  tasks INTEGER NOT NULL DEFAULT 0,
  waiting INTEGER NOT NULL DEFAULT 0,
  queued INTEGER NOT NULL DEFAULT 0,
  running INTEGER NOT NULL DEFAULT 0,
  succeeded INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  canceled INTEGER NOT NULL DEFAULT 0,
  bytes_done INTEGER NOT NULL DEFAULT 0,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  bytes_stored INTEGER NOT NULL DEFAULT 0,
  rate REAL NOT NULL DEFAULT 0       -- sum of the running tasks' rates
);
INSERT INTO session_totals
  SELECT s.id, COUNT(t.id), COALESCE(SUM(t.state = 'waiting'), 0), COALESCE(SUM(t.state = 'queued'), 0),
         COALESCE(SUM(t.state = 'running'), 0), COALESCE(SUM(t.state = 'succeeded'), 0),
         COALESCE(SUM(t.state = 'failed'), 0), COALESCE(SUM(t.state = 'canceled'), 0),
         COALESCE(SUM(t.bytes_done), 0), COALESCE(SUM(t.bytes_total), 0), COALESCE(SUM(t.bytes_stored), 0),
         COALESCE(SUM(CASE WHEN t.state = 'running' THEN t.rate ELSE 0 END), 0)
  FROM sessions s LEFT JOIN tasks t ON t.session_id = s.id GROUP BY s.id;
CREATE TRIGGER session_totals_new_session AFTER INSERT ON sessions BEGIN
  INSERT INTO session_totals (session_id) VALUES (NEW.id);
END;
CREATE TRIGGER session_totals_new_task AFTER INSERT ON tasks BEGIN
  UPDATE session_totals SET tasks = tasks + 1,
    waiting = waiting + (NEW.state = 'waiting'), queued = queued + (NEW.state = 'queued'),
    running = running + (NEW.state = 'running'), succeeded = succeeded + (NEW.state = 'succeeded'),
    failed = failed + (NEW.state = 'failed'), canceled = canceled + (NEW.state = 'canceled'),
    bytes_done = bytes_done + NEW.bytes_done, bytes_total = bytes_total + NEW.bytes_total,
    bytes_stored = bytes_stored + NEW.bytes_stored,
    rate = rate + CASE WHEN NEW.state = 'running' THEN NEW.rate ELSE 0 END
  WHERE session_id = NEW.session_id;
END;
CREATE TRIGGER session_totals_task_changed
AFTER UPDATE OF state, bytes_done, bytes_total, bytes_stored, rate ON tasks BEGIN
  UPDATE session_totals SET
    waiting = waiting + (NEW.state = 'waiting') - (OLD.state = 'waiting'),
    queued = queued + (NEW.state = 'queued') - (OLD.state = 'queued'),
    running = running + (NEW.state = 'running') - (OLD.state = 'running'),
    succeeded = succeeded + (NEW.state = 'succeeded') - (OLD.state = 'succeeded'),
    failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
    canceled = canceled + (NEW.state = 'canceled') - (OLD.state = 'canceled'),
    bytes_done = bytes_done + NEW.bytes_done - OLD.bytes_done,
    bytes_total = bytes_total + NEW.bytes_total - OLD.bytes_total,
    bytes_stored = bytes_stored + NEW.bytes_stored - OLD.bytes_stored,
    rate = rate + CASE WHEN NEW.state = 'running' THEN NEW.rate ELSE 0 END
                - CASE WHEN OLD.state = 'running' THEN OLD.rate ELSE 0 END
  WHERE session_id = NEW.session_id;
END;
CREATE TRIGGER session_totals_task_deleted AFTER DELETE ON tasks BEGIN
  UPDATE session_totals SET tasks = tasks - 1,
    waiting = waiting - (OLD.state = 'waiting'), queued = queued - (OLD.state = 'queued'),
    running = running - (OLD.state = 'running'), succeeded = succeeded - (OLD.state = 'succeeded'),
    failed = failed - (OLD.state = 'failed'), canceled = canceled - (OLD.state = 'canceled'),
    bytes_done = bytes_done - OLD.bytes_done, bytes_total = bytes_total - OLD.bytes_total,
    bytes_stored = bytes_stored - OLD.bytes_stored,
    rate = rate - CASE WHEN OLD.state = 'running' THEN OLD.rate ELSE 0 END
  WHERE session_id = OLD.session_id;
END;
DROP INDEX tasks_by_session;
DROP INDEX tasks_live;
CREATE INDEX tasks_by_session ON tasks(session_id);
)sql",
    // 3: repositories behind a repository service (location ferry+tls://...):
    // the token the coordinator hands the workers with each work item. Kept
    // (not hashed) because it is passed on; never returned by the API.
    R"sql(
ALTER TABLE repositories ADD COLUMN token TEXT NOT NULL DEFAULT '';
)sql",
    // 4: bandwidth caps (docs/throttling.md, canonical text; '' for none),
    // per worker and per repository.
    R"sql(
ALTER TABLE workers ADD COLUMN bandwidth TEXT NOT NULL DEFAULT '';
ALTER TABLE repositories ADD COLUMN bandwidth TEXT NOT NULL DEFAULT '';
)sql",
    // 5: a disk task's data-path statistics, as its worker reports them
    // (live with progress, final with the result): bytes read and sent, and
    // how busy each stage was, in microseconds of the disk's wall time, so
    // the API can name the bottleneck (ferry/common/stage_busy.h). The busy
    // columns are NULL until a worker that measures them reports.
    R"sql(
ALTER TABLE tasks ADD COLUMN bytes_read INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN wall_us INTEGER;
ALTER TABLE tasks ADD COLUMN source_busy_us INTEGER;
ALTER TABLE tasks ADD COLUMN compute_busy_us INTEGER;
ALTER TABLE tasks ADD COLUMN network_busy_us INTEGER;
ALTER TABLE tasks ADD COLUMN target_busy_us INTEGER;
ALTER TABLE tasks ADD COLUMN remote_store INTEGER;
)sql",
    // 6: restores through the API (issue 12). A restore is a session of kind
    // 'restore' with one task (the restore's work) and a restores row that
    // says what goes where. So sessions lose their required job and tasks
    // their required snapshot and VM: both tables are rebuilt (SQLite cannot
    // drop a NOT NULL), with every column they have by now (tasks: up to
    // migration 5's), their indexes and the session_totals triggers of
    // migration 2. Points record their disks, so that a restore request can
    // be checked against them (NULL: unknown, a point whose session is gone).
    // Runs with foreign keys off (Migrate); foreign_key_check runs before the commit.
    R"sql(
CREATE TABLE sessions_new (
  id INTEGER PRIMARY KEY,
  job_id INTEGER REFERENCES jobs(id),  -- NULL for a restore
  kind TEXT NOT NULL DEFAULT 'backup', -- backup | restore
  trigger TEXT NOT NULL,               -- manual | schedule
  state TEXT NOT NULL,                 -- running | stopping | succeeded | warning | failed | stopped
  reason TEXT NOT NULL DEFAULT '',
  created INTEGER NOT NULL DEFAULT 1,  -- 0 while its VMs are still being set up (in batches)
  created_at INTEGER NOT NULL,
  ended_at INTEGER
);
INSERT INTO sessions_new (id, job_id, kind, trigger, state, reason, created, created_at, ended_at)
  SELECT id, job_id, 'backup', trigger, state, reason, created, created_at, ended_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_by_job ON sessions(job_id, id);
CREATE INDEX sessions_by_kind ON sessions(kind, id);
CREATE TRIGGER session_totals_new_session AFTER INSERT ON sessions BEGIN
  INSERT INTO session_totals (session_id) VALUES (NEW.id);
END;

CREATE TABLE tasks_new (
  id INTEGER PRIMARY KEY,
  session_id INTEGER NOT NULL REFERENCES sessions(id),
  snapshot_id INTEGER REFERENCES snapshots(id),  -- NULL for a restore's task
  vm_id INTEGER,                     -- NULL for a restore's task (see restores)
  disk TEXT NOT NULL,                -- '' for the restore of a whole VM
  repository_id INTEGER NOT NULL,
  state TEXT NOT NULL,               -- waiting | queued | running | succeeded | failed | canceled
  worker_id INTEGER,
  tier TEXT,                         -- host | cluster | any
  tier_reason TEXT,
  attempt INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  assignment TEXT,
  not_before INTEGER,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  bytes_done INTEGER NOT NULL DEFAULT 0,
  bytes_stored INTEGER NOT NULL DEFAULT 0,
  rate REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  started_at INTEGER,
  ended_at INTEGER,
  -- migration 5's statistics of a disk task (NULL / 0 for a restore's task)
  bytes_read INTEGER NOT NULL DEFAULT 0,
  bytes_sent INTEGER NOT NULL DEFAULT 0,
  wall_us INTEGER,
  source_busy_us INTEGER,
  compute_busy_us INTEGER,
  network_busy_us INTEGER,
  target_busy_us INTEGER,
  remote_store INTEGER
);
INSERT INTO tasks_new SELECT id, session_id, snapshot_id, vm_id, disk, repository_id, state, worker_id, tier,
  tier_reason, attempt, failures, assignment, not_before, bytes_total, bytes_done, bytes_stored, rate, error,
  started_at, ended_at, bytes_read, bytes_sent, wall_us, source_busy_us, compute_busy_us, network_busy_us,
  target_busy_us, remote_store FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
CREATE INDEX tasks_by_session ON tasks(session_id);
CREATE INDEX tasks_by_snapshot ON tasks(snapshot_id);
CREATE INDEX tasks_by_worker ON tasks(worker_id) WHERE state = 'running';
CREATE INDEX tasks_by_repository ON tasks(repository_id) WHERE state = 'running';
CREATE TRIGGER session_totals_new_task AFTER INSERT ON tasks BEGIN
  UPDATE session_totals SET tasks = tasks + 1,
    waiting = waiting + (NEW.state = 'waiting'), queued = queued + (NEW.state = 'queued'),
    running = running + (NEW.state = 'running'), succeeded = succeeded + (NEW.state = 'succeeded'),
    failed = failed + (NEW.state = 'failed'), canceled = canceled + (NEW.state = 'canceled'),
    bytes_done = bytes_done + NEW.bytes_done, bytes_total = bytes_total + NEW.bytes_total,
    bytes_stored = bytes_stored + NEW.bytes_stored,
    rate = rate + CASE WHEN NEW.state = 'running' THEN NEW.rate ELSE 0 END
  WHERE session_id = NEW.session_id;
END;
CREATE TRIGGER session_totals_task_changed
AFTER UPDATE OF state, bytes_done, bytes_total, bytes_stored, rate ON tasks BEGIN
  UPDATE session_totals SET
    waiting = waiting + (NEW.state = 'waiting') - (OLD.state = 'waiting'),
    queued = queued + (NEW.state = 'queued') - (OLD.state = 'queued'),
    running = running + (NEW.state = 'running') - (OLD.state = 'running'),
    succeeded = succeeded + (NEW.state = 'succeeded') - (OLD.state = 'succeeded'),
    failed = failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
    canceled = canceled + (NEW.state = 'canceled') - (OLD.state = 'canceled'),
    bytes_done = bytes_done + NEW.bytes_done - OLD.bytes_done,
    bytes_total = bytes_total + NEW.bytes_total - OLD.bytes_total,
    bytes_stored = bytes_stored + NEW.bytes_stored - OLD.bytes_stored,
    rate = rate + CASE WHEN NEW.state = 'running' THEN NEW.rate ELSE 0 END
                - CASE WHEN OLD.state = 'running' THEN OLD.rate ELSE 0 END
  WHERE session_id = NEW.session_id;
END;
CREATE TRIGGER session_totals_task_deleted AFTER DELETE ON tasks BEGIN
  UPDATE session_totals SET tasks = tasks - 1,
    waiting = waiting - (OLD.state = 'waiting'), queued = queued - (OLD.state = 'queued'),
    running = running - (OLD.state = 'running'), succeeded = succeeded - (OLD.state = 'succeeded'),
    failed = failed - (OLD.state = 'failed'), canceled = canceled - (OLD.state = 'canceled'),
    bytes_done = bytes_done - OLD.bytes_done, bytes_total = bytes_total - OLD.bytes_total,
    bytes_stored = bytes_stored - OLD.bytes_stored,
    rate = rate - CASE WHEN OLD.state = 'running' THEN OLD.rate ELSE 0 END
  WHERE session_id = OLD.session_id;
END;

-- What a restore session restores, and where (one row per restore session).
CREATE TABLE restores (
  session_id INTEGER PRIMARY KEY REFERENCES sessions(id),
  task_id INTEGER NOT NULL,          -- its one task
  point INTEGER NOT NULL REFERENCES points(id),
  point_id TEXT NOT NULL,            -- the point's id in its repository
  repository_id INTEGER NOT NULL REFERENCES repositories(id),
  vm_name TEXT NOT NULL,             -- the VM the point was made of
  vm_id INTEGER,
  disk TEXT NOT NULL DEFAULT '',     -- '' : the whole VM
  host_id INTEGER NOT NULL REFERENCES hosts(id),  -- the target host: a worker there runs it
  target TEXT NOT NULL,              -- JSON, canonical (docs/api.md, "Restores")
  retry_count INTEGER NOT NULL,
  retry_interval_s INTEGER NOT NULL
);
CREATE INDEX restores_by_point ON restores(point);

ALTER TABLE points ADD COLUMN disks TEXT;  -- JSON [{"name", "size_bytes"}]; NULL: not known
UPDATE points SET disks = (
  SELECT json_group_array(json_object('name', t.disk, 'size_bytes', t.bytes_total))
  FROM tasks t JOIN snapshots s ON s.id = t.snapshot_id
  WHERE s.session_id = points.session_id AND s.point_id = points.point_id AND t.state = 'succeeded')
WHERE EXISTS (SELECT 1 FROM snapshots s WHERE s.session_id = points.session_id AND s.point_id = points.point_id);
)sql",
    // 7: worker appliances the coordinator deployed onto libvirt hosts
    // (POST /hosts/{id}/worker), one per host, and their lifecycle state.
    R"sql(
CREATE TABLE appliances (
  host_id INTEGER PRIMARY KEY REFERENCES hosts(id),
  worker_id INTEGER REFERENCES workers(id) ON DELETE SET NULL,  -- NULL once a deployment failed
  domain TEXT NOT NULL,               -- the libvirt domain, ferry-appliance-<host>
  libvirt_uri TEXT NOT NULL,
  pool TEXT NOT NULL,
  image_volume TEXT NOT NULL,
  config_volume TEXT NOT NULL,
  network TEXT NOT NULL,              -- JSON {"type", "source"}
  memory_mib INTEGER NOT NULL,
  coordinator_address TEXT NOT NULL,
  worker_config TEXT NOT NULL DEFAULT '',
  idle_shutdown_s INTEGER NOT NULL,
  state TEXT NOT NULL,  -- deploying | starting | running | idle | stopping | stopped | failed | unreachable
  reason TEXT NOT NULL DEFAULT '',
  state_changed_at INTEGER NOT NULL,
  last_busy_at INTEGER NOT NULL,      -- the last time its host had work, or it was started
  created_at INTEGER NOT NULL
);
-- "Has this host work?", once a second per appliance: open snapshots by host.
CREATE INDEX snapshots_open_by_host ON snapshots(host_id) WHERE state IN ('pending', 'taking', 'ready', 'releasing');
)sql",
    // 8: the repository lifecycle of jobs (docs/retention.md, docs/gc.md):
    // retention, locks of new points, scheduled health checks; what each
    // backup session's lifecycle step did; points' locks, removal, checks
    // and space; repositories' space.
    R"sql(
ALTER TABLE jobs ADD COLUMN retention TEXT;                          -- JSON {"keep_last", ...} or NULL: keep every point
ALTER TABLE jobs ADD COLUMN lock_days INTEGER NOT NULL DEFAULT 0;    -- lock every new point this many days; 0: none
ALTER TABLE jobs ADD COLUMN check_schedule TEXT;                     -- JSON (docs/schedules.md) or NULL: no health check
ALTER TABLE jobs ADD COLUMN check_skip_verified_s INTEGER NOT NULL DEFAULT 0;  -- incremental health checks
ALTER TABLE jobs ADD COLUMN next_check_at INTEGER;
ALTER TABLE sessions ADD COLUMN lifecycle_state TEXT;  -- backup: NULL (none due), pending, done, failed
ALTER TABLE sessions ADD COLUMN lifecycle TEXT;        -- JSON: what it did (backup: locks, retention, GC; check: summary)
ALTER TABLE points ADD COLUMN locked_until INTEGER;    -- as last set through the coordinator
ALTER TABLE points ADD COLUMN removed_at INTEGER;      -- removed from its repository (the row stays: restores refer to it)
ALTER TABLE points ADD COLUMN check_state TEXT;        -- NULL: never checked; ok; damaged
ALTER TABLE points ADD COLUMN checked_at INTEGER;
ALTER TABLE points ADD COLUMN check_problem TEXT;      -- the first problem the last check found
ALTER TABLE points ADD COLUMN check_problems INTEGER NOT NULL DEFAULT 0;
ALTER TABLE points ADD COLUMN unique_bytes INTEGER;    -- what removing it alone frees, at the last space measurement
ALTER TABLE repositories ADD COLUMN space TEXT;        -- JSON: the last space measurement
CREATE INDEX sessions_lifecycle_pending ON sessions(id) WHERE lifecycle_state = 'pending';
CREATE INDEX points_by_job ON points(job_id, id);
)sql",
    // 9: copy jobs (docs/copy.md, "Copy jobs"): a job of kind 'copy' copies
    // the restore points of its source job's chain from the source job's
    // repository into its own (repository_id: the target), in sessions of
    // kind 'copy'; its retention, locks and health check apply there.
    R"sql(
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';       -- backup | copy
ALTER TABLE jobs ADD COLUMN source_job_id INTEGER;  -- copy: the job whose points it copies (the API keeps it valid)
CREATE INDEX jobs_by_source ON jobs(source_job_id) WHERE source_job_id IS NOT NULL;
)sql",
};

[[noreturn]] void Fail(sqlite3* db, const std::string& what) {
  int code = db ? sqlite3_extended_errcode(db) : SQLITE_ERROR;
  std::string msg = what + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
  int primary = code & 0xff;
  if (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB) throw Error(ErrorKind::kCorrupt, msg);
  if (primary == SQLITE_FULL || primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN ||
      primary == SQLITE_READONLY || primary == SQLITE_PERM)
    throw Error(ErrorKind::kEnvironment, msg);
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) throw Error(ErrorKind::kRetryable, msg);
  if (primary == SQLITE_CONSTRAINT) throw Error(ErrorKind::kBadInput, msg);
  throw Error(ErrorKind::kInternal, msg);
}

}  // namespace

int LatestSchemaVersion() { return static_cast<int>(std::size(kMigrations)); }

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db), stmt_(nullptr) {
  if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr) != SQLITE_OK)
    Fail(db, "preparing SQL '" + std::string(sql.substr(0, 60)) + "'");
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement::Statement(Statement&& other) noexcept : db_(other.db_), stmt_(other.stmt_) {
  other.stmt_ = nullptr;
}

Statement& Statement::Bind(int index, int64_t value) {
  sqlite3_bind_int64(stmt_, index, value);
  return *this;
}
Statement& Statement::Bind(int index, const std::string& value) {
  return Bind(index, std::string_view(value));
}
Statement& Statement::Bind(int index, std::string_view value) {
  sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  return *this;
}
Statement& Statement::Bind(int index, double value) {
  sqlite3_bind_double(stmt_, index, value);
  return *this;
}
Statement& Statement::BindNull(int index) {
  sqlite3_bind_null(stmt_, index);
  return *this;
}
Statement& Statement::Bind(int index, const std::optional<int64_t>& value) {
  return value ? Bind(index, *value) : BindNull(index);
}
Statement& Statement::Bind(int index, const std::optional<std::string>& value) {
  return value ? Bind(index, *value) : BindNull(index);
}

bool Statement::Step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  std::string sql = sqlite3_sql(stmt_) ? sqlite3_sql(stmt_) : "";
  Fail(db_, "running SQL '" + sql.substr(0, 60) + "'");
}

void Statement::Run() {
  while (Step()) {
  }
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int64_t Statement::Int(int column) const { return sqlite3_column_int64(stmt_, column); }
double Statement::Real(int column) const { return sqlite3_column_double(stmt_, column); }
std::string Statement::Text(int column) const {
  const unsigned char* p = sqlite3_column_text(stmt_, column);
  return p ? std::string(reinterpret_cast<const char*>(p),
                         static_cast<size_t>(sqlite3_column_bytes(stmt_, column)))
           : std::string();
}
bool Statement::IsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}
std::optional<int64_t> Statement::OptInt(int column) const {
  if (IsNull(column)) return std::nullopt;
  return Int(column);
}
std::optional<std::string> Statement::OptText(int column) const {
  if (IsNull(column)) return std::nullopt;
  return Text(column);
}

Database Database::Open(const std::string& path, bool read_only) {
  sqlite3* db = nullptr;
  int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  flags |= SQLITE_OPEN_NOMUTEX;  // callers serialise access themselves
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    std::string msg = "opening database " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    throw Error(ErrorKind::kEnvironment, msg);
  }
  Database database(db);
  sqlite3_busy_timeout(db, 5000);
  sqlite3_extended_result_codes(db, 1);
  database.Execute("PRAGMA foreign_keys = ON");
  // A page cache large enough for the hot tables of a 10,000-VM session:
  // with SQLite's default (2 MB) a group commit spills pages to the WAL
  // before it commits. Pages are allocated as used, not up front.
  database.Execute(read_only ? "PRAGMA cache_size = -16384" : "PRAGMA cache_size = -65536");
  if (!read_only) {
    // WAL: readers see a consistent snapshot while the scheduler writes.
    // synchronous=NORMAL: in WAL mode a commit is in the OS before it
    // returns, so kill -9 loses nothing; only a power cut can lose the last
    // transactions (never corrupt the file). docs/coordinator-database.md.
    database.Execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL");
    // The WAL grows while API readers keep checkpoints from resetting it
    // (82 MB at most in a 10,000-VM session); once a checkpoint resets it,
    // it is cut back to this size instead of staying at its peak.
    database.Execute("PRAGMA journal_size_limit = 67108864");
    database.Migrate();
  } else if (database.SchemaVersion() != LatestSchemaVersion()) {
    throw Error(ErrorKind::kEnvironment, "database " + path + " has schema version " +
                                             std::to_string(database.SchemaVersion()) +
                                             ", this build needs " +
                                             std::to_string(LatestSchemaVersion()));
  }
  return database;
}

Database::~Database() {
  cache_.clear();  // finalize before closing
  if (db_) sqlite3_close_v2(db_);
}

Database::Database(Database&& other) noexcept : db_(other.db_), cache_(std::move(other.cache_)) {
  other.db_ = nullptr;
}

void Database::Execute(std::string_view sql) {
  char* err = nullptr;
  std::string text(sql);
  if (sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    Fail(db_, "running SQL '" + text.substr(0, 60) + "' (" + msg + ")");
  }
}

Statement& Database::Cached(std::string_view sql) {
  auto it = cache_.find(std::string(sql));
  if (it == cache_.end())
    it = cache_.emplace(std::string(sql), std::make_unique<Statement>(db_, sql)).first;
  it->second->Reset();
  handed_out_.push_back(it->second.get());
  return *it->second;
}

void Database::ResetCached() {
  for (Statement* statement : handed_out_) statement->Reset();
  handed_out_.clear();
}

int64_t Database::LastInsertId() const { return sqlite3_last_insert_rowid(db_); }
int Database::Changes() const { return sqlite3_changes(db_); }

int Database::SchemaVersion() {
  Statement s = Prepare("PRAGMA user_version");
  s.Step();
  return static_cast<int>(s.Int(0));
}

void Database::Migrate() {
  int current = SchemaVersion();
  if (current > LatestSchemaVersion())
    throw Error(ErrorKind::kEnvironment,
                "database schema version " + std::to_string(current) +
                    " is newer than this build knows (" + std::to_string(LatestSchemaVersion()) +
                    "); upgrade Ferry");
  if (current == LatestSchemaVersion()) return;
  // A copy of the database as it was, before the first migration changes it:
  // coordinator.db.bak-v<N> (docs/packaging.md, "Upgrading"). VACUUM INTO is
  // consistent even with readers; it writes a temporary file, renamed over an
  // older copy of the same version (one from before a downgrade is stale).
  if (const char* file = sqlite3_db_filename(db_, "main"); current > 0 && file && *file) {
    const std::string backup = std::string(file) + ".bak-v" + std::to_string(current);
    const std::string partial = backup + ".tmp";
    std::string quoted;
    for (char c : partial) quoted += c == '\'' ? std::string("''") : std::string(1, c);
    try {
      if (::unlink(partial.c_str()) != 0 && errno != ENOENT) throw ErrnoError("removing " + partial, errno);
      Execute("VACUUM INTO '" + quoted + "'");
      if (::rename(partial.c_str(), backup.c_str()) != 0) throw ErrnoError("renaming " + partial, errno);
    } catch (const Error& e) {
      throw Error(ErrorKind::kEnvironment, "backing up the database to " + backup + " before migrating it from "
                                           "schema version " + std::to_string(current) + ": " + e.what());
    }
    LogInfo("copied the database (schema version " + std::to_string(current) + ") to " + backup +
            " before migrating it");
  }
  // Foreign keys off while migrating (it cannot change inside a
  // transaction): a migration that rebuilds a table (6) drops it while other
  // tables refer to it, which with foreign keys on would cascade. Each
  // migration checks them before it commits instead.
  Execute("PRAGMA foreign_keys = OFF");
  for (int v = current; v < LatestSchemaVersion(); ++v) {
    Transaction tx(*this);
    Execute(kMigrations[v]);
    {
      Statement check = Prepare("PRAGMA foreign_key_check");
      if (check.Step()) {
        throw Error(ErrorKind::kInternal, "migration " + std::to_string(v + 1) + " left a row of table " +
                                              check.Text(0) + " (rowid " + check.Text(1) +
                                              ") referring to a missing row of " + check.Text(2));
      }
    }
    Execute("PRAGMA user_version = " + std::to_string(v + 1));
    tx.Commit();
  }
  Execute("PRAGMA foreign_keys = ON");
}

Database::Transaction::Transaction(Database& db) : db_(db) { db_.Execute("BEGIN IMMEDIATE"); }

Database::Transaction::~Transaction() {
  if (!done_) {
    try {
      db_.Execute("ROLLBACK");
    } catch (...) {
      // The connection is unusable anyway; the caller sees the original error.
    }
  }
  db_.ResetCached();
}

void Database::Transaction::Commit() {
  db_.Execute("COMMIT");
  done_ = true;
}

Database::Savepoint::Savepoint(Database& db) : db_(db) { db_.Cached("SAVEPOINT op").Run(); }

Database::Savepoint::~Savepoint() {
  if (done_) return;
  try {
    db_.Cached("ROLLBACK TO op").Run();
    db_.Cached("RELEASE op").Run();
  } catch (...) {
    // The enclosing transaction fails at its commit; the caller sees the original error.
  }
}

void Database::Savepoint::Release() {
  db_.Cached("RELEASE op").Run();
  done_ = true;
}

void Database::Commit() {
  Execute("COMMIT");
  ResetCached();
}

void Database::Rollback() noexcept {
  try {
    if (InTransaction()) Execute("ROLLBACK");
  } catch (...) {
  }
  ResetCached();
}

bool Database::InTransaction() const { return sqlite3_get_autocommit(db_) == 0; }

}  // namespace ferry::coordinator
