// Garbage collection and space accounting in a bucket (object_gc.h; the
// protocol and its safety argument: docs/object-storage.md, "Garbage
// collection").
#include "ferry/s3/object_gc.h"

#include <algorithm>
#include <boost/json.hpp>
#include <condition_variable>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/ids.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/log.h"
#include "ferry/common/periodic.h"
#include "ferry/common/manifest.h"
#include "ferry/common/point_records.h"
#include "ferry/common/retention.h"  // FormatRfc3339, ParseRfc3339
#include "ferry/s3/object_chunk_store.h"
#include "ferry/s3/object_point_store.h"
#include "ferry/s3/object_repository.h"

namespace json = boost::json;

namespace ferry::s3 {
namespace {

constexpr char kWritersDir[] = "writers/";
constexpr char kGcDir[] = "gc/";

using Clock = std::chrono::steady_clock;

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string RecordJson(int64_t started_at, int64_t expires_at) {
  return json::serialize(json::object{{"started_at", started_at}, {"expires_at", expires_at}, {"writer", WriterName()}}) +
         "\n";
}

struct Record {
  int64_t started_at = 0;
  int64_t expires_at = 0;
  std::string writer;
};

// kCorrupt naming the object when it is not a record.
Record ParseRecord(const std::string& text, const std::string& what) {
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kCorrupt, what + ": not a JSON object");
  JsonReader r(v.as_object(), "", CorruptFileFail(what));
  Record rec;
  rec.started_at = *r.Int("started_at", true, 0, INT64_MAX);
  rec.expires_at = *r.Int("expires_at", true, 0, INT64_MAX);
  rec.writer = r.String("writer", false).value_or("");
  return rec;
}

// The live records under `dir` (expired ones are passed to `expired`); an
// unreadable record counts as live, started and expiring never.
std::vector<std::pair<std::string, Record>> LiveRecords(Bucket& bucket, const std::string& dir,
                                                        const std::function<void(const std::string&)>& expired = {}) {
  std::vector<std::string> keys;
  bucket.List(dir, [&](const ObjectInfo& o) {
    if (o.key.ends_with(".json")) keys.push_back(o.key);
  });
  std::vector<std::pair<std::string, Record>> live;
  const int64_t now = Now();
  for (const auto& key : keys) {
    std::string text;
    if (!bucket.Get(key, &text)) continue;  // gone meanwhile
    Record rec;
    try {
      rec = ParseRecord(text, bucket.Describe(key));
    } catch (const Error& e) {
      LogWarning(std::string(e.what()) + "; it counts as live until it is deleted");
      rec.expires_at = INT64_MAX;
    }
    if (rec.expires_at <= now) {
      if (expired) expired(key);
      continue;
    }
    live.emplace_back(key, std::move(rec));
  }
  return live;
}

}  // namespace

// Rewrites a record with a later expiry every fifth of its lifetime until it
// is destroyed.
class RecordRefresher {
 public:
  RecordRefresher(Bucket& bucket, std::string key, int64_t started_at, int64_t lifetime)
      : task_(std::chrono::seconds(std::max<int64_t>(1, lifetime / 5)),
              [bucket = &bucket, key = std::move(key), started_at, lifetime] {
                try {
                  bucket->Put(key, RecordJson(started_at, Now() + lifetime));
                } catch (const Error& e) {
                  LogWarning("refreshing " + bucket->Describe(key) + " failed: " + e.what());
                }
              }) {}

 private:
  PeriodicTask task_;
};

