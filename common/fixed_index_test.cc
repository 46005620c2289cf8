#include "ferry/common/fixed_index.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "ferry/common/error.h"

namespace ferry {
namespace {

class FixedIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ferry-index-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { RemoveTree(dir_); }
  std::string dir_;
};

Digest DigestFor(uint64_t i) {
  std::string s = "chunk" + std::to_string(i);
  return Sha256(s.data(), s.size());
}

TEST_F(FixedIndexTest, RoundTripWithPartialLastChunk) {
  const uint64_t disk_size = 10 * 65536 + 512;  // 11 chunks, the last 512 bytes
  std::string path = dir_ + "/i.fidx";
  FixedIndexWriter w(path, disk_size, 65536);
  ASSERT_EQ(w.chunk_count(), 11u);
  for (uint64_t i = 11; i-- > 0;) w.Set(i, i == 3 ? Digest{} : DigestFor(i));  // any order
  Digest sha = w.Finish();

  FixedIndexReader r(path, &sha);
  EXPECT_EQ(r.disk_size(), disk_size);
  EXPECT_EQ(r.chunk_size(), 65536u);
  EXPECT_EQ(r.chunk_count(), 11u);
  EXPECT_EQ(r.ChunkLength(0), 65536u);
  EXPECT_EQ(r.ChunkLength(10), 512u);
  EXPECT_TRUE(r.At(3).IsZeroMarker());
  EXPECT_EQ(r.At(7), DigestFor(7));
  EXPECT_THROW(r.At(11), Error);
}

TEST_F(FixedIndexTest, FinishRefusesUnsetChunks) {
  FixedIndexWriter w(dir_ + "/i.fidx", 3 * 65536, 65536);
  w.Set(0, DigestFor(0));
  w.Set(2, DigestFor(2));
  EXPECT_THROW(w.Finish(), Error);
}

TEST_F(FixedIndexTest, DamageIsReportedAsCorrupt) {
  std::string path = dir_ + "/i.fidx";
  FixedIndexWriter w(path, 4 * 65536, 65536);
  for (uint64_t i = 0; i < 4; ++i) w.Set(i, DigestFor(i));
  Digest sha = w.Finish();
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(kFixedIndexHeaderSize + 40);
    f.put('\x7f');
  }
  try {
    FixedIndexReader r(path, &sha);
    FAIL() << "damaged index accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
  }
  ASSERT_EQ(::truncate(path.c_str(), kFixedIndexHeaderSize + 31), 0);
  EXPECT_THROW(FixedIndexReader(path, nullptr), Error);
  ASSERT_EQ(::truncate(path.c_str(), 10), 0);
  EXPECT_THROW(FixedIndexReader(path, nullptr), Error);
}

}  // namespace
}  // namespace ferry
