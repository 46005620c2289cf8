// The repository lifecycle of coordinator jobs (repository_lifecycle.h)
// in process, against a real SQLite database and a real repository on
// disk, with a fake clock: retention after a session, locks of new points
// surviving retention, DELETE, GC and a restart until they expire, and a
// scheduled health check that finds damage the next backup heals.
#include "ferry/coordinator/repository_lifecycle.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>

#include "ferry/common/file_util.h"
#include "ferry/common/retention.h"
#include "ferry/common/verify.h"
#include "ferry/coordinator/field_error.h"
#include "test_points.h"

namespace ferry::coordinator {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

constexpr int64_t kDayMs = 86400 * 1000;

class LifecycleTest : public test::TempRepositoryTest {
 protected:
  void SetUp() override {
    TempRepositoryTest::SetUp();
    now_ms_ = ParseRfc3339("2026-12-01T12:00:00Z") * 1000;
    Open();
    repository_ = runner_->Write([&](Database& db) {
      db.Prepare("INSERT INTO repositories (name, location, task_slots, created_at) VALUES ('main', ?, 4, 1)")
          .Bind(1, dir_).Run();
      return db.LastInsertId();
    });
  }
  void TearDown() override {
    lifecycle_.reset();
    runner_.reset();
    // Locked points carry the immutable flag when the tests run as root.
    std::system(("chattr -R -i " + root_ + " 2>/dev/null").c_str());
    TempRepositoryTest::TearDown();
  }
  // (Re)opens the coordinator's parts on the same database: a restart.
  void Open() {
    lifecycle_.reset();
    runner_.reset();
    auto clock = [this] { return now_ms_.load(); };
    runner_ = std::make_unique<SessionRunner>(Database::Open(root_ + "/coordinator.db"), RunnerOptions{}, clock);
    runner_->Recover();
    LifecycleOptions o;
    o.gc_window = std::chrono::seconds(0);
    lifecycle_ = std::make_unique<RepositoryLifecycle>(*runner_, clock, o);
  }
  int64_t Job(const std::string& retention, int64_t lock_days, const std::string& check_schedule = "") {
    return runner_->Write([&](Database& db) {
      db.Prepare("INSERT INTO jobs (name, repository_id, selection, exclude_disks, retry_count, retry_interval_s, chain, "
                 "enabled, retention, lock_days, check_schedule, created_at, updated_at) "
                 "VALUES ('nightly', ?, '{}', '[]', 0, 0, 'nightly', 1, ?, ?, ?, 1, 1)")
          .Bind(1, repository_)
          .Bind(2, retention.empty() ? std::optional<std::string>() : std::optional<std::string>(retention))
          .Bind(3, lock_days)
          .Bind(4, check_schedule.empty() ? std::optional<std::string>() : std::optional<std::string>(check_schedule))
          .Run();
      return db.LastInsertId();
    });
  }
  // A backup session of the job that wrote one point (real, in the
  // repository) with these chunks, ended with its lifecycle step due.
  struct Backup {
    int64_t session, row;
    std::string point;
  };
  Backup RunBackup(int64_t job, const std::vector<std::string>& texts, const std::string& chain = "nightly") {
    std::string point = test::WriteTestPoint(*repo_, texts, FormatRfc3339(now_ms_ / 1000), "web01", chain);
    Backup b;
    b.point = point;
    runner_->Write([&](Database& db) {
      db.Prepare("INSERT INTO sessions (job_id, kind, trigger, state, created_at, ended_at, lifecycle_state) "
                 "VALUES (?, 'backup', 'manual', 'succeeded', ?, ?, 'pending')")
          .Bind(1, job).Bind(2, now_ms_.load()).Bind(3, now_ms_.load()).Run();
      b.session = db.LastInsertId();
      db.Prepare("INSERT INTO points (point_id, repository_id, job_id, session_id, vm_name, chain, created_at, disks) "
                 "VALUES (?, ?, ?, ?, 'web01', ?, ?, '[{\"name\":\"disk0\",\"size_bytes\":65536}]')")
          .Bind(1, point).Bind(2, repository_).Bind(3, job).Bind(4, b.session).Bind(5, chain).Bind(6, now_ms_.load()).Run();
      b.row = db.LastInsertId();
      return 0;
    });
    return b;
  }
  void Advance(int64_t ms) { now_ms_ += ms; }
  bool PointInRepository(const std::string& id) { return fs::exists(dir_ + "/points/" + id); }
  std::optional<int64_t> RemovedAt(int64_t row) {
    return runner_->Write([&](Database& db) {
      Statement s = db.Prepare("SELECT removed_at FROM points WHERE id = ?");
      s.Bind(1, row);
      EXPECT_TRUE(s.Step());
      return s.OptInt(0);
    });
  }
  std::string Column(const std::string& sql, int64_t id) {
    return runner_->Write([&](Database& db) {
      Statement s = db.Prepare(sql);
      s.Bind(1, id);
      EXPECT_TRUE(s.Step()) << sql;
      return s.IsNull(0) ? std::string("NULL") : s.Text(0);
    });
  }
  // The chunk file of `text`: a point's last chunk as it is, the others
  // padded to the chunk size (test::WriteTestPoint).
  std::string PathOf(const std::string& text, bool padded = false) {
    std::vector<uint8_t> plain(text.begin(), text.end());
    if (padded) plain.resize(repo_->config().chunk_size, 0);
    std::string hex = Sha256(plain.data(), plain.size()).Hex();
    return dir_ + "/chunks/" + hex.substr(0, 3) + "/" + hex;
  }

