#include "ferry/s3/object_point_store.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_set>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/ids.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/log.h"
#include "ferry/common/periodic.h"
#include "ferry/common/point_records.h"
#include "ferry/common/retention.h"  // FormatRfc3339
#include "ferry/s3/object_chunk_store.h"

namespace json = boost::json;

namespace ferry::s3 {
namespace {

constexpr char kManifest[] = "manifest.json";
constexpr char kCheck[] = "check.json";
constexpr char kHeader[] = "point.json";
constexpr char kRemoving[] = "removing.json";

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

std::string ExpiryJson(int64_t expires_at) {
  return json::serialize(json::object{{"expires_at", expires_at}, {"writer", WriterName()}}) + "\n";
}

// A lease object's expiry; an unreadable one counts as live (removal waits
// rather than guesses).
int64_t ExpiryOf(const std::string& text) {
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object() || !v.as_object().contains("expires_at") || !v.at("expires_at").is_int64()) return INT64_MAX;
  return v.at("expires_at").as_int64();
}

class ObjectPointStore;

// A read lease: an object under leases/<id>/, rewritten with a later expiry
// every third of its life until the lease is dropped.
class ObjectPointLease final : public PointLease {
 public:
  ObjectPointLease(Bucket& bucket, std::string key)
      : bucket_(bucket), key_(std::move(key)),
        refresher_(std::make_unique<PeriodicTask>(std::chrono::seconds(kReadLeaseSeconds / 3), [this] {
          try {
            bucket_.Put(key_, ExpiryJson(Now() + kReadLeaseSeconds));
          } catch (const Error& e) {
            LogWarning("refreshing the read lease " + bucket_.Describe(key_) + " failed: " + e.what());
          }
        })) {}
  ~ObjectPointLease() override {
    refresher_.reset();  // no rewrite after the delete
    try {
      bucket_.Delete(key_);
    } catch (const Error& e) {
      LogWarning("dropping the read lease " + bucket_.Describe(key_) + " failed (it expires by itself): " + e.what());
    }
  }

 private:
  Bucket& bucket_;
  std::string key_;
  std::unique_ptr<PeriodicTask> refresher_;
};

class ObjectStagingLease final : public StagingLease {
 public:
  explicit ObjectStagingLease(StagedPointHeader header) : header_(std::move(header)) {}
  const StagedPointHeader& header() const override { return header_; }

 private:
  StagedPointHeader header_;
};

class ObjectDiskWriter final : public DiskWriter {
 public:
  ObjectDiskWriter(Bucket& bucket, std::string disk, std::string index_file, std::string index_key,
                   std::string record_key)
      : bucket_(bucket),
        disk_(std::move(disk)),
        index_file_(std::move(index_file)),
        index_key_(std::move(index_key)),
        record_key_(std::move(record_key)),
        file_("s3-index") {}

  const std::string& index_path() const override { return file_.path(); }
  const std::string& index_file() const override { return index_file_; }

  void Finish(DiskRecord record) override {
    record.name = disk_;
    record.index_file = index_file_;
    {
      // The record names the index by its checksum, read back from the
      // file that goes up.
      FixedIndexReader check(file_.path(), nullptr);
      Sha256Stream sha;
      sha.Update(check.bytes().data(), check.bytes().size());
      record.index_sha256 = sha.Finish();
    }
    bucket_.PutFile(index_key_, file_.path());
    bucket_.Put(record_key_, DiskRecordToJson(record));  // the disk counts as written from here
  }

 private:
  Bucket& bucket_;
  std::string disk_, index_file_, index_key_, record_key_;
  TempFile file_;
};

class ObjectPointStore final : public PointStore {
 public:
  ObjectPointStore(Bucket& bucket, std::string prefix, ChunkStore& chunks, ObjectLockOptions lock_options)
      : bucket_(bucket), prefix_(std::move(prefix)), chunks_(chunks), lock_mode_(lock_options.mode),
        require_object_lock_(lock_options.required) {}

