// Copies between two local repositories (ferry/common/copy.h); the bucket
// cases are integration.test-copy's.
#include "ferry/common/copy.h"

#include <gtest/gtest.h>

#include "ferry/common/error.h"
#include "test_points.h"

namespace ferry {
namespace {

class CopyTest : public test::TempRepositoryTest {
 protected:
  void SetUp() override {
    test::TempRepositoryTest::SetUp();
    target_dir_ = root_ + "/target";
    RepositoryConfig config;
    config.chunk_size = 64 << 10;
    Repository::Init(target_dir_, config);
    target_ = Repository::Open(target_dir_);
  }
  void TearDown() override {
    target_.reset();
    test::TempRepositoryTest::TearDown();
  }
  size_t TargetChunks() { return CountFiles(target_dir_ + "/chunks"); }
  static size_t CountFiles(const std::string& dir) {
    size_t n = 0;
    for (const auto& sub : ListDirectory(dir)) n += ListDirectory(dir + "/" + sub).size();
    return n;
  }
  std::string target_dir_;
  std::unique_ptr<Repository> target_;
};

TEST_F(CopyTest, OnlyTheChunksTheTargetLacksTravelAndTheCopyIsWhole) {
  const std::string a = test::WriteTestPoint(*repo_, {"one", "two", "three"});
  CopyReport first = CopyPoints(*repo_, *target_, {});
  ASSERT_EQ(first.points.size(), 1u);
  EXPECT_EQ(first.points[0].outcome, "copied");
  EXPECT_EQ(first.chunks_sent, 3u);
  EXPECT_EQ(TargetChunks(), 3u);
  RestorePointManifest src = repo_->points().Load(a), dst = target_->points().Load(a);
  ASSERT_EQ(dst.disks.size(), 1u);
  EXPECT_EQ(dst.disks[0].index_sha256, src.disks[0].index_sha256);
  EXPECT_EQ(dst.vm.name, src.vm.name);
  EXPECT_EQ(dst.started_at, src.started_at);

  // A second point sharing two chunks: one travels.
  const std::string b = test::WriteTestPoint(*repo_, {"one", "two", "four"});
  CopyReport second = CopyPoints(*repo_, *target_, {});
  ASSERT_EQ(second.points.size(), 2u);
  EXPECT_EQ(second.points[0].outcome, "present");
  EXPECT_EQ(second.points[1].outcome, "copied");
  EXPECT_EQ(second.chunks_sent, 1u);
  EXPECT_EQ(second.chunks_present, 2u);
  EXPECT_EQ(TargetChunks(), 4u);
  EXPECT_TRUE(target_->points().ListStaged().empty());
}

TEST_F(CopyTest, ADryRunCountsAndSendsNothing) {
  test::WriteTestPoint(*repo_, {"one", "two"});
  CopyOptions options;
  options.dry_run = true;
  CopyReport r = CopyPoints(*repo_, *target_, options);
  ASSERT_EQ(r.points.size(), 1u);
  EXPECT_EQ(r.points[0].outcome, "would copy");
  EXPECT_EQ(r.chunks_sent, 2u);
  EXPECT_EQ(TargetChunks(), 0u);
  EXPECT_TRUE(target_->points().List().empty());
  EXPECT_TRUE(target_->points().ListStaged().empty());
}

TEST_F(CopyTest, ADamagedSourceChunkIsQuarantinedAndItsPointNotCopied) {
  const std::string a = test::WriteTestPoint(*repo_, {"good", "damaged"});
  const std::string b = test::WriteTestPoint(*repo_, {"other"});
  RestorePointManifest m = repo_->points().Load(a);
  Digest victim = repo_->points().OpenIndex(a, m.disks[0])->At(1);
  const std::string path = dir_ + "/chunks/" + victim.Hex().substr(0, 3) + "/" + victim.Hex();
  std::string bytes = ReadWholeFile(path);
  bytes[bytes.size() - 1] ^= 1;
  WriteFileAtomically(path, bytes);

  CopyReport r = CopyPoints(*repo_, *target_, {});
  ASSERT_EQ(r.points.size(), 2u);
  EXPECT_EQ(r.points[0].outcome, "failed");
  EXPECT_NE(r.points[0].error.find(victim.Hex()), std::string::npos) << r.points[0].error;
  EXPECT_EQ(r.points[1].outcome, "copied") << "one bad point stops no other";
  EXPECT_EQ(r.failed(), 1u);
  EXPECT_EQ(target_->points().List(), (std::vector<std::string>{b}));
  EXPECT_TRUE(target_->points().ListStaged().empty()) << "the failed copy's staging is discarded";
  EXPECT_FALSE(repo_->chunks().Contains(victim)) << "quarantined at the source";
}

TEST_F(CopyTest, SelectionByPointAndVmAndNoCopyIntoItself) {
  const std::string a = test::WriteTestPoint(*repo_, {"a"}, "2026-11-30T10:00:00Z", "vm-a");
  const std::string b = test::WriteTestPoint(*repo_, {"b"}, "2026-11-30T10:00:00Z", "vm-b");
  CopyOptions by_vm;
  by_vm.vm = "vm-b";
  EXPECT_EQ(CopyPoints(*repo_, *target_, by_vm).points.size(), 1u);
  EXPECT_EQ(target_->points().List(), (std::vector<std::string>{b}));
  CopyOptions by_id;
  by_id.points = {a};
  EXPECT_EQ(CopyPoints(*repo_, *target_, by_id).points[0].outcome, "copied");
  try {
    CopyPoints(*repo_, *repo_, {});
    FAIL() << "copied into itself";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
  }
}

}  // namespace
}  // namespace ferry
