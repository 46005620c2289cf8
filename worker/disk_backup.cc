#include "ferry/worker/disk_backup.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/log.h"

namespace ferry::worker {

namespace {

using Clock = std::chrono::steady_clock;

// How much of the allocation map to ask for at once.
constexpr uint64_t kMapWindow = 1ull << 30;

struct ChunkJob {
  uint64_t index = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint8_t* buffer = nullptr;
  int pending_reads = 0;
  int read_error = 0;
};

// Fixed set of chunk-sized buffers shared by the reader and compute threads.
class BufferPool {
 public:
  BufferPool(size_t count, size_t size) : storage_(count * size) {
    for (size_t i = 0; i < count; ++i) free_.push_back(storage_.data() + i * size);
  }
  uint8_t* TryTake() {
    std::lock_guard lock(mu_);
    if (free_.empty()) return nullptr;
    uint8_t* b = free_.back();
    free_.pop_back();
    return b;
  }
  void WaitForFree(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !free_.empty(); });
  }
  void Give(uint8_t* b) {
    {
      std::lock_guard lock(mu_);
      free_.push_back(b);
    }
    cv_.notify_one();
  }

 private:
  std::vector<uint8_t> storage_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint8_t*> free_;
};

// Unbounded in code, bounded in practice by the buffer pool.
class JobQueue {
 public:
  void Push(ChunkJob* job) {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(job);
    }
    cv_.notify_one();
  }
  void Close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  ChunkJob* Pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return closed_ || !jobs_.empty(); });
    if (jobs_.empty()) return nullptr;
    ChunkJob* j = jobs_.front();
    jobs_.pop_front();
    return j;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChunkJob*> jobs_;
  bool closed_ = false;
};

// Digests being stored right now by this run, so two threads holding the
// same (duplicate) data compress and write it once. Finished chunks are found
// in the store itself, which keeps this set tiny whatever the disk size.
class DigestsInFlight {
 public:
  bool Claim(const Digest& d) {
    std::lock_guard lock(mu_);
    return set_.insert(d).second;
  }
  void Release(const Digest& d) {
    std::lock_guard lock(mu_);
    set_.erase(d);
  }

 private:
  std::mutex mu_;
  std::unordered_set<Digest, DigestHash> set_;
};

int64_t NsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
}

// The source's busy time: wall time with at least one request to the source
// outstanding (reads, from submission until the pipeline sees them complete,
// and allocation or dirty map queries). The planning thread only, where all
// of those start and end.
class SourceMeter {
 public:
  SourceMeter(StageClock& clock, Clock::time_point origin) : clock_(clock), origin_(origin) {}
  void Begin() {
    if (outstanding_++ == 0) {
      since_ns_ = NsBetween(origin_, Clock::now());
      clock_.Begin(since_ns_);
    }
  }
  void End() {
    if (--outstanding_ == 0) clock_.End(since_ns_, NsBetween(origin_, Clock::now()));
  }

 private:
  StageClock& clock_;
  const Clock::time_point origin_;
  uint64_t outstanding_ = 0;
  int64_t since_ns_ = 0;
};

// Walks one of a reader's maps (allocation or dirty) forward through the
// disk, asking for large windows and forgetting what lies behind.
class MapCursor {
 public:
  using Fetch = std::vector<Extent> (BlockReader::*)(uint64_t, uint64_t);
  MapCursor(BlockReader& reader, Fetch fetch, SourceMeter& meter) : reader_(reader), fetch_(fetch), meter_(meter) {}

