// Repository verification: every manifest's checksum, every index against
// its manifest, and every chunk referenced by the checked restore points read
// back, its CRC, decompression and SHA-256 checked, and its size compared with
// what the index expects. A damaged chunk is quarantined (chunk_store.h), so
// the next backup of that data stores it again. Each distinct chunk is read
// once however many points reference it; a bad chunk is reported for every
// point, disk and chunk position that references it.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/repository.h"

namespace ferry {

struct VerifyProblem {
  std::string point;
  std::string disk;     // empty when the whole point is unreadable
  int64_t chunk = -1;   // -1 when not about one chunk
  uint64_t offset = 0;  // disk offset of the chunk
  std::string message;
};

struct VerifyReport {
  uint64_t points = 0;
  uint64_t disks = 0;
  uint64_t chunks_checked = 0;  // distinct chunks read
  uint64_t bytes_checked = 0;   // plain bytes
  std::vector<VerifyProblem> problems;
  std::vector<std::string> unprotected;  // points with a v1 manifest (no checksum)
  bool clean() const { return problems.empty(); }
};

struct VerifyProgress {
  std::atomic<uint64_t> chunks_total{0};
  std::atomic<uint64_t> chunks_done{0};
};

VerifyReport VerifyRepository(Repository& repo, const std::optional<std::string>& point_id,
                              unsigned threads, VerifyProgress* progress);

}  // namespace ferry
