#include "ferry/coordinator/repository_lifecycle.h"

#include <algorithm>
#include <map>
#include <set>

#include "ferry/common/bandwidth.h"
#include "ferry/common/copy.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/manifest.h"
#include "ferry/common/periodic.h"
#include "ferry/common/retention.h"
#include "ferry/common/verify.h"
#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/job_lifecycle.h"
#include "ferry/coordinator/schedule.h"
#include "ferry/rpc/repository_service.h"

namespace json = boost::json;

namespace ferry::coordinator {

namespace {

std::string Bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

// A progress line of a long check or copy every `period`. A line that
// cannot be written is lost, never the work's failure.
PeriodicTask PeriodicReport(std::chrono::seconds period, std::function<void()> report) {
  return PeriodicTask(period, [report = std::move(report)] {
    try {
      report();
    } catch (const std::exception&) {
    }
  });
}

// The chain a job's points are in: a copy job's are its source job's (a
// copy keeps the point's chain), in the copy job's repository.
constexpr char kJobChain[] = "COALESCE((SELECT src.chain FROM jobs src WHERE src.id = j.source_job_id), j.chain)";

}  // namespace

RepositoryLifecycle::RepositoryLifecycle(SessionRunner& runner, SessionRunner::Clock clock, LifecycleOptions options)
    : runner_(runner), clock_(std::move(clock)), options_(options) {}

RepositoryLifecycle::~RepositoryLifecycle() { Stop(); }

void RepositoryLifecycle::Start() {
  runner_.SetLifecycleNotifier([this] { Wake(); },
                               [this](int64_t session) {
                                 if (running_check_.load() == session) cancel_check_ = true;
                                 if (running_copy_.load() == session) cancel_copy_ = true;
                               });
  // Two loops: copies, which may take hours over a slow offsite link, run
  // beside the checks and after-session steps instead of holding them up.
  auto loop = [this](bool& woken, void (RepositoryLifecycle::*run)()) {
    std::unique_lock lock(mu_);
    while (!stop_) {
      woken = false;
      lock.unlock();
      try {
        (this->*run)();
      } catch (const std::exception& e) {
        LogWarning(std::string("repository lifecycle: ") + e.what());
      }
      lock.lock();
      cv_.wait_for(lock, options_.poll, [&] { return stop_ || woken; });
    }
  };
  thread_ = std::thread(loop, std::ref(woken_), &RepositoryLifecycle::RunDue);
  copy_thread_ = std::thread(loop, std::ref(copy_woken_), &RepositoryLifecycle::RunDueCopies);
}

void RepositoryLifecycle::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cancel_copy_ = true;  // a copy cut short runs again after a restart
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (copy_thread_.joinable()) copy_thread_.join();
}

bool RepositoryLifecycle::ShuttingDown() {
  std::lock_guard lock(mu_);
  return stop_;
}

void RepositoryLifecycle::Wake() {
  {
    std::lock_guard lock(mu_);
    woken_ = true;
    copy_woken_ = true;
  }
  cv_.notify_all();
}

void RepositoryLifecycle::Log(int64_t session_id, const std::string& level, const std::string& message) {
  runner_.AddSessionLog(session_id, level, message);
}

void RepositoryLifecycle::RunDue() {
  std::lock_guard run(run_mu_);
  StartDueChecks();
  // Backup sessions whose lifecycle step is due, oldest first; then checks
  // (new, or cut short by a restart).
  for (;;) {
    auto next = runner_.Write([&](Database& db) -> std::optional<std::pair<int64_t, std::string>> {
      Statement s = db.Prepare(
          "SELECT id, kind FROM sessions WHERE (lifecycle_state = 'pending') OR (kind = 'check' AND state IN "
          "('running', 'stopping')) ORDER BY id LIMIT 1");
      if (!s.Step()) return std::nullopt;
      return std::make_pair(s.Int(0), s.Text(1));
    });
    if (!next) return;
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    if (next->second == "check") {
      RunCheck(next->first);
    } else {
      RunAfterSession(next->first);
    }
  }
}

RepositoryLifecycle::RepositoryRow RepositoryLifecycle::LoadRepository(int64_t repository_id) {
  return runner_.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT name, location, COALESCE(token, '') FROM repositories WHERE id = ?");
    s.Bind(1, repository_id);
    if (!s.Step()) throw Error(ErrorKind::kNotFound, "repository " + std::to_string(repository_id) + " not found");
    return RepositoryRow{repository_id, s.Text(0), s.Text(1), s.Text(2)};
  });
}

