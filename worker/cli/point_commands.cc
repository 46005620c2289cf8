// The point store on the command line: a restore point staged under a
// caller-given id, its disks written by separate processes (possibly on
// separate hosts sharing the repository), then committed or discarded. This
// is the shape of the coordinator's disk tasks (docs/cli.md, "Staged points").
#include <algorithm>
#include <iostream>

#include "commands.h"
#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/worker/block_reader.h"
#include "ferry/worker/disk_backup.h"
#include "progress.h"

namespace ferry::cli {

int StageCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  repo->PrepareForWriting();
  StagedPointHeader h;
  h.id = a.Get("point").value_or("");
  if (h.id.empty()) h.id = NewPointId();
  h.vm = {a.Require("vm"), a.Get("vm-uuid").value_or(""), a.Get("hypervisor").value_or("qemu")};
  h.chain = a.Get("chain").value_or("default");
  h.disks = a.GetAll("disk");
  if (h.disks.empty()) throw Error(ErrorKind::kBadInput, "give the point's disks with --disk NAME (repeatable)");
  h.expires_at = static_cast<int64_t>(::time(nullptr)) + std::max<int64_t>(1, a.GetDuration("expires").value_or(std::chrono::hours(24)).count() / 1000);
  repo->points().Stage(h);
  std::cout << h.id << std::endl;
  return 0;
}

int BackupDiskCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  repo->PrepareForWriting();
  std::string point = a.Require("point"), disk = a.Require("disk");
  std::optional<RepositoryKey> key = LoadKeyFor(a, *repo);
  worker::DiskBackupOptions options;
  options.key = key ? &*key : nullptr;
  options.cancel = &g_interrupted;
  if (auto r = a.GetSize("rate-limit")) options.rate_limit_bytes_per_s = *r;
  if (auto t = a.GetInt("threads", 1, 256)) options.compute_threads = static_cast<unsigned>(*t);
  auto reader = worker::OpenFileReader(a.Require("file"));
  std::unique_ptr<DiskWriter> writer = repo->points().WriteDisk(point, disk);
  worker::DiskBackupProgress progress;
  worker::DiskBackupResult r;
  {
    const uint64_t total = reader->size();
    ProgressLine line("backup " + disk, [&] { return std::make_pair(progress.bytes_done.load(), total); });
    r = worker::BackupDisk(repo->chunks(), repo->config(), *reader, writer->index_path(), options, &progress);
  }
  DiskRecord rec;
  rec.size = reader->size();
  rec.chunk_size = repo->config().chunk_size;
  rec.source_format = "raw";
  rec.index_sha256 = r.index_sha256;
  rec.chunks = r.chunks;
  rec.zero_chunks = r.zero_chunks;
  rec.new_chunks = r.new_chunks;
  rec.reused_chunks = r.reused_chunks;
  rec.read_bytes = r.read_bytes;
  rec.stored_bytes = r.stored_bytes;
  if (key) {
    rec.name = disk;
    rec.index_file = writer->index_file();
    rec.index_hmac = key->DiskRecordMac(point, rec);
  }
  writer->Finish(std::move(rec));
  LogInfo("disk " + disk + " of point " + point + " written: " + std::to_string(r.new_chunks) + " new chunks, " +
          std::to_string(r.reused_chunks) + " already stored, " + std::to_string(r.zero_chunks) + " zero");
  return 0;
}

int CommitCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  repo->PrepareForWriting();
  RestorePointManifest m = repo->points().Commit(a.Require("point"));
  std::cout << m.id << std::endl;
  return 0;
}

int DiscardCommand(const Arguments& a) {
  auto repo = OpenRepo(a);
  repo->points().Discard(a.Require("point"));
  return 0;
}

}  // namespace ferry::cli
