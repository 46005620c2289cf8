#include "ferry/common/copy.h"

#include <algorithm>
#include <ctime>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/log.h"

namespace ferry {
namespace {

// How long the target keeps a copy's staging if the copy is cut short.
constexpr int64_t kCopyStagingSeconds = 24 * 3600;

std::vector<std::string> Selected(Repository& from, const CopyOptions& options) {
  std::vector<std::string> ids;
  if (!options.points.empty()) {
    for (const auto& id : options.points)
      if (!options.skip.count(id)) ids.push_back(id);
    return ids;
  }
  PointListing listing = from.points().LoadAll();
  for (const auto& p : listing.problems) LogWarning("source point " + p.entry + " is not copied: " + p.message);
  for (const auto& m : listing.points) {
    if (options.vm && m.vm.name != *options.vm) continue;
    if (options.chain && m.chain != *options.chain) continue;
    if (options.skip.count(m.id)) continue;
    ids.push_back(m.id);
  }
  return ids;
}

void CopyOne(Repository& from, Repository& to, const std::string& id, const CopyOptions& options,
             CopyProgress* progress, const std::atomic<bool>* interrupted, PointCopy* out) {
  std::unique_ptr<PointLease> lease = from.points().Lease(id);  // no removal while it is read
  RestorePointManifest m = from.points().Load(id);
  out->vm = m.vm.name;
  std::unique_ptr<StagingLease> staging;
  if (!options.dry_run) {
    StagedPointHeader header;
    header.id = m.id;
    header.vm = m.vm;
    header.chain = m.chain;
    header.started_at = m.started_at;
    for (const auto& d : m.disks) header.disks.push_back(d.name);
    header.expires_at = static_cast<int64_t>(std::time(nullptr)) + kCopyStagingSeconds;
    staging = to.points().Stage(header);
  }
  std::vector<uint8_t> encoded;
  for (const auto& disk : m.disks) {
    std::unique_ptr<FixedIndexReader> index = from.points().OpenIndex(id, disk);
    std::vector<Digest> distinct = DistinctDigests(*index);
    std::vector<size_t> missing;
    to.chunks().FindMissing(distinct, &missing);
    out->chunks_present += distinct.size() - missing.size();
    if (progress) progress->chunks_total += missing.size();
    if (options.dry_run) {
      out->chunks_sent += missing.size();
      continue;
    }
    std::unique_ptr<ChunkUpload> upload = to.chunks().StartUpload();
    for (size_t i : missing) {
      if (interrupted && interrupted->load()) throw Error(ErrorKind::kInterrupted, "copy of point " + id + " interrupted");
      const Digest& d = distinct[i];
      from.chunk_reader().Read(d, &encoded);
      try {
        CheckChunkFraming(encoded, from.chunk_reader().Describe(d));
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::kCorrupt) from.chunk_reader().Quarantine(d, e.what());
        throw;
      }
      if (options.limiter && !options.limiter->Acquire(encoded.size(), interrupted)) {
        throw Error(ErrorKind::kInterrupted, "copy of point " + id + " interrupted");
      }
      upload->Add(d, encoded);
      out->chunks_sent += 1;
      out->bytes_sent += encoded.size();
      if (progress) ++progress->chunks_done;
    }
    upload->Finish();
    std::unique_ptr<DiskWriter> writer = to.points().WriteDisk(id, disk.name);
    // The index as it is at the source, byte for byte (its SHA-256 is the
    // record's); made durable like FixedIndexWriter's.
    std::span<const uint8_t> bytes = index->bytes();
    WriteFileAtomically(writer->index_path(), std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    writer->Finish(disk);
  }
  if (options.dry_run) {
    out->outcome = "would copy";
    return;
  }
  for (const auto& f : m.config_files) {
    to.points().AddFile(id, f.kind, f.name, from.points().ReadFile(id, f), f.origin);
  }
  to.points().Commit(id);
  out->outcome = "copied";
}

}  // namespace

size_t CopyReport::failed() const {
  return static_cast<size_t>(std::count_if(points.begin(), points.end(), [](const PointCopy& p) { return p.outcome == "failed"; }));
}

CopyReport CopyPoints(Repository& from, Repository& to, const CopyOptions& options, CopyProgress* progress,
                      const std::atomic<bool>* interrupted) {
  if (from.config().id == to.config().id) {
    throw Error(ErrorKind::kBadInput, "cannot copy repository " + from.location() + " into itself (" + to.location() + ")");
  }
  // Chunks travel as stored, named by their (keyed) digests: both sides must
  // be plain, or encrypted with one key (docs/encryption.md).
  if (from.config().key_fingerprint != to.config().key_fingerprint) {
    auto kind = [](const RepositoryConfig& c) {
      return c.encrypted() ? "encrypted (key " + c.key_fingerprint + ")" : std::string("plain");
    };
    throw Error(ErrorKind::kBadInput, "cannot copy " + from.location() + ", " + kind(from.config()) + ", into " +
                                          to.location() + ", " + kind(to.config()) +
                                          ": chunks are copied as stored, so both must be plain or share one key");
  }
  if (!options.dry_run) to.PrepareForWriting();
  CopyReport report;
  std::vector<std::string> ids = Selected(from, options);
  std::vector<std::string> present = to.points().List();
  for (const auto& id : ids) {
    PointCopy pc;
    pc.id = id;
    if (std::find(present.begin(), present.end(), id) != present.end()) {
      pc.outcome = "present";
      report.points.push_back(std::move(pc));
      continue;
    }
    try {
      CopyOne(from, to, id, options, progress, interrupted, &pc);
      LogInfo("point " + id + (pc.vm.empty() ? "" : " (" + pc.vm + ")") + " " + pc.outcome + ": " +
              std::to_string(pc.chunks_sent) + " chunks (" + std::to_string(pc.bytes_sent) + " bytes) sent, " +
              std::to_string(pc.chunks_present) + " already at " + to.location());
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kInterrupted) throw;
      pc.outcome = "failed";
      pc.error = e.what();
      LogError("point " + id + " not copied: " + e.what());
      if (!options.dry_run) {
        try {
          to.points().Discard(id);  // what was staged for it goes now, not at expiry
        } catch (const Error& d) {
          LogWarning("discarding the partial copy of " + id + " failed (it expires): " + d.what());
        }
      }
    }
    report.chunks_sent += pc.chunks_sent;
    report.bytes_sent += pc.bytes_sent;
    report.chunks_present += pc.chunks_present;
    report.points.push_back(std::move(pc));
  }
  return report;
}

}  // namespace ferry