std::unique_ptr<Repository> RepositoryLifecycle::Open(const RepositoryRow& r) {
  rpc::RepositoryAccess access;
  access.token = r.token;
  access.reconnect_for = std::chrono::minutes(2);
  try {
    return rpc::OpenRepository(r.location, access);
  } catch (const Error& e) {
    // A repository that is not there is unavailable (503), not an unknown
    // object of the request (404).
    if (e.kind() == ErrorKind::kNotFound)
      throw Error(ErrorKind::kRetryable, "repository '" + r.name + "' is not available: " + e.what());
    throw e.WithContext("repository '" + r.name + "'");
  }
}

// --- after a backup session ------------------------------------------------------

void RepositoryLifecycle::RunAfterSession(int64_t session_id) {
  struct Job {
    int64_t id = 0;
    std::string name, chain;
    int64_t repository_id = 0;
    JobLifecycle lifecycle;
    std::vector<std::string> new_points;
  };
  std::optional<Job> job = runner_.Write([&](Database& db) -> std::optional<Job> {
    Statement s = db.Prepare(
        "SELECT j.id, j.name, " + std::string(kJobChain) + ", j.repository_id, j.retention, j.lock_days, "
        "j.check_schedule, j.check_skip_verified_s FROM sessions s JOIN jobs j ON j.id = s.job_id WHERE s.id = ?");
    s.Bind(1, session_id);
    if (!s.Step()) {
      db.Prepare("UPDATE sessions SET lifecycle_state = 'done' WHERE id = ?").Bind(1, session_id).Run();
      return std::nullopt;
    }
    Job j;
    j.id = s.Int(0);
    j.name = s.Text(1);
    j.chain = s.Text(2);
    j.repository_id = s.Int(3);
    j.lifecycle = JobLifecycleFromRow(s, 4);
    Statement p = db.Prepare("SELECT point_id FROM points WHERE session_id = ? AND removed_at IS NULL ORDER BY id");
    p.Bind(1, session_id);
    while (p.Step()) j.new_points.push_back(p.Text(0));
    return j;
  });
  if (!job) return;
  json::object outcome{{"state", "done"}};
  std::string state = "done";
  try {
    RepositoryRow repo_row = LoadRepository(job->repository_id);
    std::unique_ptr<Repository> repo = Open(repo_row);
    const int64_t now = NowSeconds();

    if (job->lifecycle.lock_days > 0) {
      const int64_t until = now + job->lifecycle.lock_days * 86400;
      const std::string reason = "job '" + job->name + "' locks its points for " +
                                 std::to_string(job->lifecycle.lock_days) + " days";
      int64_t locked = 0;
      for (const auto& id : job->new_points) {
        PointLock lock = repo->points().SetLock(id, until, reason, now);
        runner_.Write([&](Database& db) {
          db.Prepare("UPDATE points SET locked_until = ? WHERE repository_id = ? AND point_id = ?")
              .Bind(1, lock.locked_until * 1000).Bind(2, job->repository_id).Bind(3, id).Run();
          return 0;
        });
        ++locked;
      }
      outcome["locked"] = json::object{{"points", locked}, {"until", FormatRfc3339(until)}};
      if (locked > 0) Log(session_id, "info", "locked " + std::to_string(locked) + " new point(s) until " + FormatRfc3339(until));
    }

    bool removed_any = false;
    if (job->lifecycle.retention) {
      PruneOptions o;
      o.policy = *job->lifecycle.retention;
      o.chain = job->chain;
      o.now = now;
      PruneReport r = Prune(repo->points(), o);
      json::array removed, skipped;
      for (const auto& e : r.entries) {
        if (e.removed) {
          removed.emplace_back(e.decision.id);
          runner_.Write([&](Database& db) {
            db.Prepare("UPDATE points SET removed_at = ? WHERE repository_id = ? AND point_id = ? AND removed_at IS NULL")
                .Bind(1, clock_()).Bind(2, job->repository_id).Bind(3, e.decision.id).Run();
            return 0;
          });
          Log(session_id, "info", "retention removed point " + e.decision.id + " (" + e.decision.group + ", started " +
                                      e.started_at + "): no rule keeps it");
        } else if (!e.decision.keep) {
          skipped.push_back(json::object{{"id", e.decision.id}, {"why", e.outcome}});
          Log(session_id, "warning", "retention left point " + e.decision.id + ": " + e.outcome);
        }
      }
      for (const auto& p : r.problems) Log(session_id, "warning", "retention: " + p.entry + ": " + p.message);
      removed_any = !removed.empty();
      json::object retention{{"policy", DescribeRetentionPolicy(*job->lifecycle.retention)},
                             {"kept", r.kept},
                             {"removed", removed},
                             {"skipped", skipped}};
      if (r.failure) {
        retention["error"] = r.failure->what();
        state = "failed";
      }
      outcome["retention"] = retention;
      Log(session_id, r.failure ? "warning" : "info",
          "retention (" + DescribeRetentionPolicy(*job->lifecycle.retention) + ") over chain '" + job->chain +
              "': kept " + std::to_string(r.kept) + ", removed " + std::to_string(r.removed) +
              (r.skipped ? ", left " + std::to_string(r.skipped) + " in use or locked" : "") +
              (r.failure ? std::string("; ") + r.failure->what() : ""));
    }
    ReconcileRemoved(*repo, job->repository_id, job->chain, session_id);
    repo.reset();

    if (removed_any) {
      GcOptions g;
      g.window = options_.gc_window;
      // In a bucket, backups that start while the GC waits for older ones
      // wait too: give up soon and let the next session's GC collect.
      g.wait_for_writers = options_.gc_wait_for_writers;
      try {
        rpc::RepositoryAccess access;
        access.token = repo_row.token;
        GcReport gc = rpc::CollectGarbage(repo_row.location, access, g, nullptr);
        outcome["gc"] = json::object{{"chunks_removed", gc.chunks_removed}, {"bytes_removed", gc.bytes_removed},
                                     {"chunks_kept_by_window", gc.chunks_kept_by_window}, {"seconds", gc.seconds}};
        Log(session_id, "info", "garbage collection removed " + std::to_string(gc.chunks_removed) + " chunk(s), " +
                                    Bytes(gc.bytes_removed) + "; " + std::to_string(gc.chunks_kept_by_window) +
                                    " unreferenced chunk(s) younger than the window wait for the next one");
      } catch (const Error& e) {
        // Another GC running is not a failure: the next one collects.
        outcome["gc"] = json::object{{"error", e.what()}};
        Log(session_id, e.kind() == ErrorKind::kRetryable ? "info" : "warning",
            std::string("garbage collection: ") + e.what());
      }
    }
    try {
      outcome["space"] = MeasureSpaceInto(repo_row);
    } catch (const Error& e) {
      Log(session_id, "warning", std::string("space accounting: ") + e.what());
    }
  } catch (const Error& e) {
    state = "failed";
    outcome["error"] = e.what();
    Log(session_id, "warning", std::string("repository lifecycle after the session failed: ") + e.what());
  }
  outcome["state"] = state;
  runner_.Write([&](Database& db) {
    db.Prepare("UPDATE sessions SET lifecycle_state = ?, lifecycle = ? WHERE id = ?")
        .Bind(1, state).Bind(2, json::serialize(outcome)).Bind(3, session_id).Run();
    return 0;
  });
}

