#include "ferry/common/point_records.h"

#include <algorithm>
#include <boost/json.hpp>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/retention.h"  // FormatRfc3339

namespace json = boost::json;

namespace ferry {
namespace {

constexpr char kStagedFamily[] = "ferry-staged-point";
constexpr char kLockFamily[] = "ferry-point-lock";
constexpr char kLockChecksum[] = "lock_sha256";
constexpr size_t kMaxLockReason = 1024;
constexpr int64_t kMaxLockSeconds = int64_t{36500} * 86400;


}  // namespace

bool IsValidPointId(const std::string& id) {
  if (id.empty() || id.size() > 64 || id[0] == '.') return false;
  // The staging layout's own suffixes: "x.stage" would be x's records.
  if (id.ends_with(".lock") || id.ends_with(".stage")) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '.';
  });
}

std::string StagedHeaderToJson(const StagedPointHeader& h) {
  json::array disks;
  for (const auto& d : h.disks) disks.emplace_back(d);
  json::object o{{"format", std::string(kStagedFamily) + "-v1"},
                 {"id", h.id},
                 {"vm", json::object{{"name", h.vm.name}, {"uuid", h.vm.uuid}, {"hypervisor", h.vm.hypervisor}}},
                 {"chain", h.chain},
                 {"started_at", h.started_at},
                 {"disks", std::move(disks)},
                 {"expires_at", h.expires_at},
                 {"writer", WriterName()}};  // optional, ignored by readers
  return json::serialize(o) + "\n";
}

StagedPointHeader StagedHeaderFromJson(const std::string& text, const std::string& path) {
  const std::string what = "staged point header " + path;
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kCorrupt, what + ": not a JSON object");
  JsonReader r(v.as_object(), "", CorruptFileFail(what));
  CheckFormatName(*r.String("format", true), kStagedFamily, 1, what);
  StagedPointHeader h;
  h.id = *r.String("id", true);
  JsonReader vm = *r.Object("vm", true);
  h.vm = {*vm.String("name", true, 4096), *vm.String("uuid", true), *vm.String("hypervisor", true)};
  h.chain = *r.String("chain", true);
  h.started_at = *r.String("started_at", true);
  h.disks = *r.StringList("disks", true, 4096);
  h.expires_at = *r.Int("expires_at", true, 0, INT64_MAX);
  return h;
}

std::string PointLockToJson(const std::string& id, const PointLock& lock) {
  const std::string until = FormatRfc3339(lock.locked_until);
  json::object o{{"format", std::string(kLockFamily) + "-v1"},
                 {"point", id},
                 {"locked_until", lock.locked_until},
                 {"locked_until_utc", until},
                 {"set_at", lock.set_at},
                 {"reason", lock.reason},
                 {"writer", WriterName()}};  // optional, ignored by readers; inside the checksum
  return SealJson(json::serialize(o), kLockChecksum);
}

PointLock PointLockFromJson(const std::string& text, const std::string& id, const std::string& path) {
  const std::string what = "point lock " + path;
  CheckSealedJson(text, kLockChecksum, what);
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kCorrupt, what + ": not a JSON object");
  JsonReader r(v.as_object(), "", CorruptFileFail(what));
  CheckFormatName(*r.String("format", true), kLockFamily, 1, what);
  if (*r.String("point", true) != id) r.Fail("point", "names another point");
  PointLock lock;
  lock.locked_until = *r.Int("locked_until", true, 0, INT64_MAX);
  r.String("locked_until_utc", true);  // for people; locked_until is what counts
  lock.set_at = *r.Int("set_at", true, 0, INT64_MAX);
  lock.reason = *r.String("reason", true, kMaxLockReason);
  r.String(kLockChecksum, true);  // checked above
  return lock;
}

std::string DiskRecordToJson(const DiskRecord& record) {
  RestorePointManifest m;
  m.id = "staged";
  m.writer = WriterName();
  m.disks.push_back(record);
  return ManifestToJson(m);
}

