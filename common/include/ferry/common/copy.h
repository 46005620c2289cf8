// Copies restore points from one repository to another (docs/copy.md): the
// 3-2-1 rule's offsite copy, e.g. a local repository to a bucket, or one
// bucket to another. Incremental by content: for each point, only the chunks
// the target lacks travel (one batched FindMissing per disk), as stored
// (compressed, and encrypted where the source is: the copy needs no key and
// never sees plain data).
//
// Each copy is a point of the target with the source's id, VM, chain, disks,
// indexes and configuration files, written through the target's staging
// and commit: complete or absent, whatever is cut short. A point the target
// has already is left alone, so a copy started again goes on where it
// stopped. The target's own retention then applies to its copies (ferry
// prune on it, or a copy job's retention).
//
// Integrity: every chunk sent is checked first (framing and CRC-32C of the
// stored bytes, what can be checked without decoding); a damaged one is
// quarantined at the source and the point is not copied (kCorrupt), so the
// next backup heals the source and the next copy takes the point.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ferry/common/bandwidth.h"
#include "ferry/common/repository.h"

namespace ferry {

struct CopyOptions {
  // Which points: these ids, else the points of `vm` / `chain` when given,
  // else all the source has.
  std::vector<std::string> points;
  std::optional<std::string> vm;
  std::optional<std::string> chain;
  // Left out of the selection, unreported: a copy job's points that the
  // target had and removed (its own retention), so that they are not copied
  // again on every run while the source keeps them longer.
  std::set<std::string> skip;
  bool dry_run = false;  // count what would travel, send nothing
  // Holds the chunks sent to a cap (an offsite link shared with the day's
  // traffic); null: no cap.
  BandwidthLimiter* limiter = nullptr;
};

struct PointCopy {
  std::string id;
  std::string vm;
  std::string outcome;  // "copied", "present" (the target had it), "would copy", "failed"
  std::string error;    // for "failed"
  uint64_t chunks_sent = 0;
  uint64_t bytes_sent = 0;      // encoded bytes handed to the target
  uint64_t chunks_present = 0;  // distinct chunks the target had already
};

struct CopyReport {
  std::vector<PointCopy> points;
  uint64_t chunks_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t chunks_present = 0;
  size_t failed() const;
};

struct CopyProgress {
  std::atomic<uint64_t> chunks_done{0};
  std::atomic<uint64_t> chunks_total{0};  // grows as each point's missing chunks are known
};

// Copies. A point that fails is reported and the others go on; the caller
// decides the exit status from failed(). Refuses (kBadInput) two
// repositories whose chunk digests cannot be shared (a different encryption
// key), and the same repository as source and target.
CopyReport CopyPoints(Repository& from, Repository& to, const CopyOptions& options, CopyProgress* progress = nullptr,
                      const std::atomic<bool>* interrupted = nullptr);

}  // namespace ferry
