#include "ferry/common/repository.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/fixed_index.h"

namespace ferry {
namespace {

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ferry-repo-test-XXXXXX";
    root_ = ::mkdtemp(tmpl);
    dir_ = root_ + "/repo";
    RepositoryConfig config;
    config.chunk_size = 64 << 10;
    Repository::Init(dir_, config);
  }
  void TearDown() override { RemoveTree(root_); }

  // Writes a one-disk point whose single chunk holds `text`.
  std::string WritePoint(Repository& repo, const std::string& text) {
    auto w = repo.BeginPoint();
    std::vector<uint8_t> plain(text.begin(), text.end());
    Digest d = Sha256(plain.data(), plain.size());
    ChunkEncoder enc(1);
    std::vector<uint8_t> encoded;
    enc.Encode(plain, &encoded);
    repo.chunks().Insert(d, encoded);
    DiskRecord disk;
    disk.name = "disk0";
    disk.size = plain.size();
    disk.chunk_size = repo.config().chunk_size;
    disk.source_format = "raw";
    disk.index_file = w->IndexFileName(0);
    FixedIndexWriter iw(w->StagingPath(disk.index_file), disk.size, disk.chunk_size);
    iw.Set(0, d);
    disk.index_sha256 = iw.Finish();
    RestorePointManifest m;
    m.vm = {"vm", "uuid", "qemu"};
    m.disks.push_back(disk);
    std::string id = w->id();
    w->Commit(m);
    return id;
  }

  std::string root_, dir_;
};

TEST_F(RepositoryTest, InitOpenAndConfig) {
  auto repo = Repository::Open(dir_);
  EXPECT_EQ(repo->config().chunk_size, 64u << 10);
  EXPECT_EQ(repo->config().id.size(), 32u);
  EXPECT_TRUE(repo->ListPoints().empty());
}

TEST_F(RepositoryTest, InitRefusesNonEmptyDirectoryAndBadChunkSize) {
  try {
    Repository::Init(dir_, RepositoryConfig{});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("not empty"), std::string::npos);
  }
  RepositoryConfig bad;
  bad.chunk_size = 3000;
  EXPECT_THROW(Repository::Init(root_ + "/other", bad), Error);
  EXPECT_FALSE(PathExists(root_ + "/other/ferry-repository.json"));
}

TEST_F(RepositoryTest, OpenRejectsWhatIsNotARepository) {
  try {
    Repository::Open(root_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("not a Ferry repository"), std::string::npos);
  }
  try {
    Repository::Open(root_ + "/missing");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
  }
  WriteFileAtomically(dir_ + "/ferry-repository.json", "{\"format\":\"ferry-repository-v7\"}");
  try {
    Repository::Open(dir_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("v7"), std::string::npos);
  }
}

TEST_F(RepositoryTest, PointIsVisibleOnlyAfterCommit) {
  auto repo = Repository::Open(dir_);
  {
    auto w = repo->BeginPoint();
    EXPECT_TRUE(repo->ListPoints().empty());
    // Destroyed uncommitted: nothing remains.
  }
  EXPECT_TRUE(repo->ListPoints().empty());
  std::string id = WritePoint(*repo, "hello");
  ASSERT_EQ(repo->ListPoints(), std::vector<std::string>{id});
  RestorePointManifest m = repo->LoadPoint(id);
  EXPECT_EQ(m.id, id);
  ASSERT_EQ(m.disks.size(), 1u);
  FixedIndexReader r(repo->IndexPath(id, m.disks[0]), &m.disks[0].index_sha256);
  EXPECT_EQ(r.chunk_count(), 1u);
  try {
    repo->LoadPoint("20990101T000000Z-000000");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
  }
  EXPECT_THROW(repo->LoadPoint("../../etc"), Error);
}

TEST_F(RepositoryTest, DeadWritersStagingIsRemovedLiveOneIsKept) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto repo = Repository::Open(dir_);
    auto w = repo->BeginPoint();
    ::_exit(0);  // dies holding an uncommitted point
  }
  int status;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  auto repo = Repository::Open(dir_);
  auto live = repo->BeginPoint();  // sweeps the dead writer's staging
  std::vector<std::string> left;
  for (auto& e : std::filesystem::directory_iterator(dir_ + "/staging")) {
    left.push_back(e.path().filename());
  }
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{live->id(), live->id() + ".lock"}));
  auto second = repo->BeginPoint();  // must not remove the live writer's work
  EXPECT_TRUE(PathExists(dir_ + "/staging/" + live->id()));
}

TEST_F(RepositoryTest, ConcurrentInsertsOfOneChunkLeaveOneValidFile) {
  auto repo = Repository::Open(dir_);
  std::vector<uint8_t> plain(50000, 'q');
  Digest d = Sha256(plain.data(), plain.size());
  ChunkEncoder enc(1);
  std::vector<uint8_t> encoded;
  enc.Encode(plain, &encoded);
  std::atomic<int> inserted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) inserted += repo->chunks().Insert(d, encoded) ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(inserted.load(), 1);
  std::vector<uint8_t> back, out;
  repo->chunks().ReadEncoded(d, &back);
  ChunkDecoder dec;
  dec.Decode(back, &d, "c", &out);
  EXPECT_EQ(out, plain);
  // Nothing but the chunk itself in its directory (no temp files).
  std::string prefix_dir = dir_ + "/chunks/" + d.Hex().substr(0, 3);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(prefix_dir), {}), 1);
}

TEST_F(RepositoryTest, MissingChunkIsCorrupt) {
  auto repo = Repository::Open(dir_);
  std::vector<uint8_t> buf;
  try {
    repo->chunks().ReadEncoded(Sha256("nope", 4), &buf);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);
  }
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST_F(RepositoryTest, PointIdsSortInCreationOrderWithinOneSecond) {
  auto repo = Repository::Open(dir_);
  std::vector<std::string> made;
  for (int i = 0; i < 20; ++i) made.push_back(WritePoint(*repo, "p" + std::to_string(i)));
  EXPECT_EQ(repo->ListPoints(), made);
}

}  // namespace
}  // namespace ferry
