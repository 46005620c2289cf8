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

DiskTask TcpSample() {
  DiskTask t = Sample();
  t.source.unix_socket = "";
  t.source.tcp_address = "[fd00::12]:10811";
  t.source.tls_identity = "ferry-1a2b3c4d";
  t.source.tls_psk_key = std::string(64, 'a');
  return t;
}

TEST(ReadPlanTest, RoundTripsTcpSourceWithCredentials) {
  DiskTask back = ReadPlanFromJson(ReadPlanToJson(TcpSample()));
  DiskTask want = TcpSample();
  EXPECT_EQ(back.source.unix_socket, "");
  EXPECT_EQ(back.source.tcp_address, want.source.tcp_address);
  EXPECT_EQ(back.source.tls_identity, want.source.tls_identity);
  EXPECT_EQ(back.source.tls_psk_key, want.source.tls_psk_key);
  EXPECT_EQ(back.source.export_name, want.source.export_name);
  EXPECT_EQ(back.source.dirty_bitmap, want.source.dirty_bitmap);
}

TEST(ReadPlanTest, UnixPlanHasNoTcpMembers) {
  std::string json = ReadPlanToJson(Sample());
  EXPECT_EQ(json.find("tcp_address"), std::string::npos);
  EXPECT_EQ(json.find("tls_"), std::string::npos);
}

