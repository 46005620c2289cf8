#include "host_executor.h"

#include <kj/debug.h>

#include <algorithm>
#include <ctime>

#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/worker/disk_restore.h"
#include "ferry/worker/libvirt_host.h"
#include "ferry/worker/qmp_host.h"
#include "ferry/worker/vm_backup.h"

namespace ferry::daemon {

namespace {

using Clock = std::chrono::steady_clock;

std::string Seconds(Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", std::chrono::duration<double>(d).count());
  return buf;
}

std::string Mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// The URI a user (and the coordinator's session log) sees for an export; the
// read plan says how to actually open it.
// Never the key: that travels in the read plan only.
std::string ExportUri(const worker::NbdSource& source) {
  if (!source.tcp_address.empty()) {
    return (source.plaintext ? "nbd://" : "nbds://") + source.tcp_address + "/" + source.export_name;
  }
  return "nbd+unix:///" + source.export_name + "?socket=" + source.unix_socket;
}

bool IsNullUuid(const std::string& uuid) {
  return uuid.empty() || uuid.find_first_not_of("0-") == std::string::npos;
}

// The same VM: by UUID when both sides know one, else by name.
bool SameVm(const rpc::InventoryVm& known, const rpc::AssignedVm& wanted) {
  if (!IsNullUuid(known.uuid) && !IsNullUuid(wanted.uuid)) return known.uuid == wanted.uuid;
  return known.name == wanted.name;
}

rpc::InventoryVm ToInventory(const worker::HostVm& vm) {
  rpc::InventoryVm out;
  out.name = vm.identity.name;
  out.uuid = vm.identity.uuid;
  out.state = ProtocolVmState(vm.state);
  for (const auto& d : vm.disks) out.disks.push_back({d.name, d.size, d.format});
  return out;
}

bool SameInventory(const rpc::InventoryVm& a, const rpc::InventoryVm& b) {
  if (a.name != b.name || a.uuid != b.uuid || a.state != b.state || a.disks.size() != b.disks.size()) return false;
  for (size_t i = 0; i < a.disks.size(); ++i) {
    if (a.disks[i].name != b.disks[i].name || a.disks[i].size_bytes != b.disks[i].size_bytes ||
        a.disks[i].format != b.disks[i].format) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string ProtocolVmState(const std::string& s) {
  if (s == "running") return "running";
  if (s == "shut off" || s == "shutoff" || s == "shut-off" || s == "crashed") return "shut-off";
  return "paused";  // paused, suspended, prelaunch, inmigrate, ...: not running guest code
}

// ---------------------------------------------------------------------------
// BlockingRunner

BlockingRunner::~BlockingRunner() { JoinAll(); }

void BlockingRunner::Start(kj::Function<void()> body) {
  std::lock_guard<std::mutex> lock(mu_);
  // Reap the threads that are done.
  for (auto it = threads_.begin(); it != threads_.end();) {
    if (*it->done) {
      it->thread.join();
      it = threads_.erase(it);
    } else {
      ++it;
    }
  }
  auto done = std::make_shared<std::atomic<bool>>(false);
  auto holder = std::make_shared<kj::Function<void()>>(kj::mv(body));
  threads_.push_back({std::thread([holder, done]() mutable {
                        (*holder)();
                        holder.reset();  // whatever it holds goes on this thread
                        *done = true;
                      }),
                      done});
}

size_t BlockingRunner::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<size_t>(std::count_if(threads_.begin(), threads_.end(), [](const Thread& t) { return !*t.done; }));
}

void BlockingRunner::JoinAll() {
  std::vector<Thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.thread.join();
}

// ---------------------------------------------------------------------------

struct HostExecutor::Job {
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> bytes_total{0};
  worker::DiskBackupProgress disk;        // a disk item's
  worker::DiskRestoreProgress restore;    // a restore item's
  std::atomic<bool> restoring{false};     // a restore item: its progress is `restore`
  // Disk work: its share of the repository's cap, as the coordinator says.
  BandwidthLimiter repository_share;
  std::atomic<uint64_t> repository_share_rate{0};
};

struct HostExecutor::HeldSnapshot {
  uint64_t snapshot_id = 0;
  std::string assignment;  // the snapshot item that took it
  std::string vm;
  std::unique_ptr<Repository> repo;
  std::unique_ptr<worker::Host> host;
  std::unique_ptr<worker::VmSnapshot> snapshot;
  std::mutex mu;  // one release at a time
  bool released = false;
};

HostExecutor::HostExecutor(kj::Timer& timer, HostSettings settings)
    : timer_(timer),
      settings_(std::move(settings)),
      keys_(settings_.key_dir, settings_.passphrase_file),
      bandwidth_(settings_.bandwidth),
      background_(*this) {}

void HostExecutor::ApplyWorkerBandwidth(const std::string& schedule) {
  std::lock_guard<std::mutex> lock(bandwidth_mu_);
  if (schedule == bandwidth_applied_) return;
  try {
    bandwidth_.SetSchedule(schedule.empty() ? settings_.bandwidth : BandwidthSchedule::Parse(schedule));
    bandwidth_applied_ = schedule;
    LogInfo("worker bandwidth cap: " + (schedule.empty() ? settings_.bandwidth.ToString() + " (this worker's own)"
                                                         : schedule + " (the coordinator's)"));
  } catch (const Error& e) {
    LogWarning("the coordinator's bandwidth cap for this worker is not understood, keeping the current one: " +
               std::string(e.what()));
  }
}

void HostExecutor::taskFailed(kj::Exception&& e) { LogWarning("worker: " + std::string(e.getDescription().cStr())); }

HostExecutor::~HostExecutor() noexcept(false) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, job] : jobs_) job->cancel = true;
  }
  runner_.JoinAll();
  // Held snapshots go with the worker: the coordinator takes new ones.
  std::map<uint64_t, std::shared_ptr<HeldSnapshot>> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held.swap(held_);
  }
  for (auto& [id, h] : held) ReleaseNow(*h, "the worker is stopping");
}

