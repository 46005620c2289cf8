#include "ferry/coordinator/database.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "ferry/common/error.h"

namespace ferry::coordinator {
namespace {

std::string TempPath() {
  auto dir = std::filesystem::temp_directory_path() / ("ferry-db-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / "c.db").string();
}

TEST(Database, MigratesToLatestAndReopens) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    Database db = Database::Open(path);
    EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
    db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('h1', 'libvirt', 1)");
  }
  Database again = Database::Open(path);
  Statement s = again.Prepare("SELECT name, cluster FROM hosts");
  ASSERT_TRUE(s.Step());
  EXPECT_EQ(s.Text(0), "h1");
  EXPECT_EQ(s.Text(1), "");
  Statement mode = again.Prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.Step());
  EXPECT_EQ(mode.Text(0), "wal");
}

TEST(Database, RefusesANewerSchema) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  { Database::Open(path).Execute("PRAGMA user_version = 999"); }
  try {
    Database::Open(path);
    FAIL() << "opened a database from the future";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kEnvironment);
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos) << e.what();
  }
}

TEST(Database, TransactionRollsBackUnlessCommitted) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  Database db = Database::Open(path);
  {
    Database::Transaction tx(db);
    db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('gone', 'libvirt', 1)");
  }
  Statement s = db.Prepare("SELECT COUNT(*) FROM hosts");
  s.Step();
  EXPECT_EQ(s.Int(0), 0);
}

// The session totals kept by triggers (migration 2) must always equal what
// summing the tasks gives, through every kind of change.
void ExpectTotalsMatchTasks(Database& db, int64_t session) {
  Statement kept = db.Prepare(
      "SELECT tasks, waiting, queued, running, succeeded, failed, canceled, bytes_done, bytes_total, bytes_stored, "
      "rate FROM session_totals WHERE session_id = ?");
  kept.Bind(1, session);
  ASSERT_TRUE(kept.Step()) << "no totals row for session " << session;
  Statement summed = db.Prepare(
      "SELECT COUNT(*), COALESCE(SUM(state = 'waiting'), 0), COALESCE(SUM(state = 'queued'), 0), "
      "COALESCE(SUM(state = 'running'), 0), COALESCE(SUM(state = 'succeeded'), 0), "
      "COALESCE(SUM(state = 'failed'), 0), COALESCE(SUM(state = 'canceled'), 0), COALESCE(SUM(bytes_done), 0), "
      "COALESCE(SUM(bytes_total), 0), COALESCE(SUM(bytes_stored), 0), "
      "COALESCE(SUM(CASE WHEN state = 'running' THEN rate ELSE 0 END), 0) FROM tasks WHERE session_id = ?");
  summed.Bind(1, session);
  ASSERT_TRUE(summed.Step());
  for (int column = 0; column < 10; ++column) EXPECT_EQ(kept.Int(column), summed.Int(column)) << "column " << column;
  EXPECT_NEAR(kept.Real(10), summed.Real(10), 1e-6);
}

void MakeSessionFixture(Database& db) {
  db.Execute(
      "INSERT INTO hosts (id, name, platform, created_at) VALUES (1, 'h1', 'libvirt', 1);"
      "INSERT INTO vms (id, host_id, name, uuid, state, seen_at) VALUES (1, 1, 'vm1', '', 'running', 1);"
      "INSERT INTO repositories (id, name, location, task_slots, created_at) VALUES (1, 'r', '/r', 4, 1);"
      "INSERT INTO jobs (id, name, repository_id, selection, exclude_disks, retry_count, retry_interval_s, chain, "
      "  enabled, created_at, updated_at) VALUES (1, 'j', 1, '{}', '[]', 0, 0, 'default', 1, 1, 1);");
}

