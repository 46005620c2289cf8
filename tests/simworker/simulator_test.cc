// The simulator end to end over real TCP (and TLS) against a scripted
// in-process coordinator (fake_coordinator.h).
#include "simulator.h"

#include <gtest/gtest.h>

#include <kj/async-io.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "fake_coordinator.h"
#include "ferry/common/log.h"
#include "ferry/rpc/tls.h"

namespace ferry::simworker::testing {
namespace {
namespace json = boost::json;

constexpr uint64_t kVdaSize = 4 << 20;

WorkerSpec MakeWorker(const std::string& host, uint32_t slots, std::vector<std::string> disks) {
  WorkerSpec w;
  w.token = "tok-" + host;
  w.host = host;
  w.platform = "proxmox";
  w.cluster = "c1";
  w.slots = slots;
  SimVm vm;
  vm.name = "vm1";
  vm.uuid = "uuid-vm1";
  vm.tags = {"prod"};
  for (const auto& d : disks) {
    SimDisk disk;
    disk.name = d;
    disk.size = d == "vda" ? kVdaSize : 0;  // others unknown: 1 GiB
    disk.format = "qcow2";
    vm.disks.push_back(disk);
  }
  w.vms.push_back(vm);
  return w;
}

SimOptions MakeOptions(const std::string& address) {
  SimOptions o;
  o.coordinator = address;
  o.task_ms = 60;
  o.snapshot_ms = 5;
  o.release_ms = 5;
  o.pull_wait_ms = 1000;  // the fake caps its long poll at 20 ms
  o.exit_when_idle_ms = 150;
  o.reconnect_ms = 50;
  return o;
}

// The coordinator's side of one VM backup: snapshot, then one disk task per
// exported disk (failed attempts retried), then release with commit.
class VmScript {
 public:
  VmScript(FakeCoordinator& fake, std::vector<std::string> disks)
      : fake_(fake), disks_(std::move(disks)) {
    FakeItem snap;
    snap.assignment = "snap-vm1.1";
    snap.kind = FakeItem::kSnapshot;
    snap.vm = "vm1";
    snap.disks = disks_;
    snap.snapshot_id = 7;
    fake_.queue.push_back(snap);
    fake_.on_result = [this](const FakeResult& r) { OnResult(r); };
  }

  int disks_done = 0;
  bool released = false;

 private:
  void OnResult(const FakeResult& r) {
    if (r.assignment == "snap-vm1.1") {
      if (!r.ok) return;
      for (const auto& [disk, uri] : r.exports) Push(disk, uri, 1);
    } else if (r.assignment.rfind("disk-", 0) == 0) {
      size_t dot = r.assignment.rfind('.');
      std::string disk = r.assignment.substr(5, dot - 5);
      uint32_t attempt = static_cast<uint32_t>(std::stoul(r.assignment.substr(dot + 1)));
      if (!r.ok) {
        Push(disk, uris_[disk], attempt + 1);
        return;
      }
      if (++disks_done == static_cast<int>(disks_.size())) {
        FakeItem rel;
        rel.assignment = "rel-vm1.1";
        rel.kind = FakeItem::kRelease;
        rel.vm = "vm1";
        rel.snapshot_id = 7;
        rel.commit = true;
        rel.point_id = "sim-vm1-7";  // reserved by the coordinator; the worker commits it
        fake_.queue.push_back(rel);
      }
    } else if (r.assignment == "rel-vm1.1") {
      released = true;
    }
  }

  void Push(const std::string& disk, const std::string& uri, uint32_t attempt) {
    uris_[disk] = uri;
    FakeItem d;
    d.assignment = "disk-" + disk + "." + std::to_string(attempt);
    d.kind = FakeItem::kDisk;
    d.vm = "vm1";
    d.disk = disk;
    d.export_uri = uri;
    d.snapshot_id = 7;
    d.task_id = 100 + attempt;
    d.attempt = attempt;
    d.tier = "host";
    fake_.queue.push_back(d);
  }