  // Appends the parts of [start, end) whose `data` is set to `out`. Calls
  // must move forward (start never below a previous call's start).
  void Ranges(uint64_t start, uint64_t end, std::vector<Extent>* out) {
    while (!extents_.empty() && extents_.front().offset + extents_.front().length <= start) {
      extents_.pop_front();
    }
    if (extents_.empty() && mapped_to_ < start) mapped_to_ = start;  // skip unasked ranges
    while (mapped_to_ < end) {
      meter_.Begin();
      std::vector<Extent> window;
      try {
        window = (reader_.*fetch_)(mapped_to_, kMapWindow);
      } catch (...) {
        meter_.End();
        throw;
      }
      meter_.End();
      for (const Extent& e : window) extents_.push_back(e);
      mapped_to_ = extents_.back().offset + extents_.back().length;
    }
    for (const Extent& e : extents_) {
      if (e.offset >= end) break;
      uint64_t s = std::max(start, e.offset), t = std::min(end, e.offset + e.length);
      if (e.data && s < t) out->push_back({s, t - s, true});
    }
  }

 private:
  BlockReader& reader_;
  Fetch fetch_;
  SourceMeter& meter_;
  std::deque<Extent> extents_;
  uint64_t mapped_to_ = 0;
};

class DiskBackupRun {
 public:
  DiskBackupRun(ChunkStore& store, const RepositoryConfig& config, BlockReader& reader,
                const std::string& index_path, const DiskBackupOptions& options, DiskBackupProgress* progress)
      : store_(store),
        zstd_level_(config.zstd_level),
        hasher_(options.key),
        reader_(reader),
        options_(options),
        progress_(progress ? progress : &own_progress_),
        chunk_size_(config.chunk_size),
        index_(index_path, reader.size(), chunk_size_),
        upload_(store.StartUpload()),
        // A remote store's lookups wait a round trip per chunk: twice the
        // threads keep the cores busy meanwhile.
        threads_(options.compute_threads ? options.compute_threads
                                         : std::max(1u, std::thread::hardware_concurrency()) * (store.remote() ? 2 : 1)),
        pool_(2 * threads_ + 2, chunk_size_) {
    CheckKeyFits(config, options.key, "being backed up into (id " + config.id + ")");
    if (const FixedIndexReader* prev = options.previous_index) {
      if (prev->disk_size() != reader.size() || prev->chunk_size() != chunk_size_) {
        throw Error(ErrorKind::kInternal, "previous index of " + reader.description() +
                                              " does not match the disk's size or chunk size");
      }
    }
  }

  DiskBackupResult Run() {
    StartStats();
    std::vector<std::thread> workers;
    for (unsigned i = 0; i < threads_; ++i) workers.emplace_back([this] { ComputeLoop(); });
    try {
      PlanAndRead();
    } catch (...) {
      Fail(std::current_exception());
    }
    // Let reads in flight land (their buffers are ours) before stopping.
    try {
      while (reader_.in_flight() > 0) reader_.Poll(1000);
    } catch (...) {
      Fail(std::current_exception());
    }
    queue_.Close();
    for (auto& t : workers) t.join();
    if (first_error_) std::rethrow_exception(first_error_);
    ChunkUploadStats uploaded;
    try {
      StoreWait wait(*this, threads_);  // the whole pipeline waits for the last acknowledgements
      uploaded = upload_->Finish();
    } catch (const Error& e) {
      throw e.WithContext("storing the chunks of " + reader_.description());
    }

    progress_->bytes_sent = uploaded.sent_bytes;
    progress_->bytes_resent = uploaded.resent_bytes;
    progress_->bytes_stored = uploaded.stored_bytes;
    progress_->ended_ns = std::max<int64_t>(1, NowNs());
    DiskBackupResult r;
    r.chunks = index_.chunk_count();
    r.zero_chunks = zero_chunks_;
    r.new_chunks = uploaded.stored_chunks;
    r.reused_chunks = reused_chunks_ + uploaded.present_chunks;
    r.read_bytes = read_bytes_;
    r.stored_bytes = uploaded.stored_bytes;
    r.sent_bytes = uploaded.sent_bytes;
    r.resent_bytes = uploaded.resent_bytes;
    r.unchanged_chunks = unchanged_chunks_;
    r.healed_chunks = healed_chunks_;
    r.stats = progress_->Stats();
    r.index_sha256 = index_.Finish();
    return r;
  }