void AddSessionWithTasks(Database& db, int64_t session, int tasks) {
  db.Prepare("INSERT INTO sessions (id, job_id, trigger, state, created_at) VALUES (?, 1, 'manual', 'running', 1)")
      .Bind(1, session).Run();
  db.Prepare("INSERT INTO snapshots (id, session_id, vm_id, vm_name, host_id, state, planned_point, created_at) "
             "VALUES (?, ?, 1, 'vm1', 1, 'pending', 'p', 1)")
      .Bind(1, session).Bind(2, session).Run();
  for (int i = 0; i < tasks; ++i)
    db.Prepare("INSERT INTO tasks (session_id, snapshot_id, vm_id, disk, repository_id, state, bytes_total) "
               "VALUES (?, ?, 1, ?, 1, 'waiting', ?)")
        .Bind(1, session).Bind(2, session).Bind(3, "d" + std::to_string(i)).Bind(4, int64_t{1000 + i}).Run();
}

TEST(Database, SessionTotalsFollowEveryTaskChange) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  Database db = Database::Open(path);
  MakeSessionFixture(db);
  AddSessionWithTasks(db, 1, 6);
  AddSessionWithTasks(db, 2, 3);
  ExpectTotalsMatchTasks(db, 1);
  db.Execute("UPDATE tasks SET state = 'queued' WHERE session_id = 1");
  db.Execute("UPDATE tasks SET state = 'running', rate = 12.5, bytes_done = 7 WHERE session_id = 1 AND id % 2 = 0");
  ExpectTotalsMatchTasks(db, 1);
  db.Execute("UPDATE tasks SET rate = 99.25, bytes_done = bytes_done + 100, bytes_stored = 3, bytes_total = 5000 "
             "WHERE session_id = 1 AND state = 'running'");
  db.Execute("UPDATE tasks SET state = 'succeeded' WHERE session_id = 1 AND id = (SELECT MIN(id) FROM tasks "
             "WHERE session_id = 1 AND state = 'running')");
  db.Execute("UPDATE tasks SET state = 'failed' WHERE session_id = 1 AND state = 'queued' AND id % 3 = 0");
  db.Execute("UPDATE tasks SET state = 'canceled' WHERE session_id = 1 AND state = 'queued'");
  ExpectTotalsMatchTasks(db, 1);
  db.Execute("UPDATE tasks SET disk = disk || 'x', tier = 'host'");  // columns the totals ignore
  db.Execute("DELETE FROM tasks WHERE session_id = 1 AND state = 'failed'");
  ExpectTotalsMatchTasks(db, 1);
  ExpectTotalsMatchTasks(db, 2);  // untouched by session 1's changes
  db.Execute("DELETE FROM tasks WHERE session_id = 2; DELETE FROM snapshots WHERE session_id = 2; "
             "DELETE FROM sessions WHERE id = 2");
  Statement gone = db.Prepare("SELECT COUNT(*) FROM session_totals WHERE session_id = 2");
  gone.Step();
  EXPECT_EQ(gone.Int(0), 0);
}

// What migration 4 adds (the tasks' statistics columns), to build a file of
// an earlier version.
constexpr const char* kDropMigration5 =
    "ALTER TABLE tasks DROP COLUMN bytes_read; ALTER TABLE tasks DROP COLUMN bytes_sent; "
    "ALTER TABLE tasks DROP COLUMN wall_us; ALTER TABLE tasks DROP COLUMN source_busy_us; "
    "ALTER TABLE tasks DROP COLUMN compute_busy_us; ALTER TABLE tasks DROP COLUMN network_busy_us; "
    "ALTER TABLE tasks DROP COLUMN target_busy_us; ALTER TABLE tasks DROP COLUMN remote_store; ";

// Migration 6 (restores) undone: its table, columns and index.
constexpr const char* kDropMigration6 =
    "DROP TABLE restores; ALTER TABLE points DROP COLUMN disks; DROP INDEX sessions_by_kind; "
    "ALTER TABLE sessions DROP COLUMN kind; ";

// Migration 7 (appliances) undone.
constexpr const char* kDropMigration7 = "DROP TABLE appliances; DROP INDEX snapshots_open_by_host; ";