size_t HostExecutor::held_snapshots() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_.size();
}

rpc::WorkerIdentity HostExecutor::Identity() {
  rpc::WorkerIdentity id;
  id.host = settings_.host;
  id.platform = settings_.platform;
  id.cluster = settings_.cluster;
  id.task_slots = settings_.task_slots;
  id.version = settings_.version;
  id.own_host_snapshots_only = true;  // QMP sockets and libvirt reach this host's VMs only
  return id;
}

std::vector<rpc::InventoryVm> HostExecutor::Inventory() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<rpc::InventoryVm> out;
  for (const auto& k : vms_) out.push_back(k.vm);
  reported_ = out;
  return out;
}

std::optional<std::vector<uint64_t>> HostExecutor::HeldSnapshots() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> out;
  for (const auto& [id, held] : held_) out.push_back(id);
  return out;
}

// --- inventory ---

std::vector<HostExecutor::KnownVm> HostExecutor::Scan(const std::vector<KnownVm>& previous) const {
  std::vector<KnownVm> out;
  if (settings_.qmp_monitors) {
    std::vector<worker::InventoryEntry> entries;
    std::string dir;
    try {
      dir = settings_.qmp_monitors->Refresh();
    } catch (const Error& e) {
      // The host cannot be reached (over SSH): its VMs did not vanish.
      LogWarning("inventory: " + std::string(e.what()) + "; keeping the VMs last seen there");
      for (const auto& k : previous) {
        if (!k.qmp_socket.empty()) out.push_back(k);
      }
    }
    try {
      if (!dir.empty()) entries = worker::QmpDirectoryInventory(dir, settings_.monitor_timeout, settings_.qmp_monitors->forwarded());
    } catch (const Error& e) {
      LogWarning("inventory: " + std::string(e.what()));
    }
    for (const auto& e : entries) {
      if (e.vm) {
        out.push_back({ToInventory(*e.vm), e.source});
        continue;
      }
      // A monitor serves one client: while a backup (ours or another's)
      // holds it, the VM is still there as last seen.
      auto prev = std::find_if(previous.begin(), previous.end(), [&](const KnownVm& k) { return k.qmp_socket == e.source; });
      if (e.busy && prev != previous.end()) {
        LogDebug("inventory: " + e.source + ": busy, keeping " + prev->vm.name + " as last seen (" + e.problem + ")");
        out.push_back(*prev);
      } else {
        LogDebug("inventory: " + e.source + ": " + e.problem);
      }
    }
  }
  if (!settings_.libvirt_uri.empty()) {
    try {
      for (const auto& e : worker::LibvirtInventory(settings_.libvirt_uri)) {
        if (e.vm) out.push_back({ToInventory(*e.vm), ""});
        else LogDebug("inventory: " + e.source + ": " + e.problem);
      }
    } catch (const Error& e) {
      // The connection failed: keep what libvirt had (the VMs did not
      // vanish because libvirtd restarts).
      LogWarning("inventory: libvirt " + settings_.libvirt_uri + ": " + e.what());
      for (const auto& k : previous) {
        if (k.qmp_socket.empty()) out.push_back(k);
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const KnownVm& a, const KnownVm& b) { return a.vm.name < b.vm.name; });
  return out;
}

void HostExecutor::ScanInventory() {
  std::vector<KnownVm> previous;
  {
    std::lock_guard<std::mutex> lock(mu_);
    previous = vms_;
  }
  auto now = Scan(previous);
  std::lock_guard<std::mutex> lock(mu_);
  vms_ = std::move(now);
}

kj::Promise<void> HostExecutor::WatchInventory(std::function<void()> changed) {
  return timer_.afterDelay(settings_.inventory_interval.count() * kj::MILLISECONDS)
      .then([this]() {
        std::vector<KnownVm> previous;
        {
          std::lock_guard<std::mutex> lock(mu_);
          previous = vms_;
        }
        return runner_.Run<std::vector<KnownVm>>([this, previous]() { return Scan(previous); });
      })
      .then([this, changed = std::move(changed)](std::vector<KnownVm> now) mutable {
        bool differs;
        {
          // Against what was last reported: a scan for a snapshot (FindVm)
          // may have updated vms_ without telling the coordinator.
          std::lock_guard<std::mutex> lock(mu_);
          differs = now.size() != reported_.size() ||
                    !std::equal(now.begin(), now.end(), reported_.begin(),
                                [](const KnownVm& a, const rpc::InventoryVm& b) { return SameInventory(a.vm, b); });
          vms_ = std::move(now);
        }
        if (differs) {
          LogInfo("inventory changed: reporting " + std::to_string(Inventory().size()) + " VMs");
          changed();
        }
        return WatchInventory(std::move(changed));
      });
}

HostExecutor::KnownVm HostExecutor::FindVm(const rpc::AssignedVm& vm) {
  auto find = [&]() -> std::optional<KnownVm> {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& k : vms_) {
      if (SameVm(k.vm, vm)) return k;
    }
    return std::nullopt;
  };
  if (auto k = find()) return *k;
  ScanInventory();  // started since the last scan?
  if (auto k = find()) return *k;
  std::string where;
  if (settings_.qmp_monitors) where += "no monitor in " + settings_.qmp_monitors->description() + " runs it";
  if (!settings_.libvirt_uri.empty()) where += std::string(where.empty() ? "" : " and ") + settings_.libvirt_uri + " has no such domain";
  throw Error(ErrorKind::kNotFound, "VM " + vm.name + " is not on host " + settings_.host + " (" + where + ")");
}

