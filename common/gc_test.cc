// Garbage collection and space accounting on a real temp repository. Points
// are removed here by deleting their directory (what `ferry prune` will do
// through PointStore; prune is not part of this change), staged points are
// made through PointStore as a backup makes them.
#include "ferry/common/gc.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"
#include "ferry/common/verify.h"
#include "test_points.h"

namespace ferry {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kHour = 3600;

std::string Rfc3339For(time_t t) {
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

class GcTest : public test::TempRepositoryTest {
 protected:

  // A chunk of a whole 64 KiB: `text`, then zeros (so it compresses to little).
  static std::vector<uint8_t> Plain(const std::string& text) {
    std::vector<uint8_t> plain(64 << 10, 0);
    std::copy(text.begin(), text.end(), plain.begin());
    return plain;
  }
  Digest Store(const std::string& text) {
    std::vector<uint8_t> plain = Plain(text);
    Digest d = Sha256(plain.data(), plain.size());
    ChunkEncoder enc(1);
    std::vector<uint8_t> encoded;
    enc.Encode(plain, &encoded);
    repo_->chunks().Insert(d, encoded);
    return d;
  }
  std::string PathOf(const Digest& d) const { return dir_ + "/chunks/" + d.Hex().substr(0, 3) + "/" + d.Hex(); }
  bool Exists(const Digest& d) const { return PathExists(PathOf(d)); }
  // Sets a chunk's mtime `seconds_ago` into the past.
  void Age(const Digest& d, int64_t seconds_ago) {
    struct timespec t[2];
    t[0].tv_sec = t[1].tv_sec = ::time(nullptr) - seconds_ago;
    t[0].tv_nsec = t[1].tv_nsec = 0;
    ASSERT_EQ(::utimensat(AT_FDCWD, PathOf(d).c_str(), t, 0), 0) << PathOf(d);
  }

  // Writes disk `disk` of staged point `id`: one chunk per text, in order.
  void WriteDisk(const std::string& id, const std::string& disk, const std::vector<std::string>& texts) {
    auto w = repo_->points().WriteDisk(id, disk);
    DiskRecord rec;
    rec.chunk_size = repo_->config().chunk_size;
    rec.size = static_cast<uint64_t>(texts.size()) * rec.chunk_size;
    rec.source_format = "raw";
    FixedIndexWriter index(w->index_path(), rec.size, rec.chunk_size);
    for (size_t i = 0; i < texts.size(); ++i) index.Set(i, texts[i].empty() ? Digest{} : Store(texts[i]));
    rec.index_sha256 = index.Finish();
    w->Finish(rec);
  }
  StagedPointHeader Header(const std::string& started_at = "") {
    StagedPointHeader h;
    h.id = NewPointId();
    h.vm = {"vm1", "", "qemu"};
    h.disks = {"disk0"};
    h.started_at = started_at;
    h.expires_at = ::time(nullptr) + 24 * kHour;
    return h;
  }
  // A committed point (of `chain`) whose one disk holds these chunks.
  std::string Commit(const std::vector<std::string>& texts, const std::string& chain = "default") {
    StagedPointHeader h = Header();
    h.chain = chain;
    repo_->points().Stage(h);
    WriteDisk(h.id, "disk0", texts);
    repo_->points().Commit(h.id);
    return h.id;
  }
  Digest DigestOf(const std::string& text) {
    std::vector<uint8_t> plain = Plain(text);
    return Sha256(plain.data(), plain.size());
  }
  void AgeAll(const std::vector<std::string>& texts, int64_t seconds_ago) {
    for (const auto& t : texts) Age(DigestOf(t), seconds_ago);
  }
  GcReport Gc(GcOptions options = {}) { return CollectGarbage(dir_, options, nullptr); }
  bool Clean() {
    VerifyReport r = VerifyRepository(*repo_, VerifyOptions(std::nullopt, 2), nullptr);
    for (const auto& p : r.problems) ADD_FAILURE() << p.point << " " << p.disk << ": " << p.message;
    return r.clean();
  }
};

TEST_F(GcTest, RemovesOldUnreferencedChunksAndKeepsReferencedOnes) {
  Commit({"a", "b", ""});
  Store("garbage1");
  Store("garbage2");
  AgeAll({"a", "b", "garbage1", "garbage2"}, 2 * kHour);
  GcReport r = Gc();
  EXPECT_TRUE(Exists(DigestOf("a")));
  EXPECT_TRUE(Exists(DigestOf("b")));
  EXPECT_FALSE(Exists(DigestOf("garbage1")));
  EXPECT_FALSE(Exists(DigestOf("garbage2")));
  EXPECT_EQ(r.points, 1u);
  EXPECT_EQ(r.indexes, 1u);
  EXPECT_EQ(r.chunks_referenced, 2u);
  EXPECT_EQ(r.chunks_seen, 4u);
  EXPECT_EQ(r.chunks_removed, 2u);
  EXPECT_GT(r.bytes_removed, 0u);
  EXPECT_FALSE(r.resumed);
  EXPECT_FALSE(PathExists(dir_ + "/gc/state.json"));  // finished: nothing to resume
  EXPECT_TRUE(Clean());
  // Nothing left to do.
  EXPECT_EQ(Gc().chunks_removed, 0u);
}

TEST_F(GcTest, KeepsUnreferencedChunksYoungerThanTheCutoff) {
  Store("fresh");
  Store("inside-window");
  Store("old");
  Age(DigestOf("inside-window"), 200);  // within the default 300 s window
  Age(DigestOf("old"), 400);
  GcReport r = Gc();
  EXPECT_TRUE(Exists(DigestOf("fresh")));
  EXPECT_TRUE(Exists(DigestOf("inside-window")));
  EXPECT_FALSE(Exists(DigestOf("old")));
  EXPECT_EQ(r.chunks_kept_by_window, 2u);
  EXPECT_EQ(r.chunks_removed, 1u);
  // A smaller window reaches further.
  GcOptions o;
  o.window = std::chrono::seconds(100);
  EXPECT_EQ(Gc(o).chunks_removed, 1u);
  EXPECT_FALSE(Exists(DigestOf("inside-window")));
  EXPECT_TRUE(Exists(DigestOf("fresh")));
}

TEST_F(GcTest, KeepsChunksOfStagedPointsAndWhatTheirBackupsMayStillUse) {
  // A staged point that began 2 h ago with one disk written: its index is
  // marked, and the cutoff goes below its start, so chunks its backup may
  // have found present since (touched then) stay too.
  StagedPointHeader h = Header();
  h.disks = {"disk0", "disk1"};
  h.started_at = Rfc3339For(::time(nullptr) - 2 * kHour);
  repo_->points().Stage(h);
  WriteDisk(h.id, "disk0", {"staged-a", "staged-b"});
  Store("touched-90-min-ago");
  Store("older-than-the-point");
  AgeAll({"staged-a", "staged-b", "older-than-the-point"}, 3 * kHour);
  Age(DigestOf("touched-90-min-ago"), 90 * 60);
  GcReport r = Gc();
  EXPECT_EQ(r.staged_points, 1u);
  EXPECT_TRUE(Exists(DigestOf("staged-a")));
  EXPECT_TRUE(Exists(DigestOf("staged-b")));
  EXPECT_TRUE(Exists(DigestOf("touched-90-min-ago")));
  EXPECT_FALSE(Exists(DigestOf("older-than-the-point")));
  EXPECT_LE(r.cutoff_ns, (static_cast<int64_t>(::time(nullptr)) - 2 * kHour - 300) * 1000000000);
  // The point commits after the GC: whole.
  WriteDisk(h.id, "disk1", {"staged-c"});
  repo_->points().Commit(h.id);
  EXPECT_TRUE(Clean());
}

TEST_F(GcTest, APointCommittedDuringTheMarkIsMarked) {
  // A backup that began 3 h ago wrote its chunk 2 h ago and commits while
  // the GC marks, between its two listings (CI found the mark listing the
  // committed points first: this point was then in neither listing).
  StagedPointHeader h = Header(Rfc3339For(::time(nullptr) - 3 * kHour));
  repo_->points().Stage(h);
  WriteDisk(h.id, "disk0", {"committed-during-the-mark"});
  Age(DigestOf("committed-during-the-mark"), 2 * kHour);
  Store("garbage");
  Age(DigestOf("garbage"), 4 * kHour);  // older than the staged point
  GcOptions o;
  o.window = std::chrono::seconds(0);
  o.between_listings = [&] { repo_->points().Commit(h.id); };
  GcReport r = Gc(o);
  EXPECT_EQ(r.points + r.staged_points, 1u + 1u);  // seen staged, then committed
  EXPECT_TRUE(Exists(DigestOf("committed-during-the-mark")));
  EXPECT_FALSE(Exists(DigestOf("garbage")));
  EXPECT_TRUE(Clean());
}

TEST_F(GcTest, ExpiredStagingDoesNotHoldTheCutoffBack) {
  StagedPointHeader h = Header(Rfc3339For(::time(nullptr) - 3 * kHour));
  h.expires_at = ::time(nullptr) - 60;  // its backup died an hour ago, say
  repo_->points().Stage(h);
  Store("garbage");
  Age(DigestOf("garbage"), 2 * kHour);
  GcReport r = Gc();
  EXPECT_EQ(r.staged_points, 0u);  // removed by the point store's sweep first
  EXPECT_FALSE(Exists(DigestOf("garbage")));
}

TEST_F(GcTest, FindMissingMarksPresentChunksInUse) {
  Digest d = Store("old-but-deduplicated");
  Age(d, 3 * kHour);
  // A backup finds the chunk present (dedupe): from then on it is fresh.
  EXPECT_TRUE(repo_->chunks().Contains(d));
  struct stat st;
  ASSERT_EQ(::stat(PathOf(d).c_str(), &st), 0);
  EXPECT_GE(st.st_mtime, ::time(nullptr) - 5);
  EXPECT_EQ(Gc().chunks_removed, 0u);
  EXPECT_TRUE(Exists(d));
  // And so does Insert of a chunk already there.
  Age(d, 3 * kHour);
  Store("old-but-deduplicated");
  EXPECT_EQ(Gc().chunks_removed, 0u);
}

TEST_F(GcTest, ATouchBetweenTheFirstLookAndTheRemovalKeepsTheChunk) {
  Digest d = Store("deduplicated-during-the-sweep");
  Digest g = Store("garbage");
  Age(d, 2 * kHour);
  Age(g, 2 * kHour);
  GcOptions o;
  o.threads = 1;
  o.before_removal = [&](const std::string& hex) {
    if (hex == d.Hex()) {
      EXPECT_TRUE(repo_->chunks().Contains(d));  // a backup's dedupe hit, right then
    }
  };
  GcReport r = Gc(o);
  EXPECT_TRUE(Exists(d));
  EXPECT_FALSE(Exists(g));
  EXPECT_EQ(r.chunks_removed, 1u);
  EXPECT_EQ(r.chunks_kept_by_window, 1u);
}

TEST_F(GcTest, RemovedPointsUniqueChunksGoAndSharedOnesStay) {
  std::string a = Commit({"shared", "only-a"});
  std::string b = Commit({"shared", "only-b1", "only-b2"});
  AgeAll({"shared", "only-a", "only-b1", "only-b2"}, 2 * kHour);
  // What prune will do: the point's directory goes.
  fs::remove_all(dir_ + "/points/" + b);
  GcReport r = Gc();
  EXPECT_EQ(r.chunks_removed, 2u);
  EXPECT_TRUE(Exists(DigestOf("shared")));
  EXPECT_TRUE(Exists(DigestOf("only-a")));
  EXPECT_FALSE(Exists(DigestOf("only-b1")));
  EXPECT_FALSE(Exists(DigestOf("only-b2")));
  EXPECT_TRUE(Clean());
}

TEST_F(GcTest, ADamagedManifestsIndexesAreStillMarked) {
  std::string a = Commit({"kept-by-damaged-point"});
  Age(DigestOf("kept-by-damaged-point"), 2 * kHour);
  std::string manifest = dir_ + "/points/" + a + "/manifest.json";
  std::string text = ReadWholeFile(manifest);
  text[text.find("vm1")] = 'X';
  WriteFileAtomically(manifest, text);
  GcReport r = Gc();
  EXPECT_EQ(r.unchecked_indexes, 1u);
  EXPECT_EQ(r.chunks_removed, 0u);
  EXPECT_TRUE(Exists(DigestOf("kept-by-damaged-point")));
}

TEST_F(GcTest, DryRunRemovesNothing) {
  Store("garbage");
  Age(DigestOf("garbage"), 2 * kHour);
  GcOptions o;
  o.dry_run = true;
  GcReport r = Gc(o);
  EXPECT_EQ(r.chunks_removed, 1u);  // would remove
  EXPECT_TRUE(Exists(DigestOf("garbage")));
  EXPECT_FALSE(PathExists(dir_ + "/gc/state.json"));
}

TEST_F(GcTest, OnlyOneGcRunsAtATime) {
  int fd = ::open((dir_ + "/gc.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "4242\n", 5), 5);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  try {
    Gc();
    ADD_FAILURE() << "a second GC ran";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRetryable);
    EXPECT_NE(std::string(e.what()).find("a GC is running"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("pid 4242"), std::string::npos) << e.what();
  }
  ::close(fd);
  Gc();  // free again
}

// Garbage spread over many chunk directories, for the resume tests.
std::vector<std::string> Texts(const std::string& prefix, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

TEST_F(GcTest, ResumesAnInterruptedSweepWithItsMarkAndCutoff) {
  auto kept = Texts("kept-", 300);
  auto garbage = Texts("garbage-", 3000);
  std::string id = Commit(kept);
  for (const auto& g : garbage) Store(g);
  AgeAll(kept, 2 * kHour);
  AgeAll(garbage, 2 * kHour);

  GcOptions stop;
  // Progress is saved about once a second: slow the first part down so that
  // some of it is saved before the "kill".
  stop.after_directory = [](unsigned dir) {
    if (dir < 1200) ::usleep(1000);
    if (dir == 2000) throw std::runtime_error("killed");
  };
  EXPECT_THROW(Gc(stop), std::runtime_error);
  ASSERT_TRUE(PathExists(dir_ + "/gc/state.json"));
  ASSERT_TRUE(PathExists(dir_ + "/gc/marked"));
  size_t left = 0;
  for (const auto& g : garbage) left += Exists(DigestOf(g));
  EXPECT_GT(left, 0u);
  EXPECT_LT(left, garbage.size());

  // A new point after the kill: its chunks are not in the saved mark, but
  // younger than the saved cutoff.
  auto later = Texts("later-", 50);
  Commit(later);
  GcReport r = Gc();
  EXPECT_TRUE(r.resumed);
  EXPECT_EQ(r.chunks_referenced, kept.size());  // the saved mark, not a new one
  // Counters carry over from the last save; what was removed after it and
  // before the kill is not counted again.
  EXPECT_GE(r.chunks_removed, garbage.size() - left);
  EXPECT_LE(r.chunks_removed, garbage.size());
  for (const auto& g : garbage) EXPECT_FALSE(Exists(DigestOf(g))) << g;
  for (const auto& k : kept) EXPECT_TRUE(Exists(DigestOf(k))) << k;
  for (const auto& k : later) EXPECT_TRUE(Exists(DigestOf(k))) << k;
  EXPECT_FALSE(PathExists(dir_ + "/gc/state.json"));
  EXPECT_TRUE(Clean());
}

TEST_F(GcTest, ADamagedSavedStateIsNotResumed) {
  Store("garbage");
  Age(DigestOf("garbage"), 2 * kHour);
  MakeDirectory(dir_ + "/gc");
  WriteFileAtomically(dir_ + "/gc/state.json", "{\"format\":\"ferry-gc-state-v1\"}\n0000\n");
  GcReport r = Gc();
  EXPECT_FALSE(r.resumed);
  EXPECT_EQ(r.chunks_removed, 1u);
}

TEST_F(GcTest, AChunkBeingRemovedIsRescuedByWhoeverNeedsIt) {
  // The state between the two steps of a removal (or after a GC killed
  // there): the chunk under its doomed name.
  std::string id = Commit({"needed"});
  Digest d = DigestOf("needed");
  std::string doomed = dir_ + "/chunks/" + d.Hex().substr(0, 3) + "/.gc-" + d.Hex();
  ASSERT_EQ(::rename(PathOf(d).c_str(), doomed.c_str()), 0);
  EXPECT_TRUE(Clean());  // a reader links it back
  EXPECT_TRUE(Exists(d));
  ASSERT_EQ(::rename(PathOf(d).c_str(), doomed.c_str()), 0);
  EXPECT_TRUE(repo_->chunks().Contains(d));  // so does a backup's dedupe question
  EXPECT_TRUE(Exists(d));

  // A GC finishing a killed one's work: a marked chunk goes back, an
  // unmarked old one goes.
  Digest g = Store("doomed-garbage");
  Age(g, 2 * kHour);
  Age(d, 2 * kHour);
  std::string doomed_g = dir_ + "/chunks/" + g.Hex().substr(0, 3) + "/.gc-" + g.Hex();
  ASSERT_EQ(::rename(PathOf(g).c_str(), doomed_g.c_str()), 0);
  ASSERT_EQ(::rename(PathOf(d).c_str(), doomed.c_str()), 0);
  GcReport r = Gc();
  EXPECT_EQ(r.chunks_rescued, 1u);
  EXPECT_EQ(r.chunks_removed, 1u);
  EXPECT_TRUE(Exists(d));
  EXPECT_FALSE(PathExists(doomed));
  EXPECT_FALSE(PathExists(doomed_g));
  EXPECT_FALSE(Exists(g));
  EXPECT_TRUE(Clean());
}

// kill -9 of a process running GC at random moments, then a GC to the end:
// every point intact, every piece of garbage gone.
TEST_F(GcTest, SurvivesKillsAtRandomMoments) {
  std::vector<std::string> kept, garbage;
  std::vector<std::string> ids;
  for (int p = 0; p < 4; ++p) {
    auto texts = Texts("point" + std::to_string(p) + "-", 200);
    texts.push_back("shared");
    ids.push_back(Commit(texts));
    kept.insert(kept.end(), texts.begin(), texts.end());
  }
  // Two points removed (as prune would): their chunks are garbage.
  for (int p = 4; p < 6; ++p) {
    auto texts = Texts("point" + std::to_string(p) + "-", 300);
    fs::remove_all(dir_ + "/points/" + Commit(texts));
    garbage.insert(garbage.end(), texts.begin(), texts.end());
  }
  AgeAll(kept, 2 * kHour);
  AgeAll(garbage, 2 * kHour);

  std::mt19937 rng(testing::UnitTest::GetInstance()->random_seed());
  int killed = 0;
  for (int round = 0; round < 12; ++round) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      GcOptions o;
      o.after_directory = [](unsigned) { ::usleep(100); };  // ~0.5 s of sweep to land in
      try {
        CollectGarbage(dir_, o, nullptr);
      } catch (...) {
        ::_exit(1);
      }
      ::_exit(0);
    }
    ::usleep(std::uniform_int_distribution<int>(0, 600000)(rng));
    ::kill(pid, SIGKILL);
    int status;
    ::waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
      ++killed;
    else
      EXPECT_EQ(WEXITSTATUS(status), 0);
    // Between kills, every point is whole.
    for (const auto& k : kept) {
      if (!Exists(DigestOf(k))) {
        // Only possibly under its doomed name, which a reader rescues.
        EXPECT_TRUE(repo_->chunks().Contains(DigestOf(k))) << k << " is gone in round " << round;
        Age(DigestOf(k), 2 * kHour);
      }
    }
  }
  EXPECT_GT(killed, 0);
  GcReport r = Gc();
  for (const auto& g : garbage) EXPECT_FALSE(Exists(DigestOf(g))) << g;
  for (const auto& k : kept) EXPECT_TRUE(Exists(DigestOf(k))) << k;
  EXPECT_TRUE(Clean());
  // No doomed names or state left behind.
  for (const auto& e : fs::recursive_directory_iterator(dir_ + "/chunks")) {
    EXPECT_FALSE(e.path().filename().string().starts_with(".gc-")) << e.path();
  }
  EXPECT_FALSE(PathExists(dir_ + "/gc/state.json"));
  (void)r;
}

TEST_F(GcTest, SpaceAccountingCountsUniqueAndSharedChunks) {
  std::string a = Commit({"shared", "only-a", ""});
  std::string b = Commit({"shared", "only-b1", "only-b2"});
  Store("garbage");
  StagedPointHeader h = Header();
  repo_->points().Stage(h);
  WriteDisk(h.id, "disk0", {"staged-only", "shared"});
  auto size = [&](const std::string& t) { return static_cast<uint64_t>(fs::file_size(PathOf(DigestOf(t)))); };

  SpaceReport r = MeasureSpace(dir_, nullptr);
  EXPECT_EQ(r.points, 2u);
  EXPECT_EQ(r.chunks, 6u);
  EXPECT_EQ(r.referenced_chunks, 5u);
  EXPECT_EQ(r.garbage_chunks, 1u);
  EXPECT_EQ(r.garbage_bytes, size("garbage"));
  EXPECT_EQ(r.staged_only_chunks, 1u);
  EXPECT_EQ(r.missing_chunks, 0u);
  EXPECT_EQ(r.logical_bytes, 6u * (64 << 10));
  ASSERT_EQ(r.points_space.size(), 2u);
  EXPECT_EQ(r.points_space[0].id, a);
  EXPECT_EQ(r.points_space[0].chunks, 2u);
  EXPECT_EQ(r.points_space[0].unique_chunks, 1u);
  EXPECT_EQ(r.points_space[0].unique_bytes, size("only-a"));
  EXPECT_EQ(r.points_space[1].chunks, 3u);
  EXPECT_EQ(r.points_space[1].unique_chunks, 2u);
  EXPECT_EQ(r.points_space[1].unique_bytes, size("only-b1") + size("only-b2"));
  EXPECT_GT(r.dedup_ratio, 1.0);

  // What it says removing b frees is what a GC then frees.
  fs::remove_all(dir_ + "/points/" + b);
  AgeAll({"only-b1", "only-b2", "garbage"}, 2 * kHour);
  GcReport g = Gc();
  EXPECT_EQ(g.bytes_removed, r.points_space[1].unique_bytes + r.garbage_bytes);
}

// Per chain: a chain's distinct chunks, and those no other chain and no
// staged point references, which are what removing all its points frees.
// The chains' points are interleaved in time, as two jobs' are.
TEST_F(GcTest, SpaceAccountingPerChain) {
  std::string x1 = Commit({"shared", "x-a"}, "job-x");
  std::string y1 = Commit({"shared", "y-a"}, "job-y");
  std::string x2 = Commit({"x-a", "x-b", "x-staged"}, "job-x");
  StagedPointHeader h = Header();
  h.chain = "job-z";
  repo_->points().Stage(h);
  WriteDisk(h.id, "disk0", {"x-staged"});
  auto size = [&](const std::string& t) { return static_cast<uint64_t>(fs::file_size(PathOf(DigestOf(t)))); };

  SpaceReport r = MeasureSpace(dir_, nullptr);
  ASSERT_EQ(r.chains.size(), 2u);  // a staged point's chain is not one until committed
  const ChainSpace& x = r.chains[0];
  const ChainSpace& y = r.chains[1];
  EXPECT_EQ(x.chain, "job-x");
  EXPECT_EQ(y.chain, "job-y");
  EXPECT_EQ(x.points, 2u);
  EXPECT_EQ(x.logical_bytes, 5u * (64 << 10));
  EXPECT_EQ(x.chunks, 4u) << "shared, x-a (in both of its points), x-b, x-staged";
  EXPECT_EQ(x.stored_bytes, size("shared") + size("x-a") + size("x-b") + size("x-staged"));
  EXPECT_EQ(x.unique_chunks, 2u) << "x-a and x-b: shared is y's too, x-staged is staging's";
  EXPECT_EQ(x.unique_bytes, size("x-a") + size("x-b"));
  EXPECT_DOUBLE_EQ(x.dedup_ratio, static_cast<double>(x.logical_bytes) / static_cast<double>(x.stored_bytes));
  EXPECT_EQ(y.points, 1u);
  EXPECT_EQ(y.chunks, 2u);
  EXPECT_EQ(y.unique_chunks, 1u);
  EXPECT_EQ(y.unique_bytes, size("y-a"));
  EXPECT_EQ(y.stored_bytes, size("shared") + size("y-a"));
  ASSERT_EQ(r.points_space.size(), 3u);  // still oldest first, whatever order the chains were marked in
  EXPECT_EQ(r.points_space[0].id, x1);
  EXPECT_EQ(r.points_space[1].id, y1);
  EXPECT_EQ(r.points_space[2].id, x2);
  EXPECT_EQ(r.points_space[2].chunks, 3u);
  EXPECT_EQ(r.points_space[0].unique_chunks, 0u);

  // What it says removing chain x frees is what a GC then frees; y's and
  // staging's chunks stay.
  fs::remove_all(dir_ + "/points/" + x1);
  fs::remove_all(dir_ + "/points/" + x2);
  AgeAll({"shared", "x-a", "x-b", "x-staged", "y-a"}, 2 * kHour);
  GcReport g = Gc();
  EXPECT_EQ(g.chunks_removed, x.unique_chunks);
  EXPECT_EQ(g.bytes_removed, x.unique_bytes);
  EXPECT_TRUE(Exists(DigestOf("shared")));
  EXPECT_TRUE(Exists(DigestOf("x-staged")));
  EXPECT_FALSE(Exists(DigestOf("x-a")));
  SpaceReport after = MeasureSpace(dir_, nullptr);
  ASSERT_EQ(after.chains.size(), 1u);
  EXPECT_EQ(after.chains[0].chain, "job-y");
  EXPECT_EQ(after.chains[0].unique_chunks, 2u) << "shared is y's alone now";
}

// The one JSON form, read back as written; a bad member is named.
TEST_F(GcTest, ReportsReadBackFromTheirJson) {
  Commit({"shared", "x-a"}, "job-x");
  Commit({"shared", "y-a"}, "job-y");
  Store("garbage");
  SpaceReport s = MeasureSpace(dir_, nullptr);
  s.problems = {"point p: a problem"};
  SpaceReport back = SpaceReportFromJson(SpaceReportJson(s));
  EXPECT_EQ(SpaceReportJson(back), SpaceReportJson(s));
  EXPECT_EQ(back.garbage_chunks, 1u);
  ASSERT_EQ(back.chains.size(), 2u);
  EXPECT_EQ(back.chains[1].chain, "job-y");
  EXPECT_EQ(back.chains[1].unique_bytes, s.chains[1].unique_bytes);
  EXPECT_EQ(back.points_space.at(0).id, s.points_space.at(0).id);
  EXPECT_EQ(back.problems, s.problems);

  GcReport g = Gc();
  GcReport gback = GcReportFromJson(GcReportJson(g));
  EXPECT_EQ(GcReportJson(gback), GcReportJson(g));
  EXPECT_EQ(gback.chunks_seen, 4u);
  EXPECT_EQ(gback.cutoff, g.cutoff);

  std::string text = GcReportJson(g);
  text.replace(text.find("\"chunks_removed\":"), 17, "\"chunks_removed\":\"x\",\"y\":");
  try {
    GcReportFromJson(text);
    ADD_FAILURE() << "read " << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("chunks_removed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SpaceReportFromJson("[1]"), Error);
}

}  // namespace
}  // namespace ferry
