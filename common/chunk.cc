#include "ferry/common/chunk.h"

#include <zstd.h>

#include <cstring>

#include "ferry/common/error.h"
#include "ferry/common/format.h"

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
  CheckMagic(h, "FRYCHK", 1, "chunk " + name);
  Framing f;
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
  if (f.compression == ChunkCompression::kNone && f.stored_size != f.plain_size) {
    throw corrupt("plain chunk with stored size != plain size");
  }
  return f;
}

// Decompresses (or copies) the stored bytes into `plain` (f.plain_size bytes)
// and checks the digest.
void DecodeFramed(ZSTD_DCtx* dctx, const Framing& f, std::span<const uint8_t> encoded,
                  const Digest* expected, const std::string& name, uint8_t* plain) {
  const uint8_t* stored = encoded.data() + kChunkHeaderSize;
  if (f.compression == ChunkCompression::kNone) {
    std::memcpy(plain, stored, f.plain_size);
  } else {
    size_t n = ZSTD_decompressDCtx(dctx, plain, f.plain_size, stored, f.stored_size);
    if (ZSTD_isError(n) || n != f.plain_size) {
      throw Error(ErrorKind::kCorrupt, "chunk " + name + ": zstd data does not decode to " +
                                           std::to_string(f.plain_size) + " bytes");
    }
  }
  if (expected && Sha256(plain, f.plain_size) != *expected) {
    throw Error(ErrorKind::kCorrupt, "chunk " + name + ": content does not match its digest");
  }
}

}  // namespace

struct ChunkEncoder::Impl {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  int level;
  ~Impl() { ZSTD_freeCCtx(cctx); }
};

ChunkEncoder::ChunkEncoder(int zstd_level) : impl_(std::make_unique<Impl>()) {
  impl_->level = zstd_level;
  if (!impl_->cctx) throw Error(ErrorKind::kEnvironment, "out of memory creating zstd context");
}
ChunkEncoder::~ChunkEncoder() = default;

void ChunkEncoder::Encode(std::span<const uint8_t> plain, std::vector<uint8_t>* out) {
  if (plain.size() > kMaxChunkSize) {
    throw Error(ErrorKind::kInternal, "chunk of " + std::to_string(plain.size()) + " bytes too big");
  }
  size_t bound = ZSTD_compressBound(plain.size());
  out->resize(kChunkHeaderSize + bound);
  uint8_t* h = out->data();
  ChunkCompression compression = ChunkCompression::kZstd;
  size_t stored = 0;
  // Level 0 means "store plain"; negative levels are zstd's fast levels.
  if (impl_->level != 0) {
    stored = ZSTD_compressCCtx(impl_->cctx, h + kChunkHeaderSize, bound, plain.data(),
                               plain.size(), impl_->level);
    if (ZSTD_isError(stored)) {
      throw Error(ErrorKind::kInternal, std::string("zstd: ") + ZSTD_getErrorName(stored));
    }
  }
  if (impl_->level == 0 || stored >= plain.size()) {
    compression = ChunkCompression::kNone;
    stored = plain.size();
    std::memcpy(h + kChunkHeaderSize, plain.data(), plain.size());
  }
  out->resize(kChunkHeaderSize + stored);
  h = out->data();
  std::memcpy(h, kChunkMagic, sizeof kChunkMagic);
  h[8] = static_cast<uint8_t>(compression);
  h[9] = h[10] = h[11] = 0;
  PutLe32(h + 12, static_cast<uint32_t>(plain.size()));
  PutLe32(h + 16, static_cast<uint32_t>(stored));
  uint32_t crc = Crc32c(h, 20);
  crc = Crc32c(h + kChunkHeaderSize, stored, crc);
  PutLe32(h + 20, crc);
}

struct ChunkDecoder::Impl {
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  ~Impl() { ZSTD_freeDCtx(dctx); }
};

ChunkDecoder::ChunkDecoder() : impl_(std::make_unique<Impl>()) {
  if (!impl_->dctx) throw Error(ErrorKind::kEnvironment, "out of memory creating zstd context");
}
ChunkDecoder::~ChunkDecoder() = default;

void CheckChunkFraming(std::span<const uint8_t> encoded, const std::string& name) {
  ParseFraming(encoded, name);
}

void ChunkDecoder::Decode(std::span<const uint8_t> encoded, const Digest* expected,
                          const std::string& name, std::vector<uint8_t>* plain) {
  Framing f = ParseFraming(encoded, name);
  plain->resize(f.plain_size);
  DecodeFramed(impl_->dctx, f, encoded, expected, name, plain->data());
}

size_t ChunkDecoder::DecodeInto(std::span<const uint8_t> encoded, const Digest* expected,
                                const std::string& name, std::span<uint8_t> out) {
  Framing f = ParseFraming(encoded, name);
  if (f.plain_size > out.size()) {
    throw Error(ErrorKind::kCorrupt, "chunk " + name + ": plain size " +
                                         std::to_string(f.plain_size) + " exceeds the expected " +
                                         std::to_string(out.size()));
  }
  DecodeFramed(impl_->dctx, f, encoded, expected, name, out.data());
  return f.plain_size;
}

}  // namespace ferry
