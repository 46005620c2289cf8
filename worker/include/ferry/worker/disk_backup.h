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
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "ferry/common/bandwidth.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"
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
};

// Counters a progress display may read while the backup runs.
struct DiskBackupProgress {
  std::atomic<uint64_t> bytes_done{0};  // disk bytes planned and finished
  std::atomic<uint64_t> bytes_read{0};  // bytes read from the source
  // Set when the chunks are all stored: encoded bytes sent to the store, and
  // of those, sent again after a lost connection (a remote store).
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> bytes_resent{0};
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
