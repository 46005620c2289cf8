// Backup and restore round trips through the real pipeline, with a sparse
// local file as the source (the BlockReader for local devices).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <random>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/verify.h"
#include "ferry/worker/block_reader.h"
#include "ferry/worker/disk_backup.h"
#include "ferry/worker/disk_restore.h"

namespace ferry::worker {
namespace {

constexpr uint32_t kChunk = 64 << 10;

class DiskBackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ferry-backup-test-XXXXXX";
    root_ = ::mkdtemp(tmpl);
    RepositoryConfig config;
    config.chunk_size = kChunk;
    Repository::Init(root_ + "/repo", config);
    repo_ = Repository::Open(root_ + "/repo");
  }
  void TearDown() override { RemoveTree(root_); }

  void WriteAt(const std::string& path, uint64_t offset, const std::vector<uint8_t>& data) {
    UniqueFd fd = OpenOrThrow(path, O_WRONLY | O_CREAT, 0644);
    PwriteAll(fd.get(), data.data(), data.size(), offset, path);
  }

  // Backs up `source` as a one-disk point; returns the point id.
  std::string Backup(const std::string& source, DiskBackupResult* result,
                     const DiskBackupOptions& options = {}) {
    auto reader = OpenFileReader(source);
    auto point = repo_->BeginPoint();
    DiskRecord rec;
    rec.name = "disk0";
    rec.size = reader->size();
    rec.chunk_size = kChunk;
    rec.source_format = "raw";
    rec.index_file = point->IndexFileName(0);
    DiskBackupResult r = BackupDisk(*repo_, *reader, point->StagingPath(rec.index_file), options, nullptr);
    rec.index_sha256 = r.index_sha256;
    RestorePointManifest m;
    m.vm = {"vm", "", "qemu"};
    m.disks.push_back(rec);
    std::string id = point->id();
    point->Commit(m);
    if (result) *result = r;
    return id;
  }

  std::string root_;
  std::unique_ptr<Repository> repo_;
};

std::vector<uint8_t> RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST_F(DiskBackupTest, SparseDiskRoundTripsBitExactAndThin) {
  std::string src = root_ + "/src.raw";
  const uint64_t size = 40 * kChunk + 4096 + 512;  // partial last chunk
  UniqueFd fd = OpenOrThrow(src, O_WRONLY | O_CREAT, 0644);
  ASSERT_EQ(::ftruncate(fd.get(), size), 0);
  auto a = RandomBytes(kChunk, 1);
  WriteAt(src, 0, a);                                        // chunk 0
  WriteAt(src, 5 * kChunk, a);                               // chunk 5: duplicate of chunk 0
  WriteAt(src, 9 * kChunk + 100, RandomBytes(3 * kChunk, 2));  // unaligned, crosses chunks
  WriteAt(src, 20 * kChunk, std::vector<uint8_t>(kChunk, 0));  // allocated but all zeros
  WriteAt(src, size - 512, std::vector<uint8_t>(512, 0xee));  // the last sector

  DiskBackupResult r;
  std::string id = Backup(src, &r);
  EXPECT_EQ(r.chunks, 41u);
  EXPECT_EQ(r.new_chunks, 6u);     // chunks 0, 9, 10, 11, 12 and 40 (the last sector)
  EXPECT_EQ(r.reused_chunks, 1u);  // chunk 5 duplicates chunk 0
  EXPECT_EQ(r.zero_chunks, 34u);   // holes, and chunk 20 (allocated zeros)
  EXPECT_LT(r.read_bytes, 8u * kChunk);  // holes were not read

  std::string out = root_ + "/out.raw";
  DiskRestoreResult rr = RestoreDisk(*repo_, id, "disk0", out, ImageFormat::kRaw, {}, nullptr);
  EXPECT_EQ(rr.size, size);
  EXPECT_EQ(ReadWholeFile(out), ReadWholeFile(src));
  struct stat st;
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 7u * kChunk);  // thin output

  EXPECT_TRUE(VerifyRepository(*repo_, std::nullopt, 2, nullptr).clean());
}