// Migration 8 (the repository lifecycle of jobs) undone.
constexpr const char* kDropMigration8 =
    "DROP INDEX sessions_lifecycle_pending; DROP INDEX points_by_job; "
    "ALTER TABLE jobs DROP COLUMN retention; ALTER TABLE jobs DROP COLUMN lock_days; "
    "ALTER TABLE jobs DROP COLUMN check_schedule; ALTER TABLE jobs DROP COLUMN check_skip_verified_s; "
    "ALTER TABLE jobs DROP COLUMN next_check_at; ALTER TABLE sessions DROP COLUMN lifecycle_state; "
    "ALTER TABLE sessions DROP COLUMN lifecycle; ALTER TABLE points DROP COLUMN locked_until; "
    "ALTER TABLE points DROP COLUMN removed_at; ALTER TABLE points DROP COLUMN check_state; "
    "ALTER TABLE points DROP COLUMN checked_at; ALTER TABLE points DROP COLUMN check_problem; "
    "ALTER TABLE points DROP COLUMN check_problems; ALTER TABLE points DROP COLUMN unique_bytes; "
    "ALTER TABLE repositories DROP COLUMN space; ";

// Migration 9 (copy jobs) undone.
constexpr const char* kDropMigration9 =
    "DROP INDEX jobs_by_source; ALTER TABLE jobs DROP COLUMN kind; ALTER TABLE jobs DROP COLUMN source_job_id; ";

TEST(Database, Migration9MakesExistingJobsBackupJobs) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    Database db = Database::Open(path);
    db.Execute(std::string(kDropMigration9) + "PRAGMA user_version = 8");
    MakeSessionFixture(db);
  }
  Database db = Database::Open(path);
  EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  Statement job = db.Prepare("SELECT kind, source_job_id IS NULL FROM jobs WHERE id = 1");
  ASSERT_TRUE(job.Step());
  EXPECT_EQ(job.Text(0), "backup");
  EXPECT_EQ(job.Int(1), 1);
  std::filesystem::remove(path);
  std::filesystem::remove(path + ".bak-v8");
}

TEST(Database, Migration5GivesExistingTasksNoStatistics) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    // As the version before it left the file (migration 4 is the last;
    // migration 6 undone too).
    Database db = Database::Open(path);
    db.Execute(std::string(kDropMigration9) + kDropMigration8 + kDropMigration7 + kDropMigration6 + kDropMigration5 + "PRAGMA user_version = 4");
    MakeSessionFixture(db);
    AddSessionWithTasks(db, 1, 3);
  }
  Database db = Database::Open(path);
  EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  Statement s = db.Prepare(
      "SELECT COUNT(*), SUM(bytes_read), SUM(bytes_sent), SUM(wall_us IS NULL AND source_busy_us IS NULL AND "
      "compute_busy_us IS NULL AND network_busy_us IS NULL AND target_busy_us IS NULL AND remote_store IS NULL) "
      "FROM tasks");
  ASSERT_TRUE(s.Step());
  EXPECT_EQ(s.Int(0), 3);
  EXPECT_EQ(s.Int(1), 0);
  EXPECT_EQ(s.Int(2), 0);
  EXPECT_EQ(s.Int(3), 3);  // no statistics: the API shows null, not zeros
  ExpectTotalsMatchTasks(db, 1);
}

TEST(Database, Migration2BackfillsTotalsOfExistingSessions) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    // Build a version-1 database with sessions, as a coordinator of that
    // version left it: later migrations' objects removed, user_version 1.
    Database db = Database::Open(path);
    db.Execute(
        "DROP TRIGGER session_totals_new_session; DROP TRIGGER session_totals_new_task; "
        "DROP TRIGGER session_totals_task_changed; DROP TRIGGER session_totals_task_deleted; "
        "DROP TABLE session_totals; DROP INDEX tasks_by_session; "
        "CREATE INDEX tasks_by_session ON tasks(session_id, state, bytes_done, bytes_total, rate); "
        "CREATE INDEX tasks_live ON tasks(state) WHERE state IN ('waiting', 'queued', 'running'); "
        "ALTER TABLE repositories DROP COLUMN token; ALTER TABLE repositories DROP COLUMN bandwidth; "
        "ALTER TABLE workers DROP COLUMN bandwidth; " + std::string(kDropMigration9) + kDropMigration8 + kDropMigration7 + kDropMigration5 + kDropMigration6 +
        "PRAGMA user_version = 1");
    MakeSessionFixture(db);
    AddSessionWithTasks(db, 1, 4);
    db.Execute("UPDATE tasks SET state = 'running', rate = 2.5, bytes_done = 10 WHERE id % 2 = 0");
    db.Execute("UPDATE tasks SET state = 'succeeded', bytes_done = bytes_total WHERE id % 2 = 1");
    db.Prepare("INSERT INTO sessions (id, job_id, trigger, state, created_at) VALUES (2, 1, 'manual', 'failed', 1)").Run();
  }
  Database db = Database::Open(path);
  EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  ExpectTotalsMatchTasks(db, 1);
  ExpectTotalsMatchTasks(db, 2);  // a session without tasks gets a zero row
  db.Execute("UPDATE tasks SET state = 'succeeded' WHERE state = 'running'");  // triggers work after migrating
  ExpectTotalsMatchTasks(db, 1);
}

