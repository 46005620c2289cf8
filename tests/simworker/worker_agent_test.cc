// WorkerAgent with a scripted executor against the fake coordinator: what the
// simulator's tests cannot show, since its work never fails by exception and
// it has no state to release when cancelled.
#include "ferry/rpc/worker_agent.h"

#include <gtest/gtest.h>

#include <memory>
#include <kj/async-io.h>

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fake_coordinator.h"
#include "ferry/common/log.h"

namespace ferry::simworker::testing {
namespace {

using rpc::AssignmentEnd;
using rpc::WorkOutcome;

// Disk "hang" never ends (and notes when its work is destroyed), disk "boom"
// rejects, any other disk succeeds at once.
class ScriptedExecutor final : public rpc::WorkExecutor {
 public:
  rpc::WorkerIdentity Identity() override {
    rpc::WorkerIdentity id;
    id.host = "h1";
    id.platform = "libvirt";
    id.task_slots = 2;
    id.version = "test-1";
    return id;
  }
  std::vector<rpc::InventoryVm> Inventory() override {
    std::vector<rpc::InventoryVm> out;
    for (const auto& name : vms) {
      rpc::InventoryVm vm;
      vm.name = name;
      vm.state = "running";
      out.push_back(vm);
    }
    return out;
  }
  kj::Promise<WorkOutcome> TakeSnapshot(const rpc::SnapshotAssignment& a,
                                        rpc::WorkContext&) override {
    WorkOutcome o = WorkOutcome::Ok();
    for (const auto& d : a.disks) o.exports.push_back({d, "nbd://x/" + d, "plan-of-" + d});
    return o;
  }
  kj::Promise<WorkOutcome> BackupDisk(const rpc::DiskAssignment& a,
                                      rpc::WorkContext& context) override {
    read_plans[a.id] = a.read_plan;
    if (a.disk == "hang") {
      return kj::Promise<WorkOutcome>(kj::NEVER_DONE).attach(kj::defer([this]() {
        hang_work_destroyed = true;
      }));
    }
    if (a.disk == "boom") return kj::Promise<WorkOutcome>(KJ_EXCEPTION(FAILED, "disk on fire"));
    StageBusy busy;
    busy.wall_us = 1000;
    busy.network_us = 700;
    busy.remote_store = true;
    rpc::ProgressReport progress;
    progress.bytes_done = 5;
    progress.bytes_total = 10;
    progress.bytes_read = 5;
    progress.stages = busy;
    context.ReportProgress(progress);
    WorkOutcome o = WorkOutcome::Ok();
    o.bytes_read = 10;
    o.bytes_sent = 7;
    o.stages = busy;
    return o;
  }
  kj::Promise<WorkOutcome> Release(const rpc::ReleaseAssignment&, rpc::WorkContext&) override {
    return WorkOutcome::Ok();
  }
  // Restores wait until `finish_restores` (so that they hold their slot).
  kj::Promise<WorkOutcome> Restore(const rpc::RestoreAssignment& a, rpc::WorkContext&) override {
    restores.push_back(a);
    auto paf = kj::newPromiseAndFulfiller<WorkOutcome>();
    restore_fulfillers.push_back(kj::mv(paf.fulfiller));
    return kj::mv(paf.promise);
  }
  void FinishRestores() {
    for (auto& f : restore_fulfillers) {
      WorkOutcome o = WorkOutcome::Ok();
      o.bytes_read = 4096;
      f->fulfill(kj::mv(o));
    }
    restore_fulfillers.clear();
  }
  void Ended(const std::string& id, AssignmentEnd end, const std::string& reason) override {
    ended[id] = end;
    reasons[id] = reason;
  }

