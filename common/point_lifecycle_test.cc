// Removal, read leases and locks of committed points (point_store.h), and
// Prune over a real local repository.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"
#include "ferry/common/retention.h"
#include "ferry/common/verify.h"
#include "ferry/common/version.h"
#include "test_points.h"

namespace ferry {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kNow = 1796083200;  // 2026-12-01T00:00:00Z: the fake clock

std::string Message(const std::function<void()>& fn, ErrorKind* kind) {
  try {
    fn();
  } catch (const Error& e) {
    *kind = e.kind();
    return e.what();
  }
  *kind = ErrorKind::kInternal;
  return "(no error)";
}

bool Immutable(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  if (fd < 0) return false;
  int flags = 0;
  bool on = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL);
  ::close(fd);
  return on;
}

void ClearImmutable(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  if (fd < 0) return;
  int flags = 0;
  if (::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL)) {
    flags &= ~FS_IMMUTABLE_FL;
    ::ioctl(fd, FS_IOC_SETFLAGS, &flags);
  }
  ::close(fd);
}

class PointLifecycleTest : public test::TempRepositoryTest {
 protected:
  // Locked points' files carry the immutable flag: cleared before removal.
  void TearDown() override {
    repo_.reset();
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root_, ec); it != fs::recursive_directory_iterator(); ++it) {
      ClearImmutable(it->path());
    }
    TempRepositoryTest::TearDown();
  }

  // A committed one-disk point whose one chunk holds `text`.
  std::string WritePoint(const std::string& text, const std::string& started_at = "2026-11-30T10:00:00Z",
                         const std::string& vm = "vm") {
    return test::WriteTestPoint(*repo_, {text}, started_at, vm);
  }

  PointStore& points() { return repo_->points(); }
};

