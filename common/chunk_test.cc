#include "ferry/common/chunk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "ferry/common/error.h"

namespace ferry {
namespace {

std::vector<uint8_t> Compressible(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>("ferry backup "[i % 13]);
  return v;
}

std::vector<uint8_t> Random(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

ErrorKind DecodeErrorKind(const std::vector<uint8_t>& encoded, const Digest& d) {
  ChunkDecoder dec;
  std::vector<uint8_t> out;
  try {
    dec.Decode(encoded, &d, "test", &out);
  } catch (const Error& e) {
    return e.kind();
  }
  return ErrorKind::kInternal;  // no error: the caller's expectation fails
}

TEST(ChunkTest, CompressibleRoundTripShrinks) {
  auto plain = Compressible(1 << 20);
  Digest d = Sha256(plain.data(), plain.size());
  ChunkEncoder enc(1);
  std::vector<uint8_t> encoded;
  enc.Encode(plain, &encoded);
  EXPECT_LT(encoded.size(), plain.size() / 10);
  EXPECT_EQ(encoded[8], static_cast<uint8_t>(ChunkCompression::kZstd));
  ChunkDecoder dec;
  std::vector<uint8_t> out;
  dec.Decode(encoded, &d, "test", &out);
  EXPECT_EQ(out, plain);
}

TEST(ChunkTest, IncompressibleDataIsStoredPlain) {
  auto plain = Random(256 << 10, 1);
  ChunkEncoder enc(1);
  std::vector<uint8_t> encoded;
  enc.Encode(plain, &encoded);
  EXPECT_EQ(encoded[8], static_cast<uint8_t>(ChunkCompression::kNone));
  EXPECT_EQ(encoded.size(), kChunkHeaderSize + plain.size());
  Digest d = Sha256(plain.data(), plain.size());
  ChunkDecoder dec;
  std::vector<uint8_t> out;
  dec.Decode(encoded, &d, "test", &out);
  EXPECT_EQ(out, plain);
}

TEST(ChunkTest, DecodeIntoCallerMemory) {
  ChunkEncoder enc(1);
  ChunkDecoder dec;
  for (const auto& plain : {Compressible(100000), Random(100000, 3)}) {
    Digest d = Sha256(plain.data(), plain.size());
    std::vector<uint8_t> encoded;
    enc.Encode(plain, &encoded);
    std::vector<uint8_t> out(plain.size() + 7, 0xaa);
    ASSERT_EQ(dec.DecodeInto(encoded, &d, "test", out), plain.size());
    EXPECT_TRUE(std::equal(plain.begin(), plain.end(), out.begin()));
    std::vector<uint8_t> small(plain.size() - 1);
    try {
      dec.DecodeInto(encoded, &d, "test", small);
      ADD_FAILURE() << "a chunk larger than the buffer was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    }
    Digest other = Sha256("x", 1);
    EXPECT_THROW(dec.DecodeInto(encoded, &other, "test", out), Error);
  }
}

TEST(ChunkTest, EveryFlippedByteIsDetected) {
  auto plain = Compressible(4096);
  Digest d = Sha256(plain.data(), plain.size());
  ChunkEncoder enc(3);
  std::vector<uint8_t> encoded;
  enc.Encode(plain, &encoded);
  for (size_t i = 0; i < encoded.size(); ++i) {
    auto damaged = encoded;
    damaged[i] ^= 0x40;
    EXPECT_EQ(DecodeErrorKind(damaged, d), ErrorKind::kCorrupt) << "byte " << i;
  }
}

TEST(ChunkTest, TruncatedAndWrongDigest) {
  auto plain = Compressible(8192);
  Digest d = Sha256(plain.data(), plain.size());
  ChunkEncoder enc(1);
  std::vector<uint8_t> encoded;
  enc.Encode(plain, &encoded);
  auto truncated = encoded;
  truncated.pop_back();
  EXPECT_EQ(DecodeErrorKind(truncated, d), ErrorKind::kCorrupt);
  EXPECT_EQ(DecodeErrorKind({1, 2, 3}, d), ErrorKind::kCorrupt);
  Digest other = Sha256("other", 5);
  EXPECT_EQ(DecodeErrorKind(encoded, other), ErrorKind::kCorrupt);
  EXPECT_NO_THROW(CheckChunkFraming(encoded, "test"));
}

TEST(ChunkTest, EmptyAndLevelZero) {
  ChunkEncoder enc(0);
  std::vector<uint8_t> encoded;
  auto plain = Compressible(1000);
  enc.Encode(plain, &encoded);
  EXPECT_EQ(encoded[8], static_cast<uint8_t>(ChunkCompression::kNone));
  std::vector<uint8_t> empty;
  enc.Encode(empty, &encoded);
  ChunkDecoder dec;
  std::vector<uint8_t> out{1};
  Digest d = Sha256("", 0);
  dec.Decode(encoded, &d, "test", &out);
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST(ChunkTest, FastNegativeLevelsRoundTrip) {
  auto plain = Compressible(1 << 20);
  Digest d = Sha256(plain.data(), plain.size());
  ChunkEncoder enc(-5);
  std::vector<uint8_t> encoded, out;
  enc.Encode(plain, &encoded);
  EXPECT_EQ(encoded[8], static_cast<uint8_t>(ChunkCompression::kZstd));
  EXPECT_LT(encoded.size(), plain.size() / 4);
  ChunkDecoder dec;
  dec.Decode(encoded, &d, "test", &out);
  EXPECT_EQ(out, plain);
}

}  // namespace
}  // namespace ferry
