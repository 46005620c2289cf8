#include "ferry/coordinator/host_locality_scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace ferry::coordinator {
namespace {

QueuedWork Disk(int64_t id, int64_t host, int64_t repo = 1) { return {WorkKind::kDisk, id, host, repo, 0}; }
QueuedWork Snap(int64_t id, int64_t host) { return {WorkKind::kSnapshot, id, host, 0, 0}; }
QueuedWork Restore(int64_t id, int64_t host, int64_t repo = 1) { return {WorkKind::kRestore, id, host, repo, 0}; }

// Two clusters: c1 = hosts 1, 2, 3 (3 has no worker); c2 = host 4. Workers
// 10 on host 1, 20 on host 2, 40 on host 4; two slots each.
class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    s.SetHost(1, "h1", "c1");
    s.SetHost(2, "h2", "c1");
    s.SetHost(3, "h3", "c1");
    s.SetHost(4, "h4", "c2");
    s.SetRepositorySlots(1, 100);
    for (auto [worker, host] : {std::pair{10, 1}, {20, 2}, {40, 4}}) {
      s.SetWorker(worker, host, 2);
      s.SetWorkerConnected(worker, true);
    }
  }
  HostLocalityScheduler s;
};

TEST_F(SchedulerTest, OwnHostFirst) {
  s.Enqueue(Disk(1, 2));
  s.Enqueue(Disk(2, 1));
  auto picked = s.Pick(10, 2);
  ASSERT_EQ(picked.size(), 1u);  // host 2's task stays for worker 20, which has free slots
  EXPECT_EQ(picked[0].work.id, 2);
  EXPECT_EQ(picked[0].tier, Tier::kHost);
  auto other = s.Pick(20, 2);
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].work.id, 1);
  EXPECT_EQ(other[0].tier, Tier::kHost);
}

TEST_F(SchedulerTest, ClusterTierForHostWithoutWorker) {
  s.Enqueue(Disk(7, 3));
  auto far = s.Pick(40, 2);
  EXPECT_TRUE(far.empty()) << "c1 has free workers, so a c2 worker must not take it";
  auto picked = s.Pick(10, 2);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].tier, Tier::kCluster);
  EXPECT_NE(picked[0].reason.find("no worker on host h3"), std::string::npos) << picked[0].reason;
}

TEST_F(SchedulerTest, ClusterTierWhenOwnWorkerBusyOrUnreachable) {
  for (int i = 1; i <= 4; ++i) s.Enqueue(Disk(i, 2));
  EXPECT_EQ(s.Pick(20, 2).size(), 2u);  // worker 20 is now full
  auto picked = s.Pick(10, 2);
  ASSERT_EQ(picked.size(), 2u);
  EXPECT_EQ(picked[0].tier, Tier::kCluster);
  EXPECT_NE(picked[0].reason.find("busy"), std::string::npos) << picked[0].reason;

  s.Enqueue(Disk(5, 1));
  s.SetWorkerConnected(10, false);
  s.TaskEnded(20, 1);
  auto rescue = s.Pick(20, 1);
  ASSERT_EQ(rescue.size(), 1u);
  EXPECT_EQ(rescue[0].work.id, 5);
  EXPECT_NE(rescue[0].reason.find("unreachable"), std::string::npos) << rescue[0].reason;
}

TEST_F(SchedulerTest, HostLocalExportsStayOnTheirHost) {
  // Worker 20 (host 2) is full; host 2's host-only task waits for it, while
  // an ordinary task of host 2 goes to worker 10 in the same cluster.
  s.Enqueue(Disk(1, 2));
  s.Enqueue(Disk(2, 2));
  EXPECT_EQ(s.Pick(20, 2).size(), 2u);
  QueuedWork local = Disk(3, 2);
  local.host_only = true;
  local.pinned_worker = 20;
  s.Enqueue(local);
  s.Enqueue(Disk(4, 2));
  auto picked = s.Pick(10, 2);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].work.id, 4);
  EXPECT_EQ(picked[0].tier, Tier::kCluster);
  EXPECT_TRUE(s.Pick(40, 2).empty()) << "nor another cluster";
  s.SetWorkerConnected(20, false);
  EXPECT_TRUE(s.Pick(10, 1).empty()) << "not even when its host's worker is unreachable";
  s.SetWorkerConnected(20, true);
  s.TaskEnded(20, 1);
  auto own = s.Pick(20, 2);
  ASSERT_EQ(own.size(), 1u);
  EXPECT_EQ(own[0].work.id, 3);
  EXPECT_EQ(own[0].tier, Tier::kHost);
}