 private:
  int64_t NowNs() const { return NsBetween(start_, Clock::now()); }

  // Statistics start afresh with each run (a progress may serve disks in turn).
  void StartStats() {
    DiskBackupProgress& p = *progress_;
    p.bytes_done = 0;
    p.bytes_read = 0;
    p.bytes_sent = 0;
    p.bytes_resent = 0;
    p.bytes_stored = 0;
    p.source.Reset();
    p.compute.Reset();
    p.store.Reset();
    p.ended_ns = 0;
    p.compute_threads = threads_;
    p.remote_store = store_.remote();
    p.started_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(start_.time_since_epoch()).count();
  }

  // Times one wait for the store, as store time of `weight` compute threads
  // (all of them when nothing else can run meanwhile). RAII, so that a call
  // that throws is timed too and leaves no interval open.
  class StoreWait {
   public:
    explicit StoreWait(DiskBackupRun& run, int64_t weight = 1)
        : clock_(run.progress_->store), run_(run), weight_(weight), begin_ns_(run.NowNs()) {
      clock_.Begin(begin_ns_, weight_);
    }
    ~StoreWait() { clock_.End(begin_ns_, run_.NowNs(), weight_); }
    StoreWait(const StoreWait&) = delete;
    StoreWait& operator=(const StoreWait&) = delete;

   private:
    StageClock& clock_;
    const DiskBackupRun& run_;
    const int64_t weight_;
    const int64_t begin_ns_;
  };

  void Fail(std::exception_ptr e) {
    std::lock_guard lock(error_mu_);
    if (!first_error_) first_error_ = e;
    failed_ = true;
  }

  void CheckCancel() {
    if (options_.cancel && options_.cancel->load()) {
      throw Error(ErrorKind::kInterrupted, "backup of " + reader_.description() + " interrupted");
    }
  }

  // Waits as needed so reads stay under the read cap, in pieces, polling the
  // reads in flight between them so their buffers go on to the compute threads.
  void Throttle(uint64_t next_bytes) {
    if (options_.rate_limit_bytes_per_s == 0) return;
    for (uint64_t left = next_bytes; left > 0;) {
      const uint64_t piece = std::min<uint64_t>(left, 64 * 1024);
      if (reader_.in_flight() > 0) reader_.Poll(0);
      if (!read_limiter_.Acquire(piece, options_.cancel)) CheckCancel();
      left -= piece;
    }
  }

  uint8_t* TakeBuffer() {
    for (;;) {
      if (uint8_t* b = pool_.TryTake()) return b;
      if (failed_) return nullptr;
      CheckCancel();
      if (reader_.in_flight() > 0) {
        reader_.Poll(50);
      } else {
        pool_.WaitForFree(std::chrono::milliseconds(50));
      }
    }
  }

