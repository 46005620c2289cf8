// The real worker's executor of the protocol client (ferry/rpc/worker_agent.h):
// what `ferry-worker` does with the work items its host's WorkerAgent hands it.
//
//   snapshot  find the VM on this host (a QMP socket of the socket directory,
//             or a libvirt domain), stage the point and take the snapshot
//             (worker::TakeVmSnapshot); the snapshot is then HELD here, by
//             snapshot id, until its release item comes.
//   disk      the read pipeline for one disk (worker::BackupDiskTask) from the
//             export and read plan the snapshot's holder reported, whichever
//             worker that was.
//   release   end a held snapshot, commit or discard its point, finish the
//             chain's changed-block tracking (worker::VmSnapshot::Release).
//
// Threading: the agent calls on the KJ event loop thread, which must never
// block; every step runs on a thread of its own (BlockingRunner) and resolves
// the item's promise through a cross-thread fulfiller. A cancelled item's
// promise is destroyed: the step sees its cancel flag (the read pipeline stops
// within a chunk batch) and a snapshot taken meanwhile is released at once.
// Progress of disk and restore items is sent once a second from the loop thread.
//
// Each step's log lines (LogCapture) go back with its result (WorkResult.log),
// headed by where it ran, so the session's log says what happened on which host.
#pragma once

#include <kj/async.h>
#include <kj/exception.h>
#include <kj/function.h>
#include <kj/time.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ferry/common/bandwidth.h"
#include "ferry/rpc/repository_service.h"
#include "ferry/rpc/worker_agent.h"
#include "ferry/worker/inventory.h"
#include "ferry/worker/libvirt_host.h"
#include "ferry/worker/qmp_snapshot.h"
#include "key_directory.h"

namespace ferry::daemon {

struct HostSettings {
  std::string host;                // the hypervisor host this worker stands for
  std::string cluster;             // "" keeps the coordinator's
  std::string platform;            // proxmox | libvirt | ovirt
  std::string version;
  uint32_t task_slots = 2;
  // QMP monitors, one per VM: a directory of sockets here, or mirrored from
  // the host over SSH (worker::SshHost); null for none.
  std::shared_ptr<worker::QmpMonitorDirectory> qmp_monitors;
  std::string libvirt_uri;         // "" for none
  worker::SnapshotPaths paths;     // session locks here; NBD sockets, keys, overlays on QEMU's host
  // Set: QMP snapshots export over TCP with per-session TLS-PSK, so a worker
  // on another host can read them (the cluster and any tiers); unset: on a
  // unix socket, readable on this host only.
  std::optional<worker::NbdExportNetwork> export_tcp;
  // Set: libvirt's pull-mode exports go over TCP (a remote libvirt URI, or
  // export-host given); unset: a unix socket, for a local libvirtd.
  std::optional<worker::LibvirtTcpExport> libvirt_export;
  unsigned compute_threads = 0;    // per disk task; 0: cores / slots, at least 1
  uint64_t rate_limit_bytes_per_s = 0;  // read cap per disk task; 0: unlimited
  // The cap on what this worker sends to repositories, shared by its disk
  // tasks (docs/throttling.md); the coordinator's setting for the worker,
  // when it has one, replaces it.
  BandwidthSchedule bandwidth;
  std::chrono::seconds staging_expiry{24 * 3600};  // a staged point never released goes after this
  std::chrono::milliseconds inventory_interval{30000};
  std::chrono::milliseconds monitor_timeout{2000};  // a QMP monitor's greeting, for the inventory
  // Repositories behind a repository service: CA, name, reconnection (the
  // token comes with each work item).
  rpc::RepositoryAccess repository_access;
  // Encrypted repositories' key files (key_directory.h): "" for none; their
  // passphrase's file ("" for $FERRY_PASSPHRASE).
  std::string key_dir;
  std::string passphrase_file;
};

// Runs blocking functions on threads of their own and hands their result to
// the event loop thread that asked. Destroying it waits for every thread.
class BlockingRunner {
 public:
  BlockingRunner() = default;
  ~BlockingRunner();
  BlockingRunner(const BlockingRunner&) = delete;
  BlockingRunner& operator=(const BlockingRunner&) = delete;

  // `fn` must not throw; it runs even if the promise is dropped meanwhile.
  template <typename T>
  kj::Promise<T> Run(std::function<T()> fn) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<T>();
    Start([fn = std::move(fn), fulfiller = kj::mv(paf.fulfiller)]() mutable {
      try {
        fulfiller->fulfill(fn());
      } catch (kj::Exception& e) {  // a promise that rejects: the agent reports it as internal
        fulfiller->reject(kj::mv(e));
      } catch (const std::exception& e) {
        fulfiller->reject(KJ_EXCEPTION(FAILED, e.what()));
      } catch (...) {
        fulfiller->reject(KJ_EXCEPTION(FAILED, "unknown exception"));
      }
    });
    return kj::mv(paf.promise);
  }
  size_t running() const;
  // Waits for every thread started so far.
  void JoinAll();

