// An S3 client for one bucket, on Ferry's own HTTP client (ferry/http) and
// SigV4 (sigv4.h). docs/object-storage.md says why not libs3: we need
// connection reuse across threads, TLS with a CA file, ranged reads, paging
// listings and multipart uploads with abort, all with Ferry's error kinds and
// retry policy; libs3 (Debian 12: 4.1, unmaintained upstream since 2019)
// brings libcurl and libxml2 and its own callback world for a few hundred
// lines of protocol.
//
//   Bucket   thread-safe: a pool of keep-alive connections, one per
//            concurrent request; every request signed and retried with the
//            one retry policy (ferry/common/retry.h) on connection errors,
//            5xx and 429/503 SlowDown.
//
// Errors: a missing bucket is kNotFound, 403 kEnvironment (credentials or
// policy), 400 kBadInput, connection loss and throttling kRetryable once the
// retries are spent. Messages name the object (s3://bucket/key) and S3's
// error code, never a credential.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ferry/common/retry.h"
#include "ferry/s3/sigv4.h"

namespace ferry::s3 {

struct BucketOptions {
  std::string endpoint;  // http://host[:port] or https://host[:port]
  std::string bucket;
  std::string region = "us-east-1";
  Credentials credentials;
  bool virtual_host = false;  // bucket.host/key instead of host/bucket/key
  std::string ca_file;        // PEM to trust for https (empty: the system store)
  bool verify_tls = true;
  std::chrono::seconds timeout{60};  // per request exchange
  RetryPolicy retry;
  // Objects larger than this go up in parts of part_size (S3 allows 10,000
  // parts of 5 MiB to 5 GiB).
  size_t multipart_threshold = 64u << 20;
  size_t part_size = 16u << 20;
};

// S3 Object Lock retention modes (docs/object-storage.md, "Object Lock"):
// COMPLIANCE cannot be shortened or removed by anyone, the root account
// included, until it ends; GOVERNANCE can, by a user granted
// s3:BypassGovernanceRetention who sends x-amz-bypass-governance-retention.
enum class RetentionMode { kCompliance, kGovernance };
const char* RetentionModeName(RetentionMode mode);  // "COMPLIANCE", "GOVERNANCE"

struct ObjectRetention {
  RetentionMode mode = RetentionMode::kCompliance;
  int64_t retain_until = 0;  // Unix seconds
};

// One entry of a versioned listing (ListObjectVersions).
struct ObjectVersion {
  std::string key;
  std::string version_id;
  bool is_latest = false;
  bool delete_marker = false;
  uint64_t size = 0;
  int64_t last_modified = 0;  // Unix seconds
};

struct ObjectInfo {
  std::string key;
  uint64_t size = 0;
  std::string etag;
  int64_t last_modified = 0;  // Unix seconds
};

// Request counts and bytes, for statistics and the cost figures of
// docs/object-storage.md.
struct BucketStats {
  uint64_t put_requests = 0;   // PUT and POST (multipart steps)
  uint64_t get_requests = 0;   // GET of objects
  uint64_t list_requests = 0;  // ListObjectsV2 pages
  uint64_t head_requests = 0;
  uint64_t delete_requests = 0;
  uint64_t retries = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
};

class Bucket {
 public:
  // Validates the options (kBadInput naming the field); does not connect.
  explicit Bucket(BucketOptions options);
  ~Bucket();
  Bucket(const Bucket&) = delete;
  Bucket& operator=(const Bucket&) = delete;

  const BucketOptions& options() const { return options_; }
  // "s3://bucket/key", for messages.
  std::string Describe(const std::string& key) const;

  // Creates the bucket (kBadInput if it exists and is someone else's; an
  // existing bucket of ours is fine). With `object_lock`, the bucket is
  // created with S3 Object Lock (x-amz-bucket-object-lock-enabled: true;
  // versioning comes with it, and neither can be turned off again).
  void CreateBucket(bool object_lock = false);
  // Whether the bucket has Object Lock enabled (GET ?object-lock). A store
  // that does not know the call (501, 405) counts as "no".
  bool ObjectLockEnabled();
  // Sets an object's retention (PUT ?retention, with the Content-MD5 S3
  // requires on it) on its current version, or on `version_id`. The store
  // refuses to shorten it or (COMPLIANCE) to change its mode: kEnvironment
  // (403 AccessDenied). kNotFound for a missing object.
  void SetRetention(const std::string& key, RetentionMode mode, int64_t retain_until,
                    const std::string& version_id = "");
  // An object's retention; nullopt when it has none, when the object is
  // missing or when the bucket has no Object Lock.
  std::optional<ObjectRetention> GetRetention(const std::string& key, const std::string& version_id = "");
  // Every version and delete marker of the objects under `prefix`, a page per
  // request, in key order and newest first for a key.
  void ListVersions(const std::string& prefix, const std::function<void(const ObjectVersion&)>& each);
  // Whether the bucket exists and these credentials may use it (kEnvironment
  // on 403).
  bool BucketExists();

