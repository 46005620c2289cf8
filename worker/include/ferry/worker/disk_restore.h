// Restores one disk of a restore point into a new image file.
//
// The image is written under a temporary name beside the target and renamed
// into place only when complete and flushed, so the target path never holds
// a half-restored disk. Output is thin: all-zero chunks are never written,
// nor all-zero 4 KiB blocks inside chunks (raw: they stay holes) or all-zero
// 64 KiB clusters (qcow2, written through qemu-nbd: they stay unallocated).
//
// Every chunk is checked (CRC-32C, SHA-256 against its digest, length) before
// its bytes are written. A chunk that occurs several times in the disk is
// fetched and checked once; its other copies are read back from the image
// being written and compared with the CRC-32C of the checked bytes.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"

namespace ferry::worker {

enum class ImageFormat { kRaw, kQcow2 };

// "raw" / "qcow2"; throws kBadInput naming the value otherwise.
ImageFormat ParseImageFormat(const std::string& name);

struct DiskRestoreOptions {
  unsigned threads = 0;  // 0: four per core, at most 16
  const std::atomic<bool>* cancel = nullptr;
  // An encrypted repository's key (not owned): required for one, refused for
  // a plain one (CheckKeyFits, kBadInput). The manifest's disk records are
  // checked with it (RepositoryKey::CheckManifest).
  const RepositoryKey* key = nullptr;
};

// Accumulates: each RestoreDisk adds its disk's size to bytes_total when it
// starts and the bytes it has gone through to bytes_done, so one progress
// can follow the restore of several disks (a whole VM).
struct DiskRestoreProgress {
  std::atomic<uint64_t> bytes_total{0};
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<uint64_t> bytes_written{0};  // data written (holes excluded), added as each disk completes
};

struct DiskRestoreResult {
  uint64_t size = 0;
  uint64_t bytes_written = 0;  // data bytes written (holes excluded)
};

// Throws kBadInput if `target` exists, kNotFound for an unknown point or
// disk, kCorrupt if a chunk fails its checks (the target is not created).
DiskRestoreResult RestoreDisk(Repository& repo, const std::string& point_id,
                              const std::string& disk_name, const std::string& target,
                              ImageFormat format, const DiskRestoreOptions& options,
                              DiskRestoreProgress* progress);

}  // namespace ferry::worker