  std::atomic<int64_t> now_ms_{0};
  int64_t repository_ = 0;
  std::unique_ptr<SessionRunner> runner_;
  std::unique_ptr<RepositoryLifecycle> lifecycle_;
};

TEST_F(LifecycleTest, RetentionAfterASessionRemovesWhatNoRuleKeepsAndGcFreesIt) {
  int64_t job = Job(R"({"keep_last":2})", 0);
  Backup other = RunBackup(job, {"other-chain"}, "other");  // not the job's chain: never its retention's
  std::vector<Backup> b;
  for (int i = 0; i < 4; ++i) {
    b.push_back(RunBackup(job, {"shared", "only-" + std::to_string(i)}));
    lifecycle_->RunDue();
    Advance(kDayMs);
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(PointInRepository(b[i].point)) << i;
    EXPECT_TRUE(RemovedAt(b[i].row).has_value()) << i;
    EXPECT_FALSE(fs::exists(PathOf("only-" + std::to_string(i)))) << "GC left the chunk of removed point " << i;
  }
  for (int i = 2; i < 4; ++i) {
    EXPECT_TRUE(PointInRepository(b[i].point)) << i;
    EXPECT_FALSE(RemovedAt(b[i].row).has_value()) << i;
  }
  EXPECT_TRUE(fs::exists(PathOf("shared", true)));
  EXPECT_TRUE(PointInRepository(other.point));
  EXPECT_FALSE(RemovedAt(other.row).has_value());

  // What the session shows: done, the policy, what was removed, the GC.
  json::value outcome = json::parse(Column("SELECT lifecycle FROM sessions WHERE id = ?", b[2].session));
  EXPECT_EQ(outcome.at("state"), "done") << outcome;
  EXPECT_EQ(outcome.at("retention").at("policy"), "keep-last 2") << outcome;
  EXPECT_EQ(outcome.at("retention").at("removed"), json::array{json::value(b[0].point)}) << outcome;
  EXPECT_EQ(outcome.at("gc").at("chunks_removed"), 1) << outcome;
  EXPECT_EQ(Column("SELECT lifecycle_state FROM sessions WHERE id = ?", b[3].session), "done");
  // Space: the repository's row and each point's unique bytes.
  json::value space = json::parse(Column("SELECT space FROM repositories WHERE id = ?", repository_));
  EXPECT_EQ(space.at("point_count"), 3) << space;
  EXPECT_EQ(space.at("chains").as_array().size(), 2u) << space;  // the job's and the other
  EXPECT_NE(Column("SELECT unique_bytes FROM points WHERE id = ?", b[3].row), "NULL");
  // The session log says it.
  std::string log = Column("SELECT group_concat(message, '|') FROM task_log WHERE session_id = ?", b[2].session);
  EXPECT_NE(log.find("retention removed point " + b[0].point), std::string::npos) << log;
}

TEST_F(LifecycleTest, ALockedPointSurvivesRetentionDeleteGcAndARestartUntilItExpires) {
  int64_t job = Job(R"({"keep_last":1})", 7);
  Backup first = RunBackup(job, {"locked-chunk"});
  lifecycle_->RunDue();
  auto lock = repo_->points().ReadLock(first.point);
  ASSERT_TRUE(lock.has_value());
  EXPECT_EQ(lock->locked_until, now_ms_ / 1000 + 7 * 86400);
  EXPECT_EQ(Column("SELECT locked_until FROM points WHERE id = ?", first.row), std::to_string(lock->locked_until * 1000));

  Advance(kDayMs);
  Backup second = RunBackup(job, {"second"});
  lifecycle_->RunDue();
  // keep-last 1 would remove the first; its lock keeps it (and the second is locked too).
  EXPECT_TRUE(PointInRepository(first.point));
  EXPECT_FALSE(RemovedAt(first.row).has_value());
  EXPECT_THROW(lifecycle_->RemovePoint(first.row), ConflictError);
  EXPECT_TRUE(PointInRepository(first.point));

  // A restart of the coordinator: the lock is the repository's, not memory.
  Open();
  EXPECT_THROW(lifecycle_->RemovePoint(first.row), ConflictError);
  EXPECT_TRUE(fs::exists(PathOf("locked-chunk")));
  // Shortening a lock is refused, naming the field.
  try {
    lifecycle_->LockPoint(first.row, now_ms_ / 1000 + 86400, "shorter");
    ADD_FAILURE() << "a shorter lock was accepted";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "until");
  }