DiskRecord DiskRecordFromJson(const std::string& text, const std::string& source, const std::string& disk) {
  RestorePointManifest r = ManifestFromJson(text, source);
  if (r.disks.size() != 1 || r.disks[0].name != disk) {
    throw Error(ErrorKind::kCorrupt, "staged disk record " + source + " is not disk " + disk);
  }
  return r.disks[0];
}

std::string ConfigFileRecordToJson(const ConfigFileRecord& record) {
  RestorePointManifest m;
  m.id = "staged";
  m.writer = WriterName();
  m.config_files.push_back(record);
  return ManifestToJson(m);
}

std::vector<ConfigFileRecord> ConfigFileRecordsFromJson(const std::string& text, const std::string& source) {
  return ManifestFromJson(text, source).config_files;
}

void CheckPointFileName(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' || name == "manifest.json" ||
      name == kPointLockFile || name.starts_with("disk-")) {
    throw Error(ErrorKind::kInternal, "bad point file name '" + name + "'");
  }
}

PointLock NextPointLock(const std::string& id, const std::optional<PointLock>& old, int64_t locked_until,
                        const std::string& reason, int64_t now) {
  if (locked_until <= now) {
    throw Error(ErrorKind::kBadInput, "a lock of restore point " + id + " must end in the future (" +
                                          FormatRfc3339(locked_until) + " is not after " + FormatRfc3339(now) + ")");
  }
  if (now < 0) throw Error(ErrorKind::kInternal, "locking restore point " + id + ": the clock is before 1970");
  if (locked_until - now > kMaxLockSeconds) {
    throw Error(ErrorKind::kBadInput, "a lock of restore point " + id + " lasts at most 36500 days (asked: until " +
                                          FormatRfc3339(locked_until) + ")");
  }
  if (reason.size() > kMaxLockReason) {
    throw Error(ErrorKind::kBadInput, "a lock's reason has at most " + std::to_string(kMaxLockReason) + " bytes");
  }
  PointLock lock{locked_until, now, reason};
  if (old && old->locked_until > now && old->locked_until > locked_until) {
    throw Error(ErrorKind::kBadInput, "restore point " + id + " is locked until " + FormatRfc3339(old->locked_until) +
                                          "; a lock is extended, never shortened (asked: " +
                                          FormatRfc3339(locked_until) + ")");
  }
  if (old && reason.empty()) lock.reason = old->reason;
  return lock;
}

void CheckNotLocked(const std::string& id, const std::optional<PointLock>& lock, int64_t now) {
  if (lock && lock->locked_until > now) {
    throw Error(ErrorKind::kBadInput, "restore point " + id + " is locked until " + FormatRfc3339(lock->locked_until) +
                                          (lock->reason.empty() ? "" : " (" + lock->reason + ")") +
                                          "; it cannot be removed before then");
  }
}

RestorePointManifest AssembleManifest(const StagedPointHeader& header, std::vector<DiskRecord> disks,
                                      std::vector<ConfigFileRecord> files) {
  RestorePointManifest m;
  m.id = header.id;
  m.vm = header.vm;
  m.chain = header.chain;
  m.started_at = header.started_at;
  m.writer = WriterName();
  m.disks = std::move(disks);
  m.config_files = std::move(files);
  m.completed_at = NowRfc3339();
  return m;
}

void CheckIndexAgainstStore(const std::string& id, const DiskRecord& d, const FixedIndexReader& index,
                            ChunkStore& chunks) {
  if (index.disk_size() != d.size || index.chunk_size() != d.chunk_size) {
    throw Error(ErrorKind::kCorrupt, "point " + id + ": the index of disk " + d.name + " does not match its record");
  }
  std::vector<Digest> distinct = DistinctDigests(index);
  std::vector<size_t> missing;
  chunks.FindMissing(distinct, &missing);
  if (!missing.empty()) {
    throw Error(ErrorKind::kRetryable, "point " + id + " is not committed: disk " + d.name + " references " +
                                           std::to_string(missing.size()) + " chunk(s) missing from the store (" +
                                           chunks.Describe(distinct[missing[0]]) +
                                           " first); writing the disk again stores them");
  }
}

}  // namespace ferry
