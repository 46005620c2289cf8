// Garbage collection and space accounting of a repository in a bucket
// (docs/object-storage.md, "Garbage collection" has the protocol and its
// safety argument):
//
//   <prefix>writers/<rand>.json   a writer lease: held by every process that
//                                 decides "chunk present" from its known-digest
//                                 set (ObjectChunkStore), from before its
//                                 listing until it ends
//   <prefix>gc/<rand>.json        a GC record: held by a GC from before it
//                                 looks for writers until its sweep is done
//
// Both are {"started_at": S, "expires_at": S, "writer": "ferry x.y"} and are
// rewritten with a later expiry while their holder lives. Dekker-style, on
// the store's read-after-write consistency: a writer writes its lease, then
// lists gc/; a GC writes its record, then lists writers/. Of two that
// overlap, at least one sees the other:
//   - a writer that sees a live GC record withdraws its lease (deletes it),
//     waits until no live record is left, and starts over;
//   - a GC that sees live writer leases waits until each is gone or expired
//     (at most `wait_for_writers`, then kRetryable); writers that come later
//     see its record and wait for it, so a stream of backups cannot starve it.
// From then on no writer holds a known-digest set: the GC marks (staging
// first, then committed points) and sweeps unmarked chunks whose
// LastModified is older than the cutoff (min(GC start, oldest staged point)
// minus the window), in DeleteObjects batches of up to 1000.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "ferry/common/gc.h"
#include "ferry/s3/client.h"

namespace ferry::s3 {

inline constexpr int64_t kWriterLeaseSeconds = 600;  // rewritten every fifth of it
inline constexpr int64_t kGcRecordSeconds = 120;     // rewritten every fifth of it
inline constexpr std::chrono::seconds kGcWaitForWriters{900};

struct ObjectGcOptions {
  // How long a GC waits for the writers it finds (backups that started
  // before it) to end before it gives up (kRetryable) and lets the backups
  // waiting for it go on.
  std::chrono::seconds wait_for_writers = kGcWaitForWriters;
  std::chrono::milliseconds poll{500};
  // Tests: called once no writer is left, before the mark.
  std::function<void()> after_writers;
};

class RecordRefresher;

// A writer lease (above). The constructor waits while a GC runs; the
// destructor deletes the lease. Thread-safe to hold; not copyable.
class WriterLease {
 public:
  // `poll`: how often a writer that waits for a GC looks again.
  WriterLease(Bucket& bucket, const std::string& prefix, std::chrono::milliseconds poll = std::chrono::milliseconds(500));
  ~WriterLease();
  WriterLease(const WriterLease&) = delete;
  WriterLease& operator=(const WriterLease&) = delete;
  const std::string& key() const { return key_; }

 private:
  Bucket& bucket_;
  std::string key_;
  std::unique_ptr<RecordRefresher> refresher_;
};

// A GC of the repository under `prefix` (GcReport's counters as locally;
// chunks_retained counts chunks the store refused to delete, Object Lock).
// kRetryable when writers did not end within the wait; kCorrupt when an
// index cannot be read at all; kInterrupted on cancel. A dry run writes no
// record, waits for no one and removes nothing.
GcReport CollectObjectGarbage(Bucket& bucket, const std::string& prefix, const GcOptions& options,
                              GcProgress* progress, const ObjectGcOptions& more = {});
// From the listings' sizes and every index; changes nothing, waits for no one.
SpaceReport MeasureObjectSpace(Bucket& bucket, const std::string& prefix, GcProgress* progress);

// The same by location (s3://..., object_repository.h); kNotFound when no
// repository is there.
GcReport CollectObjectGarbage(const std::string& url, const GcOptions& options, GcProgress* progress);
SpaceReport MeasureObjectSpace(const std::string& url, GcProgress* progress);

}  // namespace ferry::s3