  FakeCoordinator& fake_;
  std::vector<std::string> disks_;
  std::map<std::string, std::string> uris_;
};

void RunToIdle(kj::AsyncIoContext& io, Simulator& sim) {
  io.provider->getTimer().timeoutAfter(20 * kj::SECONDS, sim.Run()).wait(io.waitScope);
}

// The report's items of one worker, by assignment id.
std::map<std::string, json::object> ItemsById(const json::object& report, size_t worker = 0) {
  std::map<std::string, json::object> out;
  for (const auto& v : report.at("workers").as_array()[worker].at("items").as_array()) {
    out[std::string(v.at("assignment").as_string())] = v.as_object();
  }
  return out;
}

std::string Str(const json::value& v) { return std::string(v.as_string()); }

class SimulatorTest : public ::testing::Test {
 protected:
  void SetUp() override { SetLogLevel(LogLevel::kWarning); }
  void TearDown() override { SetLogLevel(LogLevel::kInfo); }
};

TEST_F(SimulatorTest, FullVmBackupSnapshotDisksRelease) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  VmScript script(fake, {"vda", "vdb", "vdc"});
  Simulator sim(io, MakeOptions(fake.Listen()), {MakeWorker("h1", 2, {"vda", "vdb", "vdc"})},
                nullptr);
  RunToIdle(io, sim);
  EXPECT_TRUE(script.released);

  // What the coordinator saw.
  ASSERT_EQ(fake.registrations.size(), 1u);
  const FakeRegistration& reg = fake.registrations[0];
  EXPECT_EQ(reg.protocol_version, rpc::kProtocolVersion);
  EXPECT_EQ(reg.token, "tok-h1");
  EXPECT_EQ(reg.host, "h1");
  EXPECT_EQ(reg.platform, "proxmox");
  EXPECT_EQ(reg.cluster, "c1");
  EXPECT_EQ(reg.slots, 2u);
  EXPECT_EQ(reg.version, "sim-1");
  EXPECT_TRUE(reg.running.empty());
  ASSERT_EQ(fake.inventories.size(), 1u);
  EXPECT_EQ(fake.inventories[0], std::vector<std::string>{"vm1"});
  for (uint32_t free : fake.pull_free_slots) EXPECT_LE(free, 2u);
  EXPECT_EQ(fake.progress.size(), 3u);  // one per disk, half way

  ASSERT_EQ(fake.results.size(), 5u);
  const FakeResult& snap = fake.results[0];
  EXPECT_EQ(snap.assignment, "snap-vm1.1");
  EXPECT_TRUE(snap.ok);
  ASSERT_EQ(snap.exports.size(), 3u);
  EXPECT_EQ(snap.exports[0].first, "vda");
  EXPECT_EQ(snap.exports[0].second, "nbd+unix:///vda?socket=/run/ferry/sim/vm1.sock");
  std::map<std::string, FakeResult> by_id;
  for (const auto& r : fake.results) by_id[r.assignment] = r;
  EXPECT_EQ(by_id["disk-vda.1"].bytes_read, kVdaSize);
  EXPECT_EQ(by_id["disk-vda.1"].bytes_stored, kVdaSize / 2);
  EXPECT_EQ(by_id["disk-vdb.1"].bytes_read, uint64_t{1} << 30);
  EXPECT_TRUE(by_id["rel-vm1.1"].ok);
  EXPECT_EQ(by_id["rel-vm1.1"].point_id, "sim-vm1-7");
  // Heartbeats name what runs.
  bool saw_disk = false;
  for (const auto& hb : fake.heartbeats) {
    for (const auto& id : hb) saw_disk |= id.rfind("disk-", 0) == 0;
  }
  EXPECT_TRUE(saw_disk);

