// The records of restore points that every PointStore writes the same way,
// whatever holds them (a local directory, a bucket): the staged point's
// header, one finished disk's record, a configuration file's record, a
// point's lock, the manifest assembled at commit, and the rules of locks and
// commits. docs/repository-format.md, "Staging and commit" and "Removal,
// leases and locks"; docs/object-storage.md for the bucket's layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/chunk_store.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/manifest.h"
#include "ferry/common/point_store.h"

namespace ferry {

inline constexpr char kPointLockFile[] = "lock.json";

bool IsValidPointId(const std::string& id);

// "ferry-staged-point-v1" (point.json in staging).
std::string StagedHeaderToJson(const StagedPointHeader& header);
StagedPointHeader StagedHeaderFromJson(const std::string& text, const std::string& source);

// A finished disk's record, and a configuration file's: one-disk (one-file)
// manifests, so the same reader and checksum protect them.
std::string DiskRecordToJson(const DiskRecord& record);
DiskRecord DiskRecordFromJson(const std::string& text, const std::string& source, const std::string& disk);
std::string ConfigFileRecordToJson(const ConfigFileRecord& record);
std::vector<ConfigFileRecord> ConfigFileRecordsFromJson(const std::string& text, const std::string& source);
// Refuses a configuration file name no point may hold (kInternal: callers
// make the names).
void CheckPointFileName(const std::string& name);

// "ferry-point-lock-v1", sealed like a manifest.
std::string PointLockToJson(const std::string& id, const PointLock& lock);
PointLock PointLockFromJson(const std::string& text, const std::string& id, const std::string& source);
// The lock SetLock writes: checks the request (kBadInput: not in the future,
// longer than 100 years, reason too long, or shortening the unexpired `old`)
// and keeps the old reason when none is given.
PointLock NextPointLock(const std::string& id, const std::optional<PointLock>& old, int64_t locked_until,
                        const std::string& reason, int64_t now);
// kBadInput when `lock` holds the point after `now`, naming its end and reason.
void CheckNotLocked(const std::string& id, const std::optional<PointLock>& lock, int64_t now);

// The manifest of a staged point whose disks are all written: the header's
// identity, the disks in the header's order, the files, completed now.
RestorePointManifest AssembleManifest(const StagedPointHeader& header, std::vector<DiskRecord> disks,
                                      std::vector<ConfigFileRecord> files);
// The commit-time check of one disk's index: matches its record and every
// chunk it references is in `chunks` (else kRetryable naming the first
// missing one: writing the disk again stores it).
void CheckIndexAgainstStore(const std::string& id, const DiskRecord& disk, const FixedIndexReader& index,
                            ChunkStore& chunks);

}  // namespace ferry
