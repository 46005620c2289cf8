// S3 Object Lock under point locks (docs/object-storage.md, "Object Lock"):
// a repository in a bucket created with Object Lock, a point locked for a
// day, raw DELETEs that leave the locked versions in place, retention of a
// chunk at the lock's end, extension by a later lock, chunks shared with a
// point locked longer, and a bucket without Object Lock that locks by
// lock.json alone. Against a real store (integration.test-s3-client runs it
// with a one-node Ceph RGW); skipped without FERRY_TEST_S3_ENDPOINT.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <ctime>
#include <iostream>

#include "../test_points.h"
#include "ferry/common/error.h"
#include "ferry/common/point_records.h"
#include "ferry/common/retention.h"
#include "ferry/s3/object_chunk_store.h"
#include "ferry/s3/object_repository.h"
#include "s3_test_env.h"

namespace ferry::s3 {
namespace {

constexpr char kLockBucket[] = "ferry-test-object-lock";

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

std::span<const uint8_t> NoBody() { return {}; }

class ObjectLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_ = RealStoreOptions();
    if (!options_) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set (integration.test-s3-client sets it)";
    ::setenv("FERRY_S3_ACCESS_KEY", options_->credentials.access_key.c_str(), 1);
    ::setenv("FERRY_S3_SECRET_KEY", options_->credentials.secret_key.c_str(), 1);
    prefix_ = UniquePrefix();
    lock_options_ = *options_;
    lock_options_.bucket = kLockBucket;
    lock_bucket_ = std::make_unique<Bucket>(lock_options_);
    plain_bucket_ = std::make_unique<Bucket>(*options_);
    plain_bucket_->CreateBucket();
  }

  std::string Url(const std::string& bucket, const std::string& query = "") const {
    return "s3://" + bucket + "/" + prefix_ + "?endpoint=" + options_->endpoint + "&region=" + options_->region + query;
  }

  // The repository in the Object Lock bucket (init creates the bucket with
  // Object Lock the first time).
  std::unique_ptr<Repository> LockedRepository(const std::string& query = "&object-lock=on") {
    RepositoryConfig config;
    config.chunk_size = 64 << 10;
    InitObjectRepository(Url(kLockBucket, query), config);
    return OpenObjectRepository(Url(kLockBucket, query));
  }

  std::vector<std::string> ChunkKeys(Repository& repo, const std::string& id) {
    RestorePointManifest m = repo.points().Load(id);
    ObjectChunkStore keys(*lock_bucket_, prefix_);
    std::vector<std::string> out;
    for (const auto& d : m.disks) {
      auto index = repo.points().OpenIndex(id, d);
      for (const Digest& digest : DistinctDigests(*index)) out.push_back(keys.KeyFor(digest));
    }
    return out;
  }

  std::vector<ObjectVersion> Versions(Bucket& bucket, const std::string& key) {
    std::vector<ObjectVersion> out;
    bucket.ListVersions(key, [&](const ObjectVersion& v) {
      if (v.key == key) out.push_back(v);
    });
    return out;
  }

  int64_t RetainedUntil(const std::string& key) {
    std::optional<ObjectRetention> r = lock_bucket_->GetRetention(key);
    return r ? r->retain_until : 0;
  }

  std::optional<BucketOptions> options_;
  BucketOptions lock_options_;
  std::string prefix_;
  std::unique_ptr<Bucket> lock_bucket_, plain_bucket_;
};

TEST_F(ObjectLockTest, TheBucketsSayWhetherTheyHaveObjectLock) {
  auto repo = LockedRepository();
  EXPECT_TRUE(lock_bucket_->ObjectLockEnabled());
  EXPECT_FALSE(plain_bucket_->ObjectLockEnabled());
  // A second CreateBucket of ours is fine, with or without the flag.
  lock_bucket_->CreateBucket(true);
  EXPECT_TRUE(lock_bucket_->ObjectLockEnabled());
}