void RepositoryLifecycle::ReconcileRemoved(Repository& repo, int64_t repository_id, const std::string& chain,
                                           int64_t session_id) {
  std::vector<std::string> listed = repo.points().List();
  std::set<std::string> present(listed.begin(), listed.end());
  std::vector<std::string> gone = runner_.Write([&](Database& db) {
    Statement s = db.Prepare(
        "SELECT point_id FROM points WHERE repository_id = ? AND chain = ? AND removed_at IS NULL");
    s.Bind(1, repository_id).Bind(2, chain);
    std::vector<std::string> out;
    while (s.Step())
      if (!present.count(s.Text(0))) out.push_back(s.Text(0));
    for (const auto& id : out)
      db.Prepare("UPDATE points SET removed_at = ? WHERE repository_id = ? AND point_id = ?")
          .Bind(1, clock_()).Bind(2, repository_id).Bind(3, id).Run();
    return out;
  });
  for (const auto& id : gone)
    Log(session_id, "warning", "point " + id + " is no longer in the repository (removed outside the coordinator)");
}

json::object RepositoryLifecycle::MeasureSpaceInto(const RepositoryRow& r) {
  rpc::RepositoryAccess access;
  access.token = r.token;
  SpaceReport s = rpc::MeasureSpace(r.location, access);
  json::object space = SpaceSummaryJson(s, clock_());
  runner_.Write([&](Database& db) {
    db.Prepare("UPDATE repositories SET space = ? WHERE id = ?").Bind(1, json::serialize(space)).Bind(2, r.id).Run();
    for (const auto& p : s.points_space)
      db.Cached("UPDATE points SET unique_bytes = ? WHERE repository_id = ? AND point_id = ?")
          .Bind(1, static_cast<int64_t>(p.unique_bytes)).Bind(2, r.id).Bind(3, p.id).Run();
    return 0;
  });
  return json::object{{"stored_bytes", s.stored_bytes}, {"logical_bytes", s.logical_bytes},
                      {"dedup_ratio", s.dedup_ratio}, {"garbage_bytes", s.garbage_bytes}};
}

