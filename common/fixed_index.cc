#include "ferry/common/fixed_index.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <unordered_set>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/format.h"

namespace ferry {

namespace {
void PutLe(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
}  // namespace

FixedIndexWriter::FixedIndexWriter(std::string path, uint64_t disk_size, uint32_t chunk_size)
    : path_(std::move(path)),
      disk_size_(disk_size),
      chunk_size_(chunk_size),
      chunk_count_(ChunkCount(disk_size, chunk_size)) {
  if (chunk_size == 0) throw Error(ErrorKind::kInternal, "index with chunk size 0");
  fd_ = OpenOrThrow(path_, O_RDWR | O_CREAT | O_TRUNC);
  uint8_t header[kFixedIndexHeaderSize] = {};
  std::memcpy(header, kFixedIndexMagic, sizeof kFixedIndexMagic);
  PutLe(header + 8, chunk_size_, 4);
  PutLe(header + 16, disk_size_, 8);
  PutLe(header + 24, chunk_count_, 8);
  PwriteAll(fd_.get(), header, sizeof header, 0, path_);
  // Entries not yet written read as zeros; Finish() checks all were set.
  if (::ftruncate(fd_.get(), static_cast<off_t>(kFixedIndexHeaderSize + 32 * chunk_count_)) != 0) {
    throw ErrnoError("sizing index " + path_, errno);
  }
}

FixedIndexWriter::~FixedIndexWriter() = default;

void FixedIndexWriter::Set(uint64_t chunk, const Digest& digest) {
  if (chunk >= chunk_count_) {
    throw Error(ErrorKind::kInternal, "index " + path_ + ": chunk " + std::to_string(chunk) +
                                          " out of range");
  }
  PwriteAll(fd_.get(), digest.bytes.data(), 32, kFixedIndexHeaderSize + 32 * chunk, path_);
  set_count_.fetch_add(1, std::memory_order_relaxed);
}

Digest FixedIndexWriter::Finish() {
  if (set_count_.load() != chunk_count_) {
    throw Error(ErrorKind::kInternal, "index " + path_ + ": " + std::to_string(set_count_.load()) +
                                          " of " + std::to_string(chunk_count_) + " chunks set");
  }
  FsyncOrThrow(fd_.get(), path_);
  Sha256Stream sha;
  std::vector<uint8_t> buf(1 << 20);
  uint64_t size = kFixedIndexHeaderSize + 32 * chunk_count_;
  for (uint64_t off = 0; off < size;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    PreadAll(fd_.get(), buf.data(), n, off, path_);
    sha.Update(buf.data(), n);
    off += n;
  }
  fd_.Reset();
  return sha.Finish();
}

FixedIndexReader::FixedIndexReader(const std::string& path, const Digest* expected_sha256)
    : path_(path) {
  UniqueFd fd = OpenOrThrow(path, O_RDONLY);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw ErrnoError("stat of index " + path, errno);
  auto corrupt = [&](const std::string& why) {
    return Error(ErrorKind::kCorrupt, "index " + path + ": " + why);
  };
  if (static_cast<uint64_t>(st.st_size) < kFixedIndexHeaderSize) throw corrupt("truncated header");
  map_size_ = static_cast<size_t>(st.st_size);
  void* m = ::mmap(nullptr, map_size_, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (m == MAP_FAILED) throw ErrnoError("mapping index " + path, errno);
  map_ = static_cast<const uint8_t*>(m);
  try {
    CheckMagic(map_, "FRYFIX", 1, "index " + path);
    chunk_size_ = static_cast<uint32_t>(GetLe(map_ + 8, 4));
    disk_size_ = GetLe(map_ + 16, 8);
    chunk_count_ = GetLe(map_ + 24, 8);
    if (chunk_size_ == 0 || chunk_count_ != ChunkCount(disk_size_, chunk_size_)) {
      throw corrupt("header sizes are inconsistent");
    }
    if (map_size_ != kFixedIndexHeaderSize + 32 * chunk_count_) {
      throw corrupt("file size does not match its chunk count");
    }
    if (expected_sha256) {
      ::madvise(const_cast<uint8_t*>(map_), map_size_, MADV_SEQUENTIAL);
      if (Sha256(map_, map_size_) != *expected_sha256) {
        throw corrupt("checksum does not match the manifest");
      }
    }
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    throw;
  }
}

FixedIndexReader::~FixedIndexReader() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

Digest FixedIndexReader::At(uint64_t chunk) const {
  if (chunk >= chunk_count_) {
    throw Error(ErrorKind::kInternal, "index " + path_ + ": chunk " + std::to_string(chunk) +
                                          " out of range");
  }
  Digest d;
  std::memcpy(d.bytes.data(), map_ + kFixedIndexHeaderSize + 32 * chunk, 32);
  return d;
}

uint32_t FixedIndexReader::ChunkLength(uint64_t chunk) const {
  uint64_t start = chunk * chunk_size_;
  return static_cast<uint32_t>(std::min<uint64_t>(chunk_size_, disk_size_ - start));
}

std::vector<Digest> DistinctDigests(const FixedIndexReader& index) {
  std::unordered_set<Digest, DigestHash> seen;
  std::vector<Digest> distinct;
  for (uint64_t i = 0; i < index.chunk_count(); ++i) {
    Digest d = index.At(i);
    if (!d.IsZeroMarker() && seen.insert(d).second) distinct.push_back(d);
  }
  return distinct;
}

}  // namespace ferry
