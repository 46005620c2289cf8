#include "ferry/worker/cbt.h"

#include <gtest/gtest.h>

namespace ferry::worker {
namespace {

constexpr uint64_t kSize = 64ull << 20;
const std::string kChain = "0a1b2c3d";

DiskRecord Previous(const std::string& generation) {
  DiskRecord d;
  d.name = "virtio0";
  d.size = kSize;
  d.cbt = {"incremental", "", ChainBitmapName(kChain, generation), generation, "/img/a.qcow2"};
  return d;
}

BitmapState Bitmap(const std::string& generation) {
  BitmapState b;
  b.name = ChainBitmapName(kChain, generation);
  return b;
}

TEST(CbtTest, TrustsTheBitmapTheLastPointRecorded) {
  DiskRecord prev = Previous("11111111");
  CbtPlan plan = PlanCbt(&prev, {Bitmap("11111111")}, kSize, "/img/a.qcow2", kChain, "22222222");
  EXPECT_TRUE(plan.incremental);
  EXPECT_EQ(plan.previous_bitmap, "ferry-0a1b2c3d-11111111");
  EXPECT_EQ(plan.new_bitmap, "ferry-0a1b2c3d-22222222");
  EXPECT_TRUE(plan.stale_bitmaps.empty());
  EXPECT_TRUE(plan.reason.empty());
}

TEST(CbtTest, LeftoverBitmapsOfTheChainAreDroppedNotTrusted) {
  DiskRecord prev = Previous("11111111");
  CbtPlan plan = PlanCbt(&prev, {Bitmap("33333333"), Bitmap("11111111")}, kSize, "/img/a.qcow2", kChain, "44444444");
  EXPECT_TRUE(plan.incremental);
  EXPECT_EQ(plan.stale_bitmaps, std::vector<std::string>{"ferry-0a1b2c3d-33333333"});
}

struct Trigger {
  const char* name;
  std::function<void(DiskRecord*, std::vector<BitmapState>*, uint64_t*, std::string*)> apply;
  const char* reason;
};

TEST(CbtTest, EveryDoubtMeansAFullReadWithAReason) {
  std::vector<Trigger> triggers = {
      {"no previous point", nullptr, "first backup"},
      {"bitmap missing", [](auto*, auto* b, auto*, auto*) { b->clear(); }, "is missing"},
      {"other generation", [](auto*, auto* b, auto*, auto*) { *b = {Bitmap("99999999")}; }, "another generation"},
      {"resized", [](auto*, auto*, uint64_t* size, auto*) { *size += 1 << 20; }, "resized"},
      {"image changed", [](auto*, auto*, auto*, std::string* id) { *id = "/img/b.qcow2"; }, "image changed"},
      {"inconsistent", [](auto*, auto* b, auto*, auto*) { (*b)[0].inconsistent = true; }, "inconsistent"},
      {"disabled", [](auto*, auto* b, auto*, auto*) { (*b)[0].recording = false; }, "disabled"},
      {"busy", [](auto*, auto* b, auto*, auto*) { (*b)[0].busy = true; }, "in use"},
      {"no cbt recorded", [](DiskRecord* p, auto*, auto*, auto*) { p->cbt = {}; }, "recorded no dirty bitmap"},
  };
  for (const auto& t : triggers) {
    DiskRecord prev = Previous("11111111");
    std::vector<BitmapState> bitmaps = {Bitmap("11111111")};
    uint64_t size = kSize;
    std::string identity = "/img/a.qcow2";
    if (t.apply) t.apply(&prev, &bitmaps, &size, &identity);
    CbtPlan plan = PlanCbt(t.apply ? &prev : nullptr, bitmaps, size, identity, kChain, "22222222");
    EXPECT_FALSE(plan.incremental) << t.name;
    EXPECT_NE(plan.reason.find(t.reason), std::string::npos) << t.name << ": " << plan.reason;
    EXPECT_EQ(plan.new_bitmap, "ferry-0a1b2c3d-22222222") << t.name;
    // Whatever chain bitmap is there goes: the fresh one starts clean.
    EXPECT_EQ(plan.stale_bitmaps.size(), bitmaps.size()) << t.name;
  }
}

TEST(CbtTest, ChainsAreDistinctPerRepositoryAndName) {
  EXPECT_NE(ChainId("repo-a", "default"), ChainId("repo-b", "default"));
  EXPECT_NE(ChainId("repo-a", "nightly"), ChainId("repo-a", "offsite"));
  EXPECT_EQ(ChainId("repo-a", "nightly").size(), 8u);
  std::string a = ChainId("repo-a", "nightly");
  EXPECT_TRUE(IsChainBitmap(ChainBitmapName(a, "12345678"), a));
  EXPECT_FALSE(IsChainBitmap(ChainBitmapName(ChainId("repo-a", "offsite"), "12345678"), a));
  EXPECT_FALSE(IsChainBitmap("pbs-backup-bitmap", a));
}

}  // namespace
}  // namespace ferry::worker