// Migration 6 rebuilds sessions and tasks (a restore has no job, its task no
// snapshot): every row, total and trigger survives, foreign keys hold again,
// and points learn their disks from the tasks of their session.
TEST(Database, Migration6RebuildsSessionsAndTasksKeepingEverything) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    // Back to version 5: migration 6's objects removed. (Sessions and tasks
    // keep their new column types; the rebuild reads them the same way.)
    Database db = Database::Open(path);
    db.Execute(std::string(kDropMigration9) + kDropMigration8 + kDropMigration7 + kDropMigration6 + "PRAGMA user_version = 5");
    MakeSessionFixture(db);
    AddSessionWithTasks(db, 1, 3);
    db.Execute("UPDATE tasks SET state = 'succeeded', bytes_done = bytes_total, bytes_read = 7, wall_us = 1000, "
               "source_busy_us = 900 WHERE session_id = 1");
    db.Execute("UPDATE snapshots SET state = 'released', point_id = 'p1' WHERE id = 1");
    db.Execute(
        "INSERT INTO points (id, point_id, repository_id, job_id, session_id, vm_id, vm_name, chain, created_at) "
        "VALUES (1, 'p1', 1, 1, 1, 1, 'vm1', 'default', 1), (2, 'gone', 1, 1, 77, 1, 'vm1', 'default', 1)");
    AddSessionWithTasks(db, 2, 2);
    db.Execute("UPDATE tasks SET state = 'running', rate = 3.5, bytes_done = 9 WHERE session_id = 2");
  }
  Database db = Database::Open(path);
  EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  ExpectTotalsMatchTasks(db, 1);
  ExpectTotalsMatchTasks(db, 2);
  Statement counts = db.Prepare(
      "SELECT (SELECT COUNT(*) FROM sessions WHERE kind = 'backup'), (SELECT COUNT(*) FROM tasks), "
      "(SELECT SUM(bytes_read) FROM tasks), (SELECT SUM(source_busy_us) FROM tasks WHERE wall_us = 1000)");
  ASSERT_TRUE(counts.Step());
  EXPECT_EQ(counts.Int(0), 2);
  EXPECT_EQ(counts.Int(1), 5);
  EXPECT_EQ(counts.Int(2), 21) << "migration 5's statistics are kept";
  EXPECT_EQ(counts.Int(3), 2700);
  Statement disks = db.Prepare("SELECT json_array_length(disks), disks IS NULL FROM points ORDER BY id");
  ASSERT_TRUE(disks.Step());
  EXPECT_EQ(disks.Int(0), 3) << "p1's three disks, from its session's tasks";
  ASSERT_TRUE(disks.Step());
  EXPECT_EQ(disks.Int(1), 1) << "a point whose session is gone: not known";
  Statement named = db.Prepare(
      "SELECT COUNT(*) FROM points, json_each(points.disks) WHERE points.id = 1 AND "
      "json_extract(value, '$.name') = 'd0' AND json_extract(value, '$.size_bytes') = 1000");
  ASSERT_TRUE(named.Step());
  EXPECT_EQ(named.Int(0), 1);

  // A restore session: no job, a task without a snapshot; the totals'
  // triggers were made again on the rebuilt tables.
  db.Execute("INSERT INTO sessions (id, kind, trigger, state, created_at) VALUES (3, 'restore', 'manual', 'running', 1)");
  db.Execute("INSERT INTO tasks (id, session_id, disk, repository_id, state, bytes_total) VALUES (50, 3, 'd0', 1, 'queued', 5)");
  db.Execute(
      "INSERT INTO restores (session_id, task_id, point, point_id, repository_id, vm_name, vm_id, disk, host_id, target, "
      "retry_count, retry_interval_s) VALUES (3, 50, 1, 'p1', 1, 'vm1', 1, 'd0', 1, '{}', 3, 60)");
  ExpectTotalsMatchTasks(db, 3);
  db.Execute("UPDATE tasks SET state = 'running', rate = 1.5, bytes_done = 2 WHERE id = 50");
  ExpectTotalsMatchTasks(db, 3);
  db.Execute("DELETE FROM tasks WHERE session_id = 2");
  ExpectTotalsMatchTasks(db, 2);

  Statement fk = db.Prepare("PRAGMA foreign_keys");
  ASSERT_TRUE(fk.Step());
  EXPECT_EQ(fk.Int(0), 1) << "foreign keys are on again after migrating";
  EXPECT_THROW(db.Execute("INSERT INTO tasks (session_id, disk, repository_id, state) VALUES (999, 'x', 1, 'queued')"), Error);
  EXPECT_THROW(db.Execute("INSERT INTO restores (session_id, task_id, point, point_id, repository_id, vm_name, disk, "
                          "host_id, target, retry_count, retry_interval_s) VALUES (2, 1, 99, 'p', 1, 'v', '', 1, '{}', 0, 0)"),
               Error);
  Statement schema = db.Prepare(
      "SELECT (SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index' AND name IN ('tasks_by_session', "
      "'tasks_by_snapshot', 'tasks_by_worker', 'tasks_by_repository', 'sessions_by_job', 'sessions_by_kind')), "
      "(SELECT COUNT(*) FROM sqlite_schema WHERE type = 'trigger'), "
      "(SELECT COUNT(*) FROM sqlite_schema WHERE name LIKE '%_new')");
  ASSERT_TRUE(schema.Step());
  EXPECT_EQ(schema.Int(0), 6);
  EXPECT_EQ(schema.Int(1), 4);
  EXPECT_EQ(schema.Int(2), 0);
}

