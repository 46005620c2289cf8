#include "ferry/common/chunk.h"

#include <zstd.h>

#include <array>
#include <cstring>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/repository_key.h"

namespace ferry {

namespace {

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

struct Framing {
  int version;
  ChunkCompression compression;
  uint32_t plain_size;
  uint32_t stored_size;
};

Framing ParseFraming(std::span<const uint8_t> encoded, const std::string& name) {
  auto corrupt = [&](const std::string& why) {
    return Error(ErrorKind::kCorrupt, "chunk " + name + ": " + why);
  };
  if (encoded.size() < kChunkHeaderSize) throw corrupt("shorter than its header");
  const uint8_t* h = encoded.data();
  Framing f;
  f.version = CheckMagic(h, "FRYCHK", 2, "chunk " + name);
  if (h[8] > 1) throw corrupt("unknown compression " + std::to_string(h[8]));
  f.compression = static_cast<ChunkCompression>(h[8]);
  f.plain_size = GetLe32(h + 12);
  f.stored_size = GetLe32(h + 16);
  if (f.plain_size > kMaxChunkSize) throw corrupt("plain size too large");
  if (encoded.size() != kChunkHeaderSize + f.stored_size) {
    throw corrupt("stored size " + std::to_string(f.stored_size) + " does not match file size " +
                  std::to_string(encoded.size()));
  }
  uint32_t crc = Crc32c(h, 20);
  crc = Crc32c(h + kChunkHeaderSize, f.stored_size, crc);
  if (crc != GetLe32(h + 20)) throw corrupt("checksum mismatch (stored bytes damaged)");
  const uint32_t overhead = f.version == 2 ? kChunkCipherOverhead : 0;
  if (f.stored_size < overhead) throw corrupt("encrypted chunk shorter than its nonce and tag");
  if (f.compression == ChunkCompression::kNone && f.stored_size != f.plain_size + overhead) {
    throw corrupt("plain chunk with stored size != plain size");
  }
  return f;
}

// The authenticated data of an encrypted chunk: header bytes 0..19, digest.
std::array<uint8_t, 20 + 32> ChunkAad(const uint8_t* header, const Digest& digest) {
  std::array<uint8_t, 20 + 32> aad;
  std::memcpy(aad.data(), header, 20);
  std::memcpy(aad.data() + 20, digest.bytes.data(), 32);
  return aad;
}

}  // namespace

Digest ChunkHasher::operator()(std::span<const uint8_t> plain) const {
  return key_ ? key_->ChunkDigest(plain.data(), plain.size()) : Sha256(plain.data(), plain.size());
}

struct ChunkEncoder::Impl {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  int level;
  const RepositoryKey* key;
  std::vector<uint8_t> compressed;  // an encrypting encoder's scratch
  ~Impl() { ZSTD_freeCCtx(cctx); }
};

ChunkEncoder::ChunkEncoder(int zstd_level, const RepositoryKey* key) : impl_(std::make_unique<Impl>()) {
  impl_->level = zstd_level;
  impl_->key = key;
  if (!impl_->cctx) throw Error(ErrorKind::kEnvironment, "out of memory creating zstd context");
}
ChunkEncoder::~ChunkEncoder() = default;

void ChunkEncoder::Encode(std::span<const uint8_t> plain, std::vector<uint8_t>* out) {
  if (impl_->key) throw Error(ErrorKind::kInternal, "an encrypting chunk encoder needs the chunk's digest");
  Encode(plain, Digest{}, out);
}

void ChunkEncoder::Encode(std::span<const uint8_t> plain, const Digest& digest, std::vector<uint8_t>* out) {
  if (plain.size() > kMaxChunkSize) {
    throw Error(ErrorKind::kInternal, "chunk of " + std::to_string(plain.size()) + " bytes too big");
  }
  const RepositoryKey* key = impl_->key;
  size_t bound = ZSTD_compressBound(plain.size());
  // Plain: compress straight behind the header. Encrypted: into scratch,
  // then encrypt behind the header and the nonce.
  std::vector<uint8_t>& target = key ? impl_->compressed : *out;
  const size_t at = key ? 0 : kChunkHeaderSize;
  target.resize(at + bound);
  ChunkCompression compression = ChunkCompression::kZstd;
  size_t stored = 0;
  // Level 0 means "store plain"; negative levels are zstd's fast levels.
  if (impl_->level != 0) {
    stored = ZSTD_compressCCtx(impl_->cctx, target.data() + at, bound, plain.data(), plain.size(), impl_->level);
    if (ZSTD_isError(stored)) {
      throw Error(ErrorKind::kInternal, std::string("zstd: ") + ZSTD_getErrorName(stored));
    }
  }
  std::span<const uint8_t> inner(target.data() + at, stored);
  if (impl_->level == 0 || stored >= plain.size()) {
    compression = ChunkCompression::kNone;
    stored = plain.size();
    if (key) {
      inner = plain;  // encrypted straight from the caller's buffer
    } else {
      std::memcpy(out->data() + kChunkHeaderSize, plain.data(), plain.size());
    }
  }
  const size_t stored_size = stored + (key ? kChunkCipherOverhead : 0);
  out->resize(kChunkHeaderSize + stored_size);
  uint8_t* h = out->data();
  std::memcpy(h, key ? kEncryptedChunkMagic : kChunkMagic, sizeof kChunkMagic);
  h[8] = static_cast<uint8_t>(compression);
  h[9] = h[10] = h[11] = 0;
  PutLe32(h + 12, static_cast<uint32_t>(plain.size()));
  PutLe32(h + 16, static_cast<uint32_t>(stored_size));
  if (key) key->SealChunk(ChunkAad(h, digest), inner, h + kChunkHeaderSize);
  uint32_t crc = Crc32c(h, 20);
  crc = Crc32c(h + kChunkHeaderSize, stored_size, crc);
  PutLe32(h + 20, crc);
}

struct ChunkDecoder::Impl {
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  const RepositoryKey* key = nullptr;
  std::vector<uint8_t> compressed;  // decrypted zstd data
  ~Impl() { ZSTD_freeDCtx(dctx); }

