// Backup and restore round trips through the real pipeline, with a sparse
// local file as the source (the BlockReader for local devices).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository_key.h"
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
    return Backup({{"disk0", reader.get()}}, result, options);
  }

  // Backs up several disks into one point; returns the point id.
  std::string Backup(const std::vector<std::pair<std::string, BlockReader*>>& disks, DiskBackupResult* result,
                     const DiskBackupOptions& options = {}) {
    StagedPointHeader h;
    h.id = NewPointId();
    h.vm = {"vm", "", "qemu"};
    for (const auto& [name, reader] : disks) h.disks.push_back(name);
    auto lease = repo_->points().Stage(h);
    try {
      for (const auto& [name, reader] : disks) {
        auto w = repo_->points().WriteDisk(h.id, name);
        DiskRecord rec;
        rec.size = reader->size();
        rec.chunk_size = kChunk;
        rec.source_format = "raw";
        DiskBackupResult r = BackupDisk(repo_->chunks(), repo_->config(), *reader, w->index_path(), options, nullptr);
        rec.index_sha256 = r.index_sha256;
        w->Finish(rec);
        if (result) *result = r;
      }
    } catch (...) {
      repo_->points().Discard(h.id);
      throw;
    }
    return repo_->points().Commit(h.id).id;
  }

  // Backs up `reader` into a staged point that is then discarded: for the
  // pipeline's statistics, with any store.
  DiskBackupResult BackupInto(ChunkStore& store, BlockReader& reader, DiskBackupProgress* progress) {
    StagedPointHeader h;
    h.id = NewPointId();
    h.vm = {"vm", "", "qemu"};
    h.disks = {"disk0"};
    auto lease = repo_->points().Stage(h);
    DiskBackupResult r;
    {
      auto w = repo_->points().WriteDisk(h.id, "disk0");
      DiskBackupOptions options;
      options.compute_threads = 2;
      r = BackupDisk(store, repo_->config(), reader, w->index_path(), options, progress);
    }
    repo_->points().Discard(h.id);
    return r;
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

  EXPECT_TRUE(VerifyRepository(*repo_, {std::nullopt, 2}, nullptr).clean());
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
  EXPECT_EQ(repo_->points().List().size(), 2u);
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
  EXPECT_TRUE(repo_->points().List().empty());
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
  RestorePointManifest m = repo_->points().Load(id);
  auto index = repo_->points().OpenIndex(id, m.disks[0]);
  std::string chunk = repo_->chunk_reader().Describe(index->At(1));
  {
    UniqueFd fd = OpenOrThrow(chunk, O_WRONLY);
    uint8_t x = 0x5a;
    PwriteAll(fd.get(), &x, 1, 100, chunk);
  }
  VerifyReport report = VerifyRepository(*repo_, {std::nullopt, 2}, nullptr);
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_EQ(report.problems[0].point, id);
  EXPECT_EQ(report.problems[0].disk, "disk0");
  EXPECT_EQ(report.problems[0].chunk, 1);
  EXPECT_EQ(report.problems[0].offset, kChunk);
  EXPECT_FALSE(PathExists(chunk));  // verify quarantined it

  std::string out = root_ + "/out.raw";
  try {
    RestoreDisk(*repo_, id, "disk0", out, ImageFormat::kRaw, {}, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("quarantined"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(PathExists(out));

  // A full backup of the same data stores the chunk again: the new point is
  // clean, and the old point, whose data came back, is whole again.
  std::string healed = Backup(src, nullptr);
  EXPECT_TRUE(VerifyRepository(*repo_, {healed, 2}, nullptr).clean());
  EXPECT_TRUE(VerifyRepository(*repo_, {id, 2}, nullptr).clean());
}

// A source with changed-block tracking: only `changed` is dirty.
class TrackedReader : public BlockReader {
 public:
  TrackedReader(std::unique_ptr<BlockReader> inner, std::vector<Extent> changed)
      : inner_(std::move(inner)), changed_(std::move(changed)) {}
  uint64_t size() const override { return inner_->size(); }
  std::string description() const override { return inner_->description(); }
  std::vector<Extent> MapAllocation(uint64_t o, uint64_t l) override { return inner_->MapAllocation(o, l); }
  bool has_dirty_map() const override { return true; }
  std::vector<Extent> MapDirty(uint64_t offset, uint64_t length) override {
    std::vector<Extent> out;
    uint64_t end = std::min(size(), offset + length), at = offset;
    for (const Extent& c : changed_) {
      uint64_t s = std::max(at, c.offset), e = std::min(end, c.offset + c.length);
      if (s >= e) continue;
      if (s > at) out.push_back({at, s - at, false});
      out.push_back({s, e - s, true});
      at = e;
    }
    if (at < end) out.push_back({at, end - at, false});
    return out;
  }
  void SubmitRead(void* b, uint64_t o, uint32_t l, std::function<void(int)> done) override {
    inner_->SubmitRead(b, o, l, std::move(done));
  }
  size_t in_flight() const override { return inner_->in_flight(); }
  void Poll(int timeout_ms) override { inner_->Poll(timeout_ms); }

 private:
  std::unique_ptr<BlockReader> inner_;
  std::vector<Extent> changed_;
};

// A source that takes `delay` for every read (a slow disk or a far export).
class SlowReader : public BlockReader {
 public:
  SlowReader(std::unique_ptr<BlockReader> inner, std::chrono::milliseconds delay)
      : inner_(std::move(inner)), delay_(delay) {}
  uint64_t size() const override { return inner_->size(); }
  std::string description() const override { return inner_->description(); }
  std::vector<Extent> MapAllocation(uint64_t o, uint64_t l) override { return inner_->MapAllocation(o, l); }
  void SubmitRead(void* b, uint64_t o, uint32_t l, std::function<void(int)> done) override {
    std::this_thread::sleep_for(delay_);
    inner_->SubmitRead(b, o, l, std::move(done));
  }
  size_t in_flight() const override { return inner_->in_flight(); }
  void Poll(int timeout_ms) override { inner_->Poll(timeout_ms); }

 private:
  std::unique_ptr<BlockReader> inner_;
  std::chrono::milliseconds delay_;
};

// A store whose inserts take `delay` (slow storage, or, as `remote`, a slow
// repository service).
class SlowStore final : public ChunkStore {
 public:
  SlowStore(ChunkStore& inner, std::chrono::milliseconds delay, bool remote)
      : inner_(inner), delay_(delay), remote_(remote) {}
  void FindMissing(std::span<const Digest> d, std::vector<size_t>* missing) override { inner_.FindMissing(d, missing); }
  bool Insert(const Digest& d, std::span<const uint8_t> encoded) override {
    std::this_thread::sleep_for(delay_);
    return inner_.Insert(d, encoded);
  }
  void Sync() override { inner_.Sync(); }
  std::string Describe(const Digest& d) const override { return inner_.Describe(d); }
  bool remote() const override { return remote_; }

 private:
  ChunkStore& inner_;
  std::chrono::milliseconds delay_;
  bool remote_;
};

// Statistics compare the stages with each other, never with absolute times:
// a loaded machine slows everything, a sleeping stage stays the busiest.
TEST_F(DiskBackupTest, ASlowSourceIsTheBottleneckLiveAndAtTheEnd) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(32 * kChunk, 11));
  SlowReader reader(OpenFileReader(src), std::chrono::milliseconds(4));
  DiskBackupProgress progress;
  std::atomic<bool> running{true};
  DiskBackupStats live;
  std::thread sampler([&] {
    while (running) {
      const bool ended = progress.ended_ns != 0;
      DiskBackupStats s = progress.Stats();
      if (!ended && s.busy.wall_us > 0) live = s;  // taken while it ran
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  DiskBackupResult r = BackupInto(repo_->chunks(), reader, &progress);
  running = false;
  sampler.join();

  const StageBusy& b = r.stats.busy;
  RecordProperty("busy", b.Describe());
  EXPECT_EQ(b.bottleneck(), Stage::kSource) << b.Describe();
  EXPECT_GT(b.percent(Stage::kSource), 2 * b.percent(Stage::kCompute)) << b.Describe();
  EXPECT_GT(b.percent(Stage::kSource), 2 * b.percent(Stage::kTarget)) << b.Describe();
  EXPECT_FALSE(b.measured(Stage::kNetwork));  // a local repository
  EXPECT_GT(b.wall_us, 0u);
  EXPECT_EQ(r.stats.bytes_read, 32u * kChunk);
  EXPECT_EQ(r.stats.bytes_stored, r.stored_bytes);
  EXPECT_EQ(r.stats.bytes_sent, r.stored_bytes);  // all new, none resent
  EXPECT_GT(r.stats.rate_bytes_per_s(), 0.0);
  // Live values were there while it ran (the sleeping read's interval still
  // open), and the progress keeps the final ones.
  ASSERT_GT(live.busy.wall_us, 0u);
  EXPECT_LE(live.busy.wall_us, b.wall_us);
  EXPECT_EQ(live.busy.bottleneck(), Stage::kSource) << live.busy.Describe();
  EXPECT_EQ(progress.Stats().busy.wall_us, b.wall_us);
  EXPECT_EQ(progress.Stats().busy.source_us, b.source_us);

  // A second run on the same progress starts its statistics afresh.
  DiskBackupResult again = BackupInto(repo_->chunks(), reader, &progress);
  EXPECT_EQ(again.stats.bytes_read, 32u * kChunk);
  EXPECT_EQ(again.stats.bytes_sent, 0u);  // every chunk already stored
  EXPECT_EQ(progress.Stats().bytes_read, 32u * kChunk);
}

TEST_F(DiskBackupTest, ASlowLocalStoreIsTheTargetBottleneck) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(32 * kChunk, 12));
  auto reader = OpenFileReader(src);
  SlowStore store(repo_->chunks(), std::chrono::milliseconds(4), false);
  DiskBackupResult r = BackupInto(store, *reader, nullptr);
  const StageBusy& b = r.stats.busy;
  RecordProperty("busy", b.Describe());
  EXPECT_EQ(b.bottleneck(), Stage::kTarget) << b.Describe();
  EXPECT_GT(b.percent(Stage::kTarget), 2 * b.percent(Stage::kSource)) << b.Describe();
  EXPECT_GT(b.percent(Stage::kTarget), 2 * b.percent(Stage::kCompute)) << b.Describe();
  EXPECT_FALSE(b.remote_store);
  EXPECT_EQ(r.new_chunks, 32u);
}

TEST_F(DiskBackupTest, ASlowRemoteStoreIsTheNetworkBottleneck) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(32 * kChunk, 13));
  auto reader = OpenFileReader(src);
  SlowStore store(repo_->chunks(), std::chrono::milliseconds(4), true);
  DiskBackupResult r = BackupInto(store, *reader, nullptr);
  const StageBusy& b = r.stats.busy;
  RecordProperty("busy", b.Describe());
  EXPECT_TRUE(b.remote_store);
  EXPECT_EQ(b.bottleneck(), Stage::kNetwork) << b.Describe();
  EXPECT_GT(b.percent(Stage::kNetwork), 2 * b.percent(Stage::kSource)) << b.Describe();
  EXPECT_GT(b.percent(Stage::kNetwork), 2 * b.percent(Stage::kCompute)) << b.Describe();
  EXPECT_FALSE(b.measured(Stage::kTarget));  // the service's write time is inside network
  EXPECT_EQ(b.target_us, 0u);
}