  std::vector<std::string> List() const override {
    std::vector<std::string> ids;
    bucket_.List(prefix_ + "points/", [&](const ObjectInfo& o) {
      std::string rest = o.key.substr(prefix_.size() + 7);
      size_t slash = rest.find('/');
      if (slash == std::string::npos || rest.substr(slash + 1) != kManifest) return;
      std::string id = rest.substr(0, slash);
      if (IsValidPointId(id)) ids.push_back(std::move(id));
    });
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  PointListing LoadAll() const override {
    PointListing out;
    std::vector<std::string> ids;
    try {
      ids = List();
    } catch (const Error& e) {
      out.problems.push_back({"points", e.what()});
      return out;
    }
    for (const auto& id : ids) {
      try {
        out.points.push_back(Load(id));
      } catch (const Error& e) {
        out.problems.push_back({id, e.what()});
      }
    }
    return out;
  }

  RestorePointManifest Load(const std::string& id) const override {
    std::string text;
    if (!IsValidPointId(id) || !bucket_.Get(PointKey(id, kManifest), &text)) {
      throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist in " + bucket_.Describe(prefix_));
    }
    RestorePointManifest m;
    try {
      m = ManifestFromJson(text, bucket_.Describe(PointKey(id, kManifest)));
    } catch (const Error& e) {
      throw e.WithContext("restore point " + id);
    }
    if (m.id != id) {
      throw Error(ErrorKind::kCorrupt, "restore point " + id + ": manifest " + bucket_.Describe(PointKey(id, kManifest)) +
                                           " names point '" + m.id + "'");
    }
    return m;
  }

  std::unique_ptr<FixedIndexReader> OpenIndex(const std::string& id, const DiskRecord& disk) const override {
    return DownloadIndex(PointKey(id, disk.index_file), disk);
  }

  std::string ReadFile(const std::string& id, const ConfigFileRecord& file) const override {
    std::string content;
    if (!bucket_.Get(PointKey(id, file.name), &content)) {
      throw Error(ErrorKind::kCorrupt, "restore point " + id + ": configuration file " +
                                           bucket_.Describe(PointKey(id, file.name)) + " is missing");
    }
    CheckConfigFile(id, file, content);
    return content;
  }

  std::unique_ptr<StagingLease> Stage(StagedPointHeader header) override {
    ValidateStagedHeader(header);
    if (Committed(header.id)) throw Error(ErrorKind::kBadInput, "restore point " + header.id + " is already committed");
    for (const auto& gone : RemoveExpired()) LogInfo("removed expired staging of point " + gone);
    if (header.expires_at == 0) header.expires_at = Now() + kProcessStagingSeconds;
    std::optional<StagedPointHeader> have = ReadHeader(header.id);
    if (have) {
      if (!SameStagedPoint(*have, header)) {
        throw Error(ErrorKind::kBadInput, "point " + header.id + " is staged for another VM, chain or set of disks");
      }
      if (header.expires_at > have->expires_at) {
        have->expires_at = header.expires_at;
        bucket_.Put(StagingKey(header.id, kHeader), StagedHeaderToJson(*have));
      }
      return std::make_unique<ObjectStagingLease>(std::move(*have));
    }
    if (header.started_at.empty()) header.started_at = NowRfc3339();
    bucket_.Put(StagingKey(header.id, kHeader), StagedHeaderToJson(header));
    return std::make_unique<ObjectStagingLease>(std::move(header));
  }

  std::unique_ptr<DiskWriter> WriteDisk(const std::string& id, const std::string& disk) override {
    StagedPointHeader header = StagedHeaderOrThrow(id);
    auto it = std::find(header.disks.begin(), header.disks.end(), disk);
    if (it == header.disks.end()) throw Error(ErrorKind::kNotFound, "staged point " + id + " has no disk '" + disk + "'");
    const std::string n = std::to_string(it - header.disks.begin());
    // Written again from scratch: the old record goes first, so a writer
    // killed from here on leaves the disk "not written".
    bucket_.Delete(StagingKey(id, "disk-" + n + ".json"));
    const std::string index_file = "disk-" + n + "-" + RandomHex(8) + ".fidx";
    return std::make_unique<ObjectDiskWriter>(bucket_, disk, index_file, PointKey(id, index_file),
                                              StagingKey(id, "disk-" + n + ".json"));
  }

  ConfigFileRecord AddFile(const std::string& id, const std::string& kind, const std::string& name,
                           const std::string& content, const std::string& origin) override {
    CheckPointFileName(name);
    StagedHeaderOrThrow(id);
    bucket_.Put(PointKey(id, name), content);
    ConfigFileRecord rec{kind, name, origin, Sha256(content.data(), content.size())};
    bucket_.Put(StagingKey(id, "file-" + name + ".json"), ConfigFileRecordToJson(rec));
    return rec;
  }

  RestorePointManifest Commit(const std::string& id) override {
    ValidatePointId(id);
    if (Committed(id)) {  // committed before; a crash may have cut the cleanup short
      RemoveStaging(id);
      return Load(id);
    }
    std::optional<StagedPointHeader> header = ReadHeader(id);
    if (!header) throw Error(ErrorKind::kNotFound, "point " + id + " is not staged");
    std::vector<DiskRecord> disks;
    std::string not_written;
    for (size_t i = 0; i < header->disks.size(); ++i) {
      const std::string key = StagingKey(id, "disk-" + std::to_string(i) + ".json");
      std::string text;
      if (!bucket_.Get(key, &text)) {
        not_written += (not_written.empty() ? "" : ", ") + header->disks[i];
        continue;
      }
      disks.push_back(DiskRecordFromJson(text, bucket_.Describe(key), header->disks[i]));
    }
    if (!not_written.empty()) {
      throw Error(ErrorKind::kNotFound, "point " + id + " cannot be committed: disk(s) " + not_written +
                                            " not written (or their task was cut off); write them again");
    }
    for (const auto& d : disks) {
      std::unique_ptr<FixedIndexReader> index = DownloadIndex(PointKey(id, d.index_file), d);
      CheckIndexAgainstStore(id, d, *index, chunks_);
    }
    std::vector<ConfigFileRecord> files;
    bucket_.List(StagingKey(id, "file-"), [&](const ObjectInfo& o) {
      if (!o.key.ends_with(".json")) return;
      std::string text;
      if (!bucket_.Get(o.key, &text)) return;
      for (auto& f : ConfigFileRecordsFromJson(text, bucket_.Describe(o.key))) files.push_back(std::move(f));
    });
    RestorePointManifest m = AssembleManifest(*header, std::move(disks), std::move(files));
    chunks_.Sync();
    bucket_.Put(PointKey(id, kManifest), ManifestToJson(m));
    // Committed: what fails from here is logged, never reported as a failed
    // commit (the next commit or sweep finishes the cleanup).
    try {
      RemoveStaging(id);
      RemoveUnnamedIndexes(id, m);
    } catch (const std::exception& e) {
      LogWarning("restore point " + id + " is committed, but cleaning up its staging failed: " + e.what());
    }
    return m;
  }

  void Discard(const std::string& id) override {
    ValidatePointId(id);
    if (Committed(id)) {
      RemoveStaging(id);
      throw Error(ErrorKind::kBadInput, "restore point " + id + " is committed; it is not discarded");
    }
    // The uploaded indexes and files first, the records last: a kill midway
    // leaves a staged point whose disks are "not written", which expires.
    DeleteUnder(prefix_ + "points/" + id + "/");
    RemoveStaging(id);
  }

  std::vector<std::string> RemoveExpired() override {
    std::vector<std::string> removed;
    const int64_t now = Now();
    for (const auto& id : ListStaged()) {
      try {
        if (Committed(id)) {
          RemoveStaging(id);
          continue;
        }
        std::optional<StagedPointHeader> h = ReadHeader(id);
        if (h && h->expires_at > now) continue;
        Discard(id);
        removed.push_back(id);
      } catch (const std::exception& e) {
        LogWarning("staging of point " + id + " left as it is: " + e.what());
      }
    }
    return removed;
  }

  std::vector<std::string> ListStaged() const override {
    std::vector<std::string> ids;
    for (const auto& p : bucket_.ListPrefixes(prefix_ + "staging/")) {
      std::string id = p.substr(prefix_.size() + 8);
      if (!id.empty() && id.back() == '/') id.pop_back();
      if (IsValidPointId(id)) ids.push_back(std::move(id));
    }
    return ids;
  }

  std::unique_ptr<PointLease> Lease(const std::string& id) const override {
    ValidatePointId(id);
    if (!Committed(id)) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist");
    const std::string key = LeaseKey(id, "read-" + RandomHex(12) + ".json");
    bucket_.Put(key, ExpiryJson(Now() + kReadLeaseSeconds));
    auto lease = std::make_unique<ObjectPointLease>(bucket_, key);
    // After our lease is visible: a removal that started before it is seen here.
    std::string text;
    if (bucket_.Get(LeaseKey(id, kRemoving), &text) && ExpiryOf(text) > Now()) {
      throw Error(ErrorKind::kRetryable, "restore point " + id + " is being removed");
    }
    if (!Committed(id)) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist (it was just removed)");
    return lease;
  }

  std::optional<PointLock> ReadLock(const std::string& id) const override {
    ValidatePointId(id);
    if (!Committed(id)) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist");
    std::string text;
    if (!bucket_.Get(PointKey(id, kPointLockFile), &text)) return std::nullopt;
    return PointLockFromJson(text, id, bucket_.Describe(PointKey(id, kPointLockFile)));
  }

  PointLock SetLock(const std::string& id, int64_t locked_until, const std::string& reason, int64_t now) override {
    std::unique_ptr<PointLease> lease = Lease(id);  // no removal crosses the lock
    PointLock lock = NextPointLock(id, ReadLock(id), locked_until, reason, now);
    const bool immutable = ObjectLock();
    // The data first, the record last: a lock.json that is visible is in
    // force on every object it protects. A failure midway leaves retention
    // extended on some objects and the old lock recorded; SetLock again
    // finishes it.
    if (immutable) RetainPoint(id, lock.locked_until);
    bucket_.Put(PointKey(id, kPointLockFile), PointLockToJson(id, lock));
    if (immutable) Retain({PointKey(id, kPointLockFile)}, lock.locked_until, "lock record");
    return lock;
  }

  void Remove(const std::string& id, int64_t now) override {
    ValidatePointId(id);
    if (!Committed(id)) throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist in " + bucket_.Describe(prefix_));
    std::optional<PointLock> lock;
    try {
      lock = ReadLock(id);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kNotFound) throw;
      throw e.WithContext("restore point " + id + " is not removed: its lock cannot be read");
    }
    CheckNotLocked(id, lock, now);
    bucket_.Put(LeaseKey(id, kRemoving), ExpiryJson(Now() + 600));
    bool in_use = false;
    bucket_.List(LeaseKey(id, "read-"), [&](const ObjectInfo& o) {
      std::string text;
      if (bucket_.Get(o.key, &text) && ExpiryOf(text) > Now()) in_use = true;
    });
    if (in_use) {
      bucket_.Delete(LeaseKey(id, kRemoving));
      throw Error(ErrorKind::kRetryable, "restore point " + id + " is in use by a restore, verify or backup (or being "
                                         "locked); it is not removed");
    }
    // Invisible from the manifest's deletion on; the rest is a leftover for
    // garbage collection if a kill cuts it short.
    bucket_.Delete(PointKey(id, kManifest));
    try {
      DeleteUnder(prefix_ + "points/" + id + "/");
      DeleteUnder(prefix_ + "leases/" + id + "/");
    } catch (const std::exception& e) {
      LogWarning("restore point " + id + " is removed, but deleting its objects failed: " + e.what());
    }
  }

