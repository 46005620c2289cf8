// Content-addressed chunk store: <repo>/chunks/<first 3 hex>/<64 hex>.
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
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ferry/common/checksum.h"
#include "ferry/common/file_util.h"

namespace ferry {

enum class SyncLevel { kFilesystem, kFile };

class ChunkStore {
 public:
  ChunkStore(std::string chunks_dir, SyncLevel sync_level);

  std::string PathFor(const Digest& digest) const;
  bool Contains(const Digest& digest) const;

  // Stores an encoded chunk (see chunk.h). Returns false when the chunk was
  // already present (nothing written).
  bool Insert(const Digest& digest, std::span<const uint8_t> encoded);

  // Reads the encoded bytes of a chunk. Missing chunk: kCorrupt (a restore
  // point references it), naming the digest.
  void ReadEncoded(const Digest& digest, std::vector<uint8_t>* encoded) const;

  // Makes every chunk written so far durable (syncfs on the store's file
  // system). Called before a restore point is committed.
  void Sync();

 private:
  std::string dir_;
  SyncLevel sync_level_;
  UniqueFd dir_fd_;
};

}  // namespace ferry
