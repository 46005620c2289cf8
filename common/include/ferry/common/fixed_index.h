// Fixed index, format v1 (docs/repository-format.md, "Fixed index files").
//
// One per disk per restore point: a 64-byte header, then one 32-byte digest
// per chunk of `chunk_size` bytes aligned to disk offsets. The last chunk
// covers the disk's tail and may be shorter. An all-zero digest marks a chunk
// whose data is all zeros: it has no chunk file and restores as a hole.
//
//   offset size  field
//   0      8     magic "FRYFIX01"
//   8      4     chunk size (little endian)
//   12     4     reserved, zero
//   16     8     disk size in bytes
//   24     8     chunk count = ceil(disk size / chunk size)
//   32     32    reserved, zero
//   64     32*n  digests
//
// The index carries no checksum of its own: the manifest records its SHA-256.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ferry/common/checksum.h"
#include "ferry/common/file_util.h"

namespace ferry {

inline constexpr char kFixedIndexMagic[8] = {'F', 'R', 'Y', 'F', 'I', 'X', '0', '1'};
inline constexpr size_t kFixedIndexHeaderSize = 64;

inline uint64_t ChunkCount(uint64_t disk_size, uint32_t chunk_size) {
  return (disk_size + chunk_size - 1) / chunk_size;
}

// Writes an index. Set() may be called from several threads, once per chunk,
// in any order; Finish() checks every chunk was set.
class FixedIndexWriter {
 public:
  FixedIndexWriter(std::string path, uint64_t disk_size, uint32_t chunk_size);
  ~FixedIndexWriter();

  uint64_t chunk_count() const { return chunk_count_; }
  void Set(uint64_t chunk, const Digest& digest);
  // Syncs the file and returns its SHA-256 (recorded in the manifest).
  Digest Finish();

 private:
  std::string path_;
  uint64_t disk_size_;
  uint32_t chunk_size_;
  uint64_t chunk_count_;
  UniqueFd fd_;
  std::atomic<uint64_t> set_count_{0};
};

// Reads an index through a read-only memory map.
class FixedIndexReader {
 public:
  // Checks the magic, the header against the file size and, when given, the
  // SHA-256 recorded in the manifest. Throws kCorrupt naming the file.
  FixedIndexReader(const std::string& path, const Digest* expected_sha256);
  ~FixedIndexReader();
  FixedIndexReader(const FixedIndexReader&) = delete;
  FixedIndexReader& operator=(const FixedIndexReader&) = delete;

  uint64_t disk_size() const { return disk_size_; }
  uint32_t chunk_size() const { return chunk_size_; }
  uint64_t chunk_count() const { return chunk_count_; }
  Digest At(uint64_t chunk) const;
  // Bytes covered by chunk `chunk` (the last one may be short).
  uint32_t ChunkLength(uint64_t chunk) const;
  // The file's bytes, as checked (a repository service sends them on).
  std::span<const uint8_t> bytes() const { return {map_, map_size_}; }

 private:
  std::string path_;
  uint64_t disk_size_ = 0;
  uint32_t chunk_size_ = 0;
  uint64_t chunk_count_ = 0;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
};

// The index's distinct digests, zero markers left out, in first-use order:
// what a batched ChunkStore::FindMissing is asked about.
std::vector<Digest> DistinctDigests(const FixedIndexReader& index);

}  // namespace ferry