  std::map<std::string, PointCheck> LoadChecks() const override {
    std::map<std::string, PointCheck> out;
    std::vector<std::string> committed = List();
    for (const auto& id : committed) {
      std::string text;
      const std::string key = PointKey(id, kCheck);
      try {
        if (!bucket_.Get(key, &text)) continue;
        PointCheck c = PointCheckFromJson(text, bucket_.Describe(key));
        if (c.point != id) throw Error(ErrorKind::kCorrupt, "check record " + bucket_.Describe(key) + " names point '" + c.point + "'");
        out.emplace(id, std::move(c));
      } catch (const Error& e) {
        LogWarning(std::string(e.what()) + "; the point counts as never checked");
      }
    }
    return out;
  }

  void RecordCheck(const PointCheck& check) override {
    ValidatePointId(check.point);
    if (!Committed(check.point)) {
      throw Error(ErrorKind::kNotFound, "restore point '" + check.point + "' does not exist in " + bucket_.Describe(prefix_));
    }
    bucket_.Put(PointKey(check.point, kCheck), PointCheckToJson(check));
  }

 private:
  std::string PointKey(const std::string& id, const std::string& name) const {
    return prefix_ + "points/" + id + "/" + name;
  }
  std::string StagingKey(const std::string& id, const std::string& name) const {
    return prefix_ + "staging/" + id + "/" + name;
  }
  std::string LeaseKey(const std::string& id, const std::string& name) const {
    return prefix_ + "leases/" + id + "/" + name;
  }

