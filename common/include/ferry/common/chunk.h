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
//
// Format v2, encrypted (docs/encryption.md, "Chunks"): magic "FRYCHK02", the
// same 24-byte header, and stored bytes
//
//   nonce (12) | AES-256-GCM ciphertext of the compressed (or plain) data | tag (16)
//
// so stored size = ciphertext size + 28. The additional authenticated data is
// header bytes 0..19 followed by the chunk's 32-byte digest: a chunk cannot
// be moved to another name, nor its header changed. The CRC still covers the
// header and the stored (cipher) bytes, so framing and media damage are
// checked without the key (the repository service, verify without a key).
// Such a chunk is named by HMAC-SHA256 of its plain data under the key's id
// key (RepositoryKey::ChunkDigest), never by SHA-256.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ferry/common/checksum.h"

namespace ferry {

inline constexpr char kChunkMagic[8] = {'F', 'R', 'Y', 'C', 'H', 'K', '0', '1'};
inline constexpr char kEncryptedChunkMagic[8] = {'F', 'R', 'Y', 'C', 'H', 'K', '0', '2'};
// Nonce and tag of an encrypted chunk, in its stored bytes.
inline constexpr size_t kChunkCipherOverhead = 12 + 16;
inline constexpr size_t kChunkHeaderSize = 24;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;

enum class ChunkCompression : uint8_t { kNone = 0, kZstd = 1 };

class RepositoryKey;

// A repository's chunk digest, one code path for backup, verify and restore:
// SHA-256 of the plain data, or with a key its HMAC-SHA256 under the key's id
// key. Not owned; the key must outlive it. Thread-safe.
class ChunkHasher {
 public:
  explicit ChunkHasher(const RepositoryKey* key = nullptr) : key_(key) {}
  Digest operator()(std::span<const uint8_t> plain) const;
  const RepositoryKey* key() const { return key_; }

 private:
  const RepositoryKey* key_;
};

// Compresses chunks, and with a key encrypts them (format v2); holds a zstd
// context, so use one per thread. The key is not owned.
class ChunkEncoder {
 public:
  explicit ChunkEncoder(int zstd_level, const RepositoryKey* key = nullptr);
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  // Encodes `plain` into `out` (header + stored bytes). Data that zstd cannot
  // shrink is stored plain, so restore never pays to decompress it.
  // `digest` (ChunkHasher's) is authenticated with an encrypted chunk;
  // the two-argument form is for plain encoders only.
  void Encode(std::span<const uint8_t> plain, const Digest& digest, std::vector<uint8_t>* out);
  void Encode(std::span<const uint8_t> plain, std::vector<uint8_t>* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Decodes chunks; holds a zstd context, so use one per thread. With a key it
// decodes encrypted chunks only (a plain chunk in an encrypted repository is
// kCorrupt); without one, an encrypted chunk is kBadInput ("no key given").
class ChunkDecoder {
 public:
  explicit ChunkDecoder(const RepositoryKey* key = nullptr);
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  // Checks magic, sizes and CRC, decrypts (GCM tag, with `expected` as
  // authenticated data: required then), decompresses into `plain` and, if
  // `expected` is given, checks the digest (ChunkHasher's). Throws kCorrupt with the reason;
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

// What the framing of a chunk says, checked (magic, sizes and CRC).
struct ChunkFrame {
  int version = 1;  // 2: encrypted
  uint32_t plain_size = 0;
  bool encrypted() const { return version == 2; }
};

// Checks magic, sizes and CRC only (no decryption, no decompression), which
// needs no key. Throws kCorrupt.
ChunkFrame CheckChunkFraming(std::span<const uint8_t> encoded, const std::string& name);

}  // namespace ferry