TEST_F(ObjectLockTest, ALockedPointSurvivesRawDeletesAndCanBeBroughtBack) {
  auto repo = LockedRepository();
  const std::string id = test::WriteTestPoint(*repo, {"alpha", "beta", "gamma"});
  const std::string manifest_key = prefix_ + "points/" + id + "/manifest.json";
  std::string manifest;
  ASSERT_TRUE(lock_bucket_->Get(manifest_key, &manifest));
  const std::vector<std::string> chunks = ChunkKeys(*repo, id);
  ASSERT_EQ(chunks.size(), 3u);
  std::vector<uint8_t> chunk_bytes;
  ASSERT_TRUE(lock_bucket_->Get(chunks[0], &chunk_bytes));

  const int64_t now = Now();
  const int64_t day = now + 24 * 3600;
  PointLock lock = repo->points().SetLock(id, day, "one day", now);
  ASSERT_EQ(lock.locked_until, day);

  // Every object of the point and every chunk it references is retained
  // until the lock's end, in COMPLIANCE mode (the default).
  for (const auto& key : chunks) EXPECT_EQ(RetainedUntil(key), day) << key;
  EXPECT_EQ(RetainedUntil(manifest_key), day);
  EXPECT_EQ(RetainedUntil(prefix_ + "points/" + id + "/lock.json"), day);
  RestorePointManifest m = repo->points().Load(id);
  EXPECT_EQ(RetainedUntil(prefix_ + "points/" + id + "/" + m.disks[0].index_file), day);
  std::optional<ObjectRetention> r = lock_bucket_->GetRetention(chunks[0]);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->mode, RetentionMode::kCompliance);

  // Someone with the keys deletes the manifest and a chunk: a delete marker
  // each, the locked versions stay.
  lock_bucket_->Delete(manifest_key);
  lock_bucket_->Delete(chunks[0]);
  std::string text;
  EXPECT_FALSE(lock_bucket_->Get(manifest_key, &text)) << "a plain GET sees the delete marker";
  EXPECT_TRUE(repo->points().List().empty());
  for (const std::string& key : {manifest_key, chunks[0]}) {
    std::vector<ObjectVersion> versions = Versions(*lock_bucket_, key);
    ASSERT_EQ(versions.size(), 2u) << key;
    EXPECT_TRUE(versions[0].delete_marker && versions[0].is_latest) << key;
    ASSERT_FALSE(versions[1].delete_marker) << key;
    const std::string version = versions[1].version_id;
    ASSERT_FALSE(version.empty());
    // The locked version is still readable...
    Bucket::Reply got = lock_bucket_->Request("GET", key, {{"versionId", version}}, NoBody());
    ASSERT_EQ(got.status, 200) << key << ": " << got.body;
    if (key == manifest_key) EXPECT_EQ(got.body, manifest);
    else EXPECT_EQ(got.body, std::string(chunk_bytes.begin(), chunk_bytes.end()));
    // ...and cannot be deleted for good.
    Bucket::Reply del = lock_bucket_->Request("DELETE", key, {{"versionId", version}}, NoBody());
    EXPECT_EQ(del.status, 403) << key << ": " << del.body;
    EXPECT_NE(del.body.find("AccessDenied"), std::string::npos) << del.body;
    // Nor can its retention be shortened.
    EXPECT_THROW(lock_bucket_->SetRetention(key, RetentionMode::kCompliance, now + 60, version), Error) << key;
    // Removing the delete marker makes the locked version current again
    // (docs/object-storage.md, "Object Lock": bringing a point back).
    Bucket::Reply undelete =
        lock_bucket_->Request("DELETE", key, {{"versionId", versions[0].version_id}}, NoBody());
    EXPECT_EQ(undelete.status / 100, 2) << key << ": " << undelete.body;
  }
  EXPECT_EQ(repo->points().List(), (std::vector<std::string>{id}));
  EXPECT_EQ(repo->points().Load(id).id, id);
  std::vector<uint8_t> again;
  ASSERT_TRUE(lock_bucket_->Get(chunks[0], &again));
  EXPECT_EQ(again, chunk_bytes);
  EXPECT_THROW(repo->points().Remove(id, now), Error) << "still locked";
}