 private:
  void Start(kj::Function<void()> body);
  struct Thread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  mutable std::mutex mu_;
  std::vector<Thread> threads_;
};

class HostExecutor final : public rpc::WorkExecutor, private kj::TaskSet::ErrorHandler {
 public:
  HostExecutor(kj::Timer& timer, HostSettings settings);
  ~HostExecutor() noexcept(false) override;

  // Reads the host's VMs now (blocking): before the first registration.
  void ScanInventory();
  // From then on, every inventory_interval on the loop thread: rescans (on a
  // thread) and calls `changed` when the VMs differ from the last scan.
  kj::Promise<void> WatchInventory(std::function<void()> changed);

  // rpc::WorkExecutor
  rpc::WorkerIdentity Identity() override;
  std::vector<rpc::InventoryVm> Inventory() override;
  std::optional<std::vector<uint64_t>> HeldSnapshots() override;
  void DropSnapshots(const std::vector<uint64_t>& snapshot_ids) override;
  kj::Promise<rpc::WorkOutcome> TakeSnapshot(const rpc::SnapshotAssignment& item, rpc::WorkContext& context) override;
  kj::Promise<rpc::WorkOutcome> BackupDisk(const rpc::DiskAssignment& item, rpc::WorkContext& context) override;
  kj::Promise<rpc::WorkOutcome> Release(const rpc::ReleaseAssignment& item, rpc::WorkContext& context) override;
  kj::Promise<rpc::WorkOutcome> Restore(const rpc::RestoreAssignment& item, rpc::WorkContext& context) override;
  void Ended(const std::string& assignment_id, rpc::AssignmentEnd end, const std::string& reason) override;

  size_t held_snapshots() const;

 private:
  struct Job;
  struct HeldSnapshot;
  struct KnownVm {
    rpc::InventoryVm vm;
    std::string qmp_socket;  // "" for a libvirt domain
  };

  // Runs `body` on a thread as assignment `id`, with its log captured under
  // `heading`; disk work reports progress.
  kj::Promise<rpc::WorkOutcome> RunJob(const std::string& id, std::string heading, rpc::WorkContext* progress_to,
                                       std::function<rpc::WorkOutcome(Job&)> body);
  kj::Promise<void> ProgressLoop(rpc::WorkContext& context, std::shared_ptr<Job> job);
  std::vector<KnownVm> Scan(const std::vector<KnownVm>& previous) const;
  KnownVm FindVm(const rpc::AssignedVm& vm);
  // A work item's repository: its directory, or its service with the item's token.
  std::unique_ptr<Repository> OpenRepository(const rpc::AssignedRepository& repository) const;
  // Its key from the key directory: null for a plain repository; kBadInput /
  // kNotFound naming the repository and the fingerprint when there is none.
  std::shared_ptr<const RepositoryKey> KeyFor(const Repository& repo, const rpc::AssignedRepository& repository) const;
  rpc::WorkOutcome DoSnapshot(Job& job, const rpc::SnapshotAssignment& item);
  rpc::WorkOutcome DoDisk(Job& job, const rpc::DiskAssignment& item);
  rpc::WorkOutcome DoRelease(Job& job, const rpc::ReleaseAssignment& item);
  rpc::WorkOutcome DoRestore(Job& job, const rpc::RestoreAssignment& item);
  // Removes the snapshot without committing (the point stays staged: the
  // coordinator decides about it). Any thread; blocks.
  void ReleaseNow(HeldSnapshot& held, const std::string& why);
  // The same on a thread, from the loop thread.
  void DiscardInBackground(std::shared_ptr<HeldSnapshot> held, const std::string& why);
  void taskFailed(kj::Exception&& e) override;

  // The coordinator's cap for this worker ("": keep settings_.bandwidth).
  void ApplyWorkerBandwidth(const std::string& schedule);

  kj::Timer& timer_;
  const HostSettings settings_;
  KeyDirectory keys_;
  BandwidthLimiter bandwidth_;      // shared by every disk task
  std::mutex bandwidth_mu_;
  std::string bandwidth_applied_;   // the coordinator's schedule in force ("": the local one)

  mutable std::mutex mu_;  // guards what follows
  std::vector<KnownVm> vms_;                                    // the last scan
  std::vector<rpc::InventoryVm> reported_;                      // what Inventory() last returned
  std::map<uint64_t, std::shared_ptr<HeldSnapshot>> held_;      // by snapshot id
  std::map<std::string, uint64_t> snapshot_of_assignment_;      // snapshot items not yet Ended
  std::map<std::string, std::shared_ptr<Job>> jobs_;            // running, by assignment id

  kj::TaskSet background_;  // DiscardInBackground's
  BlockingRunner runner_;  // last: its threads are joined before the rest goes
};

// "running", "paused" or "shut-off" (the protocol's words) for a host's state.
std::string ProtocolVmState(const std::string& host_state);

}  // namespace ferry::daemon