TEST(Database, SavepointRollsBackOnlyItsOwnChanges) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  Database db = Database::Open(path);
  db.Begin();
  db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('kept', 'libvirt', 1)");
  {
    Database::Savepoint op(db);
    db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('undone', 'libvirt', 1)");
  }
  {
    Database::Savepoint op(db);
    db.Execute("INSERT INTO hosts (name, platform, created_at) VALUES ('released', 'libvirt', 1)");
    op.Release();
  }
  EXPECT_TRUE(db.InTransaction());
  db.Commit();
  EXPECT_FALSE(db.InTransaction());
  Statement s = db.Prepare("SELECT group_concat(name, ',') FROM (SELECT name FROM hosts ORDER BY name)");
  ASSERT_TRUE(s.Step());
  EXPECT_EQ(s.Text(0), "kept,released");
}

TEST(Database, NotADatabaseIsReportedAsCorrupt) {
  std::string path = TempPath();
  {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs("this is not sqlite, just text that is long enough to have a header......................", f);
    std::fclose(f);
  }
  try {
    Database::Open(path);
    FAIL() << "opened garbage";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt) << e.what();
  }
}

// Migration 7 adds the appliances table to a version-6 file: existing hosts
// and workers stay as they were, and a host gets an appliance row tied to
// its worker (the worker's removal leaves the row without it).
TEST(Database, Migration7AddsAppliancesKeepingHostsAndWorkers) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    Database db = Database::Open(path);
    db.Execute(std::string(kDropMigration9) + kDropMigration8 + kDropMigration7 + "PRAGMA user_version = 6");
    MakeSessionFixture(db);
    db.Execute("INSERT INTO workers (id, name, token_hash, host_id, created_at) VALUES (1, 'w', 'hash', 1, 1)");
  }
  Database db = Database::Open(path);
  EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  Statement kept = db.Prepare("SELECT (SELECT name FROM hosts WHERE id = 1), (SELECT host_id FROM workers WHERE id = 1)");
  ASSERT_TRUE(kept.Step());
  EXPECT_EQ(kept.Text(0), "h1");
  EXPECT_EQ(kept.Int(1), 1);
  db.Execute(
      "INSERT INTO appliances (host_id, worker_id, domain, libvirt_uri, pool, image_volume, config_volume, network, "
      "memory_mib, coordinator_address, idle_shutdown_s, state, state_changed_at, last_busy_at, created_at) "
      "VALUES (1, 1, 'ferry-appliance-h1', 'qemu:///system', 'default', 'a.qcow2', 'a-cidata.img', "
      "'{\"type\":\"user\"}', 768, '10.0.2.2:8081', 900, 'deploying', 1, 1, 1)");
  db.Execute("PRAGMA foreign_keys = ON; DELETE FROM workers WHERE id = 1");
  Statement row = db.Prepare("SELECT worker_id IS NULL, state, reason FROM appliances WHERE host_id = 1");
  ASSERT_TRUE(row.Step());
  EXPECT_EQ(row.Int(0), 1);
  EXPECT_EQ(row.Text(1), "deploying");
  EXPECT_EQ(row.Text(2), "");
}