  // Seven days on (fake clock): the lock has expired, DELETE removes it.
  Advance(7 * kDayMs);
  lifecycle_->RemovePoint(first.row);
  EXPECT_FALSE(PointInRepository(first.point));
  EXPECT_TRUE(RemovedAt(first.row).has_value());
  EXPECT_THROW(lifecycle_->RemovePoint(first.row), Error);  // removed already: 404
  EXPECT_TRUE(PointInRepository(second.point));
}

TEST_F(LifecycleTest, AScheduledHealthCheckFindsDamageTheNextBackupHealsAndTheNextCheckIsClean) {
  int64_t job = Job("", 0, R"({"kind":"daily","at":"03:00"})");
  runner_->JobScheduleChanged(job);
  std::string next = Column("SELECT next_check_at FROM jobs WHERE id = ?", job);
  ASSERT_NE(next, "NULL");
  Backup b = RunBackup(job, {"healthy", "to-be-damaged"});
  lifecycle_->RunDue();
  // Damage one chunk file in place.
  {
    std::fstream f(PathOf("to-be-damaged"), std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekp(20);
    f.put('\x5a').put('\x5a').put('\x5a');
  }
  // Nothing before the schedule says so.
  lifecycle_->RunDue();
  EXPECT_EQ(Column("SELECT COUNT(*) FROM sessions WHERE kind = 'check' AND job_id = ?", job), "0");
  now_ms_ = std::stoll(next);
  lifecycle_->RunDue();
  int64_t check = std::stoll(Column("SELECT MAX(id) FROM sessions WHERE kind = 'check' AND job_id = ?", job));
  EXPECT_EQ(Column("SELECT trigger FROM sessions WHERE id = ?", check), "schedule");
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", check), "warning")
      << Column("SELECT reason FROM sessions WHERE id = ?", check);
  EXPECT_EQ(Column("SELECT check_state FROM points WHERE id = ?", b.row), "damaged");
  EXPECT_NE(Column("SELECT check_problem FROM points WHERE id = ?", b.row), "NULL");
  EXPECT_GT(std::stoll(Column("SELECT next_check_at FROM jobs WHERE id = ?", job)), now_ms_.load());
  EXPECT_FALSE(fs::exists(PathOf("to-be-damaged")));  // quarantined
  // The repository's own record of the check says so too.
  EXPECT_FALSE(repo_->points().LoadChecks().at(b.point).ok);

  // The next backup reads the same data: the missing chunk is stored again.
  Advance(kDayMs);
  Backup healed = RunBackup(job, {"healthy", "to-be-damaged"});
  lifecycle_->RunDue();
  EXPECT_TRUE(fs::exists(PathOf("to-be-damaged")));
  int64_t again = lifecycle_->StartCheck(job, "manual");
  EXPECT_THROW(lifecycle_->StartCheck(job, "manual"), ConflictError);  // one check of a job at a time
  lifecycle_->RunDue();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", again), "succeeded")
      << Column("SELECT reason FROM sessions WHERE id = ?", again);
  EXPECT_EQ(Column("SELECT check_state FROM points WHERE id = ?", b.row), "ok");
  EXPECT_EQ(Column("SELECT check_state FROM points WHERE id = ?", healed.row), "ok");
  json::value summary = json::parse(Column("SELECT lifecycle FROM sessions WHERE id = ?", again));
  EXPECT_EQ(summary.at("points"), 2) << summary;
  EXPECT_EQ(summary.at("damaged_points"), 0) << summary;
}

TEST_F(LifecycleTest, ACheckCutShortByARestartRunsAgain) {
  int64_t job = Job("", 0);
  Backup b = RunBackup(job, {"data"});
  int64_t check = lifecycle_->StartCheck(job, "manual");
  Open();  // before it ran: as if killed
  lifecycle_->RunDue();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", check), "succeeded");
  EXPECT_EQ(Column("SELECT check_state FROM points WHERE id = ?", b.row), "ok");
}

TEST_F(LifecycleTest, AStoppedCheckEndsStoppedAndRecordsNothing) {
  int64_t job = Job("", 0);
  Backup b = RunBackup(job, {"data"});
  int64_t check = lifecycle_->StartCheck(job, "manual");
  EXPECT_TRUE(runner_->StopSession(check));
  lifecycle_->RunDue();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", check), "stopped");
  EXPECT_EQ(Column("SELECT check_state FROM points WHERE id = ?", b.row), "NULL");
  EXPECT_TRUE(repo_->points().LoadChecks().empty());
}

TEST_F(LifecycleTest, APruneOutsideTheCoordinatorIsReconciled) {
  int64_t job = Job("", 0);
  Backup a = RunBackup(job, {"a"});
  lifecycle_->RunDue();
  repo_->points().Remove(a.point, now_ms_ / 1000);  // ferry remove, by hand
  RunBackup(job, {"b"});
  lifecycle_->RunDue();
  EXPECT_TRUE(RemovedAt(a.row).has_value());
}

// --- copy jobs ---------------------------------------------------------------

class CopyJobTest : public LifecycleTest {
 protected:
  void SetUp() override {
    LifecycleTest::SetUp();
    target_dir_ = root_ + "/offsite";
    RepositoryConfig config;
    config.chunk_size = repo_->config().chunk_size;
    Repository::Init(target_dir_, config);
    target_ = runner_->Write([&](Database& db) {
      db.Prepare("INSERT INTO repositories (name, location, task_slots, created_at) VALUES ('offsite', ?, 4, 1)")
          .Bind(1, target_dir_).Run();
      return db.LastInsertId();
    });
  }
  int64_t CopyJob(int64_t source_job, const std::string& retention = "") {
    return runner_->Write([&](Database& db) {
      db.Prepare("INSERT INTO jobs (name, kind, source_job_id, repository_id, selection, exclude_disks, retry_count, "
                 "retry_interval_s, chain, enabled, retention, lock_days, created_at, updated_at) "
                 "VALUES ('offsite', 'copy', ?, ?, '{}', '[]', 0, 0, 'offsite', 1, ?, 0, 1, 1)")
          .Bind(1, source_job).Bind(2, target_)
          .Bind(3, retention.empty() ? std::optional<std::string>() : std::optional<std::string>(retention))
          .Run();
      return db.LastInsertId();
    });
  }
  std::set<std::string> TargetPoints() {
    std::vector<std::string> ids = Repository::Open(target_dir_)->points().List();
    return {ids.begin(), ids.end()};
  }
  int64_t Count(const std::string& sql, int64_t id) { return std::stoll(Column(sql, id)); }

  std::string target_dir_;
  int64_t target_ = 0;
};

TEST_F(CopyJobTest, ACopySessionCopiesTheSourceChainAndRecordsItsPointsAtTheTarget) {
  int64_t job = Job("", 0);
  Backup a = RunBackup(job, {"alpha", "shared"});
  Backup b = RunBackup(job, {"beta", "shared"});
  RunBackup(job, {"not-this-chain"}, "other");  // the source job's chain only
  lifecycle_->RunDue();
  int64_t copy = CopyJob(job);
  int64_t session = runner_->StartJob(copy, "manual");
  EXPECT_EQ(Column("SELECT kind FROM sessions WHERE id = ?", session), "copy");
  EXPECT_THROW(runner_->StartJob(copy, "manual"), ConflictError);  // one session of a job at a time
  lifecycle_->RunDueCopies();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", session), "succeeded");
  EXPECT_EQ(TargetPoints(), (std::set<std::string>{a.point, b.point}));
  // Its points at the target: the copy job's, in the source's chain, with the VM.
  EXPECT_EQ(Count("SELECT COUNT(*) FROM points WHERE job_id = ? AND repository_id = 2 AND chain = 'nightly' "
                  "AND vm_name = 'web01' AND removed_at IS NULL", copy), 2);
  std::string reason = Column("SELECT reason FROM sessions WHERE id = ?", session);
  EXPECT_NE(reason.find("2 point(s) copied, 0 already at the target"), std::string::npos) << reason;
  // Chunks travel once: alpha, beta, shared (padded, shared by both).
  EXPECT_NE(reason.find("3 chunk(s) sent"), std::string::npos) << reason;
  EXPECT_EQ(Column("SELECT lifecycle_state FROM sessions WHERE id = ?", session), "pending");

  // The next run sends only what is new.
  Backup c = RunBackup(job, {"gamma", "shared"});
  lifecycle_->RunDue();
  int64_t again = runner_->StartJob(copy, "schedule");
  lifecycle_->RunDueCopies();
  reason = Column("SELECT reason FROM sessions WHERE id = ?", again);
  EXPECT_NE(reason.find("1 point(s) copied, 2 already at the target; 1 chunk(s) sent"), std::string::npos) << reason;
  EXPECT_TRUE(TargetPoints().count(c.point));
  std::unique_ptr<Repository> target = Repository::Open(target_dir_);
  VerifyReport v = VerifyRepository(*target, VerifyOptions{}, nullptr);
  EXPECT_TRUE(v.clean());
  EXPECT_EQ(v.points, 3u);
}

TEST_F(CopyJobTest, TheCopyJobsRetentionAppliesAtTheTargetOnly) {
  int64_t job = Job("", 0);  // the source keeps everything
  std::vector<Backup> b;
  for (int i = 0; i < 3; ++i) {
    b.push_back(RunBackup(job, {"day-" + std::to_string(i)}));
    lifecycle_->RunDue();
    Advance(kDayMs);
  }
  int64_t copy = CopyJob(job, R"({"keep_last":1})");
  int64_t session = runner_->StartJob(copy, "manual");
  lifecycle_->RunDueCopies();
  ASSERT_EQ(Column("SELECT state FROM sessions WHERE id = ?", session), "succeeded");
  lifecycle_->RunDue();  // the copy session's lifecycle step: retention at the target
  EXPECT_EQ(TargetPoints(), std::set<std::string>{b[2].point});
  for (const Backup& x : b) EXPECT_TRUE(PointInRepository(x.point)) << "the source lost " << x.point;
  EXPECT_EQ(Count("SELECT COUNT(*) FROM points WHERE job_id = ? AND removed_at IS NOT NULL", copy), 2);
  json::value outcome = json::parse(Column("SELECT lifecycle FROM sessions WHERE id = ?", session));
  EXPECT_EQ(outcome.at("retention").at("removed").as_array().size(), 2u) << outcome;
  // The next run does not copy back what the target's retention removed
  // (the source keeps it longer): nothing travels.
  int64_t again = runner_->StartJob(copy, "manual");
  lifecycle_->RunDueCopies();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", again), "succeeded");
  std::string reason = Column("SELECT reason FROM sessions WHERE id = ?", again);
  EXPECT_NE(reason.find("0 point(s) copied, 1 already at the target; 0 chunk(s) sent"), std::string::npos) << reason;
  EXPECT_EQ(TargetPoints(), std::set<std::string>{b[2].point});
}

TEST_F(CopyJobTest, AStoppedCopyEndsStoppedAndACopyCutShortByARestartGoesOn) {
  int64_t job = Job("", 0);
  Backup a = RunBackup(job, {"alpha"});
  int64_t copy = CopyJob(job);
  int64_t stopped = runner_->StartJob(copy, "manual");
  ASSERT_EQ(runner_->StopJob(copy), std::optional<int64_t>(stopped));
  lifecycle_->RunDueCopies();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", stopped), "stopped");
  EXPECT_TRUE(TargetPoints().empty());

  int64_t session = runner_->StartJob(copy, "manual");
  Open();  // before it ran: as if the coordinator was killed
  lifecycle_->RunDueCopies();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", session), "succeeded");
  EXPECT_EQ(TargetPoints(), std::set<std::string>{a.point});
}

TEST_F(CopyJobTest, ACopyWhoseSourceCannotBeOpenedFailsNamingTheRepository) {
  int64_t job = Job("", 0);
  int64_t copy = CopyJob(job);
  runner_->Write([&](Database& db) {
    db.Prepare("UPDATE repositories SET location = ? WHERE id = ?").Bind(1, root_ + "/nowhere").Bind(2, repository_).Run();
    return 0;
  });
  int64_t session = runner_->StartJob(copy, "manual");
  lifecycle_->RunDueCopies();
  EXPECT_EQ(Column("SELECT state FROM sessions WHERE id = ?", session), "failed");
  std::string reason = Column("SELECT reason FROM sessions WHERE id = ?", session);
  EXPECT_NE(reason.find("repository 'main'"), std::string::npos) << reason;
  EXPECT_EQ(Column("SELECT lifecycle_state FROM sessions WHERE id = ?", session), "NULL");
}

}  // namespace
}  // namespace ferry::coordinator