// With one worker, chunk 0 is written before its copies come up, so they are
// read back from the image (the duplicate path) rather than fetched again.
TEST_F(DiskBackupTest, DuplicateChunksReadBackBitExactAndThin) {
  std::string src = root_ + "/src.raw";
  const uint64_t size = 12 * kChunk;
  UniqueFd fd = OpenOrThrow(src, O_WRONLY | O_CREAT, 0644);
  ASSERT_EQ(::ftruncate(fd.get(), size), 0);
  auto a = RandomBytes(kChunk, 4);
  std::fill(a.begin() + 8192, a.begin() + 12288, 0);  // a zero block inside
  std::fill(a.end() - 16384, a.end(), 0);             // and a zero tail
  for (uint64_t c : {0, 3, 7, 11}) WriteAt(src, c * kChunk, a);
  WriteAt(src, 5 * kChunk, RandomBytes(kChunk, 5));
  std::string id = Backup(src, nullptr);

  for (unsigned threads : {1u, 0u}) {
    std::string out = root_ + "/out-" + std::to_string(threads) + ".raw";
    DiskRestoreOptions options;
    options.threads = threads;
    DiskRestoreResult rr =
        RestoreDisk(*repo_, id, "disk0", out, ImageFormat::kRaw, options, nullptr);
    EXPECT_EQ(ReadWholeFile(out), ReadWholeFile(src)) << threads << " threads";
    EXPECT_EQ(rr.bytes_written, 4 * (kChunk - 20480) + kChunk);
    struct stat st;
    ASSERT_EQ(::stat(out.c_str(), &st), 0);
    // The zero blocks inside the chunks stay holes (plus some slack for metadata).
    EXPECT_LE(static_cast<uint64_t>(st.st_blocks) * 512, rr.bytes_written + 16384)
        << threads << " threads";
  }
}

TEST_F(DiskBackupTest, SecondBackupStoresNothingNew) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(10 * kChunk, 3));
  DiskBackupResult first, second;
  Backup(src, &first);
  Backup(src, &second);
  EXPECT_EQ(first.new_chunks, 10u);
  EXPECT_EQ(second.new_chunks, 0u);
  EXPECT_EQ(second.reused_chunks, 10u);
  EXPECT_EQ(repo_->ListPoints().size(), 2u);
}

TEST_F(DiskBackupTest, CancelStopsWithInterrupted) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(8 * kChunk, 4));
  std::atomic<bool> cancel{true};
  DiskBackupOptions options;
  options.cancel = &cancel;
  try {
    Backup(src, nullptr, options);
    FAIL() << "backup was not interrupted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInterrupted);
  }
  EXPECT_TRUE(repo_->ListPoints().empty());
}

TEST_F(DiskBackupTest, RestoreRefusesExistingTargetAndUnknownDisk) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(kChunk, 5));
  std::string id = Backup(src, nullptr);
  std::string out = root_ + "/exists.raw";
  WriteAt(out, 0, {1, 2, 3});
  try {
    RestoreDisk(*repo_, id, "disk0", out, ImageFormat::kRaw, {}, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
  }
  EXPECT_EQ(ReadWholeFile(out).size(), 3u);  // untouched
  try {
    RestoreDisk(*repo_, id, "nope", root_ + "/x.raw", ImageFormat::kRaw, {}, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("disk0"), std::string::npos);  // lists what exists
  }
  EXPECT_THROW(ParseImageFormat("vmdk"), Error);
}

TEST_F(DiskBackupTest, DamagedChunkFailsRestoreAndLeavesNoTarget) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(2 * kChunk, 6));
  std::string id = Backup(src, nullptr);
  RestorePointManifest m = repo_->LoadPoint(id);
  FixedIndexReader index(repo_->IndexPath(id, m.disks[0]), nullptr);
  std::string chunk = repo_->chunks().PathFor(index.At(1));
  {
    UniqueFd fd = OpenOrThrow(chunk, O_WRONLY);
    uint8_t x = 0x5a;
    PwriteAll(fd.get(), &x, 1, 100, chunk);
  }
  std::string out = root_ + "/out.raw";
  try {
    RestoreDisk(*repo_, id, "disk0", out, ImageFormat::kRaw, {}, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
  }
  EXPECT_FALSE(PathExists(out));
  VerifyReport report = VerifyRepository(*repo_, std::nullopt, 2, nullptr);
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_EQ(report.problems[0].point, id);
  EXPECT_EQ(report.problems[0].disk, "disk0");
  EXPECT_EQ(report.problems[0].chunk, 1);
  EXPECT_EQ(report.problems[0].offset, kChunk);
}

}  // namespace
}  // namespace ferry::worker