TEST_F(SchedulerTest, HostLocalExportOfAWorkerlessHostGoesToItsHolder) {
  // Host 3 has no worker: worker 10 took its snapshot (cluster tier) and
  // exports on a unix socket of its own machine.
  QueuedWork local = Disk(5, 3);
  local.host_only = true;
  local.pinned_worker = 10;
  s.Enqueue(local);
  EXPECT_TRUE(s.Pick(20, 2).empty()) << "worker 20 cannot reach worker 10's socket";
  EXPECT_TRUE(s.Pick(40, 2).empty());
  auto picked = s.Pick(10, 2);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].work.id, 5);
  EXPECT_EQ(picked[0].tier, Tier::kCluster);
}

TEST_F(SchedulerTest, OwnHostOnlyWorkersNeverTakeOtherHostsSnapshots) {
  s.SetWorker(10, 1, 2, /*own_host_snapshots_only=*/true);
  s.Enqueue(Snap(8, 3));   // host 3 has no worker
  s.Enqueue(Disk(9, 3));
  auto picked = s.Pick(10, 2);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].work.kind, WorkKind::kDisk) << "worker 10 may read host 3's disks, not snapshot its VMs";
  auto other = s.Pick(20, 2);
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].work.kind, WorkKind::kSnapshot);
  EXPECT_EQ(other[0].tier, Tier::kCluster);
}

TEST_F(SchedulerTest, AnyTierOnlyWhenWholeClusterIsFull) {
  s.Enqueue(Disk(1, 3));
  s.Enqueue(Disk(2, 3));
  s.Enqueue(Disk(3, 3));
  s.Enqueue(Disk(4, 3));
  s.Enqueue(Disk(5, 3));
  EXPECT_TRUE(s.Pick(40, 2).empty());
  EXPECT_EQ(s.Pick(10, 2).size(), 2u);
  EXPECT_TRUE(s.Pick(40, 2).empty()) << "worker 20 still has free slots in c1";
  EXPECT_EQ(s.Pick(20, 2).size(), 2u);
  auto picked = s.Pick(40, 2);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].tier, Tier::kAny);
  EXPECT_NE(picked[0].reason.find("none free in its cluster"), std::string::npos) << picked[0].reason;
}

TEST_F(SchedulerTest, WorkerAndRepositorySlotsHold) {
  s.SetRepositorySlots(1, 3);
  for (int i = 1; i <= 10; ++i) s.Enqueue(Disk(i, 1));
  for (int i = 11; i <= 20; ++i) s.Enqueue(Disk(i, 2));
  EXPECT_EQ(s.Pick(10, 50).size(), 2u);  // worker slots
  EXPECT_EQ(s.Pick(20, 50).size(), 1u);  // repository has one slot left
  EXPECT_EQ(s.RunningOnRepository(1), 3);
  EXPECT_TRUE(s.Pick(40, 2).empty());
  s.TaskEnded(10, 1);
  auto next = s.Pick(10, 50);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(s.RunningOn(10), 2);
  EXPECT_EQ(s.RunningOnRepository(1), 3);
  EXPECT_EQ(s.QueuedCount(), 16u);
}

TEST_F(SchedulerTest, SnapshotsTakeNoSlotAndStayWithConnectedHostWorker) {
  for (int i = 1; i <= 2; ++i) s.Enqueue(Disk(i, 2));
  EXPECT_EQ(s.Pick(20, 2).size(), 2u);
  s.Enqueue(Snap(9, 2));
  EXPECT_TRUE(s.Pick(10, 2).empty()) << "worker 20 is busy but connected: its snapshot waits for it";
  auto picked = s.Pick(20, 0);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].work.kind, WorkKind::kSnapshot);
  s.Enqueue(Snap(8, 3));  // no worker on host 3
  auto rescue = s.Pick(10, 0);
  ASSERT_EQ(rescue.size(), 1u);
  EXPECT_EQ(rescue[0].tier, Tier::kCluster);
}

