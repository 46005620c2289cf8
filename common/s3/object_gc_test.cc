// Garbage collection and space accounting of a repository in a bucket
// (object_gc.h), against the in-memory store of s3_fake_store.h: what is
// swept, what is kept, and the writer lease / GC record protocol under the
// interleavings that matter, forced with the GC's hooks.
#include "ferry/s3/object_gc.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <future>
#include <thread>

#include "../test_points.h"
#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/s3/object_chunk_store.h"
#include "ferry/s3/object_repository.h"
#include "s3_fake_store.h"
#include "s3_test_env.h"

namespace ferry::s3 {
namespace {

using ferry::test::WriteTestPoint;

constexpr int64_t kHourAgo = 3600;

class ObjectGcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("FERRY_S3_ACCESS_KEY", "AKIDTEST", 1);
    ::setenv("FERRY_S3_SECRET_KEY", "secret", 1);
    url_ = "s3://ferry-test/repo?endpoint=" + store_.Endpoint();
    RepositoryConfig config;
    config.chunk_size = 64 << 10;
    InitObjectRepository(url_, config);
    bucket_ = std::make_unique<Bucket>(store_.Options());
  }

  std::unique_ptr<Repository> Open() { return OpenObjectRepository(url_); }

  // The digest of the chunk WriteTestPoint makes of `text`: padded to the
  // chunk size unless it is the point's last.
  static Digest DigestOf(const std::string& text, bool last = true) {
    std::string plain = text;
    if (!last) plain.resize(64 << 10, '\0');
    return Sha256(plain.data(), plain.size());
  }
  std::string ChunkKey(const std::string& text, bool last = true) {
    const std::string hex = DigestOf(text, last).Hex();
    return "repo/chunks/" + hex.substr(0, 3) + "/" + hex;
  }
  void AgeChunks() { store_.SetModified("repo/chunks/", static_cast<int64_t>(std::time(nullptr)) - kHourAgo); }

  GcReport Gc(GcOptions options = {}, ObjectGcOptions more = {}) {
    more.poll = std::chrono::milliseconds(20);
    return CollectObjectGarbage(*bucket_, "repo/", options, nullptr, more);
  }

  test::FakeS3 store_;
  std::string url_;
  std::unique_ptr<Bucket> bucket_;
};

TEST_F(ObjectGcTest, AReferencedChunkSurvivesAndAnOldUnreferencedOneIsRemoved) {
  std::string removed_point;
  {
    auto repo = Open();
    WriteTestPoint(*repo, {"kept-a", "shared"});
    removed_point = WriteTestPoint(*repo, {"only-in-removed", "shared"});
    repo->points().Remove(removed_point, 0);
  }
  AgeChunks();
  store_.PutObject(ChunkKey("young-garbage"), "x");  // unreferenced, but newer than the cutoff
  GcReport r = Gc();
  EXPECT_EQ(r.points, 1u);
  EXPECT_EQ(r.chunks_referenced, 2u);
  EXPECT_EQ(r.chunks_seen, 4u);
  EXPECT_EQ(r.chunks_removed, 1u);
  EXPECT_EQ(r.chunks_kept_by_window, 1u);
  EXPECT_FALSE(store_.Has(ChunkKey("only-in-removed", false)));
  EXPECT_TRUE(store_.Has(ChunkKey("kept-a", false)));
  EXPECT_TRUE(store_.Has(ChunkKey("shared")));
  EXPECT_TRUE(store_.Has(ChunkKey("young-garbage")));
  EXPECT_EQ(store_.Count("repo/gc/"), 0u) << "the GC record stays after the GC";
  EXPECT_EQ(store_.delete_objects_requests(), 1);
}

