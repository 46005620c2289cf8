// A repository in a bucket, end to end through the Repository interface:
// init and open by URL, staging and commit, leases, locks, removal, checks.
// Against a real store (integration.test-s3-client runs it with a one-node
// Ceph RGW); skipped without FERRY_TEST_S3_ENDPOINT.
#include "ferry/s3/object_repository.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include "../test_points.h"
#include "ferry/common/error.h"
#include "ferry/common/point_records.h"
#include "ferry/s3/object_chunk_store.h"
#include "s3_test_env.h"

namespace ferry::s3 {
namespace {

class ObjectRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_ = RealStoreOptions();
    if (!options_) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set (integration.test-s3-client sets it)";
    ::setenv("FERRY_S3_ACCESS_KEY", options_->credentials.access_key.c_str(), 1);
    ::setenv("FERRY_S3_SECRET_KEY", options_->credentials.secret_key.c_str(), 1);
    prefix_ = UniquePrefix();
    url_ = "s3://" + options_->bucket + "/" + prefix_ + "?endpoint=" + options_->endpoint + "&region=" + options_->region;
    RepositoryConfig config;
    config.chunk_size = 64 << 10;
    InitObjectRepository(url_, config);
    repo_ = OpenObjectRepository(url_);
    bucket_ = std::make_unique<Bucket>(*options_);
  }

  std::vector<std::string> Keys(const std::string& under) {
    std::vector<std::string> keys;
    bucket_->List(prefix_ + under, [&](const ObjectInfo& o) { keys.push_back(o.key.substr(prefix_.size())); });
    return keys;
  }

  std::optional<BucketOptions> options_;
  std::string prefix_, url_;
  std::unique_ptr<Repository> repo_;
  std::unique_ptr<Bucket> bucket_;
};

TEST_F(ObjectRepositoryTest, InitOpensByUrlAndRefusesASecondInit) {
  EXPECT_EQ(repo_->config().chunk_size, 64u << 10);
  EXPECT_EQ(repo_->location(), url_);
  EXPECT_TRUE(repo_->chunks().remote());
  try {
    InitObjectRepository(url_, RepositoryConfig{});
    FAIL() << "second init";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("objects exist under its prefix"), std::string::npos) << e.what();
  }
  try {
    OpenObjectRepository("s3://" + options_->bucket + "/" + prefix_ + "nothing-here?endpoint=" + options_->endpoint +
                         "&region=" + options_->region);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("ferry init"), std::string::npos) << e.what();
  }
}

TEST_F(ObjectRepositoryTest, BadLocationsAreRefusedNamingTheProblem) {
  auto message = [](const std::string& url) {
    try {
      ParseObjectLocation(url);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message("s3://b-1/x?secret_key=abc").find("secrets do not go in the URL"), std::string::npos);
  EXPECT_EQ(message("s3://b-1/x?secret_key=abc").find("abc"), std::string::npos);
  EXPECT_NE(message("s3://b-1/x?colour=blue").find("unknown parameter \"colour\""), std::string::npos);
  EXPECT_NE(message("s3://b-1/x?style=sideways").find("style must be path or virtual"), std::string::npos);
  EXPECT_NE(message("http://b-1/x").find("not an s3:// URL"), std::string::npos);
  EXPECT_NE(message("s3://b-1/x?credentials=/nonexistent/creds").find("/nonexistent/creds"), std::string::npos);
}

TEST_F(ObjectRepositoryTest, APointIsVisibleOnlyOnceItsManifestIsWritten) {
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm1", "", "qemu"};
  h.chain = "default";
  h.disks = {"disk0"};
  auto staging = repo_->points().Stage(h);
  EXPECT_EQ(repo_->points().ListStaged(), (std::vector<std::string>{h.id}));
  EXPECT_TRUE(repo_->points().List().empty());
  try {
    repo_->points().Commit(h.id);
    FAIL() << "committed without its disk";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("disk0"), std::string::npos) << e.what();
  }
  repo_->points().Discard(h.id);
  EXPECT_TRUE(repo_->points().ListStaged().empty());
  EXPECT_TRUE(Keys("staging/").empty());

  const std::string id = test::WriteTestPoint(*repo_, {"alpha", "beta", "gamma"});
  EXPECT_EQ(repo_->points().List(), (std::vector<std::string>{id}));
  EXPECT_TRUE(repo_->points().ListStaged().empty());
  EXPECT_TRUE(Keys("staging/").empty()) << "staging records cleaned at commit";
  RestorePointManifest m = repo_->points().Load(id);
  ASSERT_EQ(m.disks.size(), 1u);
  std::unique_ptr<FixedIndexReader> index = repo_->points().OpenIndex(id, m.disks[0]);
  EXPECT_EQ(index->chunk_count(), 3u);
  for (uint64_t i = 0; i < 3; ++i) EXPECT_TRUE(repo_->chunks().Contains(index->At(i)));

  // Reopened (a fresh listing of chunks), the same.
  auto again = OpenObjectRepository(url_);
  EXPECT_EQ(again->points().LoadAll().points.size(), 1u);
  EXPECT_TRUE(again->chunks().Contains(index->At(1)));
}