  bool Committed(const std::string& id) const { return bucket_.Head(PointKey(id, kManifest)).has_value(); }

  // Whether the bucket has Object Lock, asked once per store.
  bool ObjectLock() {
    std::lock_guard lock(lock_mu_);
    if (!object_lock_) {
      object_lock_ = bucket_.ObjectLockEnabled();
      if (!*object_lock_ && require_object_lock_) {
        object_lock_.reset();
        throw Error(ErrorKind::kEnvironment, "bucket " + bucket_.Describe("") + " has no S3 Object Lock, but the "
                    "repository's location asks for it (object-lock=on); the point is not locked. Object Lock is "
                    "enabled when a bucket is created (docs/object-storage.md, \"Object Lock\")");
      }
      if (!*object_lock_) {
        LogInfo("bucket " + bucket_.Describe("") + " has no S3 Object Lock: point locks are lock.json records only, "
                "and the store offers no immutability (docs/object-storage.md, \"Object Lock\")");
      }
    }
    return *object_lock_;
  }

  // Retention until `until` on the point's own objects and every chunk its
  // indexes reference.
  void RetainPoint(const std::string& id, int64_t until) {
    auto* chunks = dynamic_cast<ObjectChunkStore*>(&chunks_);
    if (!chunks) throw Error(ErrorKind::kInternal, "Object Lock needs the bucket's chunk store");
    RestorePointManifest m = Load(id);
    std::vector<std::string> keys{PointKey(id, kManifest)};
    std::unordered_set<Digest, DigestHash> digests;
    for (const auto& d : m.disks) {
      keys.push_back(PointKey(id, d.index_file));
      std::unique_ptr<FixedIndexReader> index = DownloadIndex(PointKey(id, d.index_file), d);
      for (const Digest& digest : DistinctDigests(*index)) digests.insert(digest);
    }
    for (const auto& f : m.config_files) keys.push_back(PointKey(id, f.name));
    std::vector<std::string> chunk_keys;
    chunk_keys.reserve(digests.size());
    for (const Digest& d : digests) chunk_keys.push_back(chunks->KeyFor(d));
    std::sort(chunk_keys.begin(), chunk_keys.end());
    Retain(keys, until, "point " + id);
    Retain(chunk_keys, until, "chunks of point " + id, /*chunks=*/true);
    LogDebug("point " + id + ": retention until " + FormatRfc3339(until) + " on " + std::to_string(keys.size()) +
             " objects and " + std::to_string(chunk_keys.size()) + " chunks");
  }