  // The report.
  json::object report = sim.Report();
  const json::object& w = report.at("workers").as_array()[0].as_object();
  EXPECT_EQ(Str(w.at("host")), "h1");
  EXPECT_EQ(w.at("worker_id").as_uint64(), 1u);
  EXPECT_EQ(w.at("slots").as_uint64(), 2u);
  EXPECT_EQ(w.at("max_concurrent_disk_tasks").as_int64(), 2);
  auto items = ItemsById(report);
  ASSERT_EQ(items.size(), 5u);
  for (const auto& [id, item] : items) {
    EXPECT_EQ(Str(item.at("outcome")), "done") << id;
    EXPECT_TRUE(item.at("ok").as_bool()) << id;
    EXPECT_TRUE(item.at("accepted").as_bool()) << id;
    EXPECT_LE(item.at("start_ms").as_int64(), item.at("end_ms").as_int64()) << id;
  }
  EXPECT_EQ(Str(items["disk-vdb.1"].at("kind")), "disk");
  EXPECT_EQ(Str(items["disk-vdb.1"].at("disk")), "vdb");
  EXPECT_EQ(Str(items["disk-vdb.1"].at("tier")), "host");
  EXPECT_EQ(Str(items["disk-vdb.1"].at("export_uri")),
            "nbd+unix:///vdb?socket=/run/ferry/sim/vm1.sock");
  EXPECT_GE(items["disk-vdb.1"].at("end_ms").as_int64() - items["disk-vdb.1"].at("start_ms").as_int64(), 55);
  EXPECT_EQ(Str(items["snap-vm1.1"].at("kind")), "snapshot");
  EXPECT_EQ(Str(items["rel-vm1.1"].at("point_id")), "sim-vm1-7");
  const json::object& totals = report.at("totals").as_object();
  EXPECT_EQ(totals.at("items").as_int64(), 5);
  EXPECT_EQ(totals.at("disk").as_int64(), 3);
  EXPECT_EQ(totals.at("ok").as_int64(), 5);
  EXPECT_EQ(totals.at("done").as_int64(), 5);
  EXPECT_EQ(totals.at("max_concurrent_disk_tasks").as_int64(), 2);
}

TEST_F(SimulatorTest, FailSpecFailsTheFirstAttemptsThenSucceeds) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  VmScript script(fake, {"vda", "vdb"});
  SimOptions o = MakeOptions(fake.Listen());
  o.fails.push_back(ParseFailSpec("vm1/vda:2"));
  Simulator sim(io, o, {MakeWorker("h1", 1, {"vda", "vdb"})}, nullptr);
  RunToIdle(io, sim);
  EXPECT_TRUE(script.released);

  std::vector<std::string> vda;
  for (const auto& r : fake.results) {
    if (r.assignment.rfind("disk-vda.", 0) != 0) continue;
    vda.push_back(r.assignment);
    if (r.assignment == "disk-vda.3") {
      EXPECT_TRUE(r.ok);
    } else {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.error_kind, "retryable");
      EXPECT_EQ(r.error, "simulated failure reading vm1/vda at offset 0");
    }
  }
  EXPECT_EQ(vda, (std::vector<std::string>{"disk-vda.1", "disk-vda.2", "disk-vda.3"}));
  auto items = ItemsById(sim.Report());
  EXPECT_FALSE(items["disk-vda.1"].at("ok").as_bool());
  EXPECT_EQ(Str(items["disk-vda.1"].at("outcome")), "done");
  EXPECT_TRUE(items["disk-vda.3"].at("ok").as_bool());
  EXPECT_EQ(sim.Report().at("totals").at("failed").as_int64(), 2);
  EXPECT_EQ(sim.Report().at("totals").at("max_concurrent_disk_tasks").as_int64(), 1);
}

TEST_F(SimulatorTest, HungDiskRunsUntilTheHeartbeatCancelsIt) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  VmScript script(fake, {"vda", "vdb"});
  fake.cancel = {"disk-vdb.1"};
  SimOptions o = MakeOptions(fake.Listen());
  o.hangs.push_back(ParseDiskSpec("vm1/vdb"));
  Simulator sim(io, o, {MakeWorker("h1", 2, {"vda", "vdb"})}, nullptr);
  RunToIdle(io, sim);

  for (const auto& r : fake.results) EXPECT_NE(r.assignment, "disk-vdb.1");  // nothing reported
  // Listed by heartbeats until cancelled, never after.
  size_t last_listed = 0, first = SIZE_MAX;
  for (size_t i = 0; i < fake.heartbeats.size(); ++i) {
    const auto& hb = fake.heartbeats[i];
    if (std::find(hb.begin(), hb.end(), "disk-vdb.1") != hb.end()) {
      first = std::min(first, i);
      last_listed = i;
    }
  }
  ASSERT_NE(first, SIZE_MAX);
  EXPECT_EQ(first, last_listed);
  EXPECT_GT(fake.heartbeats.size(), last_listed + 1);
  auto items = ItemsById(sim.Report());
  EXPECT_EQ(Str(items["disk-vdb.1"].at("outcome")), "cancelled");
  EXPECT_FALSE(items["disk-vdb.1"].at("ok").as_bool());
  EXPECT_EQ(Str(items["disk-vda.1"].at("outcome")), "done");
}