TEST(Database, Migration8GivesJobsNoLifecycleAndKeepsPoints) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  {
    Database db = Database::Open(path);
    db.Execute(std::string(kDropMigration9) + kDropMigration8 + "PRAGMA user_version = 7");
    MakeSessionFixture(db);
    AddSessionWithTasks(db, 1, 1);
    db.Execute("INSERT INTO points (point_id, repository_id, job_id, session_id, vm_name, chain, created_at) "
               "VALUES ('p1', 1, 1, 1, 'vm1', 'default', 1)");
  }
  Database db = Database::Open(path);
  EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  Statement job = db.Prepare("SELECT retention IS NULL, lock_days, check_schedule IS NULL, next_check_at IS NULL FROM jobs WHERE id = 1");
  ASSERT_TRUE(job.Step());
  EXPECT_EQ(job.Int(0), 1);
  EXPECT_EQ(job.Int(1), 0);
  EXPECT_EQ(job.Int(2), 1);
  EXPECT_EQ(job.Int(3), 1);
  Statement point = db.Prepare("SELECT point_id, removed_at IS NULL, check_state IS NULL, check_problems FROM points");
  ASSERT_TRUE(point.Step());
  EXPECT_EQ(point.Text(0), "p1");
  EXPECT_EQ(point.Int(1), 1);
  EXPECT_EQ(point.Int(2), 1);
  EXPECT_EQ(point.Int(3), 0);
  Statement session = db.Prepare("SELECT lifecycle_state IS NULL FROM sessions WHERE id = 1");
  ASSERT_TRUE(session.Step());
  EXPECT_EQ(session.Int(0), 1) << "sessions from before migration 8 have no lifecycle step due";
}

// Before migrating an existing database, Migrate copies it as it was to
// coordinator.db.bak-v<N> (docs/packaging.md, "Upgrading"); a new one is not copied.
TEST(Database, MigrationKeepsACopyOfTheOldVersion) {
  std::string path = TempPath();
  std::filesystem::remove(path);
  const std::string backup = path + ".bak-v7";
  {
    // A stale copy (from before a downgrade) is replaced.
    std::ofstream stale(backup);
    stale << "stale";
  }
  {
    Database db = Database::Open(path);
    db.Execute(std::string(kDropMigration9) + kDropMigration8 + "PRAGMA user_version = 7");
  }
  EXPECT_FALSE(std::filesystem::exists(path + ".bak-v0")) << "a new database is not copied";
  {
    Database db = Database::Open(path);
    EXPECT_EQ(db.SchemaVersion(), LatestSchemaVersion());
  }
  ASSERT_TRUE(std::filesystem::exists(backup));
  EXPECT_FALSE(std::filesystem::exists(backup + ".tmp"));
  try {
    Database::Open(backup, /*read_only=*/true);
    ADD_FAILURE() << "the copy is not at schema version 7";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has schema version 7"), std::string::npos) << e.what();
  }
  std::filesystem::remove(backup);
}

}  // namespace
}  // namespace ferry::coordinator