  // Sets retention until `until` on each key, kRetentionsInFlight at once.
  // An object already retained as long or longer (a chunk of a point locked
  // longer) keeps its retention: the store refuses to shorten one (403), and
  // the refusal is checked against the retention it has.
  void Retain(const std::vector<std::string>& keys, int64_t until, const std::string& what, bool chunks = false) {
    std::atomic<size_t> next{0};
    std::atomic<size_t> missing{0};
    std::mutex mu;
    std::optional<Error> failure;
    auto work = [&] {
      for (;;) {
        {
          std::lock_guard lock(mu);
          if (failure) return;
        }
        const size_t i = next++;
        if (i >= keys.size()) return;
        try {
          RetainOne(keys[i], until);
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::kNotFound && chunks) {
            ++missing;  // quarantined since commit: verify reports it
            continue;
          }
          std::lock_guard lock(mu);
          if (!failure) failure = e;
        } catch (const std::exception& e) {
          std::lock_guard lock(mu);
          if (!failure) failure = Error(ErrorKind::kInternal, e.what());
        }
      }
    };
    std::vector<std::thread> threads;
    const size_t n = std::min<size_t>(kRetentionsInFlight, keys.size());
    for (size_t t = 1; t < n; ++t) threads.emplace_back(work);
    work();
    for (auto& t : threads) t.join();
    if (failure) throw failure->WithContext("locking " + what + " with S3 Object Lock");
    if (missing > 0) {
      LogWarning(what + ": " + std::to_string(missing.load()) + " chunk(s) are missing from the store (quarantined?) "
                 "and could not be retained; verify the point");
    }
  }