TEST_F(ObjectRepositoryTest, ACommitReferencingAMissingChunkIsRefused) {
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm1", "", "qemu"};
  h.disks = {"disk0"};
  auto staging = repo_->points().Stage(h);
  auto w = repo_->points().WriteDisk(h.id, "disk0");
  DiskRecord rec;
  rec.size = 64 << 10;
  rec.chunk_size = 64 << 10;
  rec.source_format = "raw";
  FixedIndexWriter iw(w->index_path(), rec.size, rec.chunk_size);
  std::string plain(64 << 10, 'q');
  iw.Set(0, Sha256(plain.data(), plain.size()));  // never stored
  rec.index_sha256 = iw.Finish();
  w->Finish(rec);
  try {
    repo_->points().Commit(h.id);
    FAIL() << "committed a point whose chunk is missing";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRetryable) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing from the store"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(repo_->points().List().empty());
}

TEST_F(ObjectRepositoryTest, LeasesAndLocksKeepAPointAndRemovalTakesItWhole) {
  const std::string id = test::WriteTestPoint(*repo_, {"one", "two"});
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  {
    auto lease = repo_->points().Lease(id);
    try {
      repo_->points().Remove(id, now);
      FAIL() << "removed a leased point";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kRetryable) << e.what();
    }
    EXPECT_EQ(repo_->points().List().size(), 1u);
  }
  PointLock lock = repo_->points().SetLock(id, now + 3600, "legal hold", now);
  EXPECT_EQ(lock.reason, "legal hold");
  EXPECT_THROW(repo_->points().SetLock(id, now + 60, "", now), Error) << "a lock is never shortened";
  try {
    repo_->points().Remove(id, now);
    FAIL() << "removed a locked point";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("legal hold"), std::string::npos) << e.what();
  }
  PointCheck check;
  check.point = id;
  check.checked_at = now;
  check.verified_since = now;
  repo_->points().RecordCheck(check);
  EXPECT_EQ(repo_->points().LoadChecks().count(id), 1u);
  // After the lock's end (as the caller's clock says), the removal goes through.
  repo_->points().Remove(id, now + 7200);
  EXPECT_TRUE(repo_->points().List().empty());
  EXPECT_THROW(repo_->points().Load(id), Error);
  EXPECT_TRUE(Keys("points/").empty()) << "every object of the point went";
  EXPECT_TRUE(Keys("leases/").empty());
}

TEST_F(ObjectRepositoryTest, ExpiredStagingIsSweptWithItsUploads) {
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm1", "", "qemu"};
  h.disks = {"disk0"};
  h.expires_at = static_cast<int64_t>(std::time(nullptr)) - 1;
  repo_->points().Stage(h);
  auto w = repo_->points().WriteDisk(h.id, "disk0");
  DiskRecord rec;
  rec.size = 0;
  rec.chunk_size = 64 << 10;
  FixedIndexWriter iw(w->index_path(), 0, rec.chunk_size);
  rec.index_sha256 = iw.Finish();
  w->Finish(rec);
  EXPECT_FALSE(Keys("points/").empty());
  EXPECT_EQ(repo_->points().RemoveExpired(), (std::vector<std::string>{h.id}));
  EXPECT_TRUE(Keys("points/").empty());
  EXPECT_TRUE(Keys("staging/").empty());
}

}  // namespace
}  // namespace ferry::s3
