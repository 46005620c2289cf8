// Repository verification: every manifest's checksum, every index against
// its manifest, and every chunk referenced by the checked restore points read
// back, its CRC, decompression and SHA-256 checked, and its size compared with
// what the index expects. A damaged chunk is quarantined (chunk_store.h), so
// the next backup of that data stores it again. Each distinct chunk is read
// once however many points reference it; a bad chunk is reported for every
// point, disk and chunk position that references it. Each point's result is
// a PointCheck (point_check.h); with VerifyOptions::record it is kept in the
// point store, and incremental verifies skip chunks a recent clean check read.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"

namespace ferry {

struct VerifyProblem {
  std::string point;
  std::string disk;     // empty when the whole point is unreadable
  int64_t chunk = -1;   // -1 when not about one chunk
  uint64_t offset = 0;  // disk offset of the chunk
  std::string message;
};

struct VerifyOptions {
  VerifyOptions() = default;
  VerifyOptions(std::optional<std::string> point, unsigned threads) : point(std::move(point)), threads(threads) {}

  std::optional<std::string> point;  // this point only; every point when unset
  std::optional<std::string> chain;  // only the points of this chain (a coordinator job's)
  unsigned threads = 1;
  // Incremental verify: a chunk is not read again when a point referencing it
  // had a clean check whose chunks were all known good at most this many
  // seconds before `now` (PointCheck::verified_since). 0: read every chunk.
  // Manifests and indexes are always checked.
  int64_t skip_verified_within_s = 0;
  int64_t now = 0;      // Unix seconds; 0: the system clock
  bool record = false;  // record each checked point's PointCheck in the store
  // Set: the chunk reads stop and VerifyRepository throws kInterrupted,
  // recording nothing.
  const std::atomic<bool>* cancel = nullptr;
  // An encrypted repository's key (not owned): with it every chunk is
  // decrypted and its HMAC digest checked, and every manifest's disk records
  // authenticated. Without it, only what needs no key is checked
  // (VerifyReport::ciphertext_only). Refused for a plain repository.
  const RepositoryKey* key = nullptr;
};

struct VerifyReport {
  uint64_t points = 0;
  uint64_t disks = 0;
  uint64_t chunks_checked = 0;  // distinct chunks read
  uint64_t chunks_skipped = 0;  // distinct chunks known good from a recent check
  uint64_t bytes_checked = 0;   // plain bytes
  std::vector<VerifyProblem> problems;
  std::vector<std::string> unprotected;  // points with a v1 manifest (no checksum)
  // An encrypted repository verified without its key: chunks' framing, CRC
  // (over the ciphertext) and sizes were checked, their content was not.
  bool ciphertext_only = false;
  std::vector<PointCheck> checks;  // one per point checked, as recorded (oldest point first)
  bool clean() const { return problems.empty(); }
};

struct VerifyProgress {
  std::atomic<uint64_t> chunks_total{0};
  std::atomic<uint64_t> chunks_done{0};
};

VerifyReport VerifyRepository(Repository& repo, const VerifyOptions& options, VerifyProgress* progress);

}  // namespace ferry