WriterLease::WriterLease(Bucket& bucket, const std::string& prefix, std::chrono::milliseconds poll) : bucket_(bucket) {
  bool logged = false;
  for (;;) {
    key_ = prefix + kWritersDir + RandomHex(16) + ".json";
    const int64_t started = Now();
    bucket_.Put(key_, RecordJson(started, started + kWriterLeaseSeconds));
    // After our lease is visible: a GC that wrote its record before it is seen here.
    std::vector<std::pair<std::string, Record>> gcs;
    try {
      gcs = LiveRecords(bucket_, prefix + kGcDir);
    } catch (...) {
      bucket_.Delete(key_);
      throw;
    }
    if (gcs.empty()) {
      refresher_ = std::make_unique<RecordRefresher>(bucket_, key_, started, kWriterLeaseSeconds);
      return;
    }
    // Back off, so a GC that saw our lease does not wait for it.
    bucket_.Delete(key_);
    if (!logged) {
      logged = true;
      LogInfo("waiting for the garbage collection of " + bucket_.Describe(prefix) + " (" + bucket_.Describe(gcs[0].first) +
              ", started " + FormatRfc3339(gcs[0].second.started_at) + ") to finish before writing chunks");
    }
    std::this_thread::sleep_for(poll);
  }
}

WriterLease::~WriterLease() {
  refresher_.reset();
  try {
    bucket_.Delete(key_);
  } catch (const Error& e) {
    LogWarning("dropping the writer lease " + bucket_.Describe(key_) + " failed (it expires by itself): " + e.what());
  }
}

namespace {

// An index object read without a checksum to hold it against (a staged
// point's, or one whose manifest cannot be read); nullopt when it is gone.
std::unique_ptr<FixedIndexReader> ReadIndexObject(Bucket& bucket, const std::string& key) {
  std::vector<uint8_t> bytes;
  if (!bucket.Get(key, &bytes)) return nullptr;
  TempFile file("s3-gc-index");
  PwriteAll(file.fd(), bytes.data(), bytes.size(), 0, file.path());
  return std::make_unique<FixedIndexReader>(file.path(), nullptr);
}

// "points/<id>/..." -> "<id>"
std::string PointOfKey(const std::string& key, size_t prefix_size) {
  const std::string rest = key.substr(prefix_size + 7);
  return rest.substr(0, rest.find('/'));
}

// What the mark found. Owners (for space accounting): a point's number, or
// kShared, or kStaged.
struct Mark {
  static constexpr uint32_t kShared = UINT32_MAX;
  static constexpr uint32_t kStaged = UINT32_MAX - 1;
  struct Owner {
    uint32_t point = 0;
    uint32_t chain = 0;
  };
  std::unordered_map<Digest, Owner, DigestHash> digests;
  std::vector<PointSpace> points;       // committed points read, in listing order
  std::vector<std::string> chain_names;  // by chain number
  std::vector<std::unordered_set<Digest, DigestHash>> chain_digests;  // tracked only
  uint64_t staged_points = 0, indexes = 0, unchecked_indexes = 0;
  std::vector<std::string> problems;
};

void Add(Mark& m, const std::vector<Digest>& digests, uint32_t point, uint32_t chain, bool track) {
  for (const Digest& d : digests) {
    auto [it, inserted] = m.digests.try_emplace(d, Mark::Owner{point, chain});
    if (!track) continue;
    if (!inserted) {
      if (it->second.point != point) it->second.point = Mark::kShared;
      if (it->second.chain != chain) it->second.chain = Mark::kShared;
    }
    if (chain != Mark::kStaged) m.chain_digests[chain].insert(d);
  }
}

// Staging first (every index object under points/, whatever its point's
// state), then the committed points: a point committed between the two
// listings has its indexes in the first.
Mark MarkRepository(Bucket& bucket, const std::string& prefix, PointStore& points, bool track,
                    const std::function<void()>& between_listings, GcProgress* progress) {
  Mark m;
  std::vector<std::string> index_keys;
  bucket.List(prefix + "points/", [&](const ObjectInfo& o) {
    if (o.key.ends_with(".fidx")) index_keys.push_back(o.key);
  });
  if (between_listings) between_listings();
  std::vector<std::string> ids = points.List();
  if (progress) progress->points_total = ids.size();
  std::set<std::string> named;       // index keys a manifest names, read with their checksum
  std::set<std::string> unreadable;  // points whose manifest cannot be read
  std::map<std::string, uint32_t> chain_number;
  for (const auto& id : ids) {
    RestorePointManifest manifest;
    try {
      manifest = points.Load(id);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kNotFound) continue;  // removed meanwhile
      m.problems.push_back(id + ": " + e.what() + " (its indexes are read without their checksum)");
      unreadable.insert(id);
      continue;
    }
    const auto number = static_cast<uint32_t>(m.points.size());
    auto [c, fresh] = chain_number.try_emplace(manifest.chain, static_cast<uint32_t>(m.chain_names.size()));
    if (fresh) {
      m.chain_names.push_back(manifest.chain);
      m.chain_digests.emplace_back();
    }
    PointSpace space;
    space.id = id;
    space.vm = manifest.vm.name;
    space.chain = manifest.chain;
    std::unordered_set<Digest, DigestHash> own;
    for (const auto& disk : manifest.disks) {
      const std::string key = prefix + "points/" + id + "/" + disk.index_file;
      std::unique_ptr<FixedIndexReader> index;
      try {
        index = points.OpenIndex(id, disk);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kCorrupt) throw;
        index = ReadIndexObject(bucket, key);  // a checksum mismatch: still what it references
        if (!index) {
          m.problems.push_back(id + ": " + e.what());
          continue;
        }
        ++m.unchecked_indexes;
      }
      named.insert(key);
      ++m.indexes;
      space.logical_bytes += disk.size;
      const std::vector<Digest> digests = DistinctDigests(*index);
      Add(m, digests, number, c->second, track);
      if (track) own.insert(digests.begin(), digests.end());
    }
    space.chunks = own.size();
    m.points.push_back(std::move(space));
    if (progress) progress->points_read = progress->points_read + 1;
  }
  std::set<std::string> staged_points;
  for (const auto& key : index_keys) {
    if (named.contains(key)) continue;
    std::unique_ptr<FixedIndexReader> index;
    try {
      index = ReadIndexObject(bucket, key);
    } catch (const Error& e) {
      throw Error(ErrorKind::kCorrupt, "index " + bucket.Describe(key) + " cannot be read, so no garbage collection "
                                       "can tell what it references (remove its point or staging): " + e.what());
    }
    if (!index) continue;  // discarded or removed meanwhile
    ++m.indexes;
    const std::string id = PointOfKey(key, prefix.size());
    if (unreadable.contains(id)) ++m.unchecked_indexes;
    else staged_points.insert(id);
    Add(m, DistinctDigests(*index), Mark::kStaged, Mark::kStaged, track);
  }
  m.staged_points = staged_points.size();
  return m;
}