TEST_F(SimulatorTest, ReconnectsAndDeliversResultsOfResumedAssignments) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  VmScript script(fake, {"vda", "vdb"});
  SimOptions o = MakeOptions(fake.Listen());
  o.task_ms = 400;
  o.reconnect_ms = 300;  // the tasks end while the worker is disconnected
  Simulator sim(io, o, {MakeWorker("h1", 2, {"vda", "vdb"})}, nullptr);
  // Drop the connection once the first disk is half way.
  bool dropped = false;
  std::function<kj::Promise<void>()> poll = [&]() -> kj::Promise<void> {
    return io.provider->getTimer().afterDelay(5 * kj::MILLISECONDS).then([&]() -> kj::Promise<void> {
      if (!fake.progress.empty()) {
        dropped = true;
        fake.DropConnections();
        return kj::READY_NOW;
      }
      return poll();
    });
  };
  auto dropper = poll().eagerlyEvaluate(nullptr);
  RunToIdle(io, sim);
  EXPECT_TRUE(dropped);
  EXPECT_TRUE(script.released);

  ASSERT_EQ(fake.registrations.size(), 2u);
  auto running = fake.registrations[1].running;
  std::sort(running.begin(), running.end());
  EXPECT_EQ(running, (std::vector<std::string>{"disk-vda.1", "disk-vdb.1"}));
  EXPECT_EQ(fake.inventories.size(), 2u);
  auto items = ItemsById(sim.Report());
  EXPECT_EQ(Str(items["disk-vda.1"].at("outcome")), "done");
  EXPECT_EQ(Str(items["disk-vdb.1"].at("outcome")), "done");
  EXPECT_EQ(sim.Report().at("workers").at(0).at("registrations").as_int64(), 2);
  EXPECT_EQ(sim.Report().at("workers").at(0).at("connection_losses").as_int64(), 1);
}

TEST_F(SimulatorTest, AssignmentsNotResumedAreDropped) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  VmScript script(fake, {"vda"});
  fake.resume = [](const std::string&) { return false; };
  SimOptions o = MakeOptions(fake.Listen());
  o.task_ms = 400;
  Simulator sim(io, o, {MakeWorker("h1", 1, {"vda"})}, nullptr);
  bool dropped = false;
  std::function<kj::Promise<void>()> poll = [&]() -> kj::Promise<void> {
    return io.provider->getTimer().afterDelay(5 * kj::MILLISECONDS).then([&]() -> kj::Promise<void> {
      if (!fake.progress.empty()) {
        dropped = true;
        fake.DropConnections();
        return kj::READY_NOW;
      }
      return poll();
    });
  };
  auto dropper = poll().eagerlyEvaluate(nullptr);
  RunToIdle(io, sim);
  EXPECT_TRUE(dropped);
  ASSERT_EQ(fake.registrations.size(), 2u);
  EXPECT_EQ(fake.registrations[1].running, std::vector<std::string>{"disk-vda.1"});
  for (const auto& r : fake.results) EXPECT_NE(r.assignment, "disk-vda.1");
  auto items = ItemsById(sim.Report());
  EXPECT_EQ(Str(items["disk-vda.1"].at("outcome")), "dropped");
}

TEST_F(SimulatorTest, RefusedRegistrationIsRetried) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  fake.refuse_tokens = {"tok-h1"};
  SimOptions o = MakeOptions(fake.Listen());
  Simulator sim(io, o, {MakeWorker("h1", 1, {"vda"})}, nullptr);
  sim.Run().exclusiveJoin(io.provider->getTimer().afterDelay(400 * kj::MILLISECONDS))
      .wait(io.waitScope);
  EXPECT_GE(fake.refused_registrations, 3);
  EXPECT_EQ(sim.RegisteredWorkers(), 0u);
}