TEST_F(ObjectLockTest, ALaterLockExtendsRetentionAndSharedChunksKeepTheLatestEnd) {
  auto repo = LockedRepository();
  const std::string first = test::WriteTestPoint(*repo, {"shared-1", "only-first"});
  const std::string second = test::WriteTestPoint(*repo, {"shared-1", "only-second"});
  const std::vector<std::string> a = ChunkKeys(*repo, first);
  const std::vector<std::string> b = ChunkKeys(*repo, second);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  std::string shared;
  for (const auto& k : a) {
    if (std::find(b.begin(), b.end(), k) != b.end()) shared = k;
  }
  ASSERT_FALSE(shared.empty());
  const std::string only_second = b[0] == shared ? b[1] : b[0];

  const int64_t now = Now();
  repo->points().SetLock(first, now + 2 * 24 * 3600, "long", now);
  EXPECT_EQ(RetainedUntil(shared), now + 2 * 24 * 3600);
  // A shorter lock of another point: its own chunk gets its end, the shared
  // chunk keeps the later one.
  repo->points().SetLock(second, now + 3600, "short", now);
  EXPECT_EQ(RetainedUntil(shared), now + 2 * 24 * 3600);
  EXPECT_EQ(RetainedUntil(only_second), now + 3600);
  // Extending the second past the first moves both.
  repo->points().SetLock(second, now + 3 * 24 * 3600, "longer", now);
  EXPECT_EQ(RetainedUntil(shared), now + 3 * 24 * 3600);
  EXPECT_EQ(RetainedUntil(only_second), now + 3 * 24 * 3600);
  EXPECT_EQ(RetainedUntil(prefix_ + "points/" + second + "/manifest.json"), now + 3 * 24 * 3600);
  EXPECT_EQ(repo->points().ReadLock(second)->reason, "longer");
  // The first point's own objects keep their end.
  EXPECT_EQ(RetainedUntil(prefix_ + "points/" + first + "/manifest.json"), now + 2 * 24 * 3600);
}

// What the store itself enforces, and what it asks of a PUT ?retention.
TEST_F(ObjectLockTest, TheStoreRefusesToShortenRetention) {
  auto repo = LockedRepository();
  const std::string key = prefix_ + "probe";
  lock_bucket_->Put(key, std::string("probe"));
  const int64_t now = Now();
  lock_bucket_->SetRetention(key, RetentionMode::kCompliance, now + 7200);
  EXPECT_EQ(RetainedUntil(key), now + 7200);
  try {
    lock_bucket_->SetRetention(key, RetentionMode::kCompliance, now + 3600);
    FAIL() << "the store shortened a COMPLIANCE retention";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kEnvironment) << e.what();
    EXPECT_NE(std::string(e.what()).find("403"), std::string::npos) << e.what();
  }
  EXPECT_THROW(lock_bucket_->SetRetention(key, RetentionMode::kGovernance, now + 9000), Error)
      << "COMPLIANCE cannot become GOVERNANCE";
  EXPECT_EQ(RetainedUntil(key), now + 7200);
  // The same date again is accepted (a lock set twice), a later one too.
  lock_bucket_->SetRetention(key, RetentionMode::kCompliance, now + 7200);
  lock_bucket_->SetRetention(key, RetentionMode::kCompliance, now + 9000);
  EXPECT_EQ(RetainedUntil(key), now + 9000);
  // S3 requires Content-MD5 (or a checksum) on this call; what this store
  // does without it is reported, not required.
  const std::string body = "<Retention><Mode>COMPLIANCE</Mode><RetainUntilDate>" + FormatRfc3339(now + 9600) +
                           "</RetainUntilDate></Retention>";
  Bucket::Reply bare = lock_bucket_->Request(
      "PUT", key, {{"retention", ""}},
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
  std::cout << "PUT ?retention without Content-MD5: HTTP " << bare.status << " " << bare.body.substr(0, 200) << "\n";
  // A wrong Content-MD5 is refused.
  Bucket::Reply wrong = lock_bucket_->Request(
      "PUT", key, {{"retention", ""}},
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()),
      {{"Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="}});
  std::cout << "PUT ?retention with a wrong Content-MD5: HTTP " << wrong.status << " " << wrong.body.substr(0, 200)
            << "\n";
}