TEST_F(ObjectGcTest, DryRunRemovesNothingAndTakesNoRecord) {
  {
    auto repo = Open();
    repo->points().Remove(WriteTestPoint(*repo, {"garbage-1", "garbage-2"}), 0);
  }
  AgeChunks();
  GcOptions options;
  options.dry_run = true;
  ObjectGcOptions more;
  more.after_writers = [&] { ADD_FAILURE() << "a dry run waits for no one"; };
  GcReport r = Gc(options, more);
  EXPECT_TRUE(r.dry_run);
  EXPECT_EQ(r.chunks_removed, 2u);  // would remove
  EXPECT_TRUE(store_.Has(ChunkKey("garbage-1", false)));
  EXPECT_TRUE(store_.Has(ChunkKey("garbage-2")));
  EXPECT_EQ(store_.delete_objects_requests(), 0);
  EXPECT_EQ(Gc().chunks_removed, 2u);
  EXPECT_FALSE(store_.Has(ChunkKey("garbage-1", false)));
}

TEST_F(ObjectGcTest, AStagedPointsChunksAreKept) {
  auto repo = Open();
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm", "", "qemu"};
  h.chain = "default";
  h.started_at = "2020-01-01T00:00:00Z";  // old: the cutoff cannot help
  h.disks = {"disk0"};
  auto lease = repo->points().Stage(h);
  std::unique_ptr<DiskWriter> w = repo->points().WriteDisk(h.id, "disk0");
  const std::string text = "staged-only";
  DiskRecord rec;
  rec.size = text.size();
  rec.chunk_size = 64 << 10;
  rec.source_format = "raw";
  FixedIndexWriter iw(w->index_path(), rec.size, rec.chunk_size);
  std::vector<uint8_t> plain(text.begin(), text.end()), encoded;
  ChunkEncoder(1).Encode(plain, &encoded);
  repo->chunks().Insert(DigestOf(text), encoded);
  iw.Set(0, DigestOf(text));
  rec.index_sha256 = iw.Finish();
  w->Finish(rec);
  w.reset();
  repo.reset();  // the backup's process is gone; its staging stays (expires in a day)
  AgeChunks();
  GcReport r = Gc();
  EXPECT_EQ(r.staged_points, 1u);
  EXPECT_EQ(r.chunks_removed, 0u);
  EXPECT_TRUE(store_.Has(ChunkKey(text)));
}

