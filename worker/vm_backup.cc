#include "ferry/worker/vm_backup.h"

#include <algorithm>

#include "ferry/common/error.h"
#include "ferry/common/ids.h"
#include "ferry/common/log.h"
#include "ferry/common/point_store.h"
#include "ferry/worker/cbt.h"

namespace ferry::worker {

namespace {

std::string DiskNames(const std::vector<HostDisk>& disks) {
  std::string s;
  for (const auto& d : disks) s += (s.empty() ? "" : ", ") + d.name;
  return s.empty() ? "none" : s;
}

std::vector<HostDisk> SelectDisks(const HostVm& vm, const VmBackupRequest& request) {
  auto known = [&](const std::string& name) {
    auto it = std::find_if(vm.disks.begin(), vm.disks.end(), [&](auto& d) { return d.name == name; });
    if (it == vm.disks.end()) {
      throw Error(ErrorKind::kNotFound, "VM '" + vm.identity.name + "' has no disk '" + name +
                                            "' (its disks: " + DiskNames(vm.disks) + ")");
    }
    return *it;
  };
  std::vector<HostDisk> out;
  if (request.disks.empty()) {
    out = vm.disks;
  } else {
    for (const auto& name : request.disks) {
      HostDisk d = known(name);
      if (std::none_of(out.begin(), out.end(), [&](auto& o) { return o.name == name; })) out.push_back(d);
    }
  }
  for (const auto& name : request.exclude_disks) {
    known(name);
    std::erase_if(out, [&](auto& d) { return d.name == name; });
  }
  return out;
}

// The newest point of the chain for this VM that holds a disk, with its index.
struct PreviousDisk {
  std::string point_id;
  DiskRecord record;
  std::unique_ptr<FixedIndexReader> index;
};

// The chain's points, newest first, read lazily: a backup usually needs only
// the newest one, so a repository with thousands of points costs a directory
// listing and a manifest or two, not thousands of manifest reads.
class ChainHistory {
 public:
  ChainHistory(Repository& repo, std::string chain, std::string vm_name)
      : repo_(repo), chain_(std::move(chain)), vm_name_(std::move(vm_name)), ids_(repo.points().List()) {
    std::reverse(ids_.begin(), ids_.end());
  }

  std::optional<PreviousDisk> Find(const std::string& disk) {
    for (size_t i = 0;; ++i) {
      const RestorePointManifest* m = PointAt(i);
      if (!m) return std::nullopt;
      const DiskRecord* d = m->FindDisk(disk);
      if (!d) continue;
      PreviousDisk p{m->id, *d, nullptr};
      try {
        p.index = repo_.points().OpenIndex(m->id, *d);
      } catch (const Error& e) {
        LogWarning("index of disk " + disk + " in point " + m->id + " is unusable: " + e.what());
      }
      return p;
    }
  }

 private:
  // The i-th newest point of the chain, or null when there is none.
  const RestorePointManifest* PointAt(size_t i) {
    while (loaded_.size() <= i && next_ < ids_.size()) {
      const std::string& id = ids_[next_++];
      try {
        RestorePointManifest m = repo_.points().Load(id);
        if (m.chain == chain_ && m.vm.name == vm_name_) loaded_.push_back(std::move(m));
      } catch (const Error& e) {
        LogWarning("skipping restore point " + id + " while looking for the chain's last point: " + e.what());
      }
    }
    return i < loaded_.size() ? &loaded_[i] : nullptr;
  }