// A slot that frees while a freeSlots = 0 long poll waits is offered at once
// by a second pull, not when that poll ends.
TEST_F(SimulatorTest, FreedSlotIsOfferedWithoutWaitingForTheLongPoll) {
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  fake.max_wait_ms = 5000;  // long polls really wait
  for (int i = 0; i < 4; ++i) {
    FakeItem d;
    d.assignment = "disk-" + std::to_string(i) + ".1";
    d.kind = FakeItem::kDisk;
    d.vm = "vm1";
    d.disk = "vda";
    fake.queue.push_back(d);
  }
  SimOptions o = MakeOptions(fake.Listen());
  o.pull_wait_ms = 5000;
  Simulator sim(io, o, {MakeWorker("h1", 2, {"vda"})}, nullptr);
  RunToIdle(io, sim);
  ASSERT_EQ(fake.results.size(), 4u);
  auto items = ItemsById(sim.Report());
  int64_t first_end = std::min(items["disk-0.1"].at("end_ms").as_int64(),
                               items["disk-1.1"].at("end_ms").as_int64());
  int64_t third_start = std::min(items["disk-2.1"].at("start_ms").as_int64(),
                                 items["disk-3.1"].at("start_ms").as_int64());
  EXPECT_LT(third_start - first_end, 1000);
  EXPECT_EQ(sim.Report().at("totals").at("max_concurrent_disk_tasks").as_int64(), 2);
  for (uint32_t free : fake.pull_free_slots) EXPECT_LE(free, 2u);
}

TEST_F(SimulatorTest, ManyWorkersOnOneLoopRespectSlots) {
  size_t n = 50;
  if (const char* env = std::getenv("FERRY_SIM_TEST_WORKERS")) n = std::stoul(env);
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  for (size_t i = 0; i < 2 * n; ++i) {
    FakeItem d;
    d.assignment = "disk-" + std::to_string(i) + ".1";
    d.kind = FakeItem::kDisk;
    d.vm = "vm1";
    d.disk = "vda";
    fake.queue.push_back(d);
  }
  std::vector<WorkerSpec> workers;
  for (size_t i = 0; i < n; ++i) workers.push_back(MakeWorker("h" + std::to_string(i), 1, {"vda"}));
  SimOptions o = MakeOptions(fake.Listen());
  o.task_ms = 20;
  o.exit_when_idle_ms = 300;
  Simulator sim(io, o, std::move(workers), nullptr);
  RunToIdle(io, sim);
  EXPECT_EQ(fake.registrations.size(), n);
  EXPECT_EQ(fake.results.size(), 2 * n);
  json::object report = sim.Report();
  EXPECT_EQ(report.at("totals").at("done").as_int64(), static_cast<int64_t>(2 * n));
  EXPECT_EQ(report.at("totals").at("max_concurrent_disk_tasks").as_int64(), 1);
  for (const auto& w : report.at("workers").as_array()) {
    EXPECT_LE(w.at("max_concurrent_disk_tasks").as_int64(), 1);
  }
}

TEST_F(SimulatorTest, OverTls) {
  TestPki pki = MakeTestPki();
  if (pki.dir.empty()) GTEST_SKIP() << "the openssl tool is not available";
  {
    auto io = kj::setupAsyncIo();
    auto server_tls = rpc::MakeServerTlsContext(pki.server_pem, pki.server_key);
    auto client_tls = rpc::MakeClientTlsContext(pki.ca_pem);
    FakeCoordinator fake(io, server_tls.get());
    VmScript script(fake, {"vda"});
    SimOptions o = MakeOptions(fake.Listen());
    o.tls = true;
    o.tls_ca = pki.ca_pem;
    o.tls_name = "localhost";
    Simulator sim(io, o, {MakeWorker("h1", 1, {"vda"})}, client_tls.get());
    RunToIdle(io, sim);
    EXPECT_TRUE(script.released);
    EXPECT_TRUE(fake.handshake_errors.empty());
    EXPECT_EQ(sim.Report().at("totals").at("done").as_int64(), 3);
  }
  RemoveTestDir(pki.dir);
}

}  // namespace
}  // namespace ferry::simworker::testing