// --- running work ---

kj::Promise<rpc::WorkOutcome> HostExecutor::RunJob(const std::string& id, std::string heading,
                                                   rpc::WorkContext* progress_to,
                                                   std::function<rpc::WorkOutcome(Job&)> body) {
  auto job = std::make_shared<Job>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_[id] = job;
  }
  kj::Promise<rpc::WorkOutcome> work = runner_.Run<rpc::WorkOutcome>(
      [job, heading = std::move(heading), body = std::move(body)]() {
        LogCapture capture;
        LogInfo(heading);
        auto start = Clock::now();
        rpc::WorkOutcome outcome;
        try {
          outcome = body(*job);
        } catch (const Error& e) {
          outcome = rpc::WorkOutcome::Failed(job->cancel ? ErrorKind::kInterrupted : e.kind(), e.what());
        } catch (const std::exception& e) {
          outcome = rpc::WorkOutcome::Failed(ErrorKind::kInternal, e.what());
        }
        if (outcome.ok) LogInfo("done in " + Seconds(Clock::now() - start));
        else LogWarning("failed after " + Seconds(Clock::now() - start) + ": " + outcome.error);
        outcome.log = capture.Take();
        return outcome;
      });
  if (progress_to != nullptr) work = work.exclusiveJoin(ProgressLoop(*progress_to, job).then([]() -> rpc::WorkOutcome {
    KJ_UNREACHABLE;
  }));
  // Destroyed: cancelled (or finished). The thread sees the flag.
  return work.attach(kj::defer([this, job, id]() {
    job->cancel = true;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    if (it != jobs_.end() && it->second == job) jobs_.erase(it);
  }));
}