  Repository& repo_;
  std::string chain_, vm_name_;
  std::vector<std::string> ids_;  // newest first
  size_t next_ = 0;
  std::vector<RestorePointManifest> loaded_;
};

}  // namespace

RestorePointManifest BackupVm(Repository& repo, Host& host, const VmBackupRequest& request,
                              VmBackupProgress* progress) {
  VmBackupProgress own_progress;
  if (!progress) progress = &own_progress;
  const HostVm& vm = host.vm();
  std::vector<HostDisk> disks = SelectDisks(vm, request);
  if (disks.empty()) throw Error(ErrorKind::kNotFound, "VM '" + vm.identity.name + "' has no disks to back up");

  // Reconcile each disk's change tracking with the chain's last restore point.
  const std::string chain_id = ChainId(repo.config().id, request.chain);
  ChainHistory history(repo, request.chain, vm.identity.name);
  const std::string generation = RandomHex(8);
  std::vector<CbtPlan> plans;
  std::vector<std::optional<PreviousDisk>> previous;
  for (const auto& d : disks) {
    std::optional<PreviousDisk> prev = history.Find(d.name);
    CbtPlan plan;
    if (!d.cbt_capable) {
      plan.generation = generation;
      plan.reason = d.no_cbt_reason;
    } else {
      std::vector<BitmapState> bitmaps = host.ChainBitmaps(d, chain_id);
      plan = PlanCbt(prev ? &prev->record : nullptr, bitmaps, d.size, d.identity, chain_id, generation);
      if (plan.incremental && (!prev->index || prev->index->chunk_size() != repo.config().chunk_size)) {
        plan = PlanCbt(nullptr, bitmaps, d.size, d.identity, chain_id, generation);
        plan.reason = "the last point's index of this disk is unusable";
      }
      host.DropChainBitmaps(d, plan.stale_bitmaps);
    }
    LogInfo("disk " + d.name + ": " +
            (plan.incremental ? "incremental from point " + prev->point_id + " (bitmap " + plan.previous_bitmap + ")"
                              : "full read: " + plan.reason));
    plans.push_back(std::move(plan));
    previous.push_back(std::move(prev));
  }

  // The point lives as long as this process: staged with expiry 0, it is
  // removed by the next writer once we are gone without committing.
  repo.PrepareForWriting();
  PointStore& points = repo.points();
  StagedPointHeader header;
  header.id = request.point_id.empty() ? NewPointId() : request.point_id;
  header.vm = vm.identity;
  header.chain = request.chain;
  for (const auto& d : disks) header.disks.push_back(d.name);
  std::unique_ptr<StagingLease> lease = points.Stage(header);
  const std::string point_id = header.id;
  for (const auto& d : disks) progress->bytes_total += d.size;

  std::unique_ptr<HostBackup> backup;
  auto discard = [&] {
    // A point staged by the caller (the coordinator's id) may hold other
    // workers' disks: its release decides, not this failure.
    if (!request.point_id.empty()) return;
    try {
      points.Discard(point_id);
    } catch (const std::exception& e) {
      LogWarning("discarding the staging of point " + point_id + ": " + e.what() + " (it expires with this process)");
    }
  };
  try {
    for (const auto& f : host.CaptureConfig()) points.AddFile(point_id, f.kind, f.name, f.content, f.origin);
    backup = host.BeginBackup(disks, plans);
    for (size_t i = 0; i < backup->exports().size(); ++i) {
      const ExportedDisk& ex = backup->exports()[i];
      auto reader = OpenNbdReader(ex.source);
      std::unique_ptr<DiskWriter> writer = points.WriteDisk(point_id, ex.disk.name);
      DiskRecord rec;
      rec.name = ex.disk.name;
      rec.size = reader->size();
      rec.chunk_size = repo.config().chunk_size;
      rec.source_format = ex.disk.format;
      DiskBackupOptions options = request.disk_options;
      const CbtPlan& plan = ex.plan;  // as the host carried it out
      options.previous_index = plan.incremental ? previous[i]->index.get() : nullptr;
      progress->current.bytes_done = 0;
      DiskBackupResult r =
          BackupDisk(repo.chunks(), repo.config(), *reader, writer->index_path(), options, &progress->current);
      progress->bytes_before += rec.size;
      rec.index_sha256 = r.index_sha256;
      rec.chunks = r.chunks;
      rec.zero_chunks = r.zero_chunks;
      rec.new_chunks = r.new_chunks;
      rec.reused_chunks = r.reused_chunks;
      rec.unchanged_chunks = r.unchanged_chunks;
      rec.healed_chunks = r.healed_chunks;
      rec.read_bytes = r.read_bytes;
      rec.stored_bytes = r.stored_bytes;
      rec.cbt = {plan.incremental ? "incremental" : "full", plan.reason, plan.new_bitmap, plan.generation,
                 ex.disk.identity};
      LogInfo("disk " + rec.name + ": read " + std::to_string(r.read_bytes) + " bytes; " +
              std::to_string(r.new_chunks) + " new chunks (" + std::to_string(r.stored_bytes) + " bytes stored), " +
              std::to_string(r.reused_chunks) + " already stored, " + std::to_string(r.unchanged_chunks) +
              " unchanged, " + std::to_string(r.zero_chunks) + " zero" +
              (r.healed_chunks ? ", " + std::to_string(r.healed_chunks) + " read again to heal the chain" : ""));
      writer->Finish(std::move(rec));
    }
  } catch (...) {
    if (backup) {
      backup->End();
      backup->FinishCbt(false);
    }
    discard();
    throw;
  }
  backup->End();
  RestorePointManifest manifest;
  try {
    manifest = points.Commit(point_id, repo.chunks());
  } catch (...) {
    backup->FinishCbt(false);
    discard();
    throw;
  }
  backup->FinishCbt(true);
  return manifest;
}

}  // namespace ferry::worker