// --- health checks ------------------------------------------------------------------

void RepositoryLifecycle::StartDueChecks() {
  const int64_t now = clock_();
  std::vector<int64_t> due = runner_.Write([&](Database& db) {
    Statement s = db.Prepare(
        "SELECT id, check_schedule FROM jobs WHERE enabled = 1 AND next_check_at IS NOT NULL AND next_check_at <= ?");
    s.Bind(1, now);
    std::vector<int64_t> out;
    std::vector<std::pair<int64_t, std::optional<int64_t>>> next;
    while (s.Step()) {
      out.push_back(s.Int(0));
      std::optional<int64_t> at = NextCheckAt(s.OptText(1), now);
      next.emplace_back(s.Int(0), at);
    }
    // The next check is set before this one starts, so a slow start never fires twice.
    for (const auto& [id, at] : next)
      db.Prepare("UPDATE jobs SET next_check_at = ? WHERE id = ?").Bind(1, at).Bind(2, id).Run();
    return out;
  });
  for (int64_t job : due) {
    try {
      StartCheck(job, "schedule");
    } catch (const Error& e) {
      LogWarning("job " + std::to_string(job) + ": scheduled health check not started: " + e.what());
    }
  }
}

int64_t RepositoryLifecycle::StartCheck(int64_t job_id, const std::string& trigger) {
  int64_t id = runner_.Write([&](Database& db) {
    Statement j = db.Prepare("SELECT name FROM jobs WHERE id = ?");
    j.Bind(1, job_id);
    if (!j.Step()) throw Error(ErrorKind::kNotFound, "job " + std::to_string(job_id) + " not found");
    Statement running = db.Prepare(
        "SELECT id FROM sessions WHERE job_id = ? AND kind = 'check' AND state IN ('running', 'stopping')");
    running.Bind(1, job_id);
    if (running.Step())
      throw ConflictError("job '" + j.Text(0) + "' already runs health check session " + std::to_string(running.Int(0)));
    db.Prepare("INSERT INTO sessions (job_id, kind, trigger, state, created_at) VALUES (?, 'check', ?, 'running', ?)")
        .Bind(1, job_id).Bind(2, trigger).Bind(3, clock_()).Run();
    return db.LastInsertId();
  });
  Wake();
  return id;
}

