#include "sim_config.h"

#include <gtest/gtest.h>

#include <string>

#include "ferry/common/error.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::simworker {
namespace {

// The message of the kBadInput error `f` throws ("" and a test failure if it
// does not throw one).
template <typename F>
std::string BadInputMessage(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    EXPECT_EQ(ExitCodeFor(e.kind()), 2);
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

TEST(WorkersFile, ParsesEveryFieldAndAppliesDefaults) {
  auto workers = ParseWorkersJson(R"([
    {"token":"tok-1","host":"h1","platform":"proxmox","cluster":"c1","slots":3,
     "vms":[{"name":"vm1","uuid":"u-1","state":"shut-off","tags":["prod","db"],
             "disks":[{"name":"vda","size":1073741824,"format":"qcow2"},
                      {"name":"vdb"}]}]},
    {"token":"tok-2","host":"h2"}
  ])", "w.json");
  ASSERT_EQ(workers.size(), 2u);
  const WorkerSpec& a = workers[0];
  EXPECT_EQ(a.token, "tok-1");
  EXPECT_EQ(a.host, "h1");
  EXPECT_EQ(a.platform, "proxmox");
  EXPECT_EQ(a.cluster, "c1");
  EXPECT_EQ(a.slots, 3u);
  ASSERT_EQ(a.vms.size(), 1u);
  EXPECT_EQ(a.vms[0].name, "vm1");
  EXPECT_EQ(a.vms[0].uuid, "u-1");
  EXPECT_EQ(a.vms[0].state, "shut-off");
  EXPECT_EQ(a.vms[0].tags, (std::vector<std::string>{"prod", "db"}));
  ASSERT_EQ(a.vms[0].disks.size(), 2u);
  EXPECT_EQ(a.vms[0].disks[0].size, 1073741824u);
  EXPECT_EQ(a.vms[0].disks[0].format, "qcow2");
  EXPECT_EQ(a.vms[0].disks[1].size, 0u);  // unknown
  EXPECT_EQ(a.vms[0].disks[1].format, "raw");

  const WorkerSpec& b = workers[1];
  EXPECT_EQ(b.platform, "libvirt");
  EXPECT_EQ(b.cluster, "");
  EXPECT_EQ(b.slots, 1u);
  EXPECT_TRUE(b.vms.empty());
}

TEST(WorkersFile, ErrorsNameTheFileAndTheField) {
  auto msg = [](const std::string& text) {
    return BadInputMessage([&] { ParseWorkersJson(text, "w.json"); });
  };
  EXPECT_EQ(msg(R"([{"host":"h1"}])"), "w.json: [0].token: missing (a string is required)");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h1"},{"token":"t","host":7}])"),
            "w.json: [1].host: expected a string, got 7");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h","slots":0}])"),
            "w.json: [0].slots: must be from 1 to 1024, got 0");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h","slots":-2}])"),
            "w.json: [0].slots: expected a non-negative integer, got -2");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h","vms":[{"name":"a","disks":[{"name":"vda","size":"1G"}]}]}])"),
            "w.json: [0].vms[0].disks[0].size: expected a non-negative integer, got \"1G\"");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h","slot":2}])"), "w.json: [0].slot: unknown field");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h","vms":[{"name":"a"},{"name":"a"}]}])"),
            "w.json: [0].vms[1].name: VM 'a' listed twice");
  EXPECT_EQ(msg(R"([{"token":"t","host":"h","vms":[{"name":"a","tags":["x",1]}]}])"),
            "w.json: [0].vms[0].tags[1]: expected a string, got 1");
  EXPECT_EQ(msg(R"([{"token":"","host":"h"}])"), "w.json: [0].token: must not be empty");
  EXPECT_EQ(msg("[]"), "w.json: the array of workers is empty");
  EXPECT_EQ(msg(R"({"token":"t"})"), "w.json: expected a JSON array of workers");
  EXPECT_NE(msg("[{").find("w.json: not valid JSON"), std::string::npos);
}

TEST(WorkersFile, UnreadableFileIsBadInputNamingIt) {
  std::string m = BadInputMessage([] { LoadWorkersFile("/nonexistent/workers.json"); });
  EXPECT_NE(m.find("/nonexistent/workers.json"), std::string::npos) << m;
}

TEST(DiskSpec, SplitsAtTheLastSlash) {
  EXPECT_EQ(ParseDiskSpec("vm1/vda"), (DiskRef{"vm1", "vda"}));
  EXPECT_EQ(ParseDiskSpec("web/prod/scsi0"), (DiskRef{"web/prod", "scsi0"}));
  for (const char* bad : {"vm1", "/vda", "vm1/", ""}) {
    std::string m = BadInputMessage([&] { ParseDiskSpec(bad); });
    EXPECT_NE(m.find("expected VM/DISK"), std::string::npos) << m;
  }
}