kj::Promise<void> HostExecutor::ProgressLoop(rpc::WorkContext& context, std::shared_ptr<Job> job) {
  return timer_.afterDelay(1 * kj::SECONDS).then([this, &context, job]() {
    if (uint64_t total = job->bytes_total.load(); total > 0) {
      rpc::ProgressReport report;
      report.bytes_total = total;
      if (job->restoring) {
        report.bytes_done = job->restore.bytes_done;  // a restore measures no data-path statistics
      } else {
        worker::DiskBackupStats stats = job->disk.Stats();  // live
        report.bytes_done = job->disk.bytes_done;
        report.bytes_read = stats.bytes_read;
        report.bytes_sent = stats.bytes_sent;
        if (stats.busy.wall_us > 0) report.stages = stats.busy;
      }
      context.ReportProgress(report);
    }
    if (const uint64_t share = context.RepositoryShare(); share != job->repository_share_rate.exchange(share)) {
      job->repository_share.SetRate(share);
    }
    return ProgressLoop(context, job);
  });
}

kj::Promise<rpc::WorkOutcome> HostExecutor::TakeSnapshot(const rpc::SnapshotAssignment& item, rpc::WorkContext&) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot_of_assignment_[item.id] = item.snapshot_id;
  }
  std::string heading = "host " + settings_.host + ": snapshot " + std::to_string(item.snapshot_id) + " of VM " +
                        item.vm.name + " (" + std::to_string(item.disks.size()) + " disks, chain " + item.chain +
                        ", point " + item.point_id + ")";
  return RunJob(item.id, std::move(heading), nullptr, [this, item](Job& job) { return DoSnapshot(job, item); });
}

std::unique_ptr<Repository> HostExecutor::OpenRepository(const rpc::AssignedRepository& repository) const {
  rpc::RepositoryAccess access = settings_.repository_access;
  access.token = repository.token;
  return rpc::OpenRepository(repository.location, access);
}

std::shared_ptr<const RepositoryKey> HostExecutor::KeyFor(const Repository& repo,
                                                          const rpc::AssignedRepository& repository) const {
  const std::string name = repository.name.empty() ? repo.location() : "'" + repository.name + "' (" + repo.location() + ")";
  return keys_.For(repo.config(), name);
}