  // Decrypts (an encrypted chunk), decompresses or copies the stored bytes
  // into `plain` (f.plain_size bytes) and checks the digest.
  void DecodeFramed(const Framing& f, std::span<const uint8_t> encoded, const Digest* expected,
                    const std::string& name, uint8_t* plain) {
    const uint8_t* stored = encoded.data() + kChunkHeaderSize;
    size_t stored_size = f.stored_size;
    if (f.version == 2 && !key) {
      throw Error(ErrorKind::kBadInput, "chunk " + name + " is encrypted: no key given");
    }
    if (f.version == 1 && key) {
      throw Error(ErrorKind::kCorrupt, "chunk " + name + " is not encrypted, in an encrypted repository");
    }
    if (key) {
      if (!expected) throw Error(ErrorKind::kInternal, "decrypting chunk " + name + " without its digest");
      stored_size -= kChunkCipherOverhead;
      uint8_t* to = plain;
      if (f.compression == ChunkCompression::kZstd) {
        compressed.resize(stored_size);
        to = compressed.data();
      }
      if (!key->OpenChunk(ChunkAad(encoded.data(), *expected), {stored, f.stored_size}, to)) {
        throw Error(ErrorKind::kCorrupt, "chunk " + name + ": authentication failed (its ciphertext, nonce, tag "
                                         "or header was changed, or it is stored under another chunk's name)");
      }
      if (f.compression == ChunkCompression::kNone) {
        stored = nullptr;  // decrypted into place
      } else {
        stored = compressed.data();
      }
    }
    if (f.compression == ChunkCompression::kNone) {
      if (stored) std::memcpy(plain, stored, f.plain_size);
    } else {
      size_t n = ZSTD_decompressDCtx(dctx, plain, f.plain_size, stored, stored_size);
      if (ZSTD_isError(n) || n != f.plain_size) {
        throw Error(ErrorKind::kCorrupt, "chunk " + name + ": zstd data does not decode to " +
                                             std::to_string(f.plain_size) + " bytes");
      }
    }
    if (expected && ChunkHasher(key)({plain, f.plain_size}) != *expected) {
      throw Error(ErrorKind::kCorrupt, "chunk " + name + ": content does not match its digest");
    }
  }
};

ChunkDecoder::ChunkDecoder(const RepositoryKey* key) : impl_(std::make_unique<Impl>()) {
  impl_->key = key;
  if (!impl_->dctx) throw Error(ErrorKind::kEnvironment, "out of memory creating zstd context");
}
ChunkDecoder::~ChunkDecoder() = default;

ChunkFrame CheckChunkFraming(std::span<const uint8_t> encoded, const std::string& name) {
  Framing f = ParseFraming(encoded, name);
  return {f.version, f.plain_size};
}

void ChunkDecoder::Decode(std::span<const uint8_t> encoded, const Digest* expected,
                          const std::string& name, std::vector<uint8_t>* plain) {
  Framing f = ParseFraming(encoded, name);
  plain->resize(f.plain_size);
  impl_->DecodeFramed(f, encoded, expected, name, plain->data());
}

size_t ChunkDecoder::DecodeInto(std::span<const uint8_t> encoded, const Digest* expected,
                                const std::string& name, std::span<uint8_t> out) {
  Framing f = ParseFraming(encoded, name);
  if (f.plain_size > out.size()) {
    throw Error(ErrorKind::kCorrupt, "chunk " + name + ": plain size " +
                                         std::to_string(f.plain_size) + " exceeds the expected " +
                                         std::to_string(out.size()));
  }
  impl_->DecodeFramed(f, encoded, expected, name, out.data());
  return f.plain_size;
}

}  // namespace ferry
