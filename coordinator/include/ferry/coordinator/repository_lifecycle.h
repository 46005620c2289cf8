// RepositoryLifecycle: what the coordinator does to its jobs' restore points
// once they exist (docs/retention.md, "Jobs"; docs/gc.md): locks every new
// point of a job for its lock_days, applies the job's retention policy to its
// chain after each backup session, collects the garbage that removals leave,
// measures space, runs the jobs' scheduled health checks (sessions of kind
// `check`) and copy jobs' sessions (kind `copy`, on a thread of their own),
// and serves the point calls of the API (DELETE, lock).
//
// It opens repositories itself, as `ferry` does: a directory directly, a
// repository service with the repository's token (rpc::OpenRepository).
// Long work (verify, prune, GC) runs on its own thread, outside the
// SessionRunner's lock; every database change goes through the runner
// (SessionRunner::Write), in short transactions.
//
// Crash safety: a backup session's step is recorded as due
// (sessions.lifecycle_state = 'pending') in the transaction that ends the
// session, and done again after a restart if it had not finished; every part
// of it is idempotent (a lock only extends, prune and GC start over safely).
// A check session cut short by a restart is run again from the start.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <boost/json.hpp>

#include "ferry/common/gc.h"
#include "ferry/common/repository.h"
#include "ferry/coordinator/session_runner.h"

namespace ferry::coordinator {

struct LifecycleOptions {
  std::chrono::seconds gc_window = kDefaultGcWindow;  // docs/gc.md
  // A GC in a bucket waits this long for backups under way (GcOptions).
  std::chrono::seconds gc_wait_for_writers{30};
  unsigned verify_threads = 2;
  std::chrono::milliseconds poll{1000};  // how often due checks are looked for
};

class RepositoryLifecycle {
 public:
  RepositoryLifecycle(SessionRunner& runner, SessionRunner::Clock clock, LifecycleOptions options = {});
  ~RepositoryLifecycle();  // Stop()

  // Starts the thread: due backup-session steps, due and interrupted checks.
  void Start();
  // Waits for the step under way, then stops the thread.
  void Stop();
  // Something may be due (a session ended): look now rather than at the next poll.
  void Wake();
  // Everything due now, on the caller's thread (tests; the thread calls it).
  void RunDue();
  // The copy sessions that run (kind copy, docs/copy.md "Copy jobs"), one
  // after the other, on the caller's thread (tests; the copy thread calls it).
  void RunDueCopies();

  // POST /jobs/{id}/check: a health check session of the job, run by the
  // thread; returns its id. kNotFound for an unknown job, ConflictError
  // while a check of the job runs.
  int64_t StartCheck(int64_t job_id, const std::string& trigger);
  // DELETE /points/{id}: removes the point from its repository now, and
  // marks its row removed. kNotFound (no such point, or removed already),
  // ConflictError while it is locked or in use (a restore, verify or backup
  // reads it).
  void RemovePoint(int64_t point_row);
  // POST /points/{id}/lock: locks it until `until` (Unix seconds) or extends
  // its lock; FieldError("until") for a time not in the future or earlier
  // than the lock it has. Returns the lock's end.
  int64_t LockPoint(int64_t point_row, int64_t until, const std::string& reason);

  int64_t NowSeconds() const { return clock_() / 1000; }

 private:
  struct RepositoryRow {
    int64_t id = 0;
    std::string name, location, token;
  };
  RepositoryRow LoadRepository(int64_t repository_id);
  std::unique_ptr<Repository> Open(const RepositoryRow& r);
  void RunAfterSession(int64_t session_id);
  void RunCheck(int64_t session_id);
  // Copies the points of the source job's chain that the target lacks
  // (ferry::CopyPoints) and records them as the copy job's points at the
  // target. Idempotent: a copy cut short by a restart runs again and skips
  // what is there.
  void RunCopy(int64_t session_id);
  bool ShuttingDown();
  void StartDueChecks();
  // Rows of points the repository no longer has (removed by a prune outside
  // the coordinator, say) are marked removed.
  void ReconcileRemoved(Repository& repo, int64_t repository_id, const std::string& chain, int64_t session_id);
  // Space figures of the repository into its row and its points' rows.
  boost::json::object MeasureSpaceInto(const RepositoryRow& r);
  void Log(int64_t session_id, const std::string& level, const std::string& message);

  SessionRunner& runner_;
  SessionRunner::Clock clock_;
  LifecycleOptions options_;
  std::mutex run_mu_;  // one RunDue at a time
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool woken_ = false;
  std::thread thread_;
  std::atomic<int64_t> running_check_{0};  // the check session under way, 0: none
  std::atomic<bool> cancel_check_{false};
  std::mutex copy_run_mu_;  // one RunDueCopies at a time
  bool copy_woken_ = false;
  std::thread copy_thread_;
  std::atomic<int64_t> running_copy_{0};  // the copy session under way, 0: none
  std::atomic<bool> cancel_copy_{false};
};

}  // namespace ferry::coordinator