  // Stores an object (multipart above the threshold; an aborted multipart
  // upload leaves nothing). `headers` go with the request (e.g. Object
  // Lock's x-amz-object-lock-*), and are signed.
  void Put(const std::string& key, std::span<const uint8_t> data,
           const std::vector<std::pair<std::string, std::string>>& headers = {});
  void Put(const std::string& key, const std::string& data,
           const std::vector<std::pair<std::string, std::string>>& headers = {});
  // Uploads a local file, in parts when it is large (memory: one part).
  void PutFile(const std::string& key, const std::string& path);
  // Reads an object into `out`; false when it does not exist.
  bool Get(const std::string& key, std::vector<uint8_t>* out);
  bool Get(const std::string& key, std::string* out);
  // Reads bytes [offset, offset+length) of an object; false when it does not exist.
  bool GetRange(const std::string& key, uint64_t offset, uint64_t length, std::vector<uint8_t>* out);
  // Downloads an object into a local file (written to a temp name, renamed when complete).
  bool GetFile(const std::string& key, const std::string& path);
  std::optional<ObjectInfo> Head(const std::string& key);
  // Deletes an object; a missing one is not an error.
  void Delete(const std::string& key);
  // Deletes up to kDeleteBatch objects in one request (POST ?delete, with
  // the Content-MD5 S3 requires on it; quiet mode: the store answers only
  // the failures). A missing key is not a failure. Returns the keys the
  // store refused, with S3's code (AccessDenied: a version under Object
  // Lock retention, or the policy); throws when the request itself fails.
  struct DeleteFailure {
    std::string key;
    std::string code;
  };
  static constexpr size_t kDeleteBatch = 1000;
  std::vector<DeleteFailure> DeleteObjects(const std::vector<std::string>& keys);
  // Every object whose key starts with `prefix`, in key order, a page
  // (up to 1000 keys) per request. `each` may throw to stop.
  void List(const std::string& prefix, const std::function<void(const ObjectInfo&)>& each);
  // The "directories" right under `prefix` (delimiter '/'): "points/a/",...
  std::vector<std::string> ListPrefixes(const std::string& prefix);

  BucketStats stats() const;

  // One request, signed and retried; the raw response. For what the
  // methods above do not cover (Object Lock configuration, say). `query`
  // unencoded. 404 and other statuses come back as they are; only
  // retryable failures throw once the retries are spent.
  struct Reply {
    int status = 0;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string Header(const std::string& name) const;  // case-insensitive; "" when absent
  };
  Reply Request(const std::string& method, const std::string& key,
                const std::vector<std::pair<std::string, std::string>>& query, std::span<const uint8_t> body,
                const std::vector<std::pair<std::string, std::string>>& headers = {});

 private:
  class Pool;
  Reply Once(const std::string& method, const std::string& key,
             const std::vector<std::pair<std::string, std::string>>& query, std::span<const uint8_t> body,
             const std::vector<std::pair<std::string, std::string>>& headers);
  void PutMultipart(const std::string& key, uint64_t size,
                    const std::function<void(uint64_t offset, std::span<uint8_t> part)>& read_part,
                    const std::vector<std::pair<std::string, std::string>>& headers);
  [[noreturn]] void ThrowFor(const Reply& reply, const std::string& what) const;

  BucketOptions options_;
  std::string host_;    // the Host header
  std::string prefix_;  // "/bucket" (path style) or ""
  bool sign_payload_ = true;
  std::unique_ptr<Pool> pool_;
  struct Counters;
  std::unique_ptr<Counters> counters_;
};

// The text of every <tag>...</tag> in `xml` (no nesting of the same tag),
// entities decoded. Enough for S3's answers; exposed for tests.
std::vector<std::string> XmlElements(std::string_view xml, std::string_view tag);

}  // namespace ferry::s3
