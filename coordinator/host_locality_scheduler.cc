#include "ferry/coordinator/host_locality_scheduler.h"

#include <algorithm>

namespace ferry::coordinator {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kHost: return "host";
    case Tier::kCluster: return "cluster";
    case Tier::kAny: return "any";
  }
  return "?";
}

HostLocalityScheduler::ClusterState& HostLocalityScheduler::Cluster(const std::string& key) {
  auto [it, inserted] = clusters_.try_emplace(key);
  if (inserted) it->second.order = next_cluster_order_++;
  return it->second;
}

HostLocalityScheduler::HostState& HostLocalityScheduler::Host(int64_t host_id) {
  auto [it, inserted] = hosts_.try_emplace(host_id);
  if (inserted) {
    it->second.cluster_key = "host:" + std::to_string(host_id);
    it->second.cluster = &Cluster(it->second.cluster_key);
    it->second.cluster->hosts.insert(host_id);
  }
  return it->second;
}

void HostLocalityScheduler::SetHost(int64_t host_id, const std::string& host_name,
                                    const std::string& cluster) {
  HostState& host = Host(host_id);
  host.name = host_name;
  std::string key = cluster.empty() ? "host:" + std::to_string(host_id) : "cluster:" + cluster;
  if (key == host.cluster_key) return;
  ClusterState& old_cluster = *host.cluster;
  ClusterState& new_cluster = Cluster(key);
  old_cluster.free_slots -= host.free_slots;
  old_cluster.connected_workers -= host.connected_workers;
  new_cluster.free_slots += host.free_slots;
  new_cluster.connected_workers += host.connected_workers;
  old_cluster.hosts.erase(host_id);
  old_cluster.hosts_with_work.erase(host_id);
  if (old_cluster.hosts_with_work.empty()) clusters_with_work_.erase(old_cluster.order);
  host.cluster_key = key;
  host.cluster = &new_cluster;
  new_cluster.hosts.insert(host_id);
  Reindex(host_id);
}

void HostLocalityScheduler::SetWorker(int64_t worker_id, int64_t host_id, int slots, bool own_host_snapshots_only) {
  Contribute(worker_id, -1);
  WorkerState& worker = workers_[worker_id];
  worker.own_host_snapshots_only = own_host_snapshots_only;
  if (worker.host_id != 0 && worker.host_id != host_id) Host(worker.host_id).workers.erase(worker_id);
  worker.host_id = host_id;
  worker.slots = slots;
  Host(host_id).workers.insert(worker_id);
  Contribute(worker_id, +1);
}

void HostLocalityScheduler::SetWorkerConnected(int64_t worker_id, bool connected) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.connected == connected) return;
  Contribute(worker_id, -1);
  it->second.connected = connected;
  Contribute(worker_id, +1);
}

void HostLocalityScheduler::SetRepositorySlots(int64_t repository_id, int slots) {
  repositories_[repository_id].slots = slots;
}

void HostLocalityScheduler::Reindex(int64_t host_id) {
  HostState& host = Host(host_id);
  ClusterState& cluster = *host.cluster;
  if (host.HasWork()) {
    cluster.hosts_with_work.insert(host_id);
    clusters_with_work_.emplace(cluster.order, &cluster);
  } else {
    cluster.hosts_with_work.erase(host_id);
    if (cluster.hosts_with_work.empty()) clusters_with_work_.erase(cluster.order);
  }
}

void HostLocalityScheduler::Enqueue(const QueuedWork& work) {
  ++queued_;
  if (work.kind == WorkKind::kRelease) {
    workers_[work.pinned_worker].pinned.push_back(work);
    return;
  }
  HostState& host = Host(work.host_id);
  (work.kind == WorkKind::kSnapshot ? host.snapshots : host.disks).push_back(work);  // restores with the disks
  Reindex(work.host_id);
}

bool HostLocalityScheduler::Dequeue(WorkKind kind, int64_t id) {
  auto erase_from = [&](std::deque<QueuedWork>& queue) {
    auto it = std::find_if(queue.begin(), queue.end(),
                           [&](const QueuedWork& w) { return w.kind == kind && w.id == id; });
    if (it == queue.end()) return false;
    queue.erase(it);
    --queued_;
    return true;
  };
  if (kind == WorkKind::kRelease) {
    for (auto& [worker_id, worker] : workers_)
      if (erase_from(worker.pinned)) return true;
    return false;
  }
  for (auto& [host_id, host] : hosts_) {
    if (erase_from(kind == WorkKind::kSnapshot ? host.snapshots : host.disks)) {
      Reindex(host_id);
      return true;
    }
  }
  return false;
}

void HostLocalityScheduler::AdoptRunning(int64_t worker_id, int64_t repository_id) {
  Contribute(worker_id, -1);
  workers_[worker_id].used++;
  Contribute(worker_id, +1);
  repositories_[repository_id].used++;
}

void HostLocalityScheduler::TaskEnded(int64_t worker_id, int64_t repository_id) {
  auto worker = workers_.find(worker_id);
  if (worker != workers_.end() && worker->second.used > 0) {
    Contribute(worker_id, -1);
    worker->second.used--;
    Contribute(worker_id, +1);
  }
  auto repository = repositories_.find(repository_id);
  if (repository != repositories_.end() && repository->second.used > 0) repository->second.used--;
}

bool HostLocalityScheduler::RepositoryHasSlot(int64_t repository_id) const {
  auto it = repositories_.find(repository_id);
  return it != repositories_.end() && it->second.used < it->second.slots;
}