TEST_F(SchedulerTest, ReleaseIsPinnedToTheHolder) {
  s.Enqueue({WorkKind::kRelease, 5, 0, 0, 40, true});
  EXPECT_TRUE(s.Pick(10, 2).empty());
  auto picked = s.Pick(40, 0);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_TRUE(picked[0].work.commit);
  EXPECT_EQ(s.QueuedCount(), 0u);
}

TEST_F(SchedulerTest, DequeueRemovesQueuedWork) {
  s.Enqueue(Disk(1, 1));
  s.Enqueue(Snap(2, 1));
  EXPECT_TRUE(s.Dequeue(WorkKind::kDisk, 1));
  EXPECT_FALSE(s.Dequeue(WorkKind::kDisk, 1));
  EXPECT_TRUE(s.Dequeue(WorkKind::kSnapshot, 2));
  EXPECT_TRUE(s.Pick(10, 2).empty());
  EXPECT_EQ(s.QueuedCount(), 0u);
}

// A restore writes onto its target host: only that host's workers take it,
// however busy they are or even when the host has none (it waits).
TEST_F(SchedulerTest, RestoresRunOnTheirTargetHostOnly) {
  s.Enqueue(Restore(1, 2));
  EXPECT_TRUE(s.Pick(10, 2).empty()) << "a worker of another host in the cluster";
  EXPECT_TRUE(s.Pick(40, 2).empty()) << "a worker of another cluster";
  auto picked = s.Pick(20, 2);
  ASSERT_EQ(picked.size(), 1u);
  EXPECT_EQ(picked[0].work.kind, WorkKind::kRestore);
  EXPECT_EQ(picked[0].tier, Tier::kHost);
  EXPECT_EQ(picked[0].reason, "worker on the target host");
  EXPECT_EQ(s.RunningOn(20), 1) << "a restore takes a worker slot";
  EXPECT_EQ(s.RunningOnRepository(1), 1) << "and a repository slot";

  // Host 2's worker busy (both slots), or gone: the restore waits for it.
  s.Enqueue(Restore(2, 2));
  s.Enqueue(Disk(3, 2));
  auto more = s.Pick(20, 2);
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].work.id, 2);
  EXPECT_EQ(s.Pick(10, 2).size(), 1u) << "the busy host's disk task goes to the cluster";
  s.Enqueue(Restore(4, 2));
  EXPECT_TRUE(s.Pick(10, 2).empty());
  s.SetWorkerConnected(20, false);
  EXPECT_TRUE(s.Pick(10, 2).empty()) << "not even when the host's worker is unreachable";
  EXPECT_TRUE(s.Pick(40, 2).empty());
  s.Enqueue(Restore(5, 3));  // host 3 has no worker at all
  EXPECT_TRUE(s.Pick(10, 2).empty());
  EXPECT_TRUE(s.Pick(40, 2).empty());
  EXPECT_EQ(s.QueuedCount(), 2u);
  s.SetWorkerConnected(20, true);
  s.TaskEnded(20, 1);
  auto back = s.Pick(20, 2);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].work.id, 4);
  EXPECT_TRUE(s.Dequeue(WorkKind::kRestore, 5));
  EXPECT_FALSE(s.Dequeue(WorkKind::kDisk, 5)) << "kinds are told apart";
  EXPECT_EQ(s.QueuedCount(), 0u);
}

TEST_F(SchedulerTest, HostMovingClusterMovesItsCapacity) {
  s.Enqueue(Disk(1, 3));
  s.SetHost(2, "h2", "c2");  // worker 20 leaves c1
  EXPECT_EQ(s.Pick(10, 2).size(), 1u);
  s.Enqueue(Disk(2, 3));
  s.Enqueue(Disk(3, 3));
  s.Enqueue(Disk(4, 3));
  EXPECT_EQ(s.Pick(10, 2).size(), 1u);  // worker 10 is full now (2 slots)
  auto any = s.Pick(20, 2);
  ASSERT_EQ(any.size(), 2u);
  EXPECT_EQ(any[0].tier, Tier::kAny);
}

