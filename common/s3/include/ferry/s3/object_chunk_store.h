// Chunks as objects in a bucket (docs/object-storage.md, "Chunks"):
//
//   <prefix>chunks/<3 hex>/<64 hex>      one encoded chunk (chunk.h), as a local store's file
//   <prefix>quarantine/<64 hex>.<time>   a chunk found damaged, moved aside
//
// ObjectChunkStore is a ChunkStore and a ChunkReader over a Bucket.
//
// Which digests are missing: S3 has no batched existence check, and one HEAD
// per chunk would cost a request per MiB. So the store keeps the set of
// digests it knows are stored, filled by one listing of chunks/ (one request
// per 1000 chunks) the first time it is asked, and by every chunk it stores
// or finds present itself. The rules that keep it right:
//   - a digest it does not know is reported missing: at worst a chunk
//     another writer stored since the listing is uploaded again (a PUT of
//     the same bytes; never a wrong answer);
//   - a digest it knows stays stored while the store is in use: before its
//     listing (and before its first upload) the store takes a writer lease
//     (object_gc.h), held until the store is destroyed, and garbage
//     collection removes chunks only while no writer lease is live;
//   - a chunk it quarantines itself leaves the set; a chunk another process
//     quarantines is stored again only by a later backup (the same rule as
//     a local store: the next backup heals). Commit lists afresh.
// Memory: 40 bytes per known chunk (1 TiB of 1 MiB chunks: about 40 MB).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "ferry/common/chunk_store.h"
#include "ferry/s3/client.h"

namespace ferry::s3 {

class WriterLease;

class ObjectChunkStore final : public ChunkStore, public ChunkReader {
 public:
  // `bucket` must outlive the store. `prefix` is "" or ends in '/'.
  ObjectChunkStore(Bucket& bucket, std::string prefix);
  ~ObjectChunkStore() override;

  std::string KeyFor(const Digest& digest) const;

  void FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) override;
  bool Insert(const Digest& digest, std::span<const uint8_t> encoded) override;
  // Up to `kUploadsInFlight` PUTs at once, with at most `kUploadWindowBytes`
  // of chunks buffered: the bucket, not one request's latency, sets the pace.
  std::unique_ptr<ChunkUpload> StartUpload() override;
  void Sync() override {}  // a PUT is durable when the store answers it
  std::string Describe(const Digest& digest) const override { return bucket_.Describe(KeyFor(digest)); }
  bool remote() const override { return true; }

  void Read(const Digest& digest, std::vector<uint8_t>* encoded) override;
  std::string Quarantine(const Digest& digest, const std::string& reason) override;

  // Lists chunks/ again (the next FindMissing would anyway, the first time).
  void Refresh();
  // Every stored digest, listing chunks/ (for garbage collection), with
  // each object's LastModified. Takes no writer lease.
  void ListStored(const std::function<void(const Digest&, int64_t last_modified, uint64_t size)>& each);
  size_t known_count() const;

  static constexpr int kUploadsInFlight = 16;
  static constexpr size_t kUploadWindowBytes = 64u << 20;

 private:
  void EnsureListed();
  void EnsureWriter();  // takes the writer lease, once; waits while a GC runs
  void Remember(const Digest& digest);

  Bucket& bucket_;
  std::string prefix_;
  std::mutex writer_mu_;
  std::unique_ptr<WriterLease> writer_;
  // Held for the first listing alone: the compute threads of a backup all
  // ask at once, and each listed chunks/ in full (4 listings where 1 does).
  std::mutex listing_mu_;
  mutable std::mutex mu_;
  bool listed_ = false;
  std::unordered_set<Digest, DigestHash> known_;
};

}  // namespace ferry::s3
