#include "ferry/common/repository.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <ctime>
#include <filesystem>
#include <thread>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/version.h"
#include "ferry/common/verify.h"

namespace ferry {
namespace {

namespace fs = std::filesystem;

std::string Message(const std::function<void()>& fn, ErrorKind* kind = nullptr) {
  try {
    fn();
  } catch (const Error& e) {
    if (kind) *kind = e.kind();
    return e.what();
  }
  return "(no error)";
}

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

  Digest StoreChunk(Repository& repo, const std::string& text) {
    std::vector<uint8_t> plain(text.begin(), text.end());
    Digest d = Sha256(plain.data(), plain.size());
    ChunkEncoder enc(1);
    std::vector<uint8_t> encoded;
    enc.Encode(plain, &encoded);
    repo.chunks().Insert(d, encoded);
    return d;
  }

  // Writes disk `disk` of staged point `id` as one chunk holding `text`.
  void WriteDisk(Repository& repo, const std::string& id, const std::string& disk, const std::string& text) {
    Digest d = StoreChunk(repo, text);
    auto w = repo.points().WriteDisk(id, disk);
    DiskRecord rec;
    rec.size = text.size();
    rec.chunk_size = repo.config().chunk_size;
    rec.source_format = "raw";
    FixedIndexWriter iw(w->index_path(), rec.size, rec.chunk_size);
    iw.Set(0, d);
    rec.index_sha256 = iw.Finish();
    w->Finish(rec);
  }

  StagedPointHeader Header(const std::string& id, std::vector<std::string> disks, int64_t ttl) {
    StagedPointHeader h;
    h.id = id;
    h.vm = {"vm", "uuid", "qemu"};
    h.chain = "default";
    h.disks = std::move(disks);
    h.expires_at = ttl ? static_cast<int64_t>(::time(nullptr)) + ttl : 0;
    return h;
  }

  // Writes and commits a one-disk point whose single chunk holds `text`.
  std::string WritePoint(Repository& repo, const std::string& text) {
    std::string id = NewPointId();
    auto lease = repo.points().Stage(Header(id, {"disk0"}, 0));
    WriteDisk(repo, id, "disk0", text);
    repo.points().Commit(id);
    return id;
  }