// A plan as Ferry wrote it before exports over TCP: still reads.
TEST(ReadPlanTest, ReadsAPlanWithoutTheTcpMembers) {
  DiskTask t = ReadPlanFromJson(
      R"({"format":"ferry-read-plan-v1","point_id":"20261201T120000.000000Z-abcdef",)"
      R"("disk":{"name":"scsi0","format":"qcow2","size":1048576,"identity":"img"},)"
      R"("source":{"unix_socket":"/run/ferry/1a2b3c4d.nbd","export_name":"scsi0","dirty_bitmap":""},)"
      R"("plan":{"incremental":false,"reason":"first","previous_bitmap":"","new_bitmap":"b","generation":"g"},)"
      R"("previous_point":""})");
  EXPECT_EQ(t.source.unix_socket, "/run/ferry/1a2b3c4d.nbd");
  EXPECT_EQ(t.source.tcp_address, "");
  EXPECT_EQ(t.source.tls_identity, "");
  EXPECT_EQ(t.source.tls_psk_key, "");
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

TEST(ReadPlanTest, BadTcpSourcesNameWhatIsWrongButNotTheKey) {
  DiskTask t = TcpSample();
  t.source.tls_psk_key = "";
  EXPECT_NE(BadInput(ReadPlanToJson(t)).find("without TLS credentials"), std::string::npos);
  t = TcpSample();
  t.source.unix_socket = "/run/ferry/x.nbd";
  EXPECT_NE(BadInput(ReadPlanToJson(t)).find("source.unix_socket"), std::string::npos);
  t = TcpSample();
  t.source.tcp_address = "fd00::12:10811";
  EXPECT_NE(BadInput(ReadPlanToJson(t)).find("brackets"), std::string::npos);
  t = TcpSample();
  t.source.tls_psk_key = "0123456789abcdefXYZ";  // not hex
  std::string message = BadInput(ReadPlanToJson(t));
  EXPECT_NE(message.find("source.tls_psk_key"), std::string::npos);
  EXPECT_EQ(message.find(t.source.tls_psk_key), std::string::npos) << message;
}

// libvirt's TCP exports: x509 (this worker's directory) or plaintext, no key.
TEST(ReadPlanTest, RoundTripsLibvirtTcpSources) {
  DiskTask t = Sample();
  t.source.unix_socket = "";
  t.source.tcp_address = "10.0.0.13:10809";
  t.source.export_name = "ferry-0123456789abcdef-vda";
  t.source.tls_x509_dir = "/run/ferry/config";
  DiskTask back = ReadPlanFromJson(ReadPlanToJson(t));
  EXPECT_EQ(back.source.tcp_address, t.source.tcp_address);
  EXPECT_EQ(back.source.tls_x509_dir, "/run/ferry/config");
  EXPECT_FALSE(back.source.plaintext);
  EXPECT_TRUE(back.source.tls_psk_key.empty());
  t.source.tls_x509_dir = "";
  t.source.plaintext = true;
  back = ReadPlanFromJson(ReadPlanToJson(t));
  EXPECT_TRUE(back.source.plaintext);
  EXPECT_TRUE(back.source.tls_x509_dir.empty());
  // Neither member in a plan that has no use for them.
  std::string json = ReadPlanToJson(TcpSample());
  EXPECT_EQ(json.find("plaintext"), std::string::npos);
  EXPECT_EQ(json.find("tls_x509_dir"), std::string::npos);
}

TEST(ReadPlanTest, BadLibvirtTcpSourcesNameWhatIsWrong) {
  DiskTask t = Sample();  // unix socket
  t.source.plaintext = true;
  EXPECT_NE(BadInput(ReadPlanToJson(t)).find("'source.plaintext' is only for a source.tcp_address"), std::string::npos);
  t = TcpSample();
  t.source.plaintext = true;  // and a PSK
  std::string message = BadInput(ReadPlanToJson(t));
  EXPECT_NE(message.find("source.tls_psk_key"), std::string::npos) << message;
  EXPECT_EQ(message.find(t.source.tls_psk_key), std::string::npos) << message;
  t = TcpSample();
  t.source.tls_identity = t.source.tls_psk_key = "";
  t.source.plaintext = true;
  t.source.tls_x509_dir = "/pki";
  EXPECT_NE(BadInput(ReadPlanToJson(t)).find("together with source.tls_x509_dir"), std::string::npos);
}

TEST(NbdTcpAddressTest, SplitsAndJoinsHostsAndPorts) {
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(SplitNbdTcpAddress("10.0.0.5:10809"), P("10.0.0.5", "10809"));
  EXPECT_EQ(SplitNbdTcpAddress("pve1.example:1"), P("pve1.example", "1"));
  EXPECT_EQ(SplitNbdTcpAddress("[::1]:65535"), P("::1", "65535"));
  for (const char* bad : {"host", "host:", ":10809", "::1:10809", "[::1]10809", "[::1", "h:0", "h:65536", "h:x"}) {
    EXPECT_THROW(SplitNbdTcpAddress(bad), Error) << bad;
  }
  EXPECT_EQ(JoinNbdTcpAddress("10.0.0.5", 10809), "10.0.0.5:10809");
  EXPECT_EQ(JoinNbdTcpAddress("fd00::12", 10811), "[fd00::12]:10811");
  EXPECT_EQ(SplitNbdTcpAddress(JoinNbdTcpAddress("fd00::12", 10811)), P("fd00::12", "10811"));
}

// The reader refuses a TCP source without credentials before connecting.
TEST(NbdTcpAddressTest, ReaderRefusesTcpWithoutTls) {
  NbdSource s;
  s.tcp_address = "127.0.0.1:1";
  s.export_name = "scsi0";
  try {
    OpenNbdReader(s);
    ADD_FAILURE() << "accepted a TCP source without TLS";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("without TLS"), std::string::npos) << e.what();
  }
}

// Plaintext and x509 are for TCP only, and one way in at a time.
TEST(NbdTcpAddressTest, ReaderRefusesMixedOrMisplacedTls) {
  auto refused = [](const NbdSource& s, const std::string& want) {
    try {
      OpenNbdReader(s);
      ADD_FAILURE() << "accepted " << s.export_name;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  NbdSource s;
  s.unix_socket = "/nonexistent.sock";
  s.export_name = "vda";
  s.plaintext = true;
  refused(s, "for TCP exports only");
  s = NbdSource{};
  s.tcp_address = "127.0.0.1:1";
  s.export_name = "vda";
  s.plaintext = true;
  s.tls_x509_dir = "/pki";
  refused(s, "more than one of");
}

}  // namespace
}  // namespace ferry::worker