// The interleaving the protocol is for: a backup lists chunks/ (its
// known-digest set holds a garbage chunk), a GC starts, and the backup goes
// on to reference that chunk without uploading it. The GC sees the backup's
// writer lease and waits for it; the point it then marks keeps the chunk.
TEST_F(ObjectGcTest, AWriterWithAStaleKnownDigestSetCannotLoseAChunkToTheGc) {
  {
    auto repo = Open();
    repo->points().Remove(WriteTestPoint(*repo, {"reused-garbage"}), 0);
  }
  AgeChunks();
  auto writer = Open();
  std::vector<Digest> asked{DigestOf("reused-garbage")};
  std::vector<size_t> missing;
  writer->chunks().FindMissing(asked, &missing);
  ASSERT_TRUE(missing.empty()) << "the writer's listing knows the garbage chunk";
  EXPECT_EQ(store_.Count("repo/writers/"), 1u) << "the writer holds a lease";

  std::atomic<bool> marking{false};
  ObjectGcOptions more;
  more.wait_for_writers = std::chrono::seconds(30);
  more.after_writers = [&] { marking = true; };
  auto gc = std::async(std::launch::async, [&] { return Gc({}, more); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(marking.load()) << "the GC went on while a writer with a known-digest set lived";
  EXPECT_EQ(store_.Count("repo/gc/"), 1u);
  // The backup references the chunk from its set: no upload.
  const std::string id = WriteTestPoint(*writer, {"reused-garbage"});
  writer.reset();  // the backup ends: its lease goes
  GcReport r = gc.get();
  EXPECT_EQ(r.writers_waited_for, 1u);
  EXPECT_EQ(r.chunks_removed, 0u);
  EXPECT_TRUE(store_.Has(ChunkKey("reused-garbage")));
  auto check = Open();
  RestorePointManifest m = check->points().Load(id);
  std::vector<uint8_t> encoded;
  check->chunk_reader().Read(DigestOf("reused-garbage"), &encoded);  // throws when the chunk is gone
}

// The other order: the GC's record is there first. A writer that comes
// then withdraws its lease and waits for the GC; its listing, made after the
// sweep, no longer holds the removed chunk, so it uploads it again.
TEST_F(ObjectGcTest, AWriterStartingDuringAGcWaitsAndListsAfterTheSweep) {
  {
    auto repo = Open();
    repo->points().Remove(WriteTestPoint(*repo, {"swept"}), 0);
  }
  AgeChunks();
  std::future<std::vector<size_t>> writer_answer;
  std::unique_ptr<Repository> writer;
  ObjectGcOptions more;
  more.after_writers = [&] {
    writer = Open();
    writer_answer = std::async(std::launch::async, [&] {
      std::vector<Digest> asked{DigestOf("swept")};
      std::vector<size_t> missing;
      writer->chunks().FindMissing(asked, &missing);
      return missing;
    });
    EXPECT_EQ(writer_answer.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
        << "a writer went on while a GC record was live";
  };
  GcReport r = Gc({}, more);
  EXPECT_EQ(r.chunks_removed, 1u);
  EXPECT_EQ(writer_answer.get(), (std::vector<size_t>{0})) << "the writer's set holds a chunk the GC removed";
  EXPECT_EQ(store_.Count("repo/writers/"), 1u);
  writer.reset();
  EXPECT_EQ(store_.Count("repo/writers/"), 0u);
}

TEST_F(ObjectGcTest, AGcGivesUpOnAWriterThatDoesNotEndAndLetsBackupsGoOn) {
  {
    auto repo = Open();
    repo->points().Remove(WriteTestPoint(*repo, {"kept-while-waiting"}), 0);
  }
  AgeChunks();
  auto writer = Open();
  std::vector<Digest> asked{DigestOf("kept-while-waiting")};
  std::vector<size_t> missing;
  writer->chunks().FindMissing(asked, &missing);
  ObjectGcOptions more;
  more.wait_for_writers = std::chrono::seconds(1);
  try {
    Gc({}, more);
    FAIL() << "the GC did not wait for the writer";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRetryable);
    EXPECT_NE(std::string(e.what()).find("backup(s) to finish"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(store_.Has(ChunkKey("kept-while-waiting")));
  EXPECT_EQ(store_.Count("repo/gc/"), 0u) << "a GC that gave up keeps backups waiting";
}

TEST_F(ObjectGcTest, ExpiredWriterLeasesAreIgnoredAndRemoved) {
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  store_.PutObject("repo/writers/killed.json", "{\"started_at\":" + std::to_string(now - 7200) +
                                                   ",\"expires_at\":" + std::to_string(now - 60) + "}");
  ObjectGcOptions more;
  more.wait_for_writers = std::chrono::seconds(0);
  GcReport r = Gc({}, more);
  EXPECT_EQ(r.writers_waited_for, 0u);
  EXPECT_EQ(r.stale_leases_removed, 1u);
  EXPECT_FALSE(store_.Has("repo/writers/killed.json"));
}

TEST_F(ObjectGcTest, AChunkTheStoreRetainsIsCountedNotAFailure) {
  {
    auto repo = Open();
    repo->points().Remove(WriteTestPoint(*repo, {"retained", "free"}), 0);
  }
  AgeChunks();
  store_.Retain(ChunkKey("retained", false));
  GcReport r = Gc();
  EXPECT_EQ(r.chunks_removed, 1u);
  EXPECT_EQ(r.chunks_retained, 1u);
  EXPECT_TRUE(store_.Has(ChunkKey("retained", false)));
  EXPECT_FALSE(store_.Has(ChunkKey("free")));
}

TEST_F(ObjectGcTest, ASecondGcIsRefusedWhileOneRuns) {
  ObjectGcOptions more;
  more.after_writers = [&] {
    try {
      Gc();
      ADD_FAILURE() << "two GCs at once";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kRetryable);
      EXPECT_NE(std::string(e.what()).find("a garbage collection is running"), std::string::npos) << e.what();
    }
  };
  Gc({}, more);
}

TEST_F(ObjectGcTest, SpaceCountsUniqueSharedAndGarbageChunksFromTheListing) {
  std::string a, b;
  {
    auto repo = Open();
    a = WriteTestPoint(*repo, {"a-only", "both"}, "2026-11-30T10:00:00Z", "vm", "one");
    b = WriteTestPoint(*repo, {"b-only", "both"}, "2026-11-30T11:00:00Z", "vm", "two");
    const std::string gone = WriteTestPoint(*repo, {"garbage"});
    repo->points().Remove(gone, 0);
  }
  SpaceReport s = MeasureObjectSpace(*bucket_, "repo/", nullptr);
  EXPECT_EQ(s.points, 2u);
  EXPECT_EQ(s.chunks, 4u);
  EXPECT_EQ(s.referenced_chunks, 3u);
  EXPECT_EQ(s.garbage_chunks, 1u);
  EXPECT_EQ(s.missing_chunks, 0u);
  ASSERT_EQ(s.points_space.size(), 2u);
  EXPECT_EQ(s.points_space[0].id, std::min(a, b));
  for (const auto& p : s.points_space) {
    EXPECT_EQ(p.chunks, 2u);
    EXPECT_EQ(p.unique_chunks, 1u);
    EXPECT_GT(p.unique_bytes, 0u);
    EXPECT_GT(p.logical_bytes, 64u << 10);
  }
  ASSERT_EQ(s.chains.size(), 2u);
  EXPECT_EQ(s.chains[0].chain, "one");
  EXPECT_EQ(s.chains[0].unique_chunks, 1u);
  EXPECT_GT(s.dedup_ratio, 0);
  EXPECT_EQ(store_.Count("repo/writers/"), 0u) << "space accounting takes no writer lease";
}

// The same against a real store (DeleteObjects with its Content-MD5, real
// LastModified times); skipped without FERRY_TEST_S3_ENDPOINT.
TEST(ObjectGcRealStoreTest, RemovesTheUnreferencedChunksOfARemovedPoint) {
  std::optional<BucketOptions> options = RealStoreOptions();
  if (!options) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set (integration.test-s3-client sets it)";
  ::setenv("FERRY_S3_ACCESS_KEY", options->credentials.access_key.c_str(), 1);
  ::setenv("FERRY_S3_SECRET_KEY", options->credentials.secret_key.c_str(), 1);
  const std::string prefix = UniquePrefix();
  const std::string url =
      "s3://" + options->bucket + "/" + prefix + "?endpoint=" + options->endpoint + "&region=" + options->region;
  RepositoryConfig config;
  config.chunk_size = 64 << 10;
  InitObjectRepository(url, config);
  std::string kept;
  {
    auto repo = OpenObjectRepository(url);
    kept = WriteTestPoint(*repo, {"real-kept", "real-shared"});
    repo->points().Remove(WriteTestPoint(*repo, {"real-gone", "real-shared"}), 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // LastModified has whole seconds
  Bucket bucket(*options);
  GcOptions gc;
  gc.window = std::chrono::seconds(0);
  GcReport r = CollectObjectGarbage(bucket, prefix, gc, nullptr);
  EXPECT_EQ(r.chunks_seen, 3u);
  EXPECT_EQ(r.chunks_removed, 1u);
  SpaceReport s = MeasureObjectSpace(bucket, prefix, nullptr);
  EXPECT_EQ(s.chunks, 2u);
  EXPECT_EQ(s.garbage_chunks, 0u);
  auto repo = OpenObjectRepository(url);
  RestorePointManifest m = repo->points().Load(kept);
  std::unique_ptr<FixedIndexReader> index = repo->points().OpenIndex(kept, m.disks[0]);
  std::vector<uint8_t> encoded;
  for (uint64_t i = 0; i < index->chunk_count(); ++i) repo->chunk_reader().Read(index->At(i), &encoded);
}

}  // namespace
}  // namespace ferry::s3