  std::vector<std::string> vms = {"vm1"};
  bool hang_work_destroyed = false;
  std::vector<rpc::RestoreAssignment> restores;
  std::vector<kj::Own<kj::PromiseFulfiller<WorkOutcome>>> restore_fulfillers;
  std::map<std::string, std::string> read_plans;  // of disk items
  std::map<std::string, AssignmentEnd> ended;
  std::map<std::string, std::string> reasons;
};

FakeItem Disk(const std::string& disk) {
  FakeItem d;
  d.assignment = "disk-" + disk + ".1";
  d.kind = FakeItem::kDisk;
  d.vm = "vm1";
  d.disk = disk;
  return d;
}

void WaitFor(kj::AsyncIoContext& io, const std::function<bool()>& done) {
  auto& timer = io.provider->getTimer();
  for (int i = 0; i < 2000 && !done(); ++i)
    timer.afterDelay(5 * kj::MILLISECONDS).wait(io.waitScope);
}

// An agent of worker token "tok-h1" connecting to `address` in plain TCP.
std::unique_ptr<rpc::WorkerAgent> NewAgent(kj::AsyncIoContext& io, const std::string& address,
                                           rpc::WorkExecutor& executor) {
  rpc::WorkerAgentOptions options;
  options.token = "tok-h1";
  options.log_tag = "agent-test";
  options.reconnect_delay = 50 * kj::MILLISECONDS;
  return std::make_unique<rpc::WorkerAgent>(
      io.provider->getTimer(),
      [&io, address]() {
        rpc::CoordinatorEndpoint endpoint;
        endpoint.address = address;
        return rpc::CoordinatorConnection::Connect(io, nullptr, endpoint);
      },
      executor, options);
}

TEST(WorkerAgentTest, CancelDestroysTheWorkRejectedWorkIsInternalReadPlansPassThrough) {
  SetLogLevel(LogLevel::kWarning);
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  std::string address = fake.Listen();
  FakeItem snap;
  snap.assignment = "snap-vm1.1";
  snap.kind = FakeItem::kSnapshot;
  snap.vm = "vm1";
  snap.disks = {"vda"};
  fake.queue = {snap, Disk("hang"), Disk("boom"), Disk("vda")};
  fake.queue.back().read_plan = "plan-of-vda";
  fake.cancel = {"disk-hang.1"};

  ScriptedExecutor executor;
  auto agent_ptr = NewAgent(io, address, executor);
  rpc::WorkerAgent& agent = *agent_ptr;
  agent.Start();
  WaitFor(io, [&]() { return executor.ended.size() == 4; });

  ASSERT_EQ(fake.registrations.size(), 1u);
  EXPECT_EQ(fake.registrations[0].token, "tok-h1");
  EXPECT_EQ(fake.registrations[0].version, "test-1");
  EXPECT_EQ(fake.registrations[0].slots, 2u);
  ASSERT_FALSE(fake.inventories.empty());
  EXPECT_EQ(fake.inventories[0], std::vector<std::string>{"vm1"});

  ASSERT_EQ(executor.ended.size(), 4u);
  EXPECT_EQ(executor.ended["disk-hang.1"], AssignmentEnd::kCancelled);
  EXPECT_EQ(executor.reasons["disk-hang.1"], "cancelled by the coordinator (heartbeat)");
  EXPECT_TRUE(executor.hang_work_destroyed);
  EXPECT_EQ(executor.ended["disk-boom.1"], AssignmentEnd::kDone);
  EXPECT_EQ(executor.ended["disk-vda.1"], AssignmentEnd::kDone);
  EXPECT_EQ(agent.held(), 0u);

  std::map<std::string, FakeResult> results;
  for (const auto& r : fake.results) results[r.assignment] = r;
  EXPECT_EQ(results.count("disk-hang.1"), 0u);
  ASSERT_EQ(results.count("disk-boom.1"), 1u);
  EXPECT_FALSE(results["disk-boom.1"].ok);
  EXPECT_EQ(results["disk-boom.1"].error_kind, "internal");
  EXPECT_NE(results["disk-boom.1"].error.find("disk vm1/boom work failed: "), std::string::npos)
      << results["disk-boom.1"].error;
  EXPECT_NE(results["disk-boom.1"].error.find("disk on fire"), std::string::npos);
  // Read plans pass through both ways, verbatim.
  ASSERT_EQ(results["snap-vm1.1"].read_plans, std::vector<std::string>{"plan-of-vda"});
  EXPECT_EQ(executor.read_plans["disk-vda.1"], "plan-of-vda");
  EXPECT_TRUE(results["disk-vda.1"].ok);
  EXPECT_EQ(results["disk-vda.1"].bytes_read, 10u);
  // Statistics pass through (Progress.stages, WorkResult.bytesSent and .stages).
  EXPECT_EQ(results["disk-vda.1"].bytes_sent, 7u);
  ASSERT_TRUE(results["disk-vda.1"].stages.has_value());
  EXPECT_EQ(results["disk-vda.1"].stages->network_us, 700u);
  EXPECT_TRUE(results["disk-vda.1"].stages->remote_store);
  EXPECT_EQ(results["disk-vda.1"].stages->bottleneck(), Stage::kNetwork);
  EXPECT_FALSE(results["snap-vm1.1"].stages.has_value());  // not disk work: not set
  auto vda_progress = std::find(fake.progress.begin(), fake.progress.end(), "disk-vda.1");
  ASSERT_NE(vda_progress, fake.progress.end());
  const auto& seen = fake.progress_stages[static_cast<size_t>(vda_progress - fake.progress.begin())];
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->wall_us, 1000u);
  SetLogLevel(LogLevel::kInfo);
}


TEST(WorkerAgentTest, InventoryIsReportedAgainWhenItChanges) {
  SetLogLevel(LogLevel::kWarning);
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  std::string address = fake.Listen();
  ScriptedExecutor executor;
  auto agent_ptr = NewAgent(io, address, executor);
  rpc::WorkerAgent& agent = *agent_ptr;
  agent.InventoryChanged();  // before registering: nothing to send, nothing breaks
  agent.Start();
  WaitFor(io, [&]() { return fake.inventories.size() == 1; });
  ASSERT_EQ(fake.inventories.size(), 1u);
  executor.vms = {"vm1", "vm2"};
  agent.InventoryChanged();
  WaitFor(io, [&]() { return fake.inventories.size() == 2; });
  ASSERT_EQ(fake.inventories.size(), 2u);
  EXPECT_EQ(fake.inventories[1], (std::vector<std::string>{"vm1", "vm2"}));
  EXPECT_EQ(fake.registrations.size(), 1u);  // the same session, not a re-registration
  SetLogLevel(LogLevel::kInfo);
}
// A restore item reaches the executor with its fields, and holds a slot
// until its work ends: with two slots and three restores queued, the third
// comes only after the first two finish.
TEST(WorkerAgentTest, RestoreItemsDecodeAndTakeASlot) {
  SetLogLevel(LogLevel::kWarning);
  auto io = kj::setupAsyncIo();
  FakeCoordinator fake(io);
  std::string address = fake.Listen();
  for (int i = 1; i <= 3; ++i) {
    FakeItem r;
    r.assignment = "x" + std::to_string(i) + ".1";
    r.kind = FakeItem::kRestore;
    r.vm = "vm1";
    r.disk = "vda";
    r.task_id = static_cast<uint64_t>(i);
    r.point_id = "p-" + std::to_string(i);
    r.export_uri = "/restore/vda-" + std::to_string(i) + ".qcow2";
    fake.queue.push_back(r);
  }
  ScriptedExecutor executor;
  auto agent_ptr = NewAgent(io, address, executor);
  agent_ptr->Start();
  WaitFor(io, [&]() { return executor.restores.size() == 2; });
  // Give the agent time to pull again: nothing more may come while both slots are busy.
  io.provider->getTimer().afterDelay(100 * kj::MILLISECONDS).wait(io.waitScope);
  ASSERT_EQ(executor.restores.size(), 2u);
  const rpc::RestoreAssignment& first = executor.restores[0];
  EXPECT_EQ(first.id, "x1.1");
  EXPECT_EQ(first.task_id, 1u);
  EXPECT_EQ(first.point_id, "p-1");
  EXPECT_EQ(first.disk, "vda");
  EXPECT_EQ(first.tier, "host");
  EXPECT_EQ(first.target, rpc::RestoreAssignment::Target::kFile);
  EXPECT_EQ(first.path, "/restore/vda-1.qcow2");
  EXPECT_EQ(first.format, "qcow2");
  EXPECT_EQ(first.repository.location, "/srv/repo");
  executor.FinishRestores();
  WaitFor(io, [&]() { return executor.restores.size() == 3; });
  ASSERT_EQ(executor.restores.size(), 3u);
  executor.FinishRestores();
  WaitFor(io, [&]() { return executor.ended.size() == 3; });
  EXPECT_EQ(executor.ended["x3.1"], AssignmentEnd::kDone);
  std::map<std::string, FakeResult> results;
  for (const auto& r : fake.results) results[r.assignment] = r;
  ASSERT_EQ(results.count("x1.1"), 1u);
  EXPECT_TRUE(results["x1.1"].ok);
  EXPECT_EQ(results["x1.1"].bytes_read, 4096u);
  SetLogLevel(LogLevel::kInfo);
}
}  // namespace
}  // namespace ferry::simworker::testing
