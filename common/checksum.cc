#include "ferry/common/checksum.h"

#include <openssl/evp.h>

#include <cstring>

#include "ferry/common/error.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace ferry {

bool Digest::IsZeroMarker() const { return IsAllZero(bytes.data(), bytes.size()); }

std::string Digest::Hex() const {
  static const char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

Digest Digest::FromHex(std::string_view hex) {
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Digest d;
  if (hex.size() != 64) {
    throw Error(ErrorKind::kBadInput, "digest '" + std::string(hex) + "' is not 64 hex digits");
  }
  for (size_t i = 0; i < 32; ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      throw Error(ErrorKind::kBadInput, "digest '" + std::string(hex) + "' is not 64 hex digits");
    }
    d.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

Digest Sha256(const void* data, size_t size) {
  Digest d;
  unsigned int len = 0;
  if (EVP_Digest(data, size, d.bytes.data(), &len, EVP_sha256(), nullptr) != 1 || len != 32) {
    throw Error(ErrorKind::kInternal, "OpenSSL SHA-256 failed");
  }
  return d;
}

struct Sha256Stream::Impl {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

Sha256Stream::Sha256Stream() : impl_(std::make_unique<Impl>()) {
  if (!impl_->ctx || EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr) != 1) {
    throw Error(ErrorKind::kInternal, "OpenSSL SHA-256 init failed");
  }
}
Sha256Stream::~Sha256Stream() = default;

void Sha256Stream::Update(const void* data, size_t size) {
  if (EVP_DigestUpdate(impl_->ctx, data, size) != 1) {
    throw Error(ErrorKind::kInternal, "OpenSSL SHA-256 update failed");
  }
}

Digest Sha256Stream::Finish() {
  Digest d;
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(impl_->ctx, d.bytes.data(), &len) != 1 || len != 32) {
    throw Error(ErrorKind::kInternal, "OpenSSL SHA-256 final failed");
  }
  return d;
}

namespace {

// Castagnoli polynomial, reflected.
constexpr uint32_t kCrc32cPoly = 0x82F63B78u;

struct Crc32cTable {
  uint32_t t[256];
  constexpr Crc32cTable() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCrc32cPoly : c >> 1;
      t[i] = c;
    }
  }
};
constexpr Crc32cTable kTable;

uint32_t Crc32cSoftware(const uint8_t* p, size_t n, uint32_t crc) {
  for (size_t i = 0; i < n; ++i) crc = kTable.t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const uint8_t* p, size_t n,
                                                           uint32_t crc) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}
#endif

}  // namespace

uint32_t Crc32c(const void* data, size_t size, uint32_t seed) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t crc = ~seed;
#if defined(__x86_64__)
  static const bool has_sse42 = __builtin_cpu_supports("sse4.2");
  crc = has_sse42 ? Crc32cHardware(p, size, crc) : Crc32cSoftware(p, size, crc);
#else
  crc = Crc32cSoftware(p, size, crc);
#endif
  return ~crc;
}

bool IsAllZero(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  // Check a short prefix byte by byte, then compare the buffer with itself
  // shifted: memcmp is vectorised, and overlapping equality implies all bytes
  // equal the (zero) prefix.
  size_t prefix = size < 16 ? size : 16;
  for (size_t i = 0; i < prefix; ++i) {
    if (p[i] != 0) return false;
  }
  if (size <= 16) return true;
  return std::memcmp(p, p + 16, size - 16) == 0;
}

}  // namespace ferry
