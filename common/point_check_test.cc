// Health-check records (point_check.h) and incremental verify (verify.h)
// over a real local repository, with a fake clock.
#include <gtest/gtest.h>

#include <fstream>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/point_check.h"
#include "ferry/common/repository.h"
#include "ferry/common/verify.h"
#include "test_points.h"

namespace ferry {
namespace {

constexpr int64_t kDay = 86400;
constexpr int64_t kT0 = 1796083200;  // 2026-12-01T00:00:00Z

class PointCheckTest : public test::TempRepositoryTest {
 protected:

  VerifyReport Verify(int64_t now, int64_t skip_within_s = 0) {
    VerifyOptions o;
    o.threads = 2;
    o.now = now;
    o.skip_verified_within_s = skip_within_s;
    o.record = true;
    return VerifyRepository(*repo_, o, nullptr);
  }
  PointCheck CheckOf(const std::string& id) {
    auto checks = repo_->points().LoadChecks();
    auto it = checks.find(id);
    if (it == checks.end()) throw Error(ErrorKind::kNotFound, "no check of " + id);
    return it->second;
  }
  // The chunk file of a last (unpadded) chunk holding `text`.
  std::string ChunkPath(const std::string& text) {
    std::string hex = Sha256(text.data(), text.size()).Hex();
    return dir_ + "/chunks/" + hex.substr(0, 3) + "/" + hex;
  }
};

TEST_F(PointCheckTest, EachPointChecked) {
  std::string a = test::WriteTestPoint(*repo_, {"shared", "only-a"});
  std::string b = test::WriteTestPoint(*repo_, {"shared", "only-b"});
  EXPECT_TRUE(repo_->points().LoadChecks().empty());
  VerifyReport r = Verify(kT0);
  ASSERT_TRUE(r.clean());
  EXPECT_EQ(r.chunks_checked, 3u);
  EXPECT_EQ(r.chunks_skipped, 0u);
  ASSERT_EQ(r.checks.size(), 2u);
  for (const std::string& id : {a, b}) {
    PointCheck c = CheckOf(id);
    EXPECT_TRUE(c.ok);
    EXPECT_EQ(c.checked_at, kT0);
    EXPECT_EQ(c.verified_since, kT0);
    EXPECT_EQ(c.chunks_read, 2u);
    EXPECT_EQ(c.chunks_skipped, 0u);
  }
}

TEST_F(PointCheckTest, ByChainAndCancelled) {
  std::string a = test::WriteTestPoint(*repo_, {"in-chain"}, "2026-11-30T10:00:00Z", "vm", "nightly");
  std::string b = test::WriteTestPoint(*repo_, {"other"}, "2026-11-30T10:00:00Z", "vm", "weekly");
  VerifyOptions o;
  o.chain = "nightly";
  o.record = true;
  o.now = kT0;
  VerifyReport r = VerifyRepository(*repo_, o, nullptr);
  EXPECT_EQ(r.points, 1u);
  ASSERT_EQ(r.checks.size(), 1u);
  EXPECT_EQ(r.checks[0].point, a);
  EXPECT_EQ(repo_->points().LoadChecks().count(b), 0u);
  // Cancelled: kInterrupted, and nothing recorded.
  std::atomic<bool> cancel{true};
  o.chain.reset();
  o.cancel = &cancel;
  o.now = kT0 + kDay;
  try {
    VerifyRepository(*repo_, o, nullptr);
    ADD_FAILURE() << "a cancelled verify finished";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInterrupted);
  }
  EXPECT_EQ(repo_->points().LoadChecks().count(b), 0u);
  EXPECT_EQ(CheckOf(a).checked_at, kT0);
}

TEST_F(PointCheckTest, IncrementalSkipsWhatARecentCleanCheckReadAndNeverStretchesTheWindow) {
  std::string a = test::WriteTestPoint(*repo_, {"shared", "only-a"});
  ASSERT_TRUE(Verify(kT0).clean());
  std::string b = test::WriteTestPoint(*repo_, {"shared", "only-b"});
  // A day later: only b's new chunk is read.
  VerifyReport r = Verify(kT0 + kDay, 7 * kDay);
  ASSERT_TRUE(r.clean());
  EXPECT_EQ(r.chunks_checked, 1u);
  EXPECT_EQ(r.chunks_skipped, 2u);
  PointCheck cb = CheckOf(b);
  EXPECT_EQ(cb.chunks_read, 1u);
  EXPECT_EQ(cb.chunks_skipped, 1u);
  EXPECT_EQ(cb.checked_at, kT0 + kDay);
  EXPECT_EQ(cb.verified_since, kT0);  // its shared chunk was last read at kT0
  PointCheck ca = CheckOf(a);
  EXPECT_EQ(ca.chunks_skipped, 2u);
  EXPECT_EQ(ca.verified_since, kT0);
  // Checking again and again inside the window does not move verified_since.
  ASSERT_TRUE(Verify(kT0 + 6 * kDay, 7 * kDay).clean());
  EXPECT_EQ(CheckOf(a).verified_since, kT0);
  // Past the window (from kT0): everything that was read at kT0 is read again.
  r = Verify(kT0 + 8 * kDay, 7 * kDay);
  ASSERT_TRUE(r.clean());
  EXPECT_EQ(r.chunks_skipped, 0u);
  EXPECT_EQ(r.chunks_checked, 3u);
  EXPECT_EQ(CheckOf(a).verified_since, kT0 + 8 * kDay);
  EXPECT_EQ(CheckOf(b).verified_since, kT0 + 8 * kDay);
}

TEST_F(PointCheckTest, DamageIsRecordedNeverSkippedAndHealedByTheNextBackup) {
  std::string a = test::WriteTestPoint(*repo_, {"shared", "only-a"});
  std::string b = test::WriteTestPoint(*repo_, {"shared", "only-b"});
  ASSERT_TRUE(Verify(kT0).clean());
  // Bit rot in a's own chunk, after its clean check.
  {
    std::fstream f(ChunkPath("only-a"), std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.is_open());
    f.seekp(-1, std::ios::end);
    f.put('\x5a');
  }
  // Outside the window the chunk is read, found damaged, quarantined; a is marked.
  VerifyReport r = Verify(kT0 + 8 * kDay, 7 * kDay);
  EXPECT_FALSE(r.clean());
  PointCheck ca = CheckOf(a);
  EXPECT_FALSE(ca.ok);
  EXPECT_EQ(ca.problems, 1u);
  EXPECT_NE(ca.first_problem.find("disk disk0"), std::string::npos) << ca.first_problem;
  EXPECT_TRUE(CheckOf(b).ok);
  EXPECT_FALSE(PathExists(ChunkPath("only-a"))) << "not quarantined";
  // Within the window a damaged point is no source of skipped chunks: still damaged.
  EXPECT_FALSE(Verify(kT0 + 9 * kDay, 7 * kDay).clean());
  EXPECT_FALSE(CheckOf(a).ok);
  // The next backup that reads the same data stores the chunk again (here: a
  // point with that chunk); a's next check, incremental or not, is clean.
  test::WriteTestPoint(*repo_, {"only-a"});
  r = Verify(kT0 + 10 * kDay, 7 * kDay);
  EXPECT_TRUE(r.clean());
  ca = CheckOf(a);
  EXPECT_TRUE(ca.ok);
  EXPECT_EQ(ca.chunks_read, 1u);     // the healed chunk
  EXPECT_EQ(ca.chunks_skipped, 1u);  // "shared", read clean at kT0 + 8 days through b
}

TEST_F(PointCheckTest, ADamagedRecordCountsAsNeverChecked) {
  std::string a = test::WriteTestPoint(*repo_, {"only-a"});
  ASSERT_TRUE(Verify(kT0).clean());
  std::string path = dir_ + "/checks/" + a + ".json";
  std::string text = ReadWholeFile(path);
  ASSERT_NE(text.find("\"result\":\"ok\""), std::string::npos);
  // A forged or damaged record: the checksum no longer matches.
  text.replace(text.find("\"chunks_read\":1"), 15, "\"chunks_read\":7");
  WriteFileAtomically(path, text);
  EXPECT_TRUE(repo_->points().LoadChecks().empty());
  EXPECT_THROW(PointCheckFromJson(text, path), Error);
  VerifyReport r = Verify(kT0 + kDay, 7 * kDay);
  EXPECT_EQ(r.chunks_checked, 1u);
  EXPECT_EQ(r.chunks_skipped, 0u);
  EXPECT_EQ(CheckOf(a).checked_at, kT0 + kDay);
}

TEST_F(PointCheckTest, RecordsFollowThePoints) {
  PointCheck c;
  c.point = "20261201T000000.000000Z-000000";
  ErrorKind kind = ErrorKind::kInternal;
  try {
    repo_->points().RecordCheck(c);
  } catch (const Error& e) {
    kind = e.kind();
  }
  EXPECT_EQ(kind, ErrorKind::kNotFound);
  std::string a = test::WriteTestPoint(*repo_, {"only-a"});
  ASSERT_TRUE(Verify(kT0).clean());
  EXPECT_TRUE(PathExists(dir_ + "/checks/" + a + ".json"));
  repo_->points().Remove(a, kT0);
  EXPECT_FALSE(PathExists(dir_ + "/checks/" + a + ".json"));
  EXPECT_TRUE(repo_->points().LoadChecks().empty());
  // A record round-trips exactly.
  c.point = a;
  c.checked_at = kT0;
  c.verified_since = kT0 - 5;
  c.ok = false;
  c.problems = 3;
  c.first_problem = "disk x: chunk 2 \"bad\"";
  c.chunks_read = 9;
  c.chunks_skipped = 4;
  PointCheck back = PointCheckFromJson(PointCheckToJson(c), "test");
  EXPECT_EQ(back.point, c.point);
  EXPECT_EQ(back.verified_since, c.verified_since);
  EXPECT_EQ(back.ok, c.ok);
  EXPECT_EQ(back.problems, c.problems);
  EXPECT_EQ(back.first_problem, c.first_problem);
  EXPECT_EQ(back.chunks_skipped, c.chunks_skipped);
}

}  // namespace
}  // namespace ferry
