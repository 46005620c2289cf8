#include "ferry/common/checksum.h"

#include <gtest/gtest.h>

#include <vector>

#include "ferry/common/error.h"

namespace ferry {
namespace {

TEST(ChecksumTest, Sha256KnownVector) {
  EXPECT_EQ(Sha256("abc", 3).Hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ChecksumTest, Sha256StreamMatchesOneShot) {
  std::vector<uint8_t> data(100000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  Sha256Stream s;
  s.Update(data.data(), 12345);
  s.Update(data.data() + 12345, data.size() - 12345);
  EXPECT_EQ(s.Finish(), Sha256(data.data(), data.size()));
}

TEST(ChecksumTest, Crc32cKnownVectors) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  // Chaining equals one pass.
  EXPECT_EQ(Crc32c("56789", 5, Crc32c("1234", 4)), 0xE3069283u);
}

TEST(ChecksumTest, IsAllZero) {
  std::vector<uint8_t> buf(1 << 20, 0);
  EXPECT_TRUE(IsAllZero(buf.data(), buf.size()));
  EXPECT_TRUE(IsAllZero(buf.data(), 0));
  EXPECT_TRUE(IsAllZero(buf.data(), 7));
  buf.back() = 1;
  EXPECT_FALSE(IsAllZero(buf.data(), buf.size()));
  buf.back() = 0;
  buf[3] = 1;
  EXPECT_FALSE(IsAllZero(buf.data(), buf.size()));
  EXPECT_FALSE(IsAllZero(buf.data(), 5));
}

TEST(ChecksumTest, DigestHexRoundTripAndBadInput) {
  Digest d = Sha256("x", 1);
  EXPECT_EQ(Digest::FromHex(d.Hex()), d);
  EXPECT_FALSE(d.IsZeroMarker());
  EXPECT_TRUE(Digest{}.IsZeroMarker());
  try {
    Digest::FromHex("zz");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("zz"), std::string::npos);
  }
  EXPECT_THROW(Digest::FromHex(std::string(63, 'a') + "g"), Error);
}

}  // namespace
}  // namespace ferry
