#include "ferry/s3/object_chunk_store.h"

#include <condition_variable>
#include <deque>
#include <thread>

#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/retention.h"  // FormatRfc3339
#include "ferry/s3/object_gc.h"

namespace ferry::s3 {
namespace {

// The digest named by a key under chunks/ ("chunks/ab1/ab1f..."), or false.
bool DigestOfKey(const std::string& key, size_t prefix_size, Digest* out) {
  // <prefix>chunks/xxx/<64 hex>
  if (key.size() != prefix_size + 7 + 4 + 64) return false;
  std::string_view hex(key.data() + key.size() - 64, 64);
  if (key.compare(prefix_size + 11, 64, hex) != 0) return false;
  try {
    *out = Digest::FromHex(hex);
  } catch (const Error&) {
    return false;
  }
  return key.compare(prefix_size + 7, 3, hex.substr(0, 3)) == 0;
}

class ParallelUpload final : public ChunkUpload {
 public:
  explicit ParallelUpload(ObjectChunkStore& store) : store_(store) {
    for (int i = 0; i < ObjectChunkStore::kUploadsInFlight; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~ParallelUpload() override {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void Add(const Digest& digest, std::span<const uint8_t> encoded) override {
    std::unique_lock lock(mu_);
    space_.wait(lock, [&] {
      return failure_ || queued_bytes_ == 0 || queued_bytes_ + encoded.size() <= ObjectChunkStore::kUploadWindowBytes;
    });
    if (failure_) std::rethrow_exception(failure_);
    queued_bytes_ += encoded.size();
    queue_.push_back({digest, std::vector<uint8_t>(encoded.begin(), encoded.end())});
    cv_.notify_one();
  }

  ChunkUploadStats Finish() override {
    std::unique_lock lock(mu_);
    space_.wait(lock, [&] { return failure_ || (queue_.empty() && busy_ == 0); });
    if (failure_) std::rethrow_exception(failure_);
    return stats_;
  }

 private:
  struct Job {
    Digest digest;
    std::vector<uint8_t> encoded;
  };

  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Job job = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
      const bool failed = failure_ != nullptr;  // after a failure the rest is dropped
      lock.unlock();
      std::exception_ptr error;
      bool stored = false;
      try {
        if (!failed) stored = store_.Insert(job.digest, job.encoded);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      --busy_;
      queued_bytes_ -= job.encoded.size();
      if (error && !failure_) failure_ = error;
      if (!error) {
        stats_.sent_bytes += job.encoded.size();
        if (stored) {
          ++stats_.stored_chunks;
          stats_.stored_bytes += job.encoded.size();
        } else {
          ++stats_.present_chunks;
        }
      }
      space_.notify_all();
    }
  }

  ObjectChunkStore& store_;
  std::mutex mu_;
  std::condition_variable cv_;     // work for the threads
  std::condition_variable space_;  // room in the window, or all done
  std::deque<Job> queue_;
  size_t queued_bytes_ = 0;  // queued and in flight
  int busy_ = 0;
  bool closing_ = false;
  std::exception_ptr failure_;
  ChunkUploadStats stats_;
  std::vector<std::thread> threads_;
};

}  // namespace

ObjectChunkStore::ObjectChunkStore(Bucket& bucket, std::string prefix) : bucket_(bucket), prefix_(std::move(prefix)) {}

ObjectChunkStore::~ObjectChunkStore() = default;

void ObjectChunkStore::EnsureWriter() {
  std::lock_guard lock(writer_mu_);
  if (!writer_) writer_ = std::make_unique<WriterLease>(bucket_, prefix_);
}

std::string ObjectChunkStore::KeyFor(const Digest& digest) const {
  const std::string hex = digest.Hex();
  return prefix_ + "chunks/" + hex.substr(0, 3) + "/" + hex;
}

void ObjectChunkStore::ListStored(const std::function<void(const Digest&, int64_t, uint64_t)>& each) {
  bucket_.List(prefix_ + "chunks/", [&](const ObjectInfo& info) {
    Digest d;
    if (DigestOfKey(info.key, prefix_.size(), &d)) each(d, info.last_modified, info.size);
  });
}

void ObjectChunkStore::Refresh() {
  EnsureWriter();  // before the listing: a GC from here on sees the lease
  std::unordered_set<Digest, DigestHash> listed;
  ListStored([&](const Digest& d, int64_t, uint64_t) { listed.insert(d); });
  std::lock_guard lock(mu_);
  known_ = std::move(listed);
  listed_ = true;
}

void ObjectChunkStore::EnsureListed() {
  {
    std::lock_guard lock(mu_);
    if (listed_) return;
  }
  std::lock_guard listing(listing_mu_);
  {
    std::lock_guard lock(mu_);
    if (listed_) return;  // another thread listed while this one waited
  }
  Refresh();
  LogDebug("object storage: " + std::to_string(known_count()) + " chunks listed under " + bucket_.Describe(prefix_ + "chunks/"));
}

size_t ObjectChunkStore::known_count() const {
  std::lock_guard lock(mu_);
  return known_.size();
}

void ObjectChunkStore::Remember(const Digest& digest) {
  std::lock_guard lock(mu_);
  known_.insert(digest);
}

void ObjectChunkStore::FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) {
  EnsureListed();
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < digests.size(); ++i) {
    if (!known_.contains(digests[i])) missing->push_back(i);
  }
}

bool ObjectChunkStore::Insert(const Digest& digest, std::span<const uint8_t> encoded) {
  {
    std::lock_guard lock(mu_);
    if (listed_ && known_.contains(digest)) return false;
  }
  // A PUT of a chunk already stored writes the same bytes again: no harm,
  // and cheaper than asking first (a HEAD costs a request too). Under the
  // writer lease: no GC deletes it between the PUT and the commit.
  EnsureWriter();
  bucket_.Put(KeyFor(digest), encoded);
  Remember(digest);
  return true;
}

std::unique_ptr<ChunkUpload> ObjectChunkStore::StartUpload() { return std::make_unique<ParallelUpload>(*this); }

void ObjectChunkStore::Read(const Digest& digest, std::vector<uint8_t>* encoded) {
  if (bucket_.Get(KeyFor(digest), encoded)) return;
  std::string where;
  bucket_.List(prefix_ + "quarantine/" + digest.Hex(), [&](const ObjectInfo& info) { where = info.key; });
  throw Error(ErrorKind::kCorrupt, "chunk " + digest.Hex() + " is missing from " + Describe(digest) +
                                       (where.empty() ? "" : " (quarantined as " + bucket_.Describe(where) + ")"));
}

std::string ObjectChunkStore::Quarantine(const Digest& digest, const std::string& reason) {
  {
    std::lock_guard lock(mu_);
    known_.erase(digest);
  }
  try {
    std::vector<uint8_t> bytes;
    if (!bucket_.Get(KeyFor(digest), &bytes)) return "";
    const std::string target =
        prefix_ + "quarantine/" + digest.Hex() + "." + FormatRfc3339(static_cast<int64_t>(std::time(nullptr)));
    bucket_.Put(target, bytes);
    bucket_.Delete(KeyFor(digest));
    LogWarning("chunk " + digest.Hex() + " quarantined as " + bucket_.Describe(target) + ": " + reason);
    return bucket_.Describe(target);
  } catch (const Error& e) {
    LogError("quarantining chunk " + digest.Hex() + " (" + reason + ") failed: " + e.what());
    return "";
  }
}

}  // namespace ferry::s3
