// Garbage collection and space accounting of a local repository
// (docs/gc.md has the design, the locking rules and the safety argument).
//
// Mark and sweep, as Proxmox Backup Server's GC, with a cutoff instead of a
// generation count:
//
//   cutoff = min(GC start, start of the oldest staged point) - window
//   mark   = every digest referenced by a committed point's index or by an
//            index in staging (whatever its state)
//   sweep  = remove each chunk that is not marked and whose mtime is older
//            than the cutoff
//
// Every chunk a backup finds present is touched (LocalChunkStore::FindMissing
// sets its mtime to now), and a chunk it stores is new; a backup does both
// only after its point is staged. So a chunk any running backup relies on is
// either marked or younger than the cutoff, and is kept.
//
// Locking: one GC per repository (flock on <repo>/gc.lock, not waited for).
// Nothing else takes a lock for the GC's sake: backups, restores, verifies
// and commits run alongside. A chunk is removed in two steps (rename to
// .gc-<digest>, check its mtime again, unlink), so a backup that touches it
// in between either shows in the second check or finds it missing and
// links it back (chunk_store.h).
//
// Resumable: after the mark, the sorted marked digests (gc/marked) and the
// state (gc/state.json: cutoff, the next chunk directory to sweep, counters)
// are written atomically and checksummed; a GC started after a kill resumes
// the sweep with the original cutoff and mark.
//
// Cost: one read of every index and one pass over the 4096 chunk
// directories (readdir, a stat of unmarked chunks only). Memory: 32 bytes per
// referenced chunk (the sorted mark), 46 to 91 more while marking.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

inline constexpr std::chrono::seconds kDefaultGcWindow{300};
// A saved GC older than this is not resumed (its mark misses the points
// removed since, so it would free little): the next GC starts over.
inline constexpr std::chrono::hours kGcStateLifetime{24};

struct GcOptions {
  // How far below min(GC start, oldest staged point) the cutoff goes: covers
  // clock steps and skew between the hosts writing to the repository.
  std::chrono::seconds window = kDefaultGcWindow;
  bool dry_run = false;  // count what would be removed; write and remove nothing
  // Threads sweeping chunk directories: removals wait on the file system.
  unsigned threads = 4;
  const std::atomic<bool>* cancel = nullptr;  // kInterrupted; the state stays, resumable
  // Object storage (docs/object-storage.md, "Garbage collection"): how long
  // the GC waits for the backups it finds under way, holding up the backups
  // that start meanwhile, before it gives up (kRetryable). nullopt: the
  // store's default (15 minutes, what `ferry gc` waits). The coordinator's
  // GC after a session waits less: the next session's GC tries again.
  std::optional<std::chrono::seconds> wait_for_writers;
  // Tests: called after each chunk directory is swept (0..4095), one call
  // at a time; throwing from it stops the GC as a kill would, without saving
  // progress.
  std::function<void(unsigned directory)> after_directory;
  // Tests: called between the sweep's first look at an old unmarked chunk
  // and its rename (the window a backup's touch can fall into).
  std::function<void(const std::string& digest_hex)> before_removal;
  // Tests: called during the mark, after its first listing (of staging) and
  // before its second (of the committed points): where a commit can fall.
  std::function<void()> between_listings;
};

enum class GcPhase { kStarting = 0, kMark = 1, kSweep = 2, kDone = 3 };

struct GcProgress {
  std::atomic<int> phase{0};              // GcPhase
  std::atomic<uint64_t> points_total{0};  // mark: committed points
  std::atomic<uint64_t> points_read{0};
  std::atomic<uint64_t> directories_done{0};  // of kChunkDirectories
  std::atomic<uint64_t> chunks_removed{0};
};

inline constexpr unsigned kChunkDirectories = 4096;