// An incremental never copies the digest of a chunk the store lost: it reads
// that chunk again (healing the chain) and commits a point that verifies.
TEST_F(DiskBackupTest, IncrementalReadsAgainWhatTheStoreLost) {
  std::string src = root_ + "/src.raw";
  WriteAt(src, 0, RandomBytes(6 * kChunk, 7));
  std::string first = Backup(src, nullptr);
  RestorePointManifest m = repo_->points().Load(first);
  auto previous = repo_->points().OpenIndex(first, m.disks[0]);
  RemoveTree(repo_->chunk_reader().Describe(previous->At(4)));  // deleted by hand

  WriteAt(src, 1 * kChunk, RandomBytes(kChunk, 8));  // the guest changed chunk 1
  DiskBackupOptions options;
  options.previous_index = previous.get();
  TrackedReader reader(OpenFileReader(src), {{1 * kChunk, kChunk, true}});
  DiskBackupResult r;
  std::string second = Backup({{"disk0", &reader}}, &r, options);
  EXPECT_EQ(r.unchanged_chunks, 4u);  // 0, 2, 3, 5
  EXPECT_EQ(r.healed_chunks, 1u);     // 4, read again
  EXPECT_EQ(r.new_chunks, 2u);        // 1 (changed) and 4 (healed)
  EXPECT_TRUE(VerifyRepository(*repo_, {second, 2}, nullptr).clean());
  std::string out = root_ + "/out.raw";
  RestoreDisk(*repo_, second, "disk0", out, ImageFormat::kRaw, {}, nullptr);
  EXPECT_EQ(ReadWholeFile(out), ReadWholeFile(src));
}

