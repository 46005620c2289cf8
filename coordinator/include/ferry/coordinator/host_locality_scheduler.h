// HostLocalityScheduler: which queued work a pulling worker gets.
//
// Pure bookkeeping, no I/O and no clock, so every rule is unit-tested
// directly. The rules (seeds 000/001/003/004, docs/coordinator.md):
//   - A disk task needs a free task slot on the worker and on its repository;
//     snapshot and release work needs none (they take seconds).
//   - Tier "host": work for the worker's own host comes first.
//   - Tier "cluster": work of another host in the worker's cluster, but only
//     when no connected worker on that host has a free slot (none there,
//     unreachable, or busy) - so a host's own worker is never robbed.
//   - Tier "any": work of a host in another cluster, only when no connected
//     worker in that whole cluster has a free slot.
//   - Release work is pinned to the worker that holds the snapshot.
//   - A worker that can snapshot only its own host's VMs (it declares so)
//     never gets another host's snapshots.
//   - A disk task whose export is host-local (a unix socket) goes to the
//     snapshot's holder only, however busy it is (taken at whatever tier it
//     holds the VM's host's work).
// Every placement carries its tier and the reason, recorded on the task.
// Hosts without a cluster each count as a cluster of their own.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace ferry::coordinator {

enum class WorkKind { kSnapshot, kDisk, kRelease, kRestore };
// Disk tasks and restores take a slot on their worker and repository.
inline bool TakesSlot(WorkKind kind) { return kind == WorkKind::kDisk || kind == WorkKind::kRestore; }
enum class Tier { kHost, kCluster, kAny };
const char* TierName(Tier tier);

struct QueuedWork {
  WorkKind kind = WorkKind::kDisk;
  int64_t id = 0;             // snapshot id (snapshot, release) or task id (disk, restore)
  int64_t host_id = 0;        // the VM's host; restore work: the target host
  int64_t repository_id = 0;  // disk and restore work only
  int64_t pinned_worker = 0;  // release work, and host_only disk work: the snapshot's holder
  bool commit = false;        // release work: commit the restore point first
  bool host_only = false;     // disk work whose export only its holder's machine can read: for pinned_worker only
};

struct Placement {
  QueuedWork work;
  Tier tier = Tier::kHost;
  std::string reason;
};

class HostLocalityScheduler {
 public:
  void SetHost(int64_t host_id, const std::string& host_name, const std::string& cluster);
  // Adds or updates a worker; slots may shrink below what it runs (it then
  // gets no disk work until enough tasks end).
  // `own_host_snapshots_only`: the worker reaches only its own host's
  // hypervisor (QMP sockets, local libvirt), so it never takes snapshots of
  // other hosts' VMs (RegisterRequest.ownHostSnapshotsOnly).
  void SetWorker(int64_t worker_id, int64_t host_id, int slots, bool own_host_snapshots_only = false);
  void SetWorkerConnected(int64_t worker_id, bool connected);
  void SetRepositorySlots(int64_t repository_id, int slots);

  void Enqueue(const QueuedWork& work);
  // Removes queued work (a stopped session); false if it was not queued.
  bool Dequeue(WorkKind kind, int64_t id);

  // A disk task (or a restore) holds one slot on its worker and its
  // repository from Pick (or AdoptRunning after a restart) until TaskEnded.
  void AdoptRunning(int64_t worker_id, int64_t repository_id);
  void TaskEnded(int64_t worker_id, int64_t repository_id);

  // Work for `worker_id`: its pinned releases, then snapshots and up to
  // `max_disk_tasks` disk tasks (further limited by its free slots), by tier.
  std::vector<Placement> Pick(int64_t worker_id, int max_disk_tasks);

  // True when a connected worker on the host can take `kind` of work now
  // (a free slot for disk and restore work; connected at all for a snapshot). When
  // false, workers elsewhere may get the host's work.
  bool HostCanServe(int64_t host_id, WorkKind kind) const;
  bool RepositoryFull(int64_t repository_id) const { return !RepositoryHasSlot(repository_id); }
  bool HostHasQueuedDisks(int64_t host_id) const {
    auto it = hosts_.find(host_id);
    return it != hosts_.end() && !it->second.disks.empty();
  }

  int FreeSlots(int64_t worker_id) const;
  int RunningOn(int64_t worker_id) const;
  int RunningOnRepository(int64_t repository_id) const;
  size_t QueuedCount() const { return queued_; }

 private:
  struct WorkerState {
    int64_t host_id = 0;
    int slots = 0;
    int used = 0;
    bool connected = false;
    bool own_host_snapshots_only = false;
    std::deque<QueuedWork> pinned;
    int Free() const { return used < slots ? slots - used : 0; }
  };
  struct ClusterState;
  struct HostState {
    std::string name;
    std::string cluster_key;
    ClusterState* cluster = nullptr;  // clusters_[cluster_key]; map nodes never move
    std::deque<QueuedWork> snapshots;
    std::deque<QueuedWork> disks;  // disk tasks and restores (both take slots)
    std::set<int64_t> workers;
    int free_slots = 0;         // over its connected workers, kept current
    int connected_workers = 0;
    bool HasWork() const { return !snapshots.empty() || !disks.empty(); }
  };
  struct ClusterState {
    int64_t order = 0;  // creation order: clusters are visited in it
    std::set<int64_t> hosts;
    std::set<int64_t> hosts_with_work;
    int free_slots = 0;
    int connected_workers = 0;
  };
  struct RepositoryState {
    int slots = 0;
    int used = 0;
  };

  HostState& Host(int64_t host_id);
  // Adds (+1) or removes (-1) a worker's share of its host's and cluster's
  // free slots and connected workers; call around every change to a worker.
  void Contribute(int64_t worker_id, int sign);
  void Reindex(int64_t host_id);
  std::string WhyHostCannotServe(const HostState& host) const;
  ClusterState& Cluster(const std::string& key);
  // Takes work from `host` into `out` at `tier`; returns disk tasks taken.
  // `reason()` is called only if something is taken.
  template <typename Reason>
  int TakeFrom(int64_t host_id, HostState& host, int64_t worker_id, int disk_budget, Tier tier,
               bool snapshots_too, const Reason& reason, std::vector<Placement>& out);
  bool RepositoryHasSlot(int64_t repository_id) const;

  std::unordered_map<int64_t, WorkerState> workers_;
  std::unordered_map<int64_t, HostState> hosts_;
  std::map<std::string, ClusterState> clusters_;
  std::map<int64_t, ClusterState*> clusters_with_work_;  // by ClusterState::order
  int64_t next_cluster_order_ = 0;
  std::unordered_map<int64_t, RepositoryState> repositories_;
  size_t queued_ = 0;
};

}  // namespace ferry::coordinator