// Chunks in quarantine/ (left alone).
void CountQuarantine(Bucket& bucket, const std::string& prefix, uint64_t* chunks, uint64_t* bytes) {
  bucket.List(prefix + "quarantine/", [&](const ObjectInfo& o) {
    ++*chunks;
    *bytes += o.size;
  });
}

}  // namespace

GcReport CollectObjectGarbage(Bucket& bucket, const std::string& prefix, const GcOptions& options,
                              GcProgress* progress, const ObjectGcOptions& more) {
  const auto start = Clock::now();
  GcReport report;
  report.dry_run = options.dry_run;
  const int64_t started = Now();
  report.started_at = started;
  ObjectChunkStore chunks(bucket, prefix);  // lists and deletes only: it takes no writer lease
  std::unique_ptr<PointStore> points = OpenObjectPointStore(bucket, prefix, chunks);
  if (progress) progress->phase = static_cast<int>(GcPhase::kStarting);

  std::string record_key;
  std::unique_ptr<RecordRefresher> refresher;
  struct DropRecord {
    Bucket& bucket;
    std::string& key;
    std::unique_ptr<RecordRefresher>& refresher;
    ~DropRecord() {
      refresher.reset();
      if (key.empty()) return;
      try {
        bucket.Delete(key);
      } catch (const Error& e) {
        LogWarning("deleting the GC record " + bucket.Describe(key) + " failed (it expires by itself): " + e.what());
      }
    }
  } drop{bucket, record_key, refresher};

  if (!options.dry_run) {
    std::vector<std::pair<std::string, Record>> others = LiveRecords(bucket, prefix + kGcDir, [&](const std::string& key) {
      bucket.Delete(key);  // a killed GC's
    });
    if (!others.empty()) {
      throw Error(ErrorKind::kRetryable, "a garbage collection is running on " + bucket.Describe(prefix) + " (" +
                                             bucket.Describe(others[0].first) + ", by " + others[0].second.writer +
                                             ", started " + FormatRfc3339(others[0].second.started_at) + ")");
    }
    record_key = prefix + kGcDir + RandomHex(16) + ".json";
    bucket.Put(record_key, RecordJson(started, started + kGcRecordSeconds));
    refresher = std::make_unique<RecordRefresher>(bucket, record_key, started, kGcRecordSeconds);
    // After our record is visible: a writer that took its lease before it
    // is seen here; later ones see the record and wait.
    std::vector<std::pair<std::string, Record>> writers =
        LiveRecords(bucket, prefix + kWritersDir, [&](const std::string& key) {
          bucket.Delete(key);  // a killed writer's
          ++report.stale_leases_removed;
        });
    report.writers_waited_for = writers.size();
    if (!writers.empty()) {
      LogInfo("garbage collection: waiting for " + std::to_string(writers.size()) + " backup(s) writing to " +
              bucket.Describe(prefix) + " to finish (at most " + std::to_string(more.wait_for_writers.count()) + " s)");
    }
    const auto deadline = Clock::now() + more.wait_for_writers;
    while (!writers.empty()) {
      std::erase_if(writers, [&](const auto& w) {
        std::string text;
        if (!bucket.Get(w.first, &text)) return true;
        try {
          return ParseRecord(text, bucket.Describe(w.first)).expires_at <= Now();
        } catch (const Error&) {
          return false;
        }
      });
      if (writers.empty()) break;
      if (options.cancel && options.cancel->load()) {
        throw Error(ErrorKind::kInterrupted, "garbage collection interrupted while it waited for backups");
      }
      if (Clock::now() >= deadline) {
        throw Error(ErrorKind::kRetryable,
                    "garbage collection of " + bucket.Describe(prefix) + " gave up after waiting " +
                        std::to_string(more.wait_for_writers.count()) + " s for " + std::to_string(writers.size()) +
                        " backup(s) to finish (" + bucket.Describe(writers[0].first) + ", by " + writers[0].second.writer +
                        ", started " + FormatRfc3339(writers[0].second.started_at) + "); run it again later");
      }
      std::this_thread::sleep_for(more.poll);
    }
    if (more.after_writers) more.after_writers();
    // Expired staging would hold the cutoff back to its start.
    for (const auto& id : points->RemoveExpired()) LogInfo("removed expired staging of point " + id);
  }

  // The cutoff: min(GC start, the oldest staged point's start) - window.
  int64_t cutoff = started;
  for (const auto& id : points->ListStaged()) {
    const std::string key = prefix + "staging/" + id + "/point.json";
    std::string text;
    try {
      if (!bucket.Get(key, &text)) continue;
      StagedPointHeader h = StagedHeaderFromJson(text, bucket.Describe(key));
      if (!h.started_at.empty()) cutoff = std::min(cutoff, ParseRfc3339(h.started_at));
    } catch (const Error& e) {
      LogWarning(std::string(e.what()) + "; garbage collection keeps every chunk stored since it was written");
      cutoff = 0;  // nothing is old enough: the sweep removes nothing
    }
  }
  cutoff -= options.window.count();
  report.cutoff_ns = cutoff * 1000000000;
  report.cutoff = FormatRfc3339(std::max<int64_t>(cutoff, 0));

  if (progress) progress->phase = static_cast<int>(GcPhase::kMark);
  const auto mark_start = Clock::now();
  Mark m = MarkRepository(bucket, prefix, *points, /*track=*/false, options.between_listings, progress);
  for (const auto& p : m.problems) LogWarning("garbage collection: " + p);
  report.points = m.points.size();
  report.staged_points = m.staged_points;
  report.indexes = m.indexes;
  report.unchecked_indexes = m.unchecked_indexes;
  report.chunks_referenced = m.digests.size();
  report.mark_seconds = Since(mark_start);

  if (progress) progress->phase = static_cast<int>(GcPhase::kSweep);
  const auto sweep_start = Clock::now();
  std::vector<std::string> batch;
  std::map<std::string, uint64_t> batch_sizes;
  std::vector<Bucket::DeleteFailure> failures;
  auto flush = [&] {
    if (batch.empty()) return;
    std::vector<Bucket::DeleteFailure> failed;
    if (!options.dry_run) failed = bucket.DeleteObjects(batch);
    uint64_t failed_bytes = 0;
    for (auto& f : failed) {
      const uint64_t size = batch_sizes[f.key];
      failed_bytes += size;
      if (f.code == "AccessDenied") {  // retained (Object Lock) or not ours to delete
        ++report.chunks_retained;
        report.bytes_retained += size;
      } else {
        failures.push_back(std::move(f));
      }
    }
    uint64_t bytes = 0;
    for (const auto& [key, size] : batch_sizes) bytes += size;
    report.chunks_removed += batch.size() - failed.size();
    report.bytes_removed += bytes - failed_bytes;
    if (progress) progress->chunks_removed = report.chunks_removed;
    batch.clear();
    batch_sizes.clear();
  };
  chunks.ListStored([&](const Digest& d, int64_t last_modified, uint64_t size) {
    ++report.chunks_seen;
    if (m.digests.contains(d)) return;
    if (last_modified >= cutoff) {
      ++report.chunks_kept_by_window;
      report.bytes_kept_by_window += size;
      return;
    }
    const std::string key = chunks.KeyFor(d);
    batch.push_back(key);
    batch_sizes[key] = size;
    if (batch.size() == Bucket::kDeleteBatch) {
      flush();
      if (options.cancel && options.cancel->load()) {
        throw Error(ErrorKind::kInterrupted, "garbage collection interrupted; the next `ferry gc` starts over");
      }
    }
  });
  flush();
  report.sweep_seconds = Since(sweep_start);
  if (!failures.empty()) {
    throw Error(ErrorKind::kEnvironment, "garbage collection: the store refused to delete " +
                                             std::to_string(failures.size()) + " chunk(s), e.g. " +
                                             bucket.Describe(failures[0].key) + " (" + failures[0].code + ")");
  }
  if (report.chunks_retained > 0) {
    LogInfo("garbage collection: " + std::to_string(report.chunks_retained) +
            " unreferenced chunk(s) are retained by the store (Object Lock) and were left");
  }
  CountQuarantine(bucket, prefix, &report.quarantined_chunks, &report.quarantined_bytes);
  if (progress) {
    progress->directories_done = kChunkDirectories;
    progress->phase = static_cast<int>(GcPhase::kDone);
  }
  report.seconds = Since(start);
  return report;
}