void RepositoryLifecycle::RunCheck(int64_t session_id) {
  struct Check {
    int64_t job_id = 0;
    std::string job, chain, state;
    int64_t repository_id = 0;
    int64_t skip_verified_s = 0;
    bool again = false;
  };
  Check c = runner_.Write([&](Database& db) {
    Statement s = db.Prepare(
        "SELECT s.job_id, j.name, " + std::string(kJobChain) + ", j.repository_id, j.check_skip_verified_s, s.state, "
        "(SELECT COUNT(*) FROM task_log l WHERE l.session_id = s.id) FROM sessions s JOIN jobs j ON j.id = s.job_id "
        "WHERE s.id = ?");
    s.Bind(1, session_id);
    Check c;
    if (!s.Step()) {
      db.Prepare("UPDATE sessions SET state = 'failed', reason = 'its job was deleted', ended_at = ? WHERE id = ?")
          .Bind(1, clock_()).Bind(2, session_id).Run();
      c.state = "gone";
      return c;
    }
    c.job_id = s.Int(0);
    c.job = s.Text(1);
    c.chain = s.Text(2);
    c.repository_id = s.Int(3);
    c.skip_verified_s = s.Int(4);
    c.state = s.Text(5);
    c.again = s.Int(6) > 0;
    return c;
  });
  if (c.state == "gone") return;
  auto end = [&](const std::string& state, const std::string& reason, const json::object& summary) {
    runner_.Write([&](Database& db) {
      db.Prepare("UPDATE sessions SET state = ?, reason = ?, ended_at = ?, lifecycle = ? WHERE id = ?")
          .Bind(1, state).Bind(2, reason).Bind(3, clock_()).Bind(4, json::serialize(summary)).Bind(5, session_id).Run();
      return 0;
    });
    Log(session_id, state == "succeeded" ? "info" : "warning", "health check " + state + ": " + reason);
    runner_.NoteSessionEnded({session_id, "check", c.job, state, reason, clock_()});
  };
  if (c.state == "stopping") {
    end("stopped", "stopped by request", {});
    return;
  }
  if (c.again) Log(session_id, "warning", "the coordinator restarted during this health check: checking again from the start");
  Log(session_id, "info", "health check of job '" + c.job + "': verifying the points of chain '" + c.chain + "'" +
                              (c.skip_verified_s > 0 ? ", skipping chunks verified in the last " +
                                                           std::to_string(c.skip_verified_s / 86400) + " day(s)" : ""));
  try {
    RepositoryRow repo_row = LoadRepository(c.repository_id);
    std::unique_ptr<Repository> repo = Open(repo_row);
    VerifyOptions o;
    o.chain = c.chain;
    o.threads = options_.verify_threads;
    o.record = true;
    o.now = NowSeconds();
    o.skip_verified_within_s = c.skip_verified_s;
    o.cancel = &cancel_check_;
    cancel_check_ = false;
    running_check_ = session_id;
    struct Done {
      std::atomic<int64_t>& running;
      ~Done() { running = 0; }
    } done{running_check_};
    // A stop that came before the check began.
    if (runner_.Write([&](Database& db) {
          Statement s = db.Prepare("SELECT state = 'stopping' FROM sessions WHERE id = ?");
          s.Bind(1, session_id);
          return s.Step() && s.Int(0) != 0;
        }))
      cancel_check_ = true;
    // Progress in the session's log on long checks, every 30 s.
    VerifyProgress progress;
    PeriodicTask report = PeriodicReport(std::chrono::seconds(30), [&] {
      Log(session_id, "info", "checked " + std::to_string(progress.chunks_done.load()) + " of " +
                                  std::to_string(progress.chunks_total.load()) + " chunk(s)");
    });
    VerifyReport r = VerifyRepository(*repo, o, &progress);
    uint64_t damaged = 0;
    runner_.Write([&](Database& db) {
      for (const auto& check : r.checks) {
        db.Cached("UPDATE points SET check_state = ?, checked_at = ?, check_problem = ?, check_problems = ? "
                  "WHERE repository_id = ? AND point_id = ?")
            .Bind(1, check.ok ? "ok" : "damaged").Bind(2, check.checked_at * 1000)
            .Bind(3, check.ok ? std::optional<std::string>() : std::optional<std::string>(check.first_problem))
            .Bind(4, static_cast<int64_t>(check.problems)).Bind(5, c.repository_id).Bind(6, check.point).Run();
      }
      return 0;
    });
    for (const auto& check : r.checks) {
      if (check.ok) continue;
      ++damaged;
      Log(session_id, "warning", "point " + check.point + " is damaged (" + std::to_string(check.problems) +
                                     " problem(s)): " + check.first_problem);
    }
    json::object summary{{"points", r.points},
                         {"damaged_points", damaged},
                         {"problems", r.problems.size()},
                         {"chunks_checked", r.chunks_checked},
                         {"chunks_skipped", r.chunks_skipped},
                         {"bytes_checked", r.bytes_checked}};
    std::string figures = std::to_string(r.points) + " point(s), " + std::to_string(r.chunks_checked) +
                          " chunk(s) read (" + Bytes(r.bytes_checked) + ")" +
                          (r.chunks_skipped ? ", " + std::to_string(r.chunks_skipped) + " verified recently" : "");
    if (r.clean()) {
      end("succeeded", figures + ": all intact", summary);
    } else {
      end("warning",
          figures + ": " + std::to_string(damaged) + " point(s) damaged, " + std::to_string(r.problems.size()) +
              " problem(s); damaged chunks are quarantined and the job's next backup stores them again",
          summary);
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kInterrupted) {
      end("stopped", "stopped by request: nothing recorded", json::object{});
      return;
    }
    end("failed", e.what(), json::object{{"error", e.what()}});
  }
}