// A flipped bit anywhere in a committed manifest: verify reports the point,
// restore refuses it (exit 4 from the CLI), for every byte of the file.
TEST_F(DiskBackupTest, EveryManifestBitFlipIsReportedAndRefused) {
  std::string a = root_ + "/a.raw", b = root_ + "/b.raw";
  WriteAt(a, 0, RandomBytes(3 * kChunk, 9));
  WriteAt(b, 0, RandomBytes(2 * kChunk, 10));
  auto ra = OpenFileReader(a), rb = OpenFileReader(b);
  std::string id = Backup({{"virtio0", ra.get()}, {"virtio1", rb.get()}}, nullptr);
  const std::string path = repo_->location() + "/points/" + id + "/manifest.json";
  const std::string good = ReadWholeFile(path);
  size_t reported = 0, refused = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
    WriteFileAtomically(path, bad);
    VerifyReport report = VerifyRepository(*repo_, {std::nullopt, 1}, nullptr);
    if (!report.clean() && report.problems[0].point == id) ++reported;
    for (const char* disk : {"virtio0", "virtio1"}) {
      std::string out = root_ + "/flip.raw";
      try {
        RestoreDisk(*repo_, id, disk, out, ImageFormat::kRaw, {}, nullptr);
        ADD_FAILURE() << "restore of " << disk << " accepted a flip at byte " << i;
        RemoveTree(out);
      } catch (const Error& e) {
        ++refused;
        EXPECT_NE(std::string(e.what()).find(id), std::string::npos) << e.what();
      }
    }
  }
  EXPECT_EQ(reported, good.size());
  EXPECT_EQ(refused, 2 * good.size());
  WriteFileAtomically(path, good);
  EXPECT_TRUE(VerifyRepository(*repo_, {std::nullopt, 1}, nullptr).clean());
}