// Random operations; after each Pick the invariants must hold: no worker or
// repository above its slots, every task handed out once, and a task placed
// outside its host only when that host had no connected worker with a free
// slot at that moment (outside its cluster: none in the cluster).
TEST(SchedulerProperty, RandomOperationsKeepInvariants) {
  std::mt19937 rng(1234);
  HostLocalityScheduler s;
  const int hosts = 12, clusters = 3, repos = 2;
  std::map<int64_t, int64_t> worker_host;
  std::map<int64_t, int> worker_slots;
  std::map<int64_t, bool> connected;
  for (int h = 1; h <= hosts; ++h) s.SetHost(h, "h" + std::to_string(h), "c" + std::to_string(h % clusters));
  for (int r = 1; r <= repos; ++r) s.SetRepositorySlots(r, 5);
  for (int w = 1; w <= 9; ++w) {  // hosts 10..12 have no worker
    worker_host[w] = w;
    worker_slots[w] = 1 + static_cast<int>(rng() % 3);
    connected[w] = true;
    s.SetWorker(w, w, worker_slots[w]);
    s.SetWorkerConnected(w, true);
  }
  std::map<int64_t, std::pair<int64_t, int64_t>> running;  // task -> worker, repo
  std::set<int64_t> handed;
  int64_t next_task = 1;
  for (int step = 0; step < 20000; ++step) {
    int op = static_cast<int>(rng() % 10);
    if (op < 4) {
      int64_t host = 1 + static_cast<int64_t>(rng() % hosts);
      int64_t repo = 1 + static_cast<int64_t>(rng() % repos);
      // One in eight is a restore: only its own host's workers may take it.
      s.Enqueue(rng() % 8 == 0 ? Restore(next_task++, host, repo) : Disk(next_task++, host, repo));
    } else if (op < 7 && !running.empty()) {
      auto it = running.begin();
      std::advance(it, rng() % running.size());
      s.TaskEnded(it->second.first, it->second.second);
      running.erase(it);
    } else if (op == 7) {
      int64_t w = 1 + static_cast<int64_t>(rng() % 9);
      connected[w] = !connected[w];
      s.SetWorkerConnected(w, connected[w]);
    } else {
      int64_t w = 1 + static_cast<int64_t>(rng() % 9);
      // Free capacity per host and cluster as seen just before the pick.
      std::map<int64_t, int> host_free;
      std::map<int64_t, int> cluster_free;
      for (auto [id, host] : worker_host)
        if (connected[id]) {
          host_free[host] += s.FreeSlots(id);
          cluster_free[host % clusters] += s.FreeSlots(id);
        }
      auto picked = s.Pick(w, 1 + static_cast<int>(rng() % 4));
      if (!connected[w]) {
        ASSERT_TRUE(picked.empty());
      }
      for (const Placement& p : picked) {
        ASSERT_TRUE(handed.insert(p.work.id).second) << "task " << p.work.id << " handed out twice";
        running[p.work.id] = {w, p.work.repository_id};
        int64_t host = p.work.host_id;
        if (p.tier == Tier::kHost) {
          ASSERT_EQ(host, worker_host[w]);
        }
        if (p.work.kind == WorkKind::kRestore) {
          ASSERT_EQ(p.tier, Tier::kHost) << "restore " << p.work.id << " left its target host: " << p.reason;
        }
        if (p.tier != Tier::kHost) {
          ASSERT_EQ(host_free[host], 0) << "robbed host " << host << ": " << p.reason;
        }
        if (p.tier == Tier::kCluster) {
          ASSERT_EQ(host % clusters, worker_host[w] % clusters);
        }
        if (p.tier == Tier::kAny) {
          ASSERT_EQ(cluster_free[host % clusters], 0) << p.reason;
        }
      }
    }
    std::map<int64_t, int> per_worker, per_repo;
    for (auto& [task, where] : running) {
      per_worker[where.first]++;
      per_repo[where.second]++;
    }
    for (auto& [w, n] : per_worker) ASSERT_LE(n, worker_slots[w]) << "worker " << w << " over its slots";
    for (auto& [r, n] : per_repo) ASSERT_LE(n, 5) << "repository " << r << " over its slots";
  }
  EXPECT_GT(handed.size(), 1000u);
}

}  // namespace
}  // namespace ferry::coordinator