// --- copy sessions ------------------------------------------------------------------

void RepositoryLifecycle::RunDueCopies() {
  std::lock_guard run(copy_run_mu_);
  for (;;) {
    std::optional<int64_t> next = runner_.Write([&](Database& db) -> std::optional<int64_t> {
      Statement s = db.Prepare(
          "SELECT id FROM sessions WHERE kind = 'copy' AND state IN ('running', 'stopping') ORDER BY id LIMIT 1");
      if (!s.Step()) return std::nullopt;
      return s.Int(0);
    });
    if (!next) return;
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    RunCopy(*next);
  }
}

void RepositoryLifecycle::RunCopy(int64_t session_id) {
  struct CopyJob {
    std::string job, state, source_job, chain;
    int64_t job_id = 0, target_id = 0;
    std::optional<int64_t> source_repository_id;
    bool again = false;
  };
  std::optional<CopyJob> c = runner_.Write([&](Database& db) -> std::optional<CopyJob> {
    Statement s = db.Prepare(
        "SELECT s.job_id, j.name, s.state, j.repository_id, src.name, src.chain, src.repository_id, "
        "(SELECT COUNT(*) FROM task_log l WHERE l.session_id = s.id) "
        "FROM sessions s JOIN jobs j ON j.id = s.job_id LEFT JOIN jobs src ON src.id = j.source_job_id WHERE s.id = ?");
    s.Bind(1, session_id);
    if (!s.Step()) {
      db.Prepare("UPDATE sessions SET state = 'failed', reason = 'its job was deleted', ended_at = ? WHERE id = ?")
          .Bind(1, clock_()).Bind(2, session_id).Run();
      return std::nullopt;
    }
    CopyJob c;
    c.job_id = s.Int(0);
    c.job = s.Text(1);
    c.state = s.Text(2);
    c.target_id = s.Int(3);
    if (!s.IsNull(4)) {
      c.source_job = s.Text(4);
      c.chain = s.Text(5);
      c.source_repository_id = s.Int(6);
    }
    c.again = s.Int(7) > 0;
    return c;
  });
  if (!c) return;
  // Ends the session; with something at the target to look after (copies
  // made, or found), the job's lifecycle step (locks, retention, GC, space
  // at the target) is due, as after a backup session.
  auto end = [&](const std::string& state, const std::string& reason, bool lifecycle_due) {
    runner_.Write([&](Database& db) {
      db.Prepare("UPDATE sessions SET state = ?, reason = ?, ended_at = ?, lifecycle_state = ? WHERE id = ?")
          .Bind(1, state).Bind(2, reason).Bind(3, clock_())
          .Bind(4, lifecycle_due ? std::optional<std::string>("pending") : std::nullopt).Bind(5, session_id).Run();
      return 0;
    });
    Log(session_id, state == "succeeded" ? "info" : "warning", "copy session " + state + ": " + reason);
    runner_.NoteSessionEnded({session_id, "copy", c->job, state, reason, clock_()});
    if (lifecycle_due) Wake();
  };
  if (c->state == "stopping") {
    end("stopped", "stopped by request", false);
    return;
  }
  if (!c->source_repository_id) {
    end("failed", "its source job was deleted", false);
    return;
  }
  cancel_copy_ = false;
  // Stop() sets stop_ before cancel_copy_: a shutdown that came just now is seen here.
  if (ShuttingDown()) return;
  running_copy_ = session_id;
  struct Done {
    std::atomic<int64_t>& running;
    ~Done() { running = 0; }
  } done{running_copy_};
  if (c->again) Log(session_id, "warning", "the coordinator restarted during this copy: going on where it stopped");
  try {
    RepositoryRow source_row = LoadRepository(*c->source_repository_id);
    RepositoryRow target_row = LoadRepository(c->target_id);
    Log(session_id, "info", "copying the points of job '" + c->source_job + "' (chain '" + c->chain +
                                "') from repository '" + source_row.name + "' to '" + target_row.name + "'");
    std::unique_ptr<Repository> source = Open(source_row);
    std::unique_ptr<Repository> target = Open(target_row);
    // The target repository's bandwidth cap holds the copy (an offsite link).
    std::string bandwidth = runner_.Write([&](Database& db) {
      Statement s = db.Prepare("SELECT bandwidth FROM repositories WHERE id = ?");
      s.Bind(1, c->target_id);
      return s.Step() ? s.Text(0) : std::string();
    });
    std::optional<BandwidthLimiter> limiter;
    if (!bandwidth.empty()) limiter.emplace(BandwidthSchedule::Parse(bandwidth));
    // A stop that came before the copy began.
    if (runner_.Write([&](Database& db) {
          Statement s = db.Prepare("SELECT state = 'stopping' FROM sessions WHERE id = ?");
          s.Bind(1, session_id);
          return s.Step() && s.Int(0) != 0;
        }))
      cancel_copy_ = true;
    CopyOptions o;
    o.chain = c->chain;
    // What the target had and removed (its retention, DELETE /points) is not
    // copied again.
    o.skip = runner_.Write([&](Database& db) {
      Statement s = db.Prepare("SELECT point_id FROM points WHERE repository_id = ? AND removed_at IS NOT NULL");
      s.Bind(1, c->target_id);
      std::set<std::string> out;
      while (s.Step()) out.insert(s.Text(0));
      return out;
    });
    o.limiter = limiter ? &*limiter : nullptr;
    CopyProgress progress;
    CopyReport r;
    {
      PeriodicTask report = PeriodicReport(std::chrono::seconds(30), [&] {
        Log(session_id, "info", "sent " + std::to_string(progress.chunks_done.load()) + " of " +
                                    std::to_string(progress.chunks_total.load()) + " missing chunk(s) so far");
      });
      r = CopyPoints(*source, *target, o, &progress, &cancel_copy_);
    }
    // The copies become points of the coordinator at the target: the source
    // point's row tells what it is; a point the coordinator never recorded
    // (backed up outside it) is described by its manifest.
    size_t copied = 0, present = 0;
    for (const PointCopy& p : r.points) {
      if (p.outcome == "copied") ++copied;
      if (p.outcome == "present") ++present;
      if (p.outcome == "failed") {
        Log(session_id, "warning", "point " + p.id + " (VM " + p.vm + ") not copied: " + p.error);
        continue;
      }
      if (p.outcome != "copied" && p.outcome != "present") continue;
      if (p.outcome == "copied")
        Log(session_id, "info", "copied point " + p.id + " (VM " + p.vm + "): " + std::to_string(p.chunks_sent) +
                                    " chunk(s) sent, " + Bytes(p.bytes_sent) + ", " +
                                    std::to_string(p.chunks_present) + " already there");
      bool known = runner_.Write([&](Database& db) {
        Statement exists = db.Prepare("SELECT 1 FROM points WHERE repository_id = ? AND point_id = ?");
        exists.Bind(1, c->target_id).Bind(2, p.id);
        if (exists.Step()) return true;
        db.Prepare("INSERT INTO points (point_id, repository_id, job_id, session_id, vm_id, vm_name, chain, bytes_read, "
                   "bytes_stored, created_at, disks) SELECT point_id, ?, ?, ?, vm_id, vm_name, chain, bytes_read, ?, "
                   "created_at, disks FROM points WHERE repository_id = ? AND point_id = ? ORDER BY id DESC LIMIT 1")
            .Bind(1, c->target_id).Bind(2, c->job_id).Bind(3, session_id).Bind(4, static_cast<int64_t>(p.bytes_sent))
            .Bind(5, *c->source_repository_id).Bind(6, p.id).Run();
        return db.Changes() > 0;
      });
      if (known) continue;
      RestorePointManifest m = target->points().Load(p.id);
      json::array disks;
      for (const DiskRecord& d : m.disks)
        disks.push_back(json::object{{"name", d.name}, {"size_bytes", static_cast<int64_t>(d.size)}});
      int64_t created_ms = clock_();
      try {
        created_ms = ParseRfc3339(m.started_at) * 1000;
      } catch (const Error&) {
        // an unreadable time: the row says when it was copied
      }
      runner_.Write([&](Database& db) {
        db.Prepare("INSERT OR IGNORE INTO points (point_id, repository_id, job_id, session_id, vm_name, chain, "
                   "bytes_stored, created_at, disks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .Bind(1, p.id).Bind(2, c->target_id).Bind(3, c->job_id).Bind(4, session_id).Bind(5, m.vm.name)
            .Bind(6, m.chain).Bind(7, static_cast<int64_t>(p.bytes_sent)).Bind(8, created_ms)
            .Bind(9, json::serialize(disks)).Run();
        return 0;
      });
    }
    const size_t failed = r.failed();
    std::string figures = std::to_string(copied) + " point(s) copied, " + std::to_string(present) +
                          " already at the target" + (failed ? ", " + std::to_string(failed) + " failed" : "") + "; " +
                          std::to_string(r.chunks_sent) + " chunk(s) sent (" + Bytes(r.bytes_sent) + "), " +
                          std::to_string(r.chunks_present) + " the target had";
    if (cancel_copy_) {
      if (ShuttingDown()) return;
      end("stopped", "stopped by request: " + figures + " (each point is copied whole or not at all)", copied > 0);
    } else if (failed == 0) {
      end("succeeded", figures, copied + present > 0);
    } else {
      end(copied + present > 0 ? "warning" : "failed", figures, copied + present > 0);
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kInterrupted) {
      // The coordinator shutting down leaves the session running: it goes on
      // after the restart (the points copied are present then, and skipped).
      if (ShuttingDown()) return;
      end("stopped", "stopped by request (each point is copied whole or not at all)", false);
      return;
    }
    end("failed", e.what(), false);
  }
}

// --- API point calls ------------------------------------------------------------------

namespace {
struct PointRow {
  std::string point_id;
  int64_t repository_id = 0;
};
}  // namespace

static PointRow LoadPointRow(SessionRunner& runner, int64_t point_row) {
  return runner.Write([&](Database& db) {
    Statement s = db.Prepare("SELECT point_id, repository_id, removed_at FROM points WHERE id = ?");
    s.Bind(1, point_row);
    if (!s.Step() || !s.IsNull(2))
      throw Error(ErrorKind::kNotFound, "point " + std::to_string(point_row) + " not found" +
                                            (s.IsNull(2) ? "" : " (removed)"));
    return PointRow{s.Text(0), s.Int(1)};
  });
}

void RepositoryLifecycle::RemovePoint(int64_t point_row) {
  PointRow p = LoadPointRow(runner_, point_row);
  std::unique_ptr<Repository> repo = Open(LoadRepository(p.repository_id));
  try {
    repo->points().Remove(p.point_id, NowSeconds());
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kBadInput || e.kind() == ErrorKind::kRetryable) throw ConflictError(e.what());
    if (e.kind() != ErrorKind::kNotFound) throw;
    // Gone from the repository already: the row follows.
  }
  runner_.Write([&](Database& db) {
    db.Prepare("UPDATE points SET removed_at = ? WHERE id = ?").Bind(1, clock_()).Bind(2, point_row).Run();
    return 0;
  });
  LogInfo("point " + p.point_id + " removed through the API");
}

int64_t RepositoryLifecycle::LockPoint(int64_t point_row, int64_t until, const std::string& reason) {
  PointRow p = LoadPointRow(runner_, point_row);
  const int64_t now = NowSeconds();
  if (until <= now) throw FieldError("until", "must be in the future (now is " + FormatRfc3339(now) + ")");
  std::unique_ptr<Repository> repo = Open(LoadRepository(p.repository_id));
  PointLock lock;
  try {
    lock = repo->points().SetLock(p.point_id, until, reason, now);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kBadInput) throw FieldError("until", e.what());
    throw;
  }
  runner_.Write([&](Database& db) {
    db.Prepare("UPDATE points SET locked_until = ? WHERE id = ?").Bind(1, lock.locked_until * 1000).Bind(2, point_row).Run();
    return 0;
  });
  return lock.locked_until;
}

}  // namespace ferry::coordinator