rpc::WorkOutcome HostExecutor::DoSnapshot(Job& job, const rpc::SnapshotAssignment& item) {
  if (item.repository.location.empty()) {
    throw Error(ErrorKind::kBadInput, "the snapshot item names no repository (a coordinator older than this worker?)");
  }
  auto held = std::make_shared<HeldSnapshot>();
  held->snapshot_id = item.snapshot_id;
  held->assignment = item.id;
  held->vm = item.vm.name;
  KnownVm where = FindVm(item.vm);
  held->repo = OpenRepository(item.repository);
  // Before any snapshot: an encrypted repository this worker has no key for
  // fails here, naming the key it needs.
  KeyFor(*held->repo, item.repository);
  if (!where.qmp_socket.empty()) {
    // Over SSH: reconnects if the connection died since the last scan, so
    // that the mirrored socket leads to QEMU again.
    settings_.qmp_monitors->Refresh();
    worker::QmpHostOptions o;
    o.address = "unix:" + where.qmp_socket;
    o.expected_vm_name = item.vm.name;
    o.paths = settings_.paths;
    o.export_tcp = settings_.export_tcp;
    held->host = worker::OpenQmpHost(o);
  } else {
    held->host = worker::OpenLibvirtHost({settings_.libvirt_uri, IsNullUuid(where.vm.uuid) ? where.vm.name : where.vm.uuid,
                                          settings_.paths, settings_.libvirt_export});
  }
  worker::VmSnapshotRequest request;
  request.disks = item.disks;
  request.chain = item.chain.empty() ? "default" : item.chain;
  request.point_id = item.point_id;
  request.expires_at = static_cast<int64_t>(std::time(nullptr)) + settings_.staging_expiry.count();
  held->snapshot = worker::TakeVmSnapshot(*held->repo, *held->host, request);

  rpc::WorkOutcome outcome = rpc::WorkOutcome::Ok();
  for (const auto& task : held->snapshot->disk_tasks()) {
    // A unix socket is reachable on this host only, and libvirt's TCP exports
    // (no session key: this worker's x509 directory, or plaintext) are for
    // this worker: their disk tasks must stay here.
    outcome.exports.push_back(
        {task.disk.name, ExportUri(task.source), worker::ReadPlanToJson(task), task.source.tls_psk_key.empty()});
  }
  bool wanted = false;
  std::shared_ptr<HeldSnapshot> replaced;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wanted = snapshot_of_assignment_.count(item.id) > 0 && !job.cancel;
    if (wanted) {
      auto& slot = held_[item.snapshot_id];
      replaced = std::move(slot);  // an earlier attempt's, the coordinator gave up on
      slot = held;
    }
  }
  if (replaced) ReleaseNow(*replaced, "snapshot " + std::to_string(item.snapshot_id) + " was taken again");
  if (!wanted) {
    ReleaseNow(*held, "its snapshot item was cancelled while it was being taken");
    throw Error(ErrorKind::kInterrupted, "cancelled");
  }
  return outcome;
}

kj::Promise<rpc::WorkOutcome> HostExecutor::BackupDisk(const rpc::DiskAssignment& item, rpc::WorkContext& context) {
  std::string heading = "host " + settings_.host + ": disk " + item.disk + " of VM " + item.vm.name + " (task " +
                        std::to_string(item.task_id) + ", attempt " + std::to_string(item.attempt) + ", tier " +
                        item.tier + ", point " + item.point_id + ") from " + item.export_uri;
  return RunJob(item.id, std::move(heading), &context, [this, item](Job& job) { return DoDisk(job, item); });
}

