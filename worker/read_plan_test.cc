// The read plan: a disk task as it travels from the snapshot's worker,
// through the coordinator, to the disk's worker.
#include <gtest/gtest.h>

#include "ferry/common/error.h"
#include "ferry/worker/vm_backup.h"

namespace ferry::worker {
namespace {

DiskTask Sample() {
  DiskTask t;
  t.point_id = "20261201T120000.000000Z-abcdef";
  t.disk = {"scsi0", "qcow2", 34359738368ull, "/var/lib/vz/images/100/vm-100-disk-0.qcow2", true, ""};
  t.source = {"/run/ferry/1a2b3c4d.nbd", "scsi0", "ferry-0a1b2c3d-11111111"};
  t.plan.incremental = true;
  t.plan.previous_bitmap = "ferry-0a1b2c3d-11111111";
  t.plan.new_bitmap = "ferry-0a1b2c3d-22222222";
  t.plan.generation = "22222222";
  t.previous_point = "20261130T120000.000000Z-fedcba";
  return t;
}

TEST(ReadPlanTest, RoundTrips) {
  DiskTask back = ReadPlanFromJson(ReadPlanToJson(Sample()));
  DiskTask want = Sample();
  EXPECT_EQ(back.point_id, want.point_id);
  EXPECT_EQ(back.disk.name, want.disk.name);
  EXPECT_EQ(back.disk.size, want.disk.size);
  EXPECT_EQ(back.disk.identity, want.disk.identity);
  EXPECT_EQ(back.source.unix_socket, want.source.unix_socket);
  EXPECT_EQ(back.source.dirty_bitmap, want.source.dirty_bitmap);
  EXPECT_TRUE(back.plan.incremental);
  EXPECT_EQ(back.plan.new_bitmap, want.plan.new_bitmap);
  EXPECT_EQ(back.previous_point, want.previous_point);
}

std::string BadInput(const std::string& json) {
  try {
    ReadPlanFromJson(json);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << json;
  return "";
}

TEST(ReadPlanTest, BadPlansNameWhatIsWrong) {
  std::string good = ReadPlanToJson(Sample());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  EXPECT_NE(BadInput("").find("not a JSON object"), std::string::npos);
  EXPECT_NE(BadInput(with("\"incremental\":true", "\"incremental\":1")).find("plan.incremental"), std::string::npos);
  EXPECT_NE(BadInput(with("\"size\":34359738368", "\"size\":-1")).find("disk.size"), std::string::npos);
  EXPECT_NE(BadInput(with("\"previous_point\":\"20261130T120000.000000Z-fedcba\"", "\"previous_point\":\"\""))
                .find("previous point"),
            std::string::npos);
  EXPECT_NE(BadInput(with("ferry-read-plan-v1", "ferry-read-plan-v2")).find("newer Ferry"), std::string::npos);
  EXPECT_NE(BadInput(with(",\"point_id\"", ",\"point\"")).find("point_id"), std::string::npos);
}

}  // namespace
}  // namespace ferry::worker
