#include "ferry/worker/vm_backup.h"

#include <algorithm>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/ids.h"
#include "ferry/common/log.h"
#include "ferry/worker/cbt.h"

namespace json = boost::json;

namespace ferry::worker {

namespace {

std::string QueryString(QmpClient& qmp, const char* command, const char* key) {
  try {
    json::value v = qmp.Execute(command);
    if (v.is_object()) {
      auto it = v.as_object().find(key);
      if (it != v.as_object().end() && it->value().is_string()) return std::string(it->value().as_string());
    }
  } catch (const QmpError&) {
  }
  return "";
}

std::string DiskNames(const std::vector<QmpDisk>& disks) {
  std::string s;
  for (const auto& d : disks) s += (s.empty() ? "" : ", ") + d.name;
  return s.empty() ? "none" : s;
}

std::string VmLockPath(const SnapshotPaths& paths, const std::string& qmp_address) {
  return paths.runtime_dir + "/vm-" + Sha256(qmp_address.data(), qmp_address.size()).Hex().substr(0, 16) +
         ".lock";
}

std::vector<QmpDisk> SelectDisks(const std::vector<QmpDisk>& all, const std::vector<std::string>& wanted,
                                 const std::string& vm_name) {
  if (wanted.empty()) return all;
  std::vector<QmpDisk> out;
  for (const auto& name : wanted) {
    auto it = std::find_if(all.begin(), all.end(), [&](auto& d) { return d.name == name; });
    if (it == all.end()) {
      throw Error(ErrorKind::kNotFound,
                  "VM '" + vm_name + "' has no disk '" + name + "' (its disks: " + DiskNames(all) + ")");
    }
    if (std::none_of(out.begin(), out.end(), [&](auto& d) { return d.name == name; })) out.push_back(*it);
  }
  return out;
}

// The newest point of `chain` for this VM holding `disk`, with its index.
struct PreviousDisk {
  std::string point_id;
  DiskRecord record;
  std::unique_ptr<FixedIndexReader> index;
};

class ChainHistory {
 public:
  ChainHistory(Repository& repo, const std::string& chain, const std::string& vm_name) {
    std::vector<std::string> ids = repo.ListPoints();
    for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
      try {
        RestorePointManifest m = repo.LoadPoint(*it);
        if (m.chain == chain && m.vm.name == vm_name) points_.push_back(std::move(m));
      } catch (const Error& e) {
        LogWarning("skipping restore point " + *it + " while looking for the chain's last point: " + e.what());
      }
    }
  }

  std::optional<PreviousDisk> Find(Repository& repo, const std::string& disk) const {
    for (const auto& m : points_) {
      const DiskRecord* d = m.FindDisk(disk);
      if (!d) continue;
      PreviousDisk p{m.id, *d, nullptr};
      try {
        p.index = std::make_unique<FixedIndexReader>(repo.IndexPath(m.id, *d), &d->index_sha256);
      } catch (const Error& e) {
        LogWarning("index of disk " + disk + " in point " + m.id + " is unusable: " + e.what());
        p.index = nullptr;
      }
      return p;
    }
    return std::nullopt;
  }

 private:
  std::vector<RestorePointManifest> points_;  // newest first
};

}  // namespace

