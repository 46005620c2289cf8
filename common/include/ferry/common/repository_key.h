// The key of an encrypted repository (docs/encryption.md).
//
// One random 256-bit master key per repository, fixed at `ferry init
// --encrypt`. It is kept in a key file (JSON, "ferry-key-v1"), wrapped with
// AES-256-GCM under a key-encryption key that scrypt derives from a
// passphrase, and never stored in the repository: the repository records only
// the key's fingerprint. From the master key HKDF-SHA256 derives three keys,
// each for one job:
//
//   chunk key     AES-256-GCM of every chunk's (compressed) data (chunk.h)
//   id key        HMAC-SHA256 of a chunk's plain data: its digest, so chunks
//                 still deduplicate, and their names reveal nothing
//   metadata key  HMAC-SHA256 that binds each disk record of a manifest to
//                 its point and index (DiskRecordMac)
//
// A RepositoryKey is immutable once made; its const methods may be called
// from any number of threads at once. Key bytes are wiped when it goes.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ferry/common/checksum.h"
#include "ferry/common/manifest.h"

namespace ferry {

struct RepositoryConfig;

inline constexpr char kKeyFileFamily[] = "ferry-key";
inline constexpr int kKeyFileVersion = 1;
inline constexpr char kRecoveryFamily[] = "ferry-key-recovery";
inline constexpr char kChunkCipher[] = "aes-256-gcm";
inline constexpr size_t kChunkNonceSize = 12;
inline constexpr size_t kChunkTagSize = 16;

// scrypt's cost, stored in the key file. N = 2^15, r = 8 costs 32 MiB and
// about 0.1 s per load here: cheap for one `ferry` run, expensive per guess.
struct ScryptParams {
  uint64_t n = 1u << 15;
  uint32_t r = 8;
  uint32_t p = 1;
};

class RepositoryKey {
 public:
  static constexpr size_t kSize = 32;

  // A new random master key (OpenSSL's RAND_bytes).
  static RepositoryKey Generate();
  static RepositoryKey FromMaster(std::span<const uint8_t, kSize> master);

  // Reads a key file. Throws kBadInput "wrong passphrase for key file X"
  // when the passphrase does not unwrap it (the GCM tag fails), kCorrupt for a
  // damaged file, kBadInput for a newer format, kNotFound when it is missing.
  static RepositoryKey LoadKeyFile(const std::string& path, const std::string& passphrase);
  // The fingerprint a key file records, read without its passphrase (to pick
  // a repository's key among several files; LoadKeyFile checks it). Throws
  // as LoadKeyFile does for a missing, damaged or newer file.
  static std::string KeyFileFingerprint(const std::string& path);
  // Writes this key into a new key file (0600, atomically). kBadInput if
  // `path` exists and `replace` is false (a key file is never overwritten by
  // accident: its key may be the only copy).
  void WriteKeyFile(const std::string& path, const std::string& passphrase, bool replace = false,
                    const ScryptParams& params = {}) const;

  // The printable recovery copy: the master key in 16 groups of 4 hex digits
  // plus its fingerprint, to write on paper.
  std::string RecoveryText() const;
  // Reads a recovery copy back (spaces and line breaks anywhere); kBadInput
  // when it is not 64 hex digits or its key does not match its fingerprint.
  static RepositoryKey FromRecoveryText(std::string_view text);

  // HMAC-SHA256(master, fixed label), first 16 bytes in hex: names the key
  // in the repository's config and in messages without revealing it.
  const std::string& Fingerprint() const { return fingerprint_; }

  // The chunk digest: HMAC-SHA256 of the plain data under the id key.
  Digest ChunkDigest(const void* data, size_t size) const;

  // AES-256-GCM under the chunk key: `out` gets nonce | ciphertext | tag
  // (size + 28 bytes); `aad` is authenticated, not encrypted.
  void SealChunk(std::span<const uint8_t> aad, std::span<const uint8_t> plain, uint8_t* out) const;
  // The reverse: `in` is nonce | ciphertext | tag, `out` gets in.size() - 28
  // bytes. False when the tag does not match (any byte changed, another key).
  bool OpenChunk(std::span<const uint8_t> aad, std::span<const uint8_t> in, uint8_t* out) const;

  // The "index_hmac" of a disk record of point `point_id` (hex): binds the
  // disk's name, size, chunk size, index file and index SHA-256 to the point
  // (whose id is unique), so no index can be swapped or moved unnoticed.
  std::string DiskRecordMac(const std::string& point_id, const DiskRecord& disk) const;
  // Checks every disk record's MAC of a manifest; kCorrupt naming the point
  // and disk when one is missing or does not match.
  void CheckManifest(const RestorePointManifest& manifest) const;

  RepositoryKey(const RepositoryKey&) = default;
  RepositoryKey& operator=(const RepositoryKey&) = default;
  ~RepositoryKey();

 private:
  RepositoryKey() = default;
  void Derive();

  std::array<uint8_t, kSize> master_{};
  std::array<uint8_t, kSize> chunk_key_{};
  std::array<uint8_t, kSize> id_key_{};
  std::array<uint8_t, kSize> metadata_key_{};
  std::string fingerprint_;
};

// Whether `key` may be used with the repository at `location`: throws
// kBadInput "repository X is encrypted: give --key-file" when it is encrypted
// and `key` is null, one naming both fingerprints when `key` is another
// repository's, and one when a key is given for a plain repository.
void CheckKeyFits(const RepositoryConfig& config, const RepositoryKey* key, const std::string& location);

// The passphrase for a key file: the first line of `passphrase_file` when
// given, else the environment variable `env` (FERRY_PASSPHRASE). kBadInput
// when neither is given or it is empty. Never logged.
std::string ReadPassphrase(const std::string& passphrase_file, const char* env);

}  // namespace ferry
