// Chunk encoding, format v1 (docs/repository-format.md, "Chunk files").
//
//   offset size  field
//   0      8     magic "FRYCHK01"
//   8      1     compression: 0 = stored plain, 1 = zstd
//   9      3     reserved, zero
//   12     4     plain size (little endian)
//   16     4     stored size (bytes after the header)
//   20     4     CRC-32C over bytes 0..19 and the stored bytes
//   24     -     stored bytes
//
// The chunk is named by the SHA-256 of its plain data, so a reader checks the
// CRC (cheap, catches media damage without decompressing) and, when it needs
// the plain data anyway, the digest.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ferry/common/checksum.h"

namespace ferry {

inline constexpr char kChunkMagic[8] = {'F', 'R', 'Y', 'C', 'H', 'K', '0', '1'};
inline constexpr size_t kChunkHeaderSize = 24;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;

enum class ChunkCompression : uint8_t { kNone = 0, kZstd = 1 };

// Compresses chunks; holds a zstd context, so use one per thread.
class ChunkEncoder {
 public:
  explicit ChunkEncoder(int zstd_level);
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  // Encodes `plain` into `out` (header + stored bytes). Data that zstd cannot
  // shrink is stored plain, so restore never pays to decompress it.
  void Encode(std::span<const uint8_t> plain, std::vector<uint8_t>* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Decodes chunks; holds a zstd context, so use one per thread.
class ChunkDecoder {
 public:
  ChunkDecoder();
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  // Checks magic, sizes and CRC, decompresses into `plain` and, if
  // `expected` is given, checks the SHA-256. Throws kCorrupt with the reason;
  // `name` (usually the chunk's path) goes into the message.
  void Decode(std::span<const uint8_t> encoded, const Digest* expected, const std::string& name,
              std::vector<uint8_t>* plain);
  // The same checks, into caller-owned memory (e.g. aligned for O_DIRECT).
  // Returns the plain size; a chunk larger than `out` is kCorrupt.
  size_t DecodeInto(std::span<const uint8_t> encoded, const Digest* expected,
                    const std::string& name, std::span<uint8_t> out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Checks magic, sizes and CRC only (no decompression). Throws kCorrupt.
void CheckChunkFraming(std::span<const uint8_t> encoded, const std::string& name);

}  // namespace ferry