RestorePointManifest BackupQemuVm(Repository& repo, const VmBackupRequest& request,
                                  VmBackupProgress* progress) {
  VmBackupProgress own_progress;
  if (!progress) progress = &own_progress;
  auto qmp = QmpClient::Connect(request.qmp_address);
  const SnapshotPaths& paths = request.paths;
  FileLock vm_lock = FileLock::TryAcquire(VmLockPath(paths, request.qmp_address));
  if (!vm_lock.held()) {
    throw Error(ErrorKind::kRetryable, "another ferry backup of the VM at " + request.qmp_address + " is running");
  }
  for (const auto& s : RemoveAbandonedSnapshots(*qmp, paths)) {
    LogInfo("removed the snapshot left by dead session " + s);
  }

  VmIdentity vm{QueryString(*qmp, "query-name", "name"), QueryString(*qmp, "query-uuid", "UUID"), "qemu"};
  if (request.expected_vm_name && *request.expected_vm_name != vm.name) {
    throw Error(ErrorKind::kNotFound, "the VM at " + request.qmp_address + " is named '" + vm.name +
                                          "', not '" + *request.expected_vm_name + "'");
  }
  if (vm.name.empty()) vm.name = request.qmp_address;
  std::vector<QmpDisk> disks = SelectDisks(ListQmpDisks(*qmp), request.disks, vm.name);
  if (disks.empty()) throw Error(ErrorKind::kNotFound, "VM '" + vm.name + "' has no disks to back up");

  // Reconcile each disk's dirty bitmaps with the chain's last restore point.
  const std::string chain_id = ChainId(repo.config().id, request.chain);
  ChainHistory history(repo, request.chain, vm.name);
  const std::string generation = RandomHex(8);
  std::vector<CbtPlan> plans;
  std::vector<std::optional<PreviousDisk>> previous;
  std::vector<SnapshotBitmaps> bitmaps;
  for (const auto& d : disks) {
    std::vector<BitmapState> chain_bitmaps;
    for (auto& b : ListDirtyBitmaps(*qmp, d.node_name)) {
      if (IsChainBitmap(b.name, chain_id)) chain_bitmaps.push_back(std::move(b));
    }
    std::optional<PreviousDisk> prev = history.Find(repo, d.name);
    CbtPlan plan = PlanCbt(prev ? &prev->record : nullptr, chain_bitmaps, d.size, d.filename, chain_id, generation);
    if (plan.incremental && (!prev->index || prev->index->chunk_size() != repo.config().chunk_size)) {
      plan = PlanCbt(nullptr, chain_bitmaps, d.size, d.filename, chain_id, generation);
      plan.reason = "the last point's index of this disk is unusable";
    }
    for (const auto& stale : plan.stale_bitmaps) {
      qmp->Execute("block-dirty-bitmap-remove", {{"node", d.node_name}, {"name", stale}});
    }
    LogInfo("disk " + d.name + ": " +
            (plan.incremental ? "incremental from point " + prev->point_id + " (bitmap " + plan.previous_bitmap + ")"
                              : "full read: " + plan.reason));
    bitmaps.push_back({plan.new_bitmap, d.format == "qcow2", plan.incremental ? plan.previous_bitmap : ""});
    plans.push_back(std::move(plan));
    previous.push_back(std::move(prev));
  }

  auto point = repo.BeginPoint();
  std::string session = NewSnapshotSessionId();
  if (request.guard) request.guard->Arm(session);
  RestorePointManifest manifest;
  manifest.vm = vm;
  manifest.chain = request.chain;
  manifest.started_at = NowRfc3339();
  for (const auto& d : disks) progress->bytes_total += d.size;

  auto finish_failure = [&] {
    for (size_t i = 0; i < disks.size(); ++i) FinishCbtFailure(*qmp, disks[i].node_name, plans[i]);
  };
  std::unique_ptr<FleecingSnapshot> snapshot;
  try {
    snapshot = FleecingSnapshot::Create(*qmp, disks, paths, session, bitmaps);
    LogInfo("snapshot of " + std::to_string(disks.size()) + " disk(s) of VM '" + vm.name + "' taken (session " +
            session + ")");
    for (size_t i = 0; i < snapshot->exports().size(); ++i) {
      const auto& ex = snapshot->exports()[i];
      auto reader = OpenNbdReader(ex.source);
      DiskRecord rec;
      rec.name = ex.disk.name;
      rec.size = reader->size();
      rec.chunk_size = repo.config().chunk_size;
      rec.source_format = ex.disk.format;
      rec.index_file = point->IndexFileName(i);
      DiskBackupOptions options = request.disk_options;
      options.previous_index = plans[i].incremental ? previous[i]->index.get() : nullptr;
      progress->current.bytes_done = 0;
      DiskBackupResult r = BackupDisk(repo, *reader, point->StagingPath(rec.index_file), options, &progress->current);
      progress->bytes_before += rec.size;
      rec.index_sha256 = r.index_sha256;
      rec.chunks = r.chunks;
      rec.zero_chunks = r.zero_chunks;
      rec.new_chunks = r.new_chunks;
      rec.reused_chunks = r.reused_chunks;
      rec.unchanged_chunks = r.unchanged_chunks;
      rec.read_bytes = r.read_bytes;
      rec.stored_bytes = r.stored_bytes;
      rec.cbt = {plans[i].incremental ? "incremental" : "full", plans[i].reason, plans[i].new_bitmap,
                 plans[i].generation, ex.disk.filename};
      LogInfo("disk " + rec.name + ": read " + std::to_string(r.read_bytes) + " bytes; " +
              std::to_string(r.new_chunks) + " new chunks (" + std::to_string(r.stored_bytes) + " bytes stored), " +
              std::to_string(r.reused_chunks) + " already stored, " + std::to_string(r.unchanged_chunks) +
              " unchanged, " + std::to_string(r.zero_chunks) + " zero");
      manifest.disks.push_back(std::move(rec));
    }
  } catch (...) {
    bool released = !snapshot || snapshot->Release();
    finish_failure();
    if (released && request.guard) request.guard->Disarm();
    throw;
  }
  bool released = snapshot->Release();
  if (released && request.guard) request.guard->Disarm();
  manifest.completed_at = NowRfc3339();
  try {
    point->Commit(manifest);
  } catch (...) {
    finish_failure();
    throw;
  }
  manifest.id = point->id();
  // The point holds the exported bitmaps' changes: they can go. A failure
  // here is harmless (the next run drops stale bitmaps of the chain).
  for (size_t i = 0; i < disks.size(); ++i) {
    try {
      FinishCbtSuccess(*qmp, disks[i].node_name, plans[i]);
    } catch (const std::exception& e) {
      LogWarning("removing the previous dirty bitmap of disk " + disks[i].name + ": " + e.what());
    }
  }
  return manifest;
}

}  // namespace ferry::worker