rpc::WorkOutcome HostExecutor::DoDisk(Job& job, const rpc::DiskAssignment& item) {
  if (item.read_plan.empty()) {
    throw Error(ErrorKind::kBadInput, "disk " + item.disk + ": the item carries no read plan (its snapshot was "
                                      "taken by a worker that does not send one)");
  }
  worker::DiskTask task = worker::ReadPlanFromJson(item.read_plan);
  if (task.disk.name != item.disk || task.point_id != item.point_id) {
    throw Error(ErrorKind::kBadInput, "disk " + item.disk + ": the read plan is for disk " + task.disk.name +
                                          " of point " + task.point_id + ", the item for point " + item.point_id);
  }
  auto repo = OpenRepository(item.repository);
  const std::shared_ptr<const RepositoryKey> key = KeyFor(*repo, item.repository);
  worker::DiskBackupOptions options;
  options.key = key.get();
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  // A remote store's lookups wait a round trip per chunk: twice the threads
  // keep the cores busy meanwhile.
  options.compute_threads = settings_.compute_threads != 0
                                ? settings_.compute_threads
                                : std::max(1u, cores / std::max(1u, settings_.task_slots)) * (repo->chunks().remote() ? 2 : 1);
  options.rate_limit_bytes_per_s = settings_.rate_limit_bytes_per_s;
  ApplyWorkerBandwidth(item.worker_bandwidth);
  job.repository_share_rate = item.repository_bytes_per_s;
  job.repository_share.SetRate(item.repository_bytes_per_s);
  options.send_limiters = {&bandwidth_, &job.repository_share};
  options.cancel = &job.cancel;
  job.bytes_total = task.disk.size;
  auto start = Clock::now();
  DiskRecord record = worker::BackupDiskTask(*repo, task, options, &job.disk);
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  char rate[32];
  std::snprintf(rate, sizeof rate, "%.0f MiB/s", secs > 0 ? static_cast<double>(record.read_bytes) / (1 << 20) / secs : 0.0);
  const worker::DiskBackupStats stats = job.disk.Stats();  // final: the run has ended
  LogInfo("disk " + item.disk + ": " + (task.plan.incremental ? "incremental from point " + task.previous_point : "full") +
          ", read " + Mib(record.read_bytes) + " of " + Mib(record.size) + " (" + rate + "), stored " +
          Mib(record.stored_bytes) + " in " + std::to_string(record.new_chunks) + " new chunks; sent " +
          std::to_string(job.disk.bytes_sent.load()) + " bytes to the repository, " +
          std::to_string(job.disk.bytes_resent.load()) + " of them again after a lost connection; busy: " +
          stats.busy.Describe());
  rpc::WorkOutcome outcome = rpc::WorkOutcome::Ok();
  outcome.bytes_read = record.read_bytes;
  outcome.bytes_stored = record.stored_bytes;
  outcome.bytes_sent = stats.bytes_sent;
  outcome.stages = stats.busy;
  return outcome;
}

kj::Promise<rpc::WorkOutcome> HostExecutor::Release(const rpc::ReleaseAssignment& item, rpc::WorkContext&) {
  std::string heading = "host " + settings_.host + ": release snapshot " + std::to_string(item.snapshot_id) +
                        " of VM " + item.vm.name + (item.commit ? ", committing point " : ", discarding point ") +
                        item.point_id;
  return RunJob(item.id, std::move(heading), nullptr, [this, item](Job& job) { return DoRelease(job, item); });
}

rpc::WorkOutcome HostExecutor::DoRelease(Job&, const rpc::ReleaseAssignment& item) {
  std::shared_ptr<HeldSnapshot> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = held_.find(item.snapshot_id);
    if (it != held_.end()) held = it->second;
  }
  if (!held) {
    if (item.commit) {
      throw Error(ErrorKind::kNotFound, "snapshot " + std::to_string(item.snapshot_id) +
                                            " is not held by this worker (it was restarted since it took it)");
    }
    // Nothing to remove here; the staged point goes as asked.
    if (!item.repository.location.empty() && !item.point_id.empty()) {
      OpenRepository(item.repository)->points().Discard(item.point_id);
    }
    return rpc::WorkOutcome::Ok();
  }
  std::lock_guard<std::mutex> lock(held->mu);
  if (held->released) {
    // Removed meanwhile (dropped by the coordinator's reconciliation).
    if (item.commit) {
      throw Error(ErrorKind::kNotFound, "snapshot " + std::to_string(item.snapshot_id) + " was removed before its commit");
    }
    return rpc::WorkOutcome::Ok();
  }
  held->released = true;
  // Listed as held (HeldSnapshots) until released: a registration meanwhile
  // must not make it look lost.
  auto forget = kj::defer([this, held]() {
    std::lock_guard<std::mutex> l(mu_);
    auto it = held_.find(held->snapshot_id);
    if (it != held_.end() && it->second == held) held_.erase(it);
  });
  rpc::WorkOutcome outcome = rpc::WorkOutcome::Ok();
  RestorePointManifest manifest = held->snapshot->Release(item.commit);
  if (item.commit) {
    outcome.point_id = manifest.id;
    LogInfo("committed restore point " + manifest.id + " of VM " + item.vm.name + " (" +
            std::to_string(manifest.disks.size()) + " disks)");
  } else {
    held->repo->points().Discard(item.point_id);
    LogInfo("snapshot removed, staged point " + item.point_id + " discarded");
  }
  return outcome;
}

