// ObjectChunkStore against a real store (integration.test-s3-client runs it
// with a one-node Ceph RGW); skipped without FERRY_TEST_S3_ENDPOINT.
#include "ferry/s3/object_chunk_store.h"

#include <gtest/gtest.h>

#include <random>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "s3_test_env.h"

namespace ferry::s3 {
namespace {

struct TestChunk {
  Digest digest;
  std::vector<uint8_t> encoded;
};

TestChunk MakeChunk(uint32_t seed, size_t size = 256 << 10) {
  std::vector<uint8_t> plain(size);
  std::mt19937 random(seed);
  for (auto& b : plain) b = static_cast<uint8_t>(random() % 16);  // compressible
  TestChunk c;
  c.digest = Sha256(plain.data(), plain.size());
  ChunkEncoder(1).Encode(plain, &c.encoded);
  return c;
}

class ObjectChunkStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::optional<BucketOptions> options = RealStoreOptions();
    if (!options) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set (integration.test-s3-client sets it)";
    bucket_ = std::make_unique<Bucket>(*options);
    bucket_->CreateBucket();
    prefix_ = UniquePrefix();
  }
  std::unique_ptr<Bucket> bucket_;
  std::string prefix_;
};

TEST_F(ObjectChunkStoreTest, MissingDigestsCostOneListingNotARequestPerChunk) {
  {
    ObjectChunkStore writer(*bucket_, prefix_);
    for (uint32_t i = 0; i < 5; ++i) {
      TestChunk c = MakeChunk(i);
      EXPECT_TRUE(writer.Insert(c.digest, c.encoded));
    }
  }
  ObjectChunkStore store(*bucket_, prefix_);
  std::vector<Digest> asked;
  for (uint32_t i = 0; i < 10; ++i) asked.push_back(MakeChunk(i).digest);  // 0..4 stored, 5..9 not
  const BucketStats before = bucket_->stats();
  std::vector<size_t> missing;
  store.FindMissing(asked, &missing);
  EXPECT_EQ(missing, (std::vector<size_t>{5, 6, 7, 8, 9}));
  missing.clear();
  store.FindMissing(asked, &missing);  // the set, no request
  EXPECT_EQ(missing.size(), 5u);
  const BucketStats after = bucket_->stats();
  // One listing of chunks/, and the writer lease's one of gc/ (object_gc.h).
  EXPECT_EQ(after.list_requests - before.list_requests, 2u);
  EXPECT_EQ(after.put_requests - before.put_requests, 1u);  // the lease
  EXPECT_EQ(after.head_requests, before.head_requests);
  EXPECT_EQ(after.get_requests, before.get_requests);
  EXPECT_EQ(store.known_count(), 5u);
}

TEST_F(ObjectChunkStoreTest, ParallelUploadStoresEveryChunkAndReadsBackIntact) {
  ObjectChunkStore store(*bucket_, prefix_);
  std::vector<TestChunk> chunks;
  for (uint32_t i = 0; i < 40; ++i) chunks.push_back(MakeChunk(100 + i));
  std::vector<size_t> missing;
  std::vector<Digest> digests;
  for (auto& c : chunks) digests.push_back(c.digest);
  store.FindMissing(digests, &missing);
  ASSERT_EQ(missing.size(), chunks.size());
  auto upload = store.StartUpload();
  for (auto& c : chunks) upload->Add(c.digest, c.encoded);
  ChunkUploadStats stats = upload->Finish();
  EXPECT_EQ(stats.stored_chunks, chunks.size());
  ObjectChunkStore reader(*bucket_, prefix_);
  ChunkDecoder decoder;
  for (auto& c : chunks) {
    std::vector<uint8_t> encoded, plain;
    FetchChunk(reader, decoder, c.digest, 256 << 10, &encoded, &plain);
    EXPECT_EQ(encoded, c.encoded);
  }
  missing.clear();
  reader.FindMissing(digests, &missing);
  EXPECT_TRUE(missing.empty());
}

TEST_F(ObjectChunkStoreTest, ADamagedChunkIsQuarantinedAndThenMissing) {
  ObjectChunkStore store(*bucket_, prefix_);
  TestChunk c = MakeChunk(7);
  std::vector<uint8_t> damaged = c.encoded;
  damaged[damaged.size() / 2] ^= 0x40;
  bucket_->Put(store.KeyFor(c.digest), damaged);
  ChunkDecoder decoder;
  std::vector<uint8_t> encoded, plain;
  try {
    FetchChunk(store, decoder, c.digest, 256 << 10, &encoded, &plain);
    FAIL() << "damage not found";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt) << e.what();
  }
  EXPECT_FALSE(bucket_->Head(store.KeyFor(c.digest)).has_value()) << "moved out of chunks/";
  size_t quarantined = 0;
  bucket_->List(prefix_ + "quarantine/", [&](const ObjectInfo&) { ++quarantined; });
  EXPECT_EQ(quarantined, 1u);
  EXPECT_FALSE(store.Contains(c.digest));
  try {
    store.Read(c.digest, &encoded);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("quarantined as s3://"), std::string::npos) << e.what();
  }
  // The next backup heals: the chunk goes in again and reads back.
  EXPECT_TRUE(store.Insert(c.digest, c.encoded));
  FetchChunk(store, decoder, c.digest, 256 << 10, &encoded, &plain);
}

}  // namespace
}  // namespace ferry::s3
