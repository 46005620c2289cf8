#include "ferry/worker/vm_backup.h"

#include <algorithm>
#include <boost/json.hpp>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/ids.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/log.h"
#include "ferry/common/point_store.h"
#include "ferry/worker/cbt.h"

namespace json = boost::json;

namespace ferry::worker {

namespace {

std::string DiskNames(const std::vector<HostDisk>& disks) {
  std::string s;
  for (const auto& d : disks) s += (s.empty() ? "" : ", ") + d.name;
  return s.empty() ? "none" : s;
}

std::vector<HostDisk> SelectDisks(const HostVm& vm, const VmSnapshotRequest& request) {
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
  std::unique_ptr<PointLease> lease;  // no prune removes it while the backup plans
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
      PreviousDisk p{m->id, *d, nullptr, nullptr};
      try {
        p.lease = repo_.points().Lease(m->id);
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

class VmSnapshotImpl : public VmSnapshot {
 public:
  VmSnapshotImpl(Repository& repo, std::string point_id, bool caller_staged, std::unique_ptr<StagingLease> lease)
      : repo_(repo), point_id_(std::move(point_id)), caller_staged_(caller_staged), lease_(std::move(lease)) {}
  ~VmSnapshotImpl() override {
    if (released_) return;
    try {
      Release(false);
    } catch (const std::exception& e) {
      LogWarning("releasing the snapshot of point " + point_id_ + ": " + e.what());
    }
  }

  const std::string& point_id() const override { return point_id_; }
  const std::vector<DiskTask>& disk_tasks() const override { return tasks_; }

  // Takes the snapshot; on failure everything so far is undone by the caller
  // destroying this object.
  void Begin(Host& host, const std::vector<HostDisk>& disks, const std::vector<CbtPlan>& plans,
             const std::vector<std::string>& previous_points) {
    backup_ = host.BeginBackup(disks, plans);
    for (size_t i = 0; i < backup_->exports().size(); ++i) {
      const ExportedDisk& ex = backup_->exports()[i];
      tasks_.push_back({point_id_, ex.disk, ex.source, ex.plan, ex.plan.incremental ? previous_points[i] : ""});
    }
  }

  RestorePointManifest Release(bool commit) override {
    if (released_) throw Error(ErrorKind::kInternal, "snapshot of point " + point_id_ + " released twice");
    released_ = true;
    if (backup_) backup_->End();
    RestorePointManifest manifest;
    if (commit) {
      try {
        manifest = repo_.points().Commit(point_id_);
      } catch (...) {
        if (backup_) backup_->FinishCbt(false);
        Discard();
        throw;
      }
    } else {
      Discard();
    }
    if (backup_) backup_->FinishCbt(commit);
    return manifest;
  }

 private:
  void Discard() {
    // A point staged by the caller (the coordinator's id) may hold other
    // workers' disks: its release decides, not this failure.
    if (caller_staged_) return;
    try {
      repo_.points().Discard(point_id_);
    } catch (const std::exception& e) {
      LogWarning("discarding the staging of point " + point_id_ + ": " + e.what() + " (it expires with this process)");
    }
  }

  Repository& repo_;
  std::string point_id_;
  bool caller_staged_;
  std::unique_ptr<StagingLease> lease_;
  std::unique_ptr<HostBackup> backup_;
  std::vector<DiskTask> tasks_;
  bool released_ = false;
};

}  // namespace

std::unique_ptr<VmSnapshot> TakeVmSnapshot(Repository& repo, Host& host, const VmSnapshotRequest& request) {
  const HostVm& vm = host.vm();
  std::vector<HostDisk> disks = SelectDisks(vm, request);
  if (disks.empty()) throw Error(ErrorKind::kNotFound, "VM '" + vm.identity.name + "' has no disks to back up");

  // Reconcile each disk's change tracking with the chain's last restore point.
  const std::string chain_id = ChainId(repo.config().id, request.chain);
  ChainHistory history(repo, request.chain, vm.identity.name);
  const std::string generation = RandomHex(8);
  std::vector<CbtPlan> plans;
  std::vector<std::string> previous_points;
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
    previous_points.push_back(prev ? prev->point_id : "");
  }

  repo.PrepareForWriting();
  StagedPointHeader header;
  header.id = request.point_id.empty() ? NewPointId() : request.point_id;
  header.vm = vm.identity;
  header.chain = request.chain;
  header.expires_at = request.expires_at;
  for (const auto& d : disks) header.disks.push_back(d.name);
  const std::string point_id = header.id;
  auto snapshot = std::make_unique<VmSnapshotImpl>(repo, point_id, !request.point_id.empty(),
                                                   repo.points().Stage(header));
  for (const auto& f : host.CaptureConfig()) repo.points().AddFile(point_id, f.kind, f.name, f.content, f.origin);
  snapshot->Begin(host, disks, plans, previous_points);
  return snapshot;
}

namespace {
constexpr char kReadPlanFamily[] = "ferry-read-plan";
}  // namespace

std::string ReadPlanToJson(const DiskTask& t) {
  json::object source{{"unix_socket", t.source.unix_socket}, {"export_name", t.source.export_name},
                      {"dirty_bitmap", t.source.dirty_bitmap}};
  // Only for exports over TCP, so a unix-socket plan reads as it always did.
  // tls_psk_key is the session's secret: the plan is handed on, never logged.
  if (!t.source.tcp_address.empty()) source["tcp_address"] = t.source.tcp_address;
  if (!t.source.tls_identity.empty()) source["tls_identity"] = t.source.tls_identity;
  if (!t.source.tls_psk_key.empty()) source["tls_psk_key"] = t.source.tls_psk_key;
  // libvirt's exports over TCP (the x509 directory is this worker's).
  if (!t.source.tls_x509_dir.empty()) source["tls_x509_dir"] = t.source.tls_x509_dir;
  if (t.source.plaintext) source["plaintext"] = true;
  json::object o{
      {"format", std::string(kReadPlanFamily) + "-v1"},
      {"point_id", t.point_id},
      {"disk", json::object{{"name", t.disk.name}, {"format", t.disk.format}, {"size", t.disk.size},
                            {"identity", t.disk.identity}}},
      {"source", std::move(source)},
      {"plan", json::object{{"incremental", t.plan.incremental}, {"reason", t.plan.reason},
                            {"previous_bitmap", t.plan.previous_bitmap}, {"new_bitmap", t.plan.new_bitmap},
                            {"generation", t.plan.generation}}},
      {"previous_point", t.previous_point},
  };
  return json::serialize(o);
}

DiskTask ReadPlanFromJson(const std::string& text) {
  auto fail = [](const std::string& field, const std::string& message) {
    throw Error(ErrorKind::kBadInput, "read plan: member '" + field + "' " + message);
  };
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kBadInput, "read plan: not a JSON object");
  JsonReader r(v.as_object(), "", fail);
  try {
    CheckFormatName(*r.String("format", true), kReadPlanFamily, 1, "read plan");
  } catch (const Error& e) {
    throw Error(ErrorKind::kBadInput, e.what());
  }
  constexpr size_t kText = 4096;
  DiskTask t;
  t.point_id = *r.String("point_id", true);
  JsonReader d = *r.Object("disk", true);
  t.disk.name = *d.String("name", true, kText);
  t.disk.format = *d.String("format", true);
  t.disk.size = *d.Unsigned("size", true);
  t.disk.identity = *d.String("identity", true, kText);
  JsonReader src = *r.Object("source", true);
  t.source.unix_socket = *src.String("unix_socket", true, kText);
  t.source.export_name = *src.String("export_name", true, kText);
  t.source.dirty_bitmap = *src.String("dirty_bitmap", true);
  // Added later in v1 (exports over TCP with TLS-PSK): optional.
  t.source.tcp_address = src.String("tcp_address", false, kText).value_or("");
  t.source.tls_identity = src.String("tls_identity", false).value_or("");
  t.source.tls_psk_key = src.String("tls_psk_key", false).value_or("");
  t.source.tls_x509_dir = src.String("tls_x509_dir", false, kText).value_or("");
  t.source.plaintext = src.Bool("plaintext", false).value_or(false);
  if ((t.source.plaintext || !t.source.tls_x509_dir.empty()) && t.source.tcp_address.empty()) {
    fail(t.source.plaintext ? "source.plaintext" : "source.tls_x509_dir", "is only for a source.tcp_address");
  }
  if (t.source.plaintext && !t.source.tls_x509_dir.empty()) {
    fail("source.plaintext", "is given together with source.tls_x509_dir");
  }
  const bool psk = !t.source.tls_identity.empty() || !t.source.tls_psk_key.empty();
  if (psk && (t.source.plaintext || !t.source.tls_x509_dir.empty())) {
    fail("source.tls_psk_key", "is given together with source.tls_x509_dir or source.plaintext");
  }
  if (!t.source.tcp_address.empty()) {
    if (!t.source.unix_socket.empty()) fail("source.tcp_address", "is given together with source.unix_socket");
    if ((t.source.tls_identity.empty() || t.source.tls_psk_key.empty()) && t.source.tls_x509_dir.empty() &&
        !t.source.plaintext) {
      fail("source.tcp_address", "comes without TLS credentials (source.tls_identity, source.tls_psk_key, or "
                                 "source.tls_x509_dir) or source.plaintext");
    }
    try {
      SplitNbdTcpAddress(t.source.tcp_address);
    } catch (const Error& e) {
      fail("source.tcp_address", std::string("is malformed: ") + e.what());
    }
  }
  if (!t.source.tls_psk_key.empty() || !t.source.tls_identity.empty()) {
    try {
      CheckTlsPsk(t.source.tls_identity, t.source.tls_psk_key);
    } catch (const Error& e) {
      fail("source.tls_psk_key", std::string("is unusable: ") + e.what());
    }
  }
  JsonReader plan = *r.Object("plan", true);
  t.plan.incremental = *plan.Bool("incremental", true);
  t.plan.reason = *plan.String("reason", true, kText);
  t.plan.previous_bitmap = *plan.String("previous_bitmap", true);
  t.plan.new_bitmap = *plan.String("new_bitmap", true);
  t.plan.generation = *plan.String("generation", true);
  t.previous_point = *r.String("previous_point", true);
  if (t.disk.name.empty() || t.point_id.empty()) throw Error(ErrorKind::kBadInput, "read plan: no disk name or point id");
  if (t.plan.incremental && (t.previous_point.empty() || t.source.dirty_bitmap.empty())) {
    throw Error(ErrorKind::kBadInput, "read plan: an incremental plan without its previous point or dirty bitmap");
  }
  return t;
}

DiskRecord BackupDiskTask(Repository& repo, const DiskTask& task, const DiskBackupOptions& options,
                          DiskBackupProgress* progress) {
  CbtPlan plan = task.plan;
  DiskBackupOptions opts = options;
  std::unique_ptr<FixedIndexReader> previous_index;
  std::unique_ptr<PointLease> previous_lease;  // held while its index is read
  if (plan.incremental) {
    // Opened again here: the disk task may run on another worker than the
    // snapshot. Unusable now (damaged or removed since): a full read is
    // always correct.
    try {
      previous_lease = repo.points().Lease(task.previous_point);
      RestorePointManifest prev = repo.points().Load(task.previous_point);
      if (opts.key) opts.key->CheckManifest(prev);
      const DiskRecord* d = prev.FindDisk(task.disk.name);
      if (!d) throw Error(ErrorKind::kNotFound, "it has no disk " + task.disk.name);
      previous_index = repo.points().OpenIndex(task.previous_point, *d);
      if (previous_index->disk_size() != task.disk.size ||
          previous_index->chunk_size() != repo.config().chunk_size) {
        throw Error(ErrorKind::kCorrupt, "its index does not match the disk");
      }
      opts.previous_index = previous_index.get();
    } catch (const Error& e) {
      LogWarning("disk " + task.disk.name + ": previous point " + task.previous_point + " is unusable (" + e.what() +
                 "); reading the whole disk");
      plan.incremental = false;
      plan.reason = "the last point's index of this disk is unusable";
    }
  }
  auto reader = OpenNbdReader(task.source);
  std::unique_ptr<DiskWriter> writer = repo.points().WriteDisk(task.point_id, task.disk.name);
  DiskRecord rec;
  rec.name = task.disk.name;
  rec.size = reader->size();
  rec.chunk_size = repo.config().chunk_size;
  rec.source_format = task.disk.format;
  DiskBackupResult r = BackupDisk(repo.chunks(), repo.config(), *reader, writer->index_path(), opts, progress);
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
             task.disk.identity};
  if (opts.key) {  // the record is bound to its point and index (docs/encryption.md, "Manifests")
    rec.index_file = writer->index_file();
    rec.index_hmac = opts.key->DiskRecordMac(task.point_id, rec);
  }
  LogInfo("disk " + rec.name + ": read " + std::to_string(r.read_bytes) + " bytes; " + std::to_string(r.new_chunks) +
          " new chunks (" + std::to_string(r.stored_bytes) + " bytes stored), " + std::to_string(r.reused_chunks) +
          " already stored, " + std::to_string(r.unchanged_chunks) + " unchanged, " + std::to_string(r.zero_chunks) +
          " zero" + (r.healed_chunks ? ", " + std::to_string(r.healed_chunks) + " read again to heal the chain" : ""));
  writer->Finish(rec);
  return rec;
}

RestorePointManifest BackupVm(Repository& repo, Host& host, const VmBackupRequest& request,
                              VmBackupProgress* progress) {
  VmBackupProgress own_progress;
  if (!progress) progress = &own_progress;
  std::unique_ptr<VmSnapshot> snapshot = TakeVmSnapshot(repo, host, request);
  for (const auto& task : snapshot->disk_tasks()) progress->bytes_total += task.disk.size;
  for (const auto& task : snapshot->disk_tasks()) {
    progress->current.bytes_done = 0;
    BackupDiskTask(repo, task, request.disk_options, &progress->current);
    progress->bytes_before += task.disk.size;
  }
  return snapshot->Release(true);  // a failure above: released uncommitted by the destructor
}

}  // namespace ferry::worker
