#include "ferry/common/stage_busy.h"

#include <gtest/gtest.h>

namespace ferry {
namespace {

TEST(StageBusy, PercentOfWallTimeAndTheLargestIsTheBottleneck) {
  StageBusy b;
  EXPECT_FALSE(b.bottleneck().has_value());  // nothing ran yet
  EXPECT_EQ(b.percent(Stage::kSource), 0.0);
  b.wall_us = 2'000'000;
  b.source_us = 1'800'000;
  b.compute_us = 600'000;
  b.target_us = 2'100'000;  // rounding over wall: clamped
  EXPECT_DOUBLE_EQ(b.percent(Stage::kSource), 90.0);
  EXPECT_DOUBLE_EQ(b.percent(Stage::kCompute), 30.0);
  EXPECT_DOUBLE_EQ(b.percent(Stage::kTarget), 100.0);
  EXPECT_EQ(b.bottleneck(), Stage::kTarget);
  EXPECT_EQ(b.Describe(), "source 90%, compute 30%, network -, target 100%; bottleneck: target");
}

TEST(StageBusy, ARemoteStoreMeasuresNetworkNotTarget) {
  StageBusy b;
  b.wall_us = 1000;
  b.compute_us = 400;
  b.network_us = 300;
  b.target_us = 900;  // not measured: never the bottleneck
  b.remote_store = true;
  EXPECT_TRUE(b.measured(Stage::kNetwork));
  EXPECT_FALSE(b.measured(Stage::kTarget));
  EXPECT_EQ(b.percent(Stage::kTarget), 0.0);
  EXPECT_EQ(b.bottleneck(), Stage::kCompute);
  EXPECT_EQ(b.Describe(), "source 0%, compute 40%, network 30%, target -; bottleneck: compute");
}

TEST(StageBusy, TiesGoToTheEarlierStageAndNamesRoundTrip) {
  StageBusy b;
  b.wall_us = 10;
  EXPECT_EQ(b.bottleneck(), Stage::kSource);  // all idle
  b.compute_us = b.target_us = 5;
  EXPECT_EQ(b.bottleneck(), Stage::kCompute);
  for (Stage s : kStages) EXPECT_EQ(ParseStage(StageName(s)), s);
  EXPECT_FALSE(ParseStage("proxy").has_value());
}

}  // namespace
}  // namespace ferry