// An encrypted repository through the real pipeline: keyed digests dedupe
// two disks of the same data, restore needs the key, verify works with it
// and (ciphertext only) without it.
TEST_F(DiskBackupTest, EncryptedRepositoryRoundTrip) {
  RepositoryKey key = RepositoryKey::Generate();
  RepositoryConfig config;
  config.chunk_size = kChunk;
  config.key_fingerprint = key.Fingerprint();
  Repository::Init(root_ + "/enc", config);
  auto repo = Repository::Open(root_ + "/enc");
  const std::string src = root_ + "/src.raw";
  std::vector<uint8_t> text(4 * kChunk);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<uint8_t>("secret plaintext "[i % 17]);
  WriteAt(src, 0, RandomBytes(3 * kChunk, 9));
  WriteAt(src, 3 * kChunk, text);
  ASSERT_EQ(::truncate(src.c_str(), 9 * kChunk), 0);

  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm", "", "qemu"};
  h.disks = {"a", "b"};
  auto lease = repo->points().Stage(h);
  DiskBackupOptions options;
  options.key = &key;
  uint64_t new_chunks = 0;
  for (const std::string& disk : h.disks) {
    auto reader = OpenFileReader(src);
    auto w = repo->points().WriteDisk(h.id, disk);
    DiskBackupOptions no_key;
    EXPECT_THROW(BackupDisk(repo->chunks(), repo->config(), *reader, root_ + "/" + disk + ".fidx", no_key, nullptr),
                 Error);
    DiskBackupResult r = BackupDisk(repo->chunks(), repo->config(), *reader, w->index_path(), options, nullptr);
    new_chunks += r.new_chunks;
    DiskRecord rec;
    rec.name = disk;
    rec.size = reader->size();
    rec.chunk_size = kChunk;
    rec.source_format = "raw";
    rec.index_sha256 = r.index_sha256;
    rec.index_file = w->index_file();
    rec.index_hmac = key.DiskRecordMac(h.id, rec);
    w->Finish(rec);
  }
  const std::string id = repo->points().Commit(h.id).id;
  EXPECT_EQ(new_chunks, 7u);  // 3 random + 4 text chunks (2 holes), once for both disks
  size_t files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root_ + "/enc/chunks")) {
    if (e.is_regular_file()) {
      ++files;
      std::string bytes = ReadWholeFile(e.path());
      EXPECT_EQ(bytes.substr(0, 8), "FRYCHK02");
      EXPECT_EQ(bytes.find("secret plaintext"), std::string::npos);
      // Named by the HMAC, never by the SHA-256 of the data.
      EXPECT_NE(e.path().filename(), Sha256(text.data(), kChunk).Hex());
    }
  }
  EXPECT_EQ(files, 7u);

  DiskRestoreOptions ro;
  try {
    RestoreDisk(*repo, id, "b", root_ + "/x.raw", ImageFormat::kRaw, ro, nullptr);
    FAIL() << "restored without the key";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("is encrypted: give --key-file"), std::string::npos);
  }
  ro.key = &key;
  RestoreDisk(*repo, id, "b", root_ + "/out.raw", ImageFormat::kRaw, ro, nullptr);
  EXPECT_EQ(ReadWholeFile(root_ + "/out.raw"), ReadWholeFile(src));

  VerifyOptions vo(std::nullopt, 2);
  VerifyReport keyless = VerifyRepository(*repo, vo, nullptr);
  EXPECT_TRUE(keyless.clean());
  EXPECT_TRUE(keyless.ciphertext_only);
  EXPECT_EQ(keyless.chunks_checked, 7u);
  vo.key = &key;
  VerifyReport keyed = VerifyRepository(*repo, vo, nullptr);
  EXPECT_TRUE(keyed.clean());
  EXPECT_FALSE(keyed.ciphertext_only);
  RepositoryKey other = RepositoryKey::Generate();
  vo.key = &other;
  EXPECT_THROW(VerifyRepository(*repo, vo, nullptr), Error);
}

}  // namespace
}  // namespace ferry::worker
