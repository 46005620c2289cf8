#include "ferry/common/manifest.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "ferry/common/error.h"
#include "ferry/common/version.h"

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

// "writer" is optional: written when set, read back as written, inside the
// checksum; a manifest without it (every one written before it existed) reads
// with an empty writer.
TEST(ManifestTest, WriterIsOptionalAndCheckedLikeTheRest) {
  EXPECT_EQ(WriterName(), std::string("ferry ") + kVersion);
  RestorePointManifest m = Sample();
  const std::string without = ManifestToJson(m);
  EXPECT_EQ(without.find("\"writer\""), std::string::npos);
  EXPECT_EQ(ManifestFromJson(without, "m.json").writer, "");
  m.writer = WriterName();
  std::string text = ManifestToJson(m);
  EXPECT_NE(text.find("\"writer\":\"ferry " + std::string(kVersion) + "\""), std::string::npos) << text;
  EXPECT_EQ(ManifestFromJson(text, "m.json").writer, WriterName());
  size_t at = text.find("\"ferry " + std::string(kVersion));
  ASSERT_NE(at, std::string::npos);
  text[at + 1] = 'F';  // "Ferry ...": the checksum covers the writer too
  EXPECT_NE(CorruptMessage(text).find("checksum does not match"), std::string::npos);
}

// The member checks, shared by v1 and v2, on v1 text (no checksum to reseal).
TEST(ManifestTest, ErrorsNameTheMember) {
  auto v = boost::json::parse(ManifestToJson(Sample())).as_object();
  v["format"] = "ferry-restore-point-v1";
  v.erase("manifest_sha256");
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
  auto twice = v;
  twice["disks"].as_array().push_back(twice["disks"].as_array()[0]);
  EXPECT_NE(CorruptMessage(boost::json::serialize(twice)).find("names disk 'virtio0' twice"), std::string::npos);
  twice["disks"].as_array()[1].as_object()["name"] = "virtio1";
  EXPECT_NE(CorruptMessage(boost::json::serialize(twice)).find("uses file 'disk-0.fidx' twice"), std::string::npos);
  EXPECT_NE(CorruptMessage("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(CorruptMessage("[]").find("not a JSON object"), std::string::npos);
  EXPECT_EQ(ManifestFromJson(boost::json::serialize(v), "v1").format_version, 1);
}

TEST(ManifestTest, NewerFormatIsNotCalledDamage) {
  auto v = boost::json::parse(ManifestToJson(Sample())).as_object();
  v["format"] = "ferry-restore-point-v9";
  try {
    ManifestFromJson(boost::json::serialize(v), "m.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("newer Ferry (format ferry-restore-point-v9"), std::string::npos) << e.what();
  }
}

TEST(ManifestTest, V2WriterRefusesNothingButTheReaderRefusesDuplicateDisks) {
  RestorePointManifest m = Sample();
  m.disks.push_back(m.disks[0]);
  m.disks[1].index_file = "disk-1.fidx";
  EXPECT_NE(CorruptMessage(ManifestToJson(m)).find("twice"), std::string::npos);
}

// A v2 manifest relabelled v1 (which has no checksum) is still checked.
TEST(ManifestTest, RelabelledAsV1IsRefused) {
  std::string text = ManifestToJson(Sample());
  size_t at = text.find("ferry-restore-point-v2");
  ASSERT_NE(at, std::string::npos);
  text[at + 21] = '1';
  EXPECT_NE(CorruptMessage(text).find("checksum does not match"), std::string::npos);
}

// Every bit of a v2 manifest is covered: a flip anywhere is refused.
TEST(ManifestTest, EveryFlippedBitIsRefused) {
  RestorePointManifest m = Sample();
  m.config_files.push_back({"qemu-command-line", "qemu-cmdline.json", "/proc/1/cmdline", Sha256("c", 1)});
  m.disks[0].cbt = {"full", "no bitmap", "ferry-x-1", "abcd", "disk.qcow2"};
  const std::string good = ManifestToJson(m);
  ASSERT_EQ(ManifestFromJson(good, "m").format_version, 2);
  size_t refused = 0, flips = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      ++flips;
      try {
        ManifestFromJson(bad, "m");
      } catch (const Error& e) {
        // Damage, never "a newer format": the checksum is checked first.
        EXPECT_EQ(e.kind(), ErrorKind::kCorrupt) << "byte " << i << " bit " << bit << ": " << e.what();
        ++refused;
        continue;
      }
      ADD_FAILURE() << "flip of bit " << bit << " at byte " << i << " ('" << good[i] << "') accepted";
    }
  }
  EXPECT_EQ(refused, flips);
  EXPECT_EQ(flips, 8 * good.size());
}

}  // namespace
}  // namespace ferry