  std::string root_, dir_;
};

TEST_F(RepositoryTest, InitOpenAndConfig) {
  auto repo = Repository::Open(dir_);
  EXPECT_EQ(repo->config().chunk_size, 64u << 10);
  EXPECT_EQ(repo->config().id.size(), 32u);
  EXPECT_EQ(repo->config().format_version, 2);
  EXPECT_TRUE(repo->points().List().empty());
  EXPECT_TRUE(PathExists(dir_ + "/quarantine"));
}

TEST_F(RepositoryTest, InitRefusesNonEmptyDirectoryAndBadValues) {
  ErrorKind kind;
  EXPECT_NE(Message([&] { Repository::Init(dir_, RepositoryConfig{}); }, &kind).find("not empty"), std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  RepositoryConfig bad;
  bad.chunk_size = 3000;
  EXPECT_THROW(Repository::Init(root_ + "/other", bad), Error);
  EXPECT_FALSE(PathExists(root_ + "/other/ferry-repository.json"));
  RepositoryConfig level;
  level.zstd_level = 99;
  EXPECT_NE(Message([&] { Repository::Init(root_ + "/other2", level); }).find("zstd level 99"), std::string::npos);
}

TEST_F(RepositoryTest, OpenValidatesTheConfigAsInitDoes) {
  std::string path = dir_ + "/ferry-repository.json";
  std::string good = ReadWholeFile(path);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    t.replace(at, from.size(), to);
    WriteFileAtomically(path, t);
  };
  ErrorKind kind;
  with("\"zstd_level\":1", "\"zstd_level\":99");
  EXPECT_NE(Message([&] { Repository::Open(dir_); }, &kind).find("zstd level 99 is not in -7..19"), std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kCorrupt);
  with("\"chunk_size\":65536", "\"chunk_size\":65537");
  EXPECT_NE(Message([&] { Repository::Open(dir_); }).find("65537"), std::string::npos);
  with("\"chunk_size\":65536", "\"chunk_size\":\"64K\"");
  EXPECT_NE(Message([&] { Repository::Open(dir_); }).find("chunk_size"), std::string::npos);
  with("ferry-repository-v2", "ferry-repository-v4");
  EXPECT_NE(Message([&] { Repository::Open(dir_); }, &kind).find("newer Ferry"), std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  with("ferry-repository-v2", "ferry-repository-v1");
  auto repo = Repository::Open(dir_);
  EXPECT_EQ(repo->config().format_version, 1);
  repo->PrepareForWriting();  // upgrades: Ferry 0.1 must not write into it any more
  EXPECT_NE(ReadWholeFile(path).find("ferry-repository-v2"), std::string::npos);
  EXPECT_EQ(Repository::Open(dir_)->config().id, repo->config().id);
}

TEST_F(RepositoryTest, OpenRejectsWhatIsNotARepository) {
  ErrorKind kind;
  EXPECT_NE(Message([&] { Repository::Open(root_); }, &kind).find("not a Ferry repository"), std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  Message([&] { Repository::Open(root_ + "/missing"); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  WriteFileAtomically(dir_ + "/ferry-repository.json", "{\"format\":\"ferry-repository-v7\"}");
  EXPECT_NE(Message([&] { Repository::Open(dir_); }).find("v7"), std::string::npos);
}

TEST_F(RepositoryTest, PointIsVisibleOnlyAfterCommit) {
  auto repo = Repository::Open(dir_);
  std::string id = NewPointId();
  {
    auto lease = repo->points().Stage(Header(id, {"disk0"}, 0));
    WriteDisk(*repo, id, "disk0", "hello");
    EXPECT_TRUE(repo->points().List().empty());
  }
  EXPECT_TRUE(repo->points().List().empty());
  RestorePointManifest m = repo->points().Commit(id);
  ASSERT_EQ(repo->points().List(), std::vector<std::string>{id});
  EXPECT_EQ(m.id, id);
  m = repo->points().Load(id);
  EXPECT_EQ(m.format_version, 2);
  ASSERT_EQ(m.disks.size(), 1u);
  EXPECT_EQ(m.disks[0].name, "disk0");
  EXPECT_EQ(repo->points().OpenIndex(id, m.disks[0])->chunk_count(), 1u);
  EXPECT_TRUE(repo->points().ListStaged().empty());  // staging gone with the commit
  ErrorKind kind;
  Message([&] { repo->points().Load("20990101T000000Z-000000"); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  EXPECT_THROW(repo->points().Load("../../etc"), Error);
  // Commit again: the same point, not an error (a release may be retried).
  EXPECT_EQ(repo->points().Commit(id).id, id);
  EXPECT_THROW(repo->points().Stage(Header(id, {"disk0"}, 60)), Error);
}

// Every JSON record the repository writes names the Ferry that wrote it
// (docs/repository-format.md, "Compatibility"): the configuration, the
// staged header and disk records, the committed manifest and a lock.
TEST_F(RepositoryTest, RecordsNameTheirWriter) {
  const std::string writer = "\"writer\":\"ferry " + std::string(kVersion) + "\"";
  EXPECT_NE(ReadWholeFile(dir_ + "/ferry-repository.json").find(writer), std::string::npos);
  auto repo = Repository::Open(dir_);
  std::string id = NewPointId();
  {
    auto lease = repo->points().Stage(Header(id, {"disk0"}, 0));
    EXPECT_NE(ReadWholeFile(dir_ + "/staging/" + id + ".stage/point.json").find(writer), std::string::npos);
    WriteDisk(*repo, id, "disk0", "hello");
    EXPECT_NE(ReadWholeFile(dir_ + "/staging/" + id + ".stage/disk-0.json").find(writer), std::string::npos);
  }
  EXPECT_EQ(repo->points().Commit(id).writer, WriterName());
  EXPECT_EQ(repo->points().Load(id).writer, "ferry " + std::string(kVersion));
  EXPECT_NE(ReadWholeFile(dir_ + "/points/" + id + "/manifest.json").find(writer), std::string::npos);
  // A lock's: PointLifecycleTest.ALockedPointStaysUntilItsLockExpires (it clears the immutable flag).
}

TEST_F(RepositoryTest, StagingOutlivesItsWritersUntilCommitDiscardOrExpiry) {
  auto repo = Repository::Open(dir_);
  std::string id = NewPointId();
  repo->points().Stage(Header(id, {"a", "b"}, 3600));  // lease dropped at once: a coordinator's point
  WriteDisk(*repo, id, "a", "disk a");
  // Another writer's sweep: nobody holds the point now, but it has not expired.
  std::string other = NewPointId();
  repo->points().Stage(Header(other, {"x"}, 3600));
  EXPECT_TRUE(repo->points().RemoveExpired().empty());
  EXPECT_EQ(repo->points().ListStaged(), (std::vector<std::string>{id, other}));

  ErrorKind kind;
  std::string msg = Message([&] { repo->points().Commit(id); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  EXPECT_NE(msg.find("disk(s) b not written"), std::string::npos) << msg;
  // Joining with another disk list is refused; the same one is fine.
  EXPECT_NE(Message([&] { repo->points().Stage(Header(id, {"a"}, 3600)); }, &kind).find("another VM"), std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  repo->points().Stage(Header(id, {"a", "b"}, 3600));
  WriteDisk(*repo, id, "b", "disk b");
  RestorePointManifest m = repo->points().Commit(id);
  ASSERT_EQ(m.disks.size(), 2u);
  EXPECT_EQ(m.disks[0].name, "a");
  EXPECT_EQ(m.disks[1].index_file, "disk-1.fidx");

  repo->points().Discard(other);
  EXPECT_TRUE(repo->points().ListStaged().empty());
  EXPECT_THROW(repo->points().Discard(id), Error);  // committed: never discarded
  EXPECT_EQ(repo->points().Load(id).id, id);

  // Expired: removed by the next sweep.
  std::string expired = NewPointId();
  StagedPointHeader h = Header(expired, {"x"}, 3600);
  h.expires_at = static_cast<int64_t>(::time(nullptr)) - 1;
  repo->points().Stage(h);
  EXPECT_EQ(repo->points().RemoveExpired(), std::vector<std::string>{expired});
  EXPECT_THROW(repo->points().WriteDisk(expired, "x"), Error);
}

TEST_F(RepositoryTest, IdsThatCollideWithStagingNamesAreRefused) {
  auto repo = Repository::Open(dir_);
  for (const char* id : {"a.stage", "a.lock", "../a", ".a", ""}) {
    ErrorKind kind;
    Message([&] { repo->points().Stage(Header(id, {"x"}, 60)); }, &kind);
    EXPECT_EQ(kind, ErrorKind::kBadInput) << id;
  }
  // One unreadable staging entry does not stop other points from staging.
  std::string bad = NewPointId();
  MakeDirectory(dir_ + "/staging/" + bad + ".stage");
  WriteFileAtomically(dir_ + "/staging/" + bad + ".stage/point.json", "garbage");
  repo->points().Stage(Header(NewPointId(), {"x"}, 60));
  EXPECT_TRUE(PathExists(dir_ + "/staging/" + bad + ".stage/point.json"));  // kept for a person to look at
}

TEST_F(RepositoryTest, OneDiskOneWriterAndNoCommitWhileWriting) {
  auto repo = Repository::Open(dir_);
  std::string id = NewPointId();
  repo->points().Stage(Header(id, {"a"}, 3600));
  ErrorKind kind;
  {
    auto w = repo->points().WriteDisk(id, "a");
    Message([&] { repo->points().WriteDisk(id, "a"); }, &kind);
    EXPECT_EQ(kind, ErrorKind::kRetryable);
    EXPECT_NE(Message([&] { repo->points().Commit(id); }, &kind).find("being written"),
              std::string::npos);
    EXPECT_EQ(kind, ErrorKind::kRetryable);
    Message([&] { repo->points().Discard(id); }, &kind);
    EXPECT_EQ(kind, ErrorKind::kRetryable);
    EXPECT_TRUE(repo->points().RemoveExpired().empty());
  }
  Message([&] { repo->points().WriteDisk(id, "nope"); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  Message([&] { repo->points().WriteDisk(NewPointId(), "a"); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
}

TEST_F(RepositoryTest, CommitRefusesAPointReferencingAMissingChunk) {
  auto repo = Repository::Open(dir_);
  std::string id = NewPointId();
  repo->points().Stage(Header(id, {"a"}, 3600));
  WriteDisk(*repo, id, "a", "some data");
  Digest d = Sha256("some data", 9);
  fs::remove(repo->chunks().Describe(d));
  ErrorKind kind;
  std::string msg = Message([&] { repo->points().Commit(id); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kRetryable);
  EXPECT_NE(msg.find("missing from the store"), std::string::npos) << msg;
  EXPECT_TRUE(repo->points().List().empty());
  WriteDisk(*repo, id, "a", "some data");  // writing the disk again stores it
  EXPECT_EQ(repo->points().Commit(id).id, id);
}

TEST_F(RepositoryTest, ProcessBoundStagingGoesWithItsProcessOnly) {
  std::string dead = NewPointId();
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto repo = Repository::Open(dir_);
    auto lease = repo->points().Stage(Header(dead, {"a"}, 0));
    ::_exit(0);  // dies holding an uncommitted point
  }
  int status;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  auto repo = Repository::Open(dir_);
  std::string live = NewPointId();
  auto lease = repo->points().Stage(Header(live, {"a"}, 0));  // sweeps the dead one's staging
  EXPECT_EQ(repo->points().ListStaged(), std::vector<std::string>{live});
  std::string third = NewPointId();
  auto lease3 = repo->points().Stage(Header(third, {"a"}, 0));  // must not remove the live one
  EXPECT_TRUE(PathExists(dir_ + "/staging/" + live));
  // Its owner may still write, commit and discard.
  WriteDisk(*repo, live, "a", "x");
  EXPECT_EQ(repo->points().Commit(live).id, live);
  repo->points().Discard(third);
  EXPECT_TRUE(repo->points().ListStaged().empty());
}

TEST_F(RepositoryTest, Version01StagingIsRemovedOnceItsLockIsFree) {
  MakeDirectory(dir_ + "/staging/20261122T041100Z-1cc0a3");
  WriteFileAtomically(dir_ + "/staging/20261122T041100Z-1cc0a3/disk-0.fidx", "partial");
  auto repo = Repository::Open(dir_);
  EXPECT_EQ(repo->points().RemoveExpired(), std::vector<std::string>{"20261122T041100Z-1cc0a3"});
  EXPECT_FALSE(PathExists(dir_ + "/staging/20261122T041100Z-1cc0a3"));
}

TEST_F(RepositoryTest, ListingShowsGoodPointsAndOneProblemPerBadEntry) {
  auto repo = Repository::Open(dir_);
  std::string good = WritePoint(*repo, "good");
  WriteFileAtomically(dir_ + "/points/stray.txt", "hello");
  MakeDirectory(dir_ + "/points/20261201T000000.000000Z-aaaaaa");
  WriteFileAtomically(dir_ + "/points/20261201T000000.000000Z-aaaaaa/manifest.json", "");
  MakeDirectory(dir_ + "/points/20261201T000001.000000Z-bbbbbb");
  WriteFileAtomically(dir_ + "/points/20261201T000001.000000Z-bbbbbb/manifest.json", "{\"format\": garbled");
  fs::remove_all(dir_ + "/chunks");
  auto reopened = Repository::Open(dir_);  // a missing chunks/ does not stop listing
  PointListing l = reopened->points().LoadAll();
  ASSERT_EQ(l.points.size(), 1u);
  EXPECT_EQ(l.points[0].id, good);
  ASSERT_EQ(l.problems.size(), 3u);
  EXPECT_EQ(l.problems[0].entry, "20261201T000000.000000Z-aaaaaa");
  EXPECT_EQ(l.problems[1].entry, "20261201T000001.000000Z-bbbbbb");
  EXPECT_EQ(l.problems[2].entry, "stray.txt");
  EXPECT_NE(l.problems[2].message.find("stray"), std::string::npos);
  // List() names the point directories; Load() finds which are damaged.
  EXPECT_EQ(reopened->points().List().size(), 3u);
  std::vector<uint8_t> buf;
  EXPECT_NE(Message([&] { reopened->chunk_reader().Read(Digest{}, &buf); }).find("chunk directory"), std::string::npos);
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
  ChunkDecoder dec;
  FetchChunk(repo->chunk_reader(), dec, d, 50000, &back, &out);
  EXPECT_EQ(out, plain);
  // Nothing but the chunk itself in its directory (no temp files).
  std::string prefix_dir = dir_ + "/chunks/" + d.Hex().substr(0, 3);
  EXPECT_EQ(std::distance(fs::directory_iterator(prefix_dir), {}), 1);
}

TEST_F(RepositoryTest, DamagedChunkIsQuarantinedAndStoredAgainByTheNextInsert) {
  auto repo = Repository::Open(dir_);
  Digest d = StoreChunk(*repo, std::string(40000, 'z'));
  std::string path = repo->chunks().Describe(d);
  std::string bytes = ReadWholeFile(path);
  bytes[bytes.size() / 2] ^= 0x04;
  fs::remove(path);
  WriteFileAtomically(path, bytes);
  EXPECT_TRUE(repo->chunks().Contains(d));  // a backup cannot tell without reading it
  std::vector<uint8_t> encoded, plain;
  ChunkDecoder dec;
  ErrorKind kind;
  std::string msg = Message([&] { FetchChunk(repo->chunk_reader(), dec, d, 40000, &encoded, &plain); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kCorrupt);
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("moved to " + dir_ + "/quarantine/" + d.Hex()), std::string::npos) << msg;
  EXPECT_FALSE(repo->chunks().Contains(d));  // never counted as stored again
  ASSERT_EQ(std::distance(fs::directory_iterator(dir_ + "/quarantine"), {}), 1);  // moved, not deleted
  msg = Message([&] { FetchChunk(repo->chunk_reader(), dec, d, 40000, &encoded, &plain); });
  EXPECT_NE(msg.find("quarantined as"), std::string::npos) << msg;
  StoreChunk(*repo, std::string(40000, 'z'));
  FetchChunk(repo->chunk_reader(), dec, d, 40000, &encoded, &plain);
  EXPECT_EQ(plain.size(), 40000u);
}

TEST_F(RepositoryTest, TruncatedChunkCountsAsMissing) {
  auto repo = Repository::Open(dir_);
  Digest d = StoreChunk(*repo, "truncate me");
  ::truncate(repo->chunks().Describe(d).c_str(), 10);
  EXPECT_FALSE(repo->chunks().Contains(d));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ + "/quarantine"), {}), 1);
}

TEST_F(RepositoryTest, NewerChunkAndIndexFormatsAreReportedAsSuchAndNotQuarantined) {
  auto repo = Repository::Open(dir_);
  std::string id = WritePoint(*repo, "future");
  Digest d = Sha256("future", 6);
  std::string path = repo->chunks().Describe(d);
  std::string bytes = ReadWholeFile(path);
  bytes[7] = '3';  // FRYCHK03
  fs::remove(path);
  WriteFileAtomically(path, bytes);
  std::vector<uint8_t> encoded, plain;
  ChunkDecoder dec;
  ErrorKind kind;
  std::string msg = Message([&] { FetchChunk(repo->chunk_reader(), dec, d, 6, &encoded, &plain); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_NE(msg.find("newer Ferry (format FRYCHK03; this Ferry reads up to FRYCHK02)"), std::string::npos) << msg;
  EXPECT_TRUE(PathExists(path));  // not damage: left where it is
  bytes[7] = 'x';
  fs::remove(path);
  WriteFileAtomically(path, bytes);
  EXPECT_NE(Message([&] { FetchChunk(repo->chunk_reader(), dec, d, 6, &encoded, &plain); }).find("bad magic"),
            std::string::npos);

  RestorePointManifest m = repo->points().Load(id);
  std::string index = dir_ + "/points/" + id + "/" + m.disks[0].index_file;
  std::string ib = ReadWholeFile(index);
  ib[7] = '3';
  fs::remove(index);
  WriteFileAtomically(index, ib);
  msg = Message([&] { FixedIndexReader r(index, nullptr); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_NE(msg.find("FRYFIX03"), std::string::npos) << msg;
}

TEST_F(RepositoryTest, PointIdsSortInCreationOrderWithinOneSecond) {
  auto repo = Repository::Open(dir_);
  std::vector<std::string> made;
  for (int i = 0; i < 20; ++i) made.push_back(WritePoint(*repo, "p" + std::to_string(i)));
  EXPECT_EQ(repo->points().List(), made);
}

}  // namespace
}  // namespace ferry
