// Backs up one disk into a repository: the read pipeline.
//
//   plan (dirty map, allocation map -> chunks) -> read (async, several in flight)
//     -> zero filter -> hash -> dedupe -> compress -> upload -> index
//
// The calling thread plans and reads: it walks the allocation map in large
// windows, skips chunks that are all holes, and keeps reads in flight on the
// BlockReader. Filled chunks go through a bounded queue to compute threads
// (one per core by default), each doing the rest for a whole chunk. Buffers
// come from a fixed pool, so memory does not grow with the disk. Chunks go
// to the store through a ChunkUpload (chunk_store.h): a remote store keeps a
// bounded window of them in flight, so memory stays bounded there too.
//
// Statistics: each stage's busy time is measured as the run goes (a clock
// read or two per read request and per chunk, never per byte) into the
// progress's StageClocks, so a progress report carries live values and the
// result the final ones (DiskBackupStats; docs/architecture.md, "Statistics
// and the bottleneck").
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "ferry/common/bandwidth.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"
#include "ferry/common/stage_busy.h"
#include "ferry/worker/block_reader.h"

namespace ferry::worker {

struct DiskBackupOptions {
  unsigned compute_threads = 0;      // 0: one per core
  uint64_t rate_limit_bytes_per_s = 0;  // 0: unlimited (read rate cap, to spare the source)
  // Bandwidth caps on what is sent to the store (the encoded chunks): every
  // chunk passes each of these before it goes, e.g. the worker's limiter
  // shared by its tasks and this task's share of the repository's cap
  // (docs/throttling.md). Not owned; null entries are skipped.
  std::vector<BandwidthLimiter*> send_limiters;
  const std::atomic<bool>* cancel = nullptr;  // set => stop with kInterrupted
  // Incremental: the previous restore point's index of this disk (same disk
  // size and chunk size). Chunks the reader's dirty map does not touch take
  // their digest from it and are not read. Null: read everything allocated.
  const FixedIndexReader* previous_index = nullptr;
  // An encrypted repository's key (not owned; CheckKeyFits): chunks are
  // named by its HMAC and stored encrypted (chunk.h, format v2). Null for a
  // plain repository.
  const RepositoryKey* key = nullptr;
};

// Time spent in one stage, summed over the threads working in it, that a
// progress reader on another thread can sample while intervals are still
// open (a remote store may keep a thread waiting for minutes). Lock-free. A
// sample taken just as an interval opens or closes may be off by that
// interval: live values are approximate, the values after the run exact.
// Times are nanoseconds since the run's start (DiskBackupProgress::started).
class StageClock {
 public:
  // A closed interval.
  void Add(int64_t ns) { closed_ns_.fetch_add(ns, std::memory_order_relaxed); }
  // An interval of `weight` threads (all of them waiting: the compute thread
  // count) from `begin_ns` until the matching End.
  void Begin(int64_t begin_ns, int64_t weight = 1) {
    open_begun_ns_.fetch_add(weight * begin_ns, std::memory_order_relaxed);
    open_weight_.fetch_add(weight, std::memory_order_relaxed);
  }
  // (Begin and End update in the order that makes a racing sample low, not high.)
  void End(int64_t begin_ns, int64_t end_ns, int64_t weight = 1) {
    open_weight_.fetch_sub(weight, std::memory_order_relaxed);
    open_begun_ns_.fetch_sub(weight * begin_ns, std::memory_order_relaxed);
    closed_ns_.fetch_add(weight * (end_ns - begin_ns), std::memory_order_relaxed);
  }
  // Thread-nanoseconds busy up to `now_ns`, open intervals included.
  int64_t BusyNs(int64_t now_ns) const {
    int64_t open = open_weight_.load(std::memory_order_relaxed) * now_ns -
                   open_begun_ns_.load(std::memory_order_relaxed);
    return closed_ns_.load(std::memory_order_relaxed) + std::max<int64_t>(0, open);
  }
  void Reset() {
    closed_ns_ = 0;
    open_weight_ = 0;
    open_begun_ns_ = 0;
  }

 private:
  std::atomic<int64_t> closed_ns_{0};
  std::atomic<int64_t> open_weight_{0};
  std::atomic<int64_t> open_begun_ns_{0};  // sum of weight x begin of the open intervals
};

// A disk backup's statistics (docs/architecture.md, "Statistics and the
// bottleneck").
struct DiskBackupStats {
  uint64_t bytes_read = 0;    // from the source
  uint64_t bytes_sent = 0;    // encoded, to the store (resends included once the run ended)
  uint64_t bytes_stored = 0;  // encoded, new in the store (known when the run ended)
  StageBusy busy;             // the run's wall time and each stage's busy time
  double rate_bytes_per_s() const {
    return busy.wall_us ? static_cast<double>(bytes_read) * 1e6 / static_cast<double>(busy.wall_us) : 0.0;
  }
};

// Counters a progress display may read while the backup runs. BackupDisk
// resets them when it starts, so one progress may serve disks in turn.
struct DiskBackupProgress {
  std::atomic<uint64_t> bytes_done{0};  // disk bytes planned and finished
  std::atomic<uint64_t> bytes_read{0};  // bytes read from the source
  // Encoded bytes handed to the store so far; once the chunks are all stored,
  // what the store sent, and of that, what it sent again after a lost
  // connection (a remote store).
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> bytes_resent{0};
  std::atomic<uint64_t> bytes_stored{0};  // set when the chunks are all stored

  // Busy time of the stages, in thread-nanoseconds since `started_ns`
  // (steady_clock): the source's counts time with a request outstanding,
  // compute's and store's are summed over the compute threads, whose number
  // is `compute_threads`. Store time is network or target time as
  // `remote_store` says.
  StageClock source, compute, store;
  std::atomic<int64_t> started_ns{0};  // 0: not started
  std::atomic<int64_t> ended_ns{0};    // since started_ns; 0: running
  std::atomic<uint32_t> compute_threads{1};
  std::atomic<bool> remote_store{false};

  // The statistics so far (live), or the final ones once the run ended.
  DiskBackupStats Stats() const;
};

struct DiskBackupResult {
  uint64_t chunks = 0;
  uint64_t zero_chunks = 0;
  uint64_t new_chunks = 0;
  uint64_t reused_chunks = 0;
  uint64_t read_bytes = 0;
  uint64_t stored_bytes = 0;
  uint64_t sent_bytes = 0;    // encoded bytes sent to the store (resends included)
  uint64_t resent_bytes = 0;  // sent again after a lost connection to a remote store
  uint64_t unchanged_chunks = 0;  // taken from previous_index without a read
  uint64_t healed_chunks = 0;     // unchanged, but read again: the previous chunk was missing
  DiskBackupStats stats;          // bytes, wall time and the stages' busy time
  Digest index_sha256;
};

// Reads the whole of `reader` (holes skipped) into `store`, chunked and
// compressed as `config` says, and writes the fixed index to `index_path`.
// Incremental (options.previous_index): unchanged chunks take the previous
// digest, unless the store no longer holds that chunk, in which case it is
// read again. Throws ferry::Error naming the disk offset or chunk on failure;
// nothing it wrote is referenced until the caller commits the restore point.
DiskBackupResult BackupDisk(ChunkStore& store, const RepositoryConfig& config, BlockReader& reader,
                            const std::string& index_path, const DiskBackupOptions& options,
                            DiskBackupProgress* progress);

}  // namespace ferry::worker