SpaceReport MeasureObjectSpace(Bucket& bucket, const std::string& prefix, GcProgress* progress) {
  ObjectChunkStore chunks(bucket, prefix);
  std::unique_ptr<PointStore> points = OpenObjectPointStore(bucket, prefix, chunks);
  if (progress) progress->phase = static_cast<int>(GcPhase::kMark);
  Mark m = MarkRepository(bucket, prefix, *points, /*track=*/true, {}, progress);
  SpaceReport r;
  r.points = m.points.size();
  r.problems = m.problems;
  std::unordered_map<Digest, uint64_t, DigestHash> size_of;  // referenced chunks that are stored
  if (progress) progress->phase = static_cast<int>(GcPhase::kSweep);
  chunks.ListStored([&](const Digest& d, int64_t, uint64_t size) {
    ++r.chunks;
    r.stored_bytes += size;
    auto it = m.digests.find(d);
    if (it == m.digests.end()) {
      ++r.garbage_chunks;
      r.garbage_bytes += size;
      return;
    }
    size_of[d] = size;
    ++r.referenced_chunks;
    r.referenced_bytes += size;
    const Mark::Owner& owner = it->second;
    if (owner.point == Mark::kStaged) {
      ++r.staged_only_chunks;
      r.staged_only_bytes += size;
    } else if (owner.point != Mark::kShared) {
      ++m.points[owner.point].unique_chunks;
      m.points[owner.point].unique_bytes += size;
    }
  });
  r.missing_chunks = m.digests.size() - r.referenced_chunks;
  std::vector<ChainSpace> chains(m.chain_names.size());
  for (size_t c = 0; c < chains.size(); ++c) {
    chains[c].chain = m.chain_names[c];
    chains[c].chunks = m.chain_digests[c].size();
    for (const Digest& d : m.chain_digests[c]) {
      auto s = size_of.find(d);
      if (s == size_of.end()) continue;
      chains[c].stored_bytes += s->second;
      if (m.digests.at(d).chain == c) {
        ++chains[c].unique_chunks;
        chains[c].unique_bytes += s->second;
      }
    }
  }
  std::map<std::string, size_t> chain_number;
  for (size_t c = 0; c < chains.size(); ++c) chain_number[chains[c].chain] = c;
  for (const auto& p : m.points) {
    r.logical_bytes += p.logical_bytes;
    ChainSpace& c = chains[chain_number.at(p.chain)];
    ++c.points;
    c.logical_bytes += p.logical_bytes;
  }
  for (auto& c : chains) {
    c.dedup_ratio = c.stored_bytes ? static_cast<double>(c.logical_bytes) / static_cast<double>(c.stored_bytes) : 0;
  }
  std::sort(chains.begin(), chains.end(), [](const ChainSpace& a, const ChainSpace& b) { return a.chain < b.chain; });
  r.chains = std::move(chains);
  r.points_space = std::move(m.points);  // point ids sort oldest first, and so does the listing
  r.dedup_ratio =
      r.referenced_bytes ? static_cast<double>(r.logical_bytes) / static_cast<double>(r.referenced_bytes) : 0;
  CountQuarantine(bucket, prefix, &r.quarantined_chunks, &r.quarantined_bytes);
  if (progress) progress->phase = static_cast<int>(GcPhase::kDone);
  return r;
}

namespace {

// The bucket and prefix of a repository's location, checked to hold one.
std::pair<std::unique_ptr<Bucket>, std::string> OpenLocation(const std::string& url) {
  ObjectLocation loc = ParseObjectLocation(url);
  auto bucket = std::make_unique<Bucket>(loc.bucket);
  if (!bucket->Head(loc.prefix + "ferry-repository.json")) {
    throw Error(ErrorKind::kNotFound, "no Ferry repository at " + url + " (no " +
                                          bucket->Describe(loc.prefix + "ferry-repository.json") + ")");
  }
  return {std::move(bucket), loc.prefix};
}

}  // namespace

GcReport CollectObjectGarbage(const std::string& url, const GcOptions& options, GcProgress* progress) {
  auto [bucket, prefix] = OpenLocation(url);
  ObjectGcOptions more;
  if (options.wait_for_writers) more.wait_for_writers = *options.wait_for_writers;
  return CollectObjectGarbage(*bucket, prefix, options, progress, more);
}

SpaceReport MeasureObjectSpace(const std::string& url, GcProgress* progress) {
  auto [bucket, prefix] = OpenLocation(url);
  return MeasureObjectSpace(*bucket, prefix, progress);
}

}  // namespace ferry::s3