TEST_F(ObjectLockTest, GovernanceModeComesFromTheLocation) {
  auto repo = LockedRepository("&object-lock=on&lock-mode=governance");
  const std::string id = test::WriteTestPoint(*repo, {"governed"});
  const int64_t now = Now();
  repo->points().SetLock(id, now + 3600, "", now);
  std::optional<ObjectRetention> r = lock_bucket_->GetRetention(prefix_ + "points/" + id + "/manifest.json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->mode, RetentionMode::kGovernance);
  EXPECT_EQ(r->retain_until, now + 3600);
  // Without the bypass header, not even governance retention lets a version go.
  const std::string key = ChunkKeys(*repo, id)[0];
  std::vector<ObjectVersion> versions = Versions(*lock_bucket_, key);
  ASSERT_EQ(versions.size(), 1u);
  Bucket::Reply del = lock_bucket_->Request("DELETE", key, {{"versionId", versions[0].version_id}}, NoBody());
  EXPECT_EQ(del.status, 403) << del.body;
}

TEST_F(ObjectLockTest, WithoutObjectLockALockIsTheRecordAlone) {
  RepositoryConfig config;
  config.chunk_size = 64 << 10;
  // object-lock=on refuses a bucket that has none.
  try {
    InitObjectRepository(Url(options_->bucket, "&object-lock=on"), config);
    FAIL() << "object-lock=on accepted a bucket without Object Lock";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    EXPECT_NE(std::string(e.what()).find("without S3 Object Lock"), std::string::npos) << e.what();
  }
  InitObjectRepository(Url(options_->bucket), config);
  auto repo = OpenObjectRepository(Url(options_->bucket));
  const std::string id = test::WriteTestPoint(*repo, {"plain"});
  const int64_t now = Now();
  repo->points().SetLock(id, now + 3600, "records only", now);
  EXPECT_EQ(repo->points().ReadLock(id)->reason, "records only");
  EXPECT_THROW(repo->points().Remove(id, now), Error);
  // The chunk has no retention and a raw DELETE takes it.
  ObjectChunkStore keys(*plain_bucket_, prefix_);
  auto index = repo->points().OpenIndex(id, repo->points().Load(id).disks[0]);
  const std::string chunk = keys.KeyFor(index->At(0));
  EXPECT_FALSE(plain_bucket_->GetRetention(chunk).has_value());
  // The same repository opened with object-lock=on refuses to lock.
  auto strict = OpenObjectRepository(Url(options_->bucket, "&object-lock=on"));
  try {
    strict->points().SetLock(id, now + 7200, "", now);
    FAIL() << "locked without Object Lock though the location asks for it";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kEnvironment) << e.what();
    EXPECT_NE(std::string(e.what()).find("object-lock=on"), std::string::npos) << e.what();
  }
  EXPECT_EQ(repo->points().ReadLock(id)->locked_until, now + 3600) << "the refused lock changed nothing";
  repo->points().Remove(id, now + 7200);
  EXPECT_TRUE(repo->points().List().empty());
}

TEST(ObjectLockLocation, BadLockParametersAreRefused) {
  ::setenv("FERRY_S3_ACCESS_KEY", "a", 1);
  ::setenv("FERRY_S3_SECRET_KEY", "b", 1);
  EXPECT_THROW(ParseObjectLocation("s3://b-1/x?object-lock=maybe"), Error);
  EXPECT_THROW(ParseObjectLocation("s3://b-1/x?lock-mode=sideways"), Error);
  ObjectLocation loc = ParseObjectLocation("s3://b-1/x?object-lock=on&lock-mode=governance");
  EXPECT_TRUE(loc.lock.required);
  EXPECT_EQ(loc.lock.mode, RetentionMode::kGovernance);
  loc = ParseObjectLocation("s3://b-1/x");
  EXPECT_FALSE(loc.lock.required);
  EXPECT_EQ(loc.lock.mode, RetentionMode::kCompliance);
}

}  // namespace
}  // namespace ferry::s3
