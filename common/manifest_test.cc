#include "ferry/common/manifest.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "ferry/common/error.h"

namespace ferry {
namespace {

RestorePointManifest Sample() {
  RestorePointManifest m;
  m.id = "20261122T034210Z-abcdef";
  m.vm = {"web01", "6f1c0a3e-0000-4000-8000-000000000001", "qemu"};
  m.started_at = "2026-11-22T03:42:10Z";
  m.completed_at = "2026-11-22T03:43:00Z";
  DiskRecord d;
  d.name = "virtio0";
  d.size = (1ull << 34) + 512;
  d.chunk_size = 4 << 20;
  d.source_format = "qcow2";
  d.index_file = "disk-0.fidx";
  d.index_sha256 = Sha256("x", 1);
  d.chunks = 4097;
  d.zero_chunks = 4000;
  d.new_chunks = 90;
  d.reused_chunks = 7;
  d.read_bytes = 123456789;
  d.stored_bytes = 4567;
  m.disks.push_back(d);
  return m;
}

std::string CorruptMessage(const std::string& json) {
  try {
    ManifestFromJson(json, "m.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << json;
  return "";
}

TEST(ManifestTest, RoundTrip) {
  RestorePointManifest m = Sample();
  RestorePointManifest back = ManifestFromJson(ManifestToJson(m), "m.json");
  EXPECT_EQ(back.id, m.id);
  EXPECT_EQ(back.vm.uuid, m.vm.uuid);
  ASSERT_EQ(back.disks.size(), 1u);
  const DiskRecord* d = back.FindDisk("virtio0");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->size, m.disks[0].size);
  EXPECT_EQ(d->index_sha256, m.disks[0].index_sha256);
  EXPECT_EQ(d->read_bytes, 123456789u);
  EXPECT_EQ(back.FindDisk("nope"), nullptr);
}

TEST(ManifestTest, ErrorsNameTheMember) {
  auto v = boost::json::parse(ManifestToJson(Sample())).as_object();
  auto without_size = v;
  without_size["disks"].as_array()[0].as_object().erase("size");
  EXPECT_NE(CorruptMessage(boost::json::serialize(without_size)).find("disks[0].size"),
            std::string::npos);
  auto bad_type = v;
  bad_type["vm"].as_object()["name"] = 5;
  EXPECT_NE(CorruptMessage(boost::json::serialize(bad_type)).find("vm.name"), std::string::npos);
  auto escape = v;
  escape["disks"].as_array()[0].as_object()["index"] = "../../etc/passwd";
  EXPECT_NE(CorruptMessage(boost::json::serialize(escape)).find("index"), std::string::npos);
  auto future = v;
  future["format"] = "ferry-restore-point-v9";
  EXPECT_NE(CorruptMessage(boost::json::serialize(future)).find("v9"), std::string::npos);
  EXPECT_NE(CorruptMessage("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(CorruptMessage("[]").find("not a JSON object"), std::string::npos);
}

}  // namespace
}  // namespace ferry