  void PlanAndRead() {
    const uint64_t size = reader_.size();
    const uint64_t chunks = index_.chunk_count();
    const FixedIndexReader* previous = options_.previous_index;
    MapCursor allocation(reader_, &BlockReader::MapAllocation, source_meter_);
    MapCursor dirty(reader_, &BlockReader::MapDirty, source_meter_);
    std::vector<Extent> data_ranges, dirty_ranges;
    const auto missing_before = previous ? PreviousChunksMissing(*previous) : DigestSet{};

    for (uint64_t i = 0; i < chunks && !failed_; ++i) {
      CheckCancel();
      const uint64_t start = i * chunk_size_;
      const uint64_t end = std::min(size, start + chunk_size_);
      const auto length = static_cast<uint32_t>(end - start);
      if (previous) {
        dirty_ranges.clear();
        dirty.Ranges(start, end, &dirty_ranges);
        if (dirty_ranges.empty()) {  // unchanged since the previous point
          if (!missing_before.contains(previous->At(i))) {
            index_.Set(i, previous->At(i));
            ++unchanged_chunks_;
            progress_->bytes_done += length;
            continue;
          }
          ++healed_chunks_;  // its chunk is gone from the store: read it again
        }
      }
      data_ranges.clear();
      allocation.Ranges(start, end, &data_ranges);

      if (data_ranges.empty()) {
        index_.Set(i, Digest{});
        ++zero_chunks_;
        progress_->bytes_done += length;
        continue;
      }
      uint8_t* buffer = TakeBuffer();
      if (!buffer) break;
      auto* job = new ChunkJob{i, start, length, buffer, static_cast<int>(data_ranges.size()), 0};
      // Gaps between data ranges read as zeros without asking the source.
      uint64_t cursor = start;
      for (const Extent& r : data_ranges) {
        std::memset(buffer + (cursor - start), 0, r.offset - cursor);
        cursor = r.offset + r.length;
      }
      std::memset(buffer + (cursor - start), 0, end - cursor);
      for (const Extent& r : data_ranges) {
        Throttle(r.length);
        source_meter_.Begin();  // before the call: a file reader reads inside it
        try {
          reader_.SubmitRead(buffer + (r.offset - start), r.offset, static_cast<uint32_t>(r.length),
                             [this, job, r](int error) { OnReadDone(job, r, error); });
        } catch (...) {
          source_meter_.End();
          throw;
        }
      }
    }
  }

  using DigestSet = std::unordered_set<Digest, DigestHash>;

  // The previous point's chunks that the store no longer holds (found damaged
  // and quarantined, or deleted): an incremental reads them again instead of
  // copying their digests, which heals the chain. One batched call.
  DigestSet PreviousChunksMissing(const FixedIndexReader& previous) {
    std::vector<Digest> distinct = DistinctDigests(previous);
    std::vector<size_t> missing;
    {
      StoreWait wait(*this, threads_);  // before the first read: nothing else runs
      store_.FindMissing(distinct, &missing);
    }
    DigestSet out;
    for (size_t m : missing) out.insert(distinct[m]);
    if (!out.empty()) {
      LogWarning(reader_.description() + ": " + std::to_string(out.size()) +
                 " chunk(s) of the previous restore point are missing from the repository (quarantined or "
                 "deleted); reading their data again");
    }
    return out;
  }

  // Runs on the planning thread, inside BlockReader::Poll.
  void OnReadDone(ChunkJob* job, const Extent& range, int error) {
    source_meter_.End();
    if (error && !job->read_error) job->read_error = error;
    read_bytes_ += range.length;
    progress_->bytes_read += range.length;
    if (--job->pending_reads > 0) return;
    if (job->read_error) {
      Fail(std::make_exception_ptr(ErrnoError(
          reader_.description() + ": reading chunk " + std::to_string(job->index) +
              " at offset " + std::to_string(job->offset),
          job->read_error)));
      pool_.Give(job->buffer);
      delete job;
      return;
    }
    queue_.Push(job);
  }

  void ComputeLoop() {
    ChunkEncoder encoder(zstd_level_, options_.key);
    std::vector<uint8_t> encoded;
    while (ChunkJob* job = queue_.Pop()) {
      std::unique_ptr<ChunkJob> owned(job);
      if (!failed_) {
        try {
          StoreChunk(*job, encoder, &encoded);
        } catch (...) {
          Fail(std::current_exception());
        }
      }
      pool_.Give(job->buffer);
    }
  }