TEST(DiskSpec, FailSpecTakesACount) {
  FailSpec f = ParseFailSpec("vm1/vda:2");
  EXPECT_EQ(f.disk, (DiskRef{"vm1", "vda"}));
  EXPECT_EQ(f.count, 2);
  EXPECT_NE(BadInputMessage([] { ParseFailSpec("vm1/vda"); }).find("expected VM/DISK:N"),
            std::string::npos);
  EXPECT_NE(BadInputMessage([] { ParseFailSpec("vm1/vda:0"); }).find("from 1 to"),
            std::string::npos);
  EXPECT_NE(BadInputMessage([] { ParseFailSpec("vm1/vda:x"); }).find("got 'x'"),
            std::string::npos);
  EXPECT_NE(BadInputMessage([] { ParseFailSpec("vda:1"); }).find("expected VM/DISK"),
            std::string::npos);
}

TEST(CommandLine, ParsesOptions) {
  SimOptions o = ParseCommandLine({"--coordinator", "127.0.0.1:7000", "--workers", "w.json",
                                   "--tls-ca", "ca.pem", "--tls-name=localhost", "--report",
                                   "r.json", "--task-ms", "50", "--snapshot-ms", "5", "--fail",
                                   "vm1/vda:2", "--fail", "vm2/vdb:1", "--hang", "vm3/sda",
                                   "--pull-wait-ms", "0", "--exit-when-idle-ms", "300",
                                   "--quiet"});
  EXPECT_EQ(o.coordinator, "127.0.0.1:7000");
  EXPECT_EQ(o.workers_file, "w.json");
  EXPECT_TRUE(o.tls);
  EXPECT_EQ(o.tls_ca, "ca.pem");
  EXPECT_EQ(o.tls_name, "localhost");
  EXPECT_EQ(o.report_file, "r.json");
  EXPECT_EQ(o.task_ms, 50);
  EXPECT_EQ(o.snapshot_ms, 5);
  ASSERT_EQ(o.fails.size(), 2u);
  EXPECT_EQ(o.fails[1].disk, (DiskRef{"vm2", "vdb"}));
  EXPECT_EQ(o.fails[1].count, 1);
  ASSERT_EQ(o.hangs.size(), 1u);
  EXPECT_EQ(o.hangs[0], (DiskRef{"vm3", "sda"}));
  EXPECT_EQ(o.pull_wait_ms, 0);
  EXPECT_EQ(o.exit_when_idle_ms, 300);
  EXPECT_TRUE(o.quiet);

  SimOptions d = ParseCommandLine({"--coordinator", "c:1", "--workers", "w"});
  EXPECT_FALSE(d.tls);
  EXPECT_EQ(d.task_ms, 200);
  EXPECT_EQ(d.snapshot_ms, 20);
  EXPECT_EQ(d.pull_wait_ms, 1000);
  EXPECT_LT(d.exit_when_idle_ms, 0);
}

TEST(CommandLine, ErrorsNameTheOption) {
  EXPECT_EQ(BadInputMessage([] { ParseCommandLine({"--workers", "w"}); }),
            "--coordinator HOST:PORT is required");
  EXPECT_EQ(BadInputMessage([] { ParseCommandLine({"--coordinator", "c:1"}); }),
            "--workers FILE.json is required");
  EXPECT_EQ(BadInputMessage([] {
              ParseCommandLine({"--coordinator", "c:1", "--workers", "w", "--task-ms", "-1"});
            }),
            "option --task-ms: '-1' is not an integer from 0 to 86400000");
  EXPECT_EQ(BadInputMessage([] { ParseCommandLine({"--coordinator"}); }),
            "option --coordinator needs a value (see --help)");
  EXPECT_EQ(BadInputMessage([] { ParseCommandLine({"--frobnicate"}); }),
            "unknown option --frobnicate (see --help)");
  EXPECT_TRUE(ParseCommandLine({"--help"}).help);
}

TEST(CoordinatorAddress, SplitsHostAndPort) {
  auto hp = rpc::SplitHostPort("coord.example:7000");
  EXPECT_EQ(hp.host, "coord.example");
  EXPECT_EQ(hp.port, 7000);
  hp = rpc::SplitHostPort("[::1]:9");
  EXPECT_EQ(hp.host, "::1");
  EXPECT_EQ(hp.port, 9);
  for (const char* bad : {"host", "host:", "host:0", "host:65536", "host:12x", ":80", "::1:80"}) {
    std::string m = BadInputMessage([&] { rpc::SplitHostPort(bad); });
    EXPECT_NE(m.find(bad), std::string::npos) << m;
  }
  EXPECT_TRUE(rpc::IsIpLiteral("127.0.0.1"));
  EXPECT_TRUE(rpc::IsIpLiteral("::1"));
  EXPECT_FALSE(rpc::IsIpLiteral("localhost"));

  rpc::CoordinatorEndpoint e;
  e.address = "10.0.0.5:7000";
  EXPECT_EQ(rpc::TlsServerName(e), "10.0.0.5");
  e.server_name = "coord.example";
  EXPECT_EQ(rpc::TlsServerName(e), "coord.example");
}

}  // namespace
}  // namespace ferry::simworker