kj::Promise<rpc::WorkOutcome> HostExecutor::Restore(const rpc::RestoreAssignment& item, rpc::WorkContext& context) {
  std::string what = item.disk.empty() ? "VM " + item.vm.name : "disk " + item.disk + " of VM " + item.vm.name;
  std::string heading = "host " + settings_.host + ": restore " + what + " from point " + item.point_id + " (task " +
                        std::to_string(item.task_id) + ", attempt " + std::to_string(item.attempt) + ", tier " +
                        item.tier + ", target " + rpc::RestoreTargetName(item.target) + ")";
  return RunJob(item.id, std::move(heading), &context, [this, item](Job& job) { return DoRestore(job, item); });
}

rpc::WorkOutcome HostExecutor::DoRestore(Job& job, const rpc::RestoreAssignment& item) {
  using Target = rpc::RestoreAssignment::Target;
  const bool whole_vm = item.target == Target::kNewDomain || item.target == Target::kOverOriginal;
  if (whole_vm != item.disk.empty()) {
    throw Error(ErrorKind::kBadInput, std::string("restore target ") + rpc::RestoreTargetName(item.target) +
                                          (whole_vm ? " restores a whole VM but the item names disk " + item.disk
                                                    : " needs a disk but the item names none"));
  }
  if (item.target != Target::kFile && settings_.libvirt_uri.empty()) {
    throw Error(ErrorKind::kBadInput, std::string("restore target ") + rpc::RestoreTargetName(item.target) +
                                          " needs libvirt, and this worker of host " + settings_.host +
                                          " has no libvirt connection (option libvirt)");
  }
  if (item.target != Target::kFile && settings_.libvirt_export) {
    // The images are written as files of this machine, which the domain's
    // host does not see.
    throw Error(ErrorKind::kBadInput, std::string("restore target ") + rpc::RestoreTargetName(item.target) +
                                          " writes the domain's images where its libvirtd reads them, and this "
                                          "worker reaches libvirt at " + settings_.libvirt_uri +
                                          " over the network: restore with a worker on host " + settings_.host +
                                          ", or to a file");
  }
  job.restoring = true;
  auto repo = OpenRepository(item.repository);
  const std::shared_ptr<const RepositoryKey> key = KeyFor(*repo, item.repository);
  // The total for progress, from the point itself: every disk of a whole VM.
  RestorePointManifest manifest = repo->points().Load(item.point_id);
  uint64_t total = 0;
  for (const auto& d : manifest.disks)
    if (item.disk.empty() || d.name == item.disk) total += d.size;
  job.bytes_total = total;
  auto start = Clock::now();
  std::string where;
  switch (item.target) {
    case Target::kFile: {
      if (item.path.empty() || item.path[0] != '/') {
        throw Error(ErrorKind::kBadInput, "restore target path '" + item.path + "' is not absolute");
      }
      worker::DiskRestoreOptions options;
      options.cancel = &job.cancel;
      options.key = key.get();
      worker::RestoreDisk(*repo, item.point_id, item.disk, item.path,
                          worker::ParseImageFormat(item.format.empty() ? "raw" : item.format), options, &job.restore);
      where = item.path;
      break;
    }
    case Target::kIntoDomain: {
      std::string target_disk = item.target_disk.empty() ? item.disk : item.target_disk;
      worker::RestoreDiskIntoLibvirtVm(*repo, settings_.libvirt_uri, item.domain, item.point_id, item.disk, target_disk,
                                       &job.cancel, &job.restore, key.get());
      where = "disk " + target_disk + " of domain " + item.domain;
      break;
    }
    case Target::kNewDomain:
    case Target::kOverOriginal: {
      worker::LibvirtRestoreOptions o;
      o.uri = settings_.libvirt_uri;
      o.point_id = item.point_id;
      o.overwrite = item.target == Target::kOverOriginal;
      if (!o.overwrite) {
        o.name = item.name;
        o.directory = item.directory;
        o.pool = item.pool;
        o.format = item.format.empty() ? "qcow2" : item.format;
        o.keep_macs = item.keep_macs;
      }
      o.cancel = &job.cancel;
      o.progress = &job.restore;
      o.key = key.get();
      std::string name = worker::RestoreLibvirtVm(*repo, o);
      where = (o.overwrite ? "the original domain " : "new domain ") + name;
      break;
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  char rate[32];
  std::snprintf(rate, sizeof rate, "%.0f MiB/s", secs > 0 ? static_cast<double>(total) / (1 << 20) / secs : 0.0);
  LogInfo("restored " + (item.disk.empty() ? "VM " + item.vm.name : "disk " + item.disk) + " of point " +
          item.point_id + " to " + where + ": " + Mib(total) + " (" + rate + "), " +
          Mib(job.restore.bytes_written) + " of data written");
  rpc::WorkOutcome outcome = rpc::WorkOutcome::Ok();
  outcome.bytes_read = total;
  outcome.bytes_stored = job.restore.bytes_written;
  return outcome;
}

void HostExecutor::ReleaseNow(HeldSnapshot& held, const std::string& why) {
  std::lock_guard<std::mutex> lock(held.mu);
  if (held.released) return;
  held.released = true;
  LogInfo("removing snapshot " + std::to_string(held.snapshot_id) + " of VM " + held.vm + ": " + why);
  try {
    held.snapshot->Release(false);
  } catch (const std::exception& e) {
    LogWarning("removing snapshot " + std::to_string(held.snapshot_id) + " of VM " + held.vm + ": " + e.what());
  }
}

void HostExecutor::DiscardInBackground(std::shared_ptr<HeldSnapshot> held, const std::string& why) {
  // On the loop thread: the release runs on a thread of its own, so that
  // nothing waits for QEMU there.
  background_.add(runner_.Run<int>([this, held, why]() {
    ReleaseNow(*held, why);
    return 0;
  }).ignoreResult());
}

void HostExecutor::DropSnapshots(const std::vector<uint64_t>& snapshot_ids) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t id : snapshot_ids) {
    auto h = held_.find(id);
    if (h == held_.end()) continue;
    auto held = h->second;
    held_.erase(h);
    DiscardInBackground(held, "the coordinator no longer counts it as this worker's");
  }
}

void HostExecutor::Ended(const std::string& assignment_id, rpc::AssignmentEnd end, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = snapshot_of_assignment_.find(assignment_id);
  if (it == snapshot_of_assignment_.end()) return;
  uint64_t snapshot_id = it->second;
  snapshot_of_assignment_.erase(it);
  // Done: held until its release. Dropped (not resumed after a reconnection):
  // the coordinator may still count it as held (its result was accepted but
  // the reply lost); the registration's dropSnapshots said what to remove.
  if (end == rpc::AssignmentEnd::kDone || end == rpc::AssignmentEnd::kDropped) return;
  // Rejected, cancelled, or its report failed: the coordinator does not
  // count on this snapshot, and nothing will release it but us.
  auto h = held_.find(snapshot_id);
  if (h == held_.end() || h->second->assignment != assignment_id) return;  // not taken (yet), or a later attempt's
  auto held = h->second;
  held_.erase(h);
  DiscardInBackground(held, std::string("its snapshot item ended as ") + rpc::AssignmentEndName(end) +
                                (reason.empty() ? "" : " (" + reason + ")"));
}

}  // namespace ferry::daemon
