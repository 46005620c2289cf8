// Content digests and integrity checksums.
//
// Digest: SHA-256 of a chunk's plain data, through OpenSSL's EVP interface so
// SHA-NI is used where the CPU has it (coreutils sha256sum is 3x slower here).
// Crc32c: the checksum over stored bytes; hardware (SSE4.2) when available.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace ferry {

struct Digest {
  std::array<uint8_t, 32> bytes{};

  // The all-zero digest marks an all-zero chunk in an index (no SHA-256 of
  // real data is all zeros in practice).
  bool IsZeroMarker() const;
  std::string Hex() const;
  // Throws kBadInput unless `hex` is 64 hex digits.
  static Digest FromHex(std::string_view hex);

  friend bool operator==(const Digest&, const Digest&) = default;
};

struct DigestHash {
  size_t operator()(const Digest& d) const {
    size_t h;
    static_assert(sizeof(h) <= sizeof(d.bytes));
    __builtin_memcpy(&h, d.bytes.data(), sizeof(h));
    return h;
  }
};

Digest Sha256(const void* data, size_t size);

// Incremental SHA-256 for streams (index files, manifests).
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(const void* data, size_t size);
  Digest Finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

uint32_t Crc32c(const void* data, size_t size, uint32_t seed = 0);

// True when every byte of the buffer is zero. Fast on the common case of data
// that is non-zero in its first bytes.
bool IsAllZero(const void* data, size_t size);

}  // namespace ferry