struct GcReport {
  bool dry_run = false;
  bool resumed = false;            // continued a GC that was killed or interrupted
  int64_t started_at = 0;          // Unix seconds, of the GC whose mark is used
  int64_t cutoff_ns = 0;           // Unix nanoseconds
  std::string cutoff;              // RFC 3339
  uint64_t points = 0;             // committed points read
  uint64_t staged_points = 0;      // staged points seen
  uint64_t indexes = 0;            // index files read (committed and staged)
  uint64_t unchecked_indexes = 0;  // read without their checksum (damaged or unreadable manifest)
  uint64_t chunks_referenced = 0;  // distinct marked digests
  uint64_t chunks_seen = 0;        // chunk files met by the sweep
  uint64_t chunks_removed = 0;
  uint64_t bytes_removed = 0;
  uint64_t chunks_kept_by_window = 0;  // unreferenced, but younger than the cutoff
  uint64_t bytes_kept_by_window = 0;
  uint64_t chunks_retained = 0;     // unreferenced, but the store refused to delete them (Object Lock); bucket only
  uint64_t bytes_retained = 0;
  uint64_t writers_waited_for = 0;  // backups a bucket's GC waited for (docs/object-storage.md)
  uint64_t stale_leases_removed = 0;  // expired writer leases of killed writers; bucket only
  uint64_t chunks_rescued = 0;      // doomed names of an earlier, killed GC linked back
  uint64_t temp_files_removed = 0;  // a killed writer's temp files
  uint64_t quarantined_chunks = 0;  // in quarantine/, left alone
  uint64_t quarantined_bytes = 0;
  double mark_seconds = 0;  // summed over the runs of a resumed GC
  double sweep_seconds = 0;
  double seconds = 0;  // this run
};

// Runs a GC on the repository in `repo_dir` (a local directory), or resumes
// one that was cut short. Throws kRetryable when another GC is running
// ("a GC is running (pid N)"), kCorrupt when an index cannot be read at all
// (no GC can tell what it references), kInterrupted on cancel.
GcReport CollectGarbage(const std::string& repo_dir, const GcOptions& options, GcProgress* progress);

// Space accounting: what the repository stores and what each point costs.
struct PointSpace {
  std::string id;
  std::string vm;
  std::string chain;
  uint64_t logical_bytes = 0;  // the sizes of its disks
  uint64_t chunks = 0;         // distinct chunks it references
  uint64_t unique_chunks = 0;  // of which no other point (committed or staged) references
  uint64_t unique_bytes = 0;   // their stored bytes: what removing this point alone frees (after a GC)
};

// The same per chain (a coordinator job writes one chain; `ferry backup
// --chain`). A point whose manifest cannot be read counts in chain "".
struct ChainSpace {
  std::string chain;
  uint64_t points = 0;
  uint64_t logical_bytes = 0;  // the sizes of its points' disks
  uint64_t chunks = 0;         // distinct chunks its points reference
  uint64_t stored_bytes = 0;   // their stored bytes (of those that have a chunk file)
  uint64_t unique_chunks = 0;  // of which no point of another chain, and no staged point, references
  uint64_t unique_bytes = 0;   // their stored bytes: what removing every point of the chain frees (after a GC)
  double dedup_ratio = 0;      // logical_bytes / stored_bytes (0 when nothing is stored)
};

struct SpaceReport {
  uint64_t points = 0;
  uint64_t chunks = 0;             // chunk files
  uint64_t stored_bytes = 0;       // their sizes
  uint64_t referenced_chunks = 0;  // chunk files some point or staged index references
  uint64_t referenced_bytes = 0;
  uint64_t missing_chunks = 0;  // referenced, but no chunk file (damaged points)
  uint64_t garbage_chunks = 0;  // referenced by nothing: what a GC would remove (window aside)
  uint64_t garbage_bytes = 0;
  uint64_t staged_only_chunks = 0;  // referenced only by staging (backups under way)
  uint64_t staged_only_bytes = 0;
  uint64_t logical_bytes = 0;  // sum of the points' disk sizes
  uint64_t quarantined_chunks = 0;
  uint64_t quarantined_bytes = 0;
  double dedup_ratio = 0;                // logical_bytes / referenced_bytes (0 when nothing is stored)
  std::vector<PointSpace> points_space;  // oldest first
  std::vector<ChainSpace> chains;        // by name
  std::vector<std::string> problems;     // points read best-effort, and why
};

// One read of every index plus one stat of every chunk file; changes nothing.
SpaceReport MeasureSpace(const std::string& repo_dir, GcProgress* progress);

// The one JSON form of the reports: what `ferry gc --json` and `ferry space
// --json` print and what the repository service answers (docs/gc.md,
// "Output" and "Space accounting"). One object, no newline. Reading refuses
// a member of the wrong type or a missing one (kCorrupt, naming it), and
// ignores members it does not know (a newer service's). A GcReport read
// back has no started_at and cutoff_ns (not part of the JSON; cutoff is).
std::string GcReportJson(const GcReport& report);
GcReport GcReportFromJson(std::string_view text);
std::string SpaceReportJson(const SpaceReport& report);
SpaceReport SpaceReportFromJson(std::string_view text);

}  // namespace ferry