  void RetainOne(const std::string& key, int64_t until) {
    try {
      bucket_.SetRetention(key, lock_mode_, until);
      return;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kEnvironment) throw;
      // Refused: shortening (or changing the mode of) a longer retention.
      std::optional<ObjectRetention> have = bucket_.GetRetention(key);
      if (!have || have->retain_until < until) throw;
      if (have->mode != lock_mode_) {
        LogDebug(bucket_.Describe(key) + " keeps its " + RetentionModeName(have->mode) + " retention until " +
                 FormatRfc3339(have->retain_until));
      }
    }
  }

  std::optional<StagedPointHeader> ReadHeader(const std::string& id) const {
    std::string text;
    const std::string key = StagingKey(id, kHeader);
    if (!bucket_.Get(key, &text)) return std::nullopt;
    StagedPointHeader h = StagedHeaderFromJson(text, bucket_.Describe(key));
    if (h.id != id) throw Error(ErrorKind::kCorrupt, "staged point header " + bucket_.Describe(key) + " names point '" + h.id + "'");
    return h;
  }

  StagedPointHeader StagedHeaderOrThrow(const std::string& id) const {
    ValidatePointId(id);
    std::optional<StagedPointHeader> h = ReadHeader(id);
    if (h) return *h;
    if (Committed(id)) throw Error(ErrorKind::kBadInput, "restore point " + id + " is already committed");
    throw Error(ErrorKind::kNotFound, "point " + id + " is not staged (stage it first)");
  }

  std::unique_ptr<FixedIndexReader> DownloadIndex(const std::string& key, const DiskRecord& disk) const {
    TempFile file("s3-index");
    std::vector<uint8_t> bytes;
    if (!bucket_.Get(key, &bytes)) {
      throw Error(ErrorKind::kCorrupt, "the index of disk " + disk.name + " is missing: " + bucket_.Describe(key));
    }
    PwriteAll(file.fd(), bytes.data(), bytes.size(), 0, file.path());
    // The reader maps the file, so its name can go when this returns.
    return std::make_unique<FixedIndexReader>(file.path(), &disk.index_sha256);
  }

  void DeleteUnder(const std::string& prefix) const {
    std::vector<std::string> keys;
    bucket_.List(prefix, [&](const ObjectInfo& o) { keys.push_back(o.key); });
    for (const auto& k : keys) bucket_.Delete(k);
  }

  // Staging records go with the header last, so a kill midway leaves a header
  // (a staged point that expires) rather than records without one.
  void RemoveStaging(const std::string& id) const {
    std::vector<std::string> keys;
    bucket_.List(prefix_ + "staging/" + id + "/", [&](const ObjectInfo& o) { keys.push_back(o.key); });
    const std::string header = StagingKey(id, kHeader);
    for (const auto& k : keys) {
      if (k != header) bucket_.Delete(k);
    }
    bucket_.Delete(header);
  }

  // Indexes of disks written more than once (an earlier attempt's).
  void RemoveUnnamedIndexes(const std::string& id, const RestorePointManifest& m) const {
    std::set<std::string> named;
    for (const auto& d : m.disks) named.insert(PointKey(id, d.index_file));
    std::vector<std::string> stale;
    bucket_.List(prefix_ + "points/" + id + "/disk-", [&](const ObjectInfo& o) {
      if (!named.contains(o.key)) stale.push_back(o.key);
    });
    for (const auto& k : stale) bucket_.Delete(k);
  }

  Bucket& bucket_;
  std::string prefix_;
  ChunkStore& chunks_;
  RetentionMode lock_mode_;
  bool require_object_lock_;
  std::mutex lock_mu_;
  std::optional<bool> object_lock_;
};

}  // namespace

std::unique_ptr<PointStore> OpenObjectPointStore(Bucket& bucket, std::string prefix, ChunkStore& chunks,
                                                 ObjectLockOptions lock_options) {
  return std::make_unique<ObjectPointStore>(bucket, std::move(prefix), chunks, lock_options);
}

}  // namespace ferry::s3
