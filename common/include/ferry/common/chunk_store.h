// Chunk storage behind two small interfaces, so a backup, a restore and a
// verify do not care whether the chunks are in a local directory or behind a
// network service (docs/repository-format.md, "Chunk files", "Quarantine"):
//
//   ChunkStore   what a backup needs: which digests are missing (batched: a
//                remote store answers a whole batch in one round trip), store
//                an encoded chunk, make stored chunks durable.
//   ChunkReader  what restore and verify need: read an encoded chunk, and
//                quarantine one found damaged so no later backup reuses it.
//
// LocalChunkStore is both, over <repo>/chunks/<3 hex>/<64 hex>.
//
// Concurrency: any number of writers, in any number of processes, may insert
// at once. A chunk is written to an unnamed file (O_TMPFILE) and linked into
// place in one step; link(2) never replaces, so two writers of the same chunk
// both end with one complete, valid file, and a writer killed mid-write leaves
// nothing behind. File systems without O_TMPFILE get a uniquely named temp
// file and rename(2), which is equally atomic.
//
// Durability: with SyncLevel::kFile each chunk and its directory are fsynced
// before the chunk counts as stored. With kFilesystem (the default, as Proxmox
// Backup Server's default), chunks are written through the page cache and one
// syncfs(2) runs before a restore point is committed: a process kill loses
// nothing, a power loss can lose chunks of points not yet committed.
//
// Garbage collection (gc.h, docs/gc.md): FindMissing sets the mtime of every
// chunk it finds present to now, in the same call that checks it exists, and
// Insert does the same for a chunk another writer stored first; a new chunk
// has a fresh mtime anyway. So every chunk a running backup relies on is
// younger than the GC's cutoff. A chunk a GC is removing at that moment (its
// doomed name, .gc-<digest>) is linked back by whoever looks for it.
//
// Healing: a chunk found damaged (by verify or restore) is renamed into
// <repo>/quarantine/, never deleted. From then on it is missing, so the next
// backup that reads the same data stores it again, and a backup never reuses
// it. A backup makes one virtual FindMissing call per stored 1 MiB chunk:
// nanoseconds against the milliseconds of hashing and compressing it
// (measured, docs/benchmarks.md "Repository v2").
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ferry/common/checksum.h"
#include "ferry/common/file_util.h"

namespace ferry {

enum class SyncLevel { kFilesystem, kFile };

// What a ChunkUpload did, for a disk's statistics.
struct ChunkUploadStats {
  uint64_t stored_chunks = 0;   // new in the store
  uint64_t stored_bytes = 0;    // their encoded bytes
  uint64_t present_chunks = 0;  // already there when they arrived (another writer won)
  uint64_t sent_bytes = 0;      // encoded bytes handed to the store's transport, resends included
  uint64_t resent_bytes = 0;    // of which sent again after a lost connection
};

// The chunks one disk backup stores, possibly asynchronously: Add() may
// return before the chunk is stored (a remote store keeps a bounded window of
// chunks in flight and resends them after a reconnect); Finish() returns once
// every chunk added is stored, or throws the first failure. A failure may also
// surface from a later Add(). Used from several threads at once.
class ChunkUpload {
 public:
  virtual ~ChunkUpload() = default;
  virtual void Add(const Digest& digest, std::span<const uint8_t> encoded) = 0;
  virtual ChunkUploadStats Finish() = 0;
};

class ChunkStore {
 public:
  virtual ~ChunkStore() = default;

  // Appends to `missing` the positions in `digests` of chunks the store does
  // not hold (a quarantined chunk is not held). Zero markers are never asked.
  virtual void FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) = 0;
  bool Contains(const Digest& digest) {
    std::vector<size_t> missing;
    FindMissing({&digest, 1}, &missing);
    return missing.empty();
  }
  // Stores an encoded chunk (see chunk.h). Returns false when an intact-
  // looking chunk of that digest was already present (nothing written).
  virtual bool Insert(const Digest& digest, std::span<const uint8_t> encoded) = 0;
  // The chunks of one disk backup. This default inserts each chunk as it is
  // added (a local store, where Insert is already the fastest path).
  virtual std::unique_ptr<ChunkUpload> StartUpload();
  // Makes every chunk inserted so far durable. Called before a commit.
  virtual void Sync() = 0;
  // Where a chunk is, for messages ("/repo/chunks/ab1/ab1f...").
  virtual std::string Describe(const Digest& digest) const = 0;
  // Whether calls reach the store over a network (a repository service): a
  // backup's statistics count the time it waits for the store as network
  // time then, as target (storage) time otherwise (ferry/common/stage_busy.h).
  virtual bool remote() const { return false; }
};

class ChunkReader {
 public:
  virtual ~ChunkReader() = default;

  // Reads the encoded bytes of a chunk. A missing chunk is kCorrupt (a
  // restore point references it), naming the digest and, when it was
  // quarantined, saying so.
  virtual void Read(const Digest& digest, std::vector<uint8_t>* encoded) = 0;
  // Moves a chunk found damaged out of the store (never deletes it), so it is
  // missing from now on. Returns where it went, or "" when there was nothing
  // to move (already gone). Logs, never throws: the damage report matters more.
  virtual std::string Quarantine(const Digest& digest, const std::string& reason) = 0;
  virtual std::string Describe(const Digest& digest) const = 0;
};

class ChunkDecoder;

// Reads chunk `digest`, checks framing, CRC, SHA-256 and that it holds
// `length` plain bytes, and decodes it into `plain`. A chunk that fails any
// check is quarantined and the kCorrupt error rethrown; a chunk of a newer
// format is reported (kBadInput) and left alone.
void FetchChunk(ChunkReader& reader, ChunkDecoder& decoder, const Digest& digest, uint32_t length,
                std::vector<uint8_t>* encoded, std::vector<uint8_t>* plain);
// The same, decoding into caller memory (`out` at least `length` bytes; an
// aligned buffer that goes straight to disk, say).
void FetchChunkInto(ChunkReader& reader, ChunkDecoder& decoder, const Digest& digest, uint32_t length,
                    std::vector<uint8_t>* encoded, std::span<uint8_t> out);
// Without the key of an encrypted repository: reads chunk `digest` and checks
// what can be checked without it (framing, CRC over the ciphertext, the plain
// size against `length`, that it is encrypted), quarantining it as above.
void FetchChunkFraming(ChunkReader& reader, const Digest& digest, uint32_t length, std::vector<uint8_t>* encoded);

class LocalChunkStore final : public ChunkStore, public ChunkReader {
 public:
  // `chunks_dir` may be missing (a damaged repository): listing points still
  // works, and every chunk operation then fails naming the directory.
  LocalChunkStore(std::string chunks_dir, std::string quarantine_dir, SyncLevel sync_level);

  std::string PathFor(const Digest& digest) const;

  void FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) override;
  bool Insert(const Digest& digest, std::span<const uint8_t> encoded) override;
  void Sync() override;
  void Read(const Digest& digest, std::vector<uint8_t>* encoded) override;
  std::string Quarantine(const Digest& digest, const std::string& reason) override;
  std::string Describe(const Digest& digest) const override { return PathFor(digest); }

 private:
  int DirFd() const;  // throws when the chunks directory is missing

  std::string dir_;
  std::string quarantine_dir_;
  SyncLevel sync_level_;
  UniqueFd dir_fd_;
  int open_errno_ = 0;
};

}  // namespace ferry