TEST_F(PointLifecycleTest, RemoveTakesOnlyThatPoint) {
  std::string a = WritePoint("a"), b = WritePoint("b");
  points().Remove(a, kNow);
  EXPECT_EQ(points().List(), std::vector<std::string>{b});
  EXPECT_FALSE(PathExists(dir_ + "/points/" + a));
  EXPECT_TRUE(ListDirectory(dir_ + "/points").size() == 1);
  EXPECT_TRUE(VerifyRepository(*repo_, {std::nullopt, 1}, nullptr).clean());
  ErrorKind kind;
  EXPECT_EQ(Message([&] { points().Remove(a, kNow); }, &kind), "restore point '" + a + "' does not exist in " + dir_);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  Message([&] { points().Remove("../x", kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  Message([&] { points().Lease(a); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
}

TEST_F(PointLifecycleTest, ALeaseKeepsThePointUntilItEnds) {
  std::string a = WritePoint("a");
  {
    auto lease = points().Lease(a);
    auto second = points().Lease(a);  // leases share
    ErrorKind kind;
    std::string m = Message([&] { points().Remove(a, kNow); }, &kind);
    EXPECT_EQ(kind, ErrorKind::kRetryable);
    EXPECT_NE(m.find("is in use by a restore, verify or backup"), std::string::npos) << m;
    EXPECT_EQ(points().List().size(), 1u);
  }
  points().Remove(a, kNow);
  EXPECT_TRUE(points().List().empty());
}

TEST_F(PointLifecycleTest, ALeaseInAnotherProcessKeepsThePoint) {
  std::string a = WritePoint("a");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  if (child == 0) {
    auto lease = Repository::Open(dir_)->points().Lease(a);
    (void)!::write(ready[1], "x", 1);
    ::pause();
    ::_exit(0);
  }
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ErrorKind kind;
  Message([&] { points().Remove(a, kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kRetryable);
  ::kill(child, SIGKILL);  // a dead reader holds nothing
  ::waitpid(child, nullptr, 0);
  points().Remove(a, kNow);
  EXPECT_TRUE(points().List().empty());
  ::close(ready[0]);
  ::close(ready[1]);
}

// A repository whose chunk reads wait until released: a verify then stays
// in the middle of its run for as long as the test wants.
class HeldReads : public Repository, public ChunkReader {
 public:
  explicit HeldReads(Repository& real) : real_(real) {}
  const std::string& location() const override { return real_.location(); }
  const RepositoryConfig& config() const override { return real_.config(); }
  ChunkStore& chunks() override { return real_.chunks(); }
  ChunkReader& chunk_reader() override { return *this; }
  PointStore& points() override { return real_.points(); }
  const PointStore& points() const override { return real_.points(); }
  void PrepareForWriting() override { real_.PrepareForWriting(); }

  void Read(const Digest& digest, std::vector<uint8_t>* encoded) override {
    std::unique_lock lock(mu_);
    reading_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return released_; });
    lock.unlock();
    real_.chunk_reader().Read(digest, encoded);
  }
  std::string Quarantine(const Digest& digest, const std::string& reason) override {
    return real_.chunk_reader().Quarantine(digest, reason);
  }
  std::string Describe(const Digest& digest) const override { return real_.chunk_reader().Describe(digest); }

  void WaitUntilReading() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return reading_; });
  }
  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  Repository& real_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool reading_ = false, released_ = false;
};

TEST_F(PointLifecycleTest, AVerifyHoldsEveryPointItChecks) {
  std::string a = WritePoint("a"), b = WritePoint("b");
  HeldReads held(*repo_);
  VerifyReport report;
  std::thread verify([&] { report = VerifyRepository(held, {std::nullopt, 1}, nullptr); });
  held.WaitUntilReading();
  ErrorKind kind;
  for (const auto& id : {a, b}) {
    std::string m = Message([&] { points().Remove(id, kNow); }, &kind);
    EXPECT_EQ(kind, ErrorKind::kRetryable) << m;
  }
  PruneOptions o;
  o.policy.keep_last = 1;
  o.now = kNow;
  PruneReport r = Prune(points(), o);
  EXPECT_EQ(r.removed, 0u);
  EXPECT_EQ(r.skipped, 1u);
  held.Release();
  verify.join();
  EXPECT_TRUE(report.clean());
  EXPECT_EQ(report.points, 2u);
  EXPECT_EQ(Prune(points(), o).removed, 1u);  // the verify is over
  EXPECT_EQ(points().List(), std::vector<std::string>{b});
}

TEST_F(PointLifecycleTest, ALockedPointStaysUntilItsLockExpires) {
  std::string a = WritePoint("a");
  EXPECT_FALSE(points().ReadLock(a));
  PointLock set = points().SetLock(a, kNow + 7 * 86400, "legal hold", kNow);
  EXPECT_EQ(set.locked_until, kNow + 7 * 86400);
  EXPECT_EQ(set.set_at, kNow);
  // Which Ferry wrote it, inside the checksum (docs/repository-format.md).
  EXPECT_NE(ReadWholeFile(dir_ + "/points/" + a + "/lock.json").find("\"writer\":\"ferry " + std::string(kVersion) + "\""),
            std::string::npos);
  ErrorKind kind;
  std::string m = Message([&] { points().Remove(a, kNow + 7 * 86400 - 1); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_EQ(m, "restore point " + a + " is locked until 2026-12-08T00:00:00Z (legal hold); it cannot be removed before then");
  // The lock is a file: another process (a restart) sees it.
  auto reopened = Repository::Open(dir_);
  auto lock = reopened->points().ReadLock(a);
  ASSERT_TRUE(lock);
  EXPECT_EQ(lock->locked_until, kNow + 7 * 86400);
  EXPECT_EQ(lock->reason, "legal hold");
  Message([&] { reopened->points().Remove(a, kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_TRUE(VerifyRepository(*repo_, {a, 1}, nullptr).clean());
  points().Remove(a, kNow + 7 * 86400);  // expired at that second
  EXPECT_TRUE(points().List().empty());
}

TEST_F(PointLifecycleTest, ALockIsExtendedNeverShortened) {
  std::string a = WritePoint("a");
  points().SetLock(a, kNow + 100, "first", kNow);
  ErrorKind kind;
  std::string m = Message([&] { points().SetLock(a, kNow + 50, "", kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_NE(m.find("a lock is extended, never shortened"), std::string::npos) << m;
  EXPECT_EQ(points().ReadLock(a)->locked_until, kNow + 100);
  PointLock l = points().SetLock(a, kNow + 200, "", kNow + 10);
  EXPECT_EQ(l.locked_until, kNow + 200);
  EXPECT_EQ(l.reason, "first");  // kept when none is given
  EXPECT_EQ(l.set_at, kNow + 10);
  m = Message([&] { points().SetLock(a, kNow, "", kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_NE(m.find("must end in the future"), std::string::npos) << m;
  // Once expired, a new lock may end anywhere in the future.
  points().SetLock(a, kNow + 300, "", kNow + 250);
  EXPECT_EQ(points().ReadLock(a)->locked_until, kNow + 300);
  Message([&] { points().SetLock(a, kNow + 1, "", kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  Message([&] { points().SetLock("nothere", kNow + 1, "", kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  Message([&] { points().SetLock(a, kNow + 400, std::string(2000, 'x'), kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  m = Message([&] { points().SetLock(a, INT64_MAX, "", kNow); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_NE(m.find("lasts at most 36500 days"), std::string::npos) << m;
  EXPECT_EQ(points().ReadLock(a)->locked_until, kNow + 300);
}

TEST_F(PointLifecycleTest, ADamagedLockRefusesRemoval) {
  std::string a = WritePoint("a");
  points().SetLock(a, kNow + 100, "r", kNow);
  const std::string path = dir_ + "/points/" + a + "/lock.json";
  ClearImmutable(dir_ + "/points/" + a);
  ClearImmutable(path);
  std::string text = ReadWholeFile(path);
  text[text.find("\"r\"") + 1] = 's';
  WriteFileAtomically(path, text);
  ErrorKind kind;
  std::string m = Message([&] { points().ReadLock(a); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kCorrupt);
  EXPECT_NE(m.find("checksum does not match"), std::string::npos) << m;
  m = Message([&] { points().Remove(a, kNow + 1000); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kCorrupt);
  EXPECT_NE(m.find("is not removed: its lock cannot be read"), std::string::npos) << m;
  EXPECT_EQ(points().List().size(), 1u);
  // Prune leaves it out (a problem), and removes nothing on its account.
  PruneOptions o;
  o.policy.keep_last = 1;
  o.now = kNow + 1000;
  PruneReport r = Prune(points(), o);
  EXPECT_TRUE(r.entries.empty());
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].entry, a);
}

TEST_F(PointLifecycleTest, AnImmutableFlagGuardsALockedPointWhereTheSystemHasIt) {
  std::string a = WritePoint("a");
  points().SetLock(a, kNow + 100, "", kNow);
  const std::string point = dir_ + "/points/" + a;
  if (::geteuid() != 0 || !Immutable(point)) GTEST_SKIP() << "no immutable flag here (not root, or not supported)";
  EXPECT_TRUE(Immutable(point + "/manifest.json"));
  EXPECT_TRUE(Immutable(point + "/lock.json"));
  EXPECT_NE(::unlink((point + "/manifest.json").c_str()), 0);  // even root's rm
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::rename(point.c_str(), (point + "-moved").c_str()), 0);
  // Extending works through the flag.
  points().SetLock(a, kNow + 200, "", kNow);
  EXPECT_EQ(points().ReadLock(a)->locked_until, kNow + 200);
  EXPECT_TRUE(Immutable(point + "/lock.json"));
  EXPECT_TRUE(VerifyRepository(*repo_, {a, 1}, nullptr).clean());
  ErrorKind kind;
  Message([&] { points().Remove(a, kNow + 100); }, &kind);
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  points().Remove(a, kNow + 200);
  EXPECT_TRUE(points().List().empty());
  EXPECT_FALSE(PathExists(point));
}

TEST_F(PointLifecycleTest, ARemovalCutShortIsHiddenAndCleanedByTheNext) {
  std::string a = WritePoint("a"), b = WritePoint("b"), c = WritePoint("c");
  // What a kill after the rename leaves.
  ASSERT_EQ(::rename((dir_ + "/points/" + a).c_str(), (dir_ + "/points/.removing-" + a).c_str()), 0);
  EXPECT_EQ(points().List(), (std::vector<std::string>{b, c}));
  PointListing l = points().LoadAll();
  EXPECT_EQ(l.points.size(), 2u);
  EXPECT_TRUE(l.problems.empty());
  EXPECT_TRUE(VerifyRepository(*repo_, {std::nullopt, 1}, nullptr).clean());
  points().Remove(b, kNow);
  EXPECT_FALSE(PathExists(dir_ + "/points/.removing-" + a));
  EXPECT_EQ(points().List(), std::vector<std::string>{c});
}

TEST_F(PointLifecycleTest, AKilledRemovalLeavesAllOrNothing) {
  for (int round = 0; round < 20; ++round) {
    std::string id = WritePoint("data " + std::to_string(round));
    pid_t child = ::fork();
    if (child == 0) {
      try {
        Repository::Open(dir_)->points().Remove(id, kNow);
      } catch (...) {
      }
      ::_exit(0);
    }
    ::usleep(static_cast<useconds_t>((round * 137) % 2000));
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    auto ids = points().List();
    if (!ids.empty()) {
      ASSERT_EQ(ids, std::vector<std::string>{id});
      EXPECT_TRUE(VerifyRepository(*repo_, {id, 1}, nullptr).clean()) << "round " << round;
      points().Remove(id, kNow);
    }
    EXPECT_TRUE(points().LoadAll().problems.empty());
  }
  points().Remove(WritePoint("last"), kNow);  // cleans any leftover
  for (const auto& e : fs::directory_iterator(dir_ + "/points")) ADD_FAILURE() << "left: " << e.path();
}

TEST_F(PointLifecycleTest, PruneRemovesWhatItSaysAndSkipsLockedAndLeased) {
  std::string a = WritePoint("a", "2026-11-26T10:00:00Z"), b = WritePoint("b", "2026-11-27T10:00:00Z"),
              c = WritePoint("c", "2026-11-28T10:00:00Z"), d = WritePoint("d", "2026-11-29T10:00:00Z"),
              other = WritePoint("o", "2026-11-20T10:00:00Z", "other");
  points().SetLock(a, kNow + 3600, "", kNow);
  PruneOptions o;
  SetRetentionRule(&o.policy, "keep-last", "1");
  o.now = kNow;
  o.vm = "vm";
  o.dry_run = true;
  PruneReport dry = Prune(points(), o);
  EXPECT_EQ(points().List().size(), 5u);
  ASSERT_EQ(dry.entries.size(), 4u);
  EXPECT_EQ(dry.kept, 2u);
  EXPECT_EQ(dry.entries[1].outcome, "dry run: not removed");
  auto lease = points().Lease(b);
  o.dry_run = false;
  PruneReport r = Prune(points(), o);
  EXPECT_EQ(r.kept, 2u);
  EXPECT_EQ(r.removed, 1u);
  EXPECT_EQ(r.skipped, 1u);
  EXPECT_FALSE(r.failure);
  ASSERT_EQ(r.entries.size(), 4u);
  EXPECT_EQ(r.entries[0].decision.reasons, std::vector<std::string>{"locked until 2026-12-01T01:00:00Z"});
  EXPECT_NE(r.entries[1].outcome.find("skipped: restore point " + b + " is in use"), std::string::npos);
  EXPECT_EQ(r.entries[2].outcome, "removed");
  EXPECT_EQ(r.entries[3].decision.reasons, std::vector<std::string>{"last 1"});
  EXPECT_EQ(points().List(), (std::vector<std::string>{a, b, d, other}));
  lease.reset();
  EXPECT_EQ(Prune(points(), o).removed, 1u);
  o.now = kNow + 3600;  // a's lock has expired
  EXPECT_EQ(Prune(points(), o).removed, 1u);
  EXPECT_EQ(points().List(), (std::vector<std::string>{d, other}));
  EXPECT_TRUE(VerifyRepository(*repo_, {std::nullopt, 1}, nullptr).clean());
}

}  // namespace
}  // namespace ferry