void HostLocalityScheduler::Contribute(int64_t worker_id, int sign) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || !it->second.connected || it->second.host_id == 0) return;
  HostState& host = Host(it->second.host_id);
  ClusterState& cluster = *host.cluster;
  int free = it->second.Free();
  host.free_slots += sign * free;
  host.connected_workers += sign;
  cluster.free_slots += sign * free;
  cluster.connected_workers += sign;
}

std::string HostLocalityScheduler::WhyHostCannotServe(const HostState& host) const {
  if (host.workers.empty()) return "no worker on host " + host.name;
  if (host.connected_workers == 0) return "worker on host " + host.name + " unreachable";
  int slots = 0;
  for (int64_t id : host.workers) slots += workers_.at(id).slots;
  return "worker on host " + host.name + " busy (" + std::to_string(slots) + "/" +
         std::to_string(slots) + " slots)";
}

template <typename Reason>
int HostLocalityScheduler::TakeFrom(int64_t host_id, HostState& host, int64_t worker_id, int disk_budget,
                                    Tier tier, bool snapshots_too, const Reason& reason,
                                    std::vector<Placement>& out) {
  bool snapshots = snapshots_too && !host.snapshots.empty();
  if (!snapshots && (disk_budget <= 0 || host.disks.empty())) return 0;
  std::string why = reason();
  if (snapshots) {
    for (const QueuedWork& work : host.snapshots) out.push_back({work, tier, why});
    queued_ -= host.snapshots.size();
    host.snapshots.clear();
  }
  int taken = 0;
  WorkerState& worker = workers_[worker_id];
  for (auto it = host.disks.begin(); it != host.disks.end() && taken < disk_budget;) {
    if (!RepositoryHasSlot(it->repository_id) || (it->host_only && worker_id != it->pinned_worker) ||
        (it->kind == WorkKind::kRestore && tier != Tier::kHost)) {
      ++it;
      continue;
    }
    out.push_back({*it, tier, it->kind == WorkKind::kRestore ? std::string("worker on the target host") : why});
    Contribute(worker_id, -1);
    worker.used++;
    Contribute(worker_id, +1);
    repositories_[it->repository_id].used++;
    ++taken;
    --queued_;
    it = host.disks.erase(it);
  }
  Reindex(host_id);
  return taken;
}

std::vector<Placement> HostLocalityScheduler::Pick(int64_t worker_id, int max_disk_tasks) {
  std::vector<Placement> out;
  auto found = workers_.find(worker_id);
  if (found == workers_.end() || !found->second.connected) return out;
  WorkerState& worker = found->second;

  for (const QueuedWork& work : worker.pinned) out.push_back({work, Tier::kHost, "holds the snapshot"});
  queued_ -= worker.pinned.size();
  worker.pinned.clear();

  int budget = std::min(max_disk_tasks, worker.Free());
  HostState& own = Host(worker.host_id);
  budget -= TakeFrom(worker.host_id, own, worker_id, budget, Tier::kHost, true,
                     [] { return std::string("worker on the VM's host"); }, out);

  // Cluster tier: hosts of this cluster whose own workers cannot take their
  // work. (Copies: taking work changes the sets being walked.)
  ClusterState& cluster = *own.cluster;
  if (!cluster.hosts_with_work.empty()) {
    std::vector<int64_t> candidates(cluster.hosts_with_work.begin(), cluster.hosts_with_work.end());
    for (int64_t host_id : candidates) {
      if (host_id == worker.host_id) continue;
      HostState& host = hosts_.at(host_id);
      bool snapshot_orphaned = host.connected_workers == 0 && !worker.own_host_snapshots_only;
      bool disks_orphaned = host.free_slots == 0;
      if (!snapshot_orphaned && !(disks_orphaned && budget > 0)) continue;
      budget -= TakeFrom(host_id, host, worker_id, disks_orphaned ? budget : 0, Tier::kCluster, snapshot_orphaned,
                         [&] { return WhyHostCannotServe(host) + "; worker in its cluster"; }, out);
    }
  }

  // Any tier: clusters where no connected worker can take the work.
  std::vector<ClusterState*> others;
  for (const auto& [order, other] : clusters_with_work_) {
    if (other == &cluster) continue;
    if (other->connected_workers == 0 || (other->free_slots == 0 && budget > 0)) others.push_back(other);
  }
  for (ClusterState* other : others) {
    bool snapshot_orphaned = other->connected_workers == 0 && !worker.own_host_snapshots_only;
    bool disks_orphaned = other->free_slots == 0;
    if (!snapshot_orphaned && !(disks_orphaned && budget > 0)) continue;
    std::vector<int64_t> hosts(other->hosts_with_work.begin(), other->hosts_with_work.end());
    for (int64_t host_id : hosts) {
      HostState& host = hosts_.at(host_id);
      budget -= TakeFrom(host_id, host, worker_id, disks_orphaned ? budget : 0, Tier::kAny, snapshot_orphaned,
                         [&] { return WhyHostCannotServe(host) + " and none free in its cluster; any worker"; }, out);
    }
  }
  return out;
}

bool HostLocalityScheduler::HostCanServe(int64_t host_id, WorkKind kind) const {
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) return false;
  return TakesSlot(kind) ? it->second.free_slots > 0 : it->second.connected_workers > 0;
}

int HostLocalityScheduler::FreeSlots(int64_t worker_id) const {
  auto it = workers_.find(worker_id);
  return it == workers_.end() ? 0 : it->second.Free();
}

int HostLocalityScheduler::RunningOn(int64_t worker_id) const {
  auto it = workers_.find(worker_id);
  return it == workers_.end() ? 0 : it->second.used;
}

int HostLocalityScheduler::RunningOnRepository(int64_t repository_id) const {
  auto it = repositories_.find(repository_id);
  return it == repositories_.end() ? 0 : it->second.used;
}

}  // namespace ferry::coordinator