  // Compute time is the zero check, the hash and the compression; the calls
  // to the store are store time (StoreWait).
  void StoreChunk(const ChunkJob& job, ChunkEncoder& encoder, std::vector<uint8_t>* encoded) {
    std::span<const uint8_t> plain(job.buffer, job.length);
    const auto computing = Clock::now();
    if (IsAllZero(plain.data(), plain.size())) {
      progress_->compute.Add(NsBetween(computing, Clock::now()));
      index_.Set(job.index, Digest{});
      ++zero_chunks_;
    } else {
      Digest d = hasher_(plain);
      progress_->compute.Add(NsBetween(computing, Clock::now()));
      if (!digests_in_flight_.Claim(d)) {
        ++reused_chunks_;  // another thread of this run is storing it
      } else {
        try {
          bool present;
          {
            StoreWait wait(*this);
            present = store_.Contains(d);
          }
          if (present) {
            ++reused_chunks_;
          } else {
            const auto compressing = Clock::now();
            encoder.Encode(plain, d, encoded);
            progress_->compute.Add(NsBetween(compressing, Clock::now()));
            // The bandwidth caps (docs/throttling.md): not a stage of its own.
            if (!AcquireAll(options_.send_limiters, encoded->size(), options_.cancel)) CheckCancel();
            {
              StoreWait wait(*this);  // a remote store's full window blocks here
              upload_->Add(d, *encoded);
            }
            progress_->bytes_sent += encoded->size();
          }
        } catch (const Error& e) {
          digests_in_flight_.Release(d);
          throw e.WithContext("storing chunk " + std::to_string(job.index) + " (disk offset " +
                              std::to_string(job.offset) + ") of " + reader_.description());
        }
        digests_in_flight_.Release(d);
      }
      index_.Set(job.index, d);
    }
    progress_->bytes_done += job.length;
  }

  ChunkStore& store_;
  const int zstd_level_;
  const ChunkHasher hasher_;  // SHA-256, or the key's HMAC
  BlockReader& reader_;
  DiskBackupOptions options_;
  DiskBackupProgress own_progress_;
  DiskBackupProgress* progress_;
  const uint32_t chunk_size_;
  FixedIndexWriter index_;
  std::unique_ptr<ChunkUpload> upload_;
  const unsigned threads_;
  BufferPool pool_;
  JobQueue queue_;
  DigestsInFlight digests_in_flight_;
  BandwidthLimiter read_limiter_{BandwidthSchedule::Fixed(options_.rate_limit_bytes_per_s)};
  const Clock::time_point start_ = Clock::now();
  SourceMeter source_meter_{progress_->source, start_};

  std::atomic<bool> failed_{false};
  std::mutex error_mu_;
  std::exception_ptr first_error_;

  std::atomic<uint64_t> zero_chunks_{0}, reused_chunks_{0}, unchanged_chunks_{0}, healed_chunks_{0};
  std::atomic<uint64_t> read_bytes_{0};
};

}  // namespace

DiskBackupStats DiskBackupProgress::Stats() const {
  DiskBackupStats s;
  s.bytes_read = bytes_read;
  s.bytes_sent = bytes_sent;
  s.bytes_stored = bytes_stored;
  const int64_t started = started_ns;
  if (started == 0) return s;
  int64_t now = ended_ns;
  if (now == 0) {
    now = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count() - started;
  }
  const int64_t threads = std::max<uint32_t>(1, compute_threads);
  auto us = [](int64_t ns) { return static_cast<uint64_t>(std::max<int64_t>(0, ns) / 1000); };
  s.busy.wall_us = us(now);
  s.busy.source_us = us(source.BusyNs(now));
  s.busy.compute_us = us(compute.BusyNs(now) / threads);
  s.busy.remote_store = remote_store;
  (s.busy.remote_store ? s.busy.network_us : s.busy.target_us) = us(store.BusyNs(now) / threads);
  return s;
}

DiskBackupResult BackupDisk(ChunkStore& store, const RepositoryConfig& config, BlockReader& reader,
                            const std::string& index_path, const DiskBackupOptions& options,
                            DiskBackupProgress* progress) {
  DiskBackupRun run(store, config, reader, index_path, options, progress);
  return run.Run();
}

}  // namespace ferry::worker
