// Generates a repository for the GC benchmark (bench/gc.sh, issue 14):
// CHUNKS chunk files and POINTS restore points whose indexes reference them
// with overlap, plus unreferenced chunks (garbage), every chunk file's mtime
// a day old so the GC may remove the garbage.
//
// Chunk i is a valid chunk of 8 plain bytes (i, little endian), stored
// uncompressed: 32-byte files, named by their real SHA-256, so `ferry verify`
// accepts them. Point p's one disk references the chunks
// [p * STEP, p * STEP + WIDTH) of the referenced range (consecutive points
// share WIDTH - STEP chunks, as a backup chain does); the chunks past the
// last point's range are garbage. Points are written directly into points/
// (index and manifest, as Commit leaves them), skipping staging for speed.
//
// Usage: ferry-bench-gc-repository DIR CHUNKS POINTS WIDTH
// Prints key=value lines: chunks, points, referenced_chunks, garbage_chunks,
// index_entries.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <string>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/manifest.h"
#include "ferry/common/repository.h"

using namespace ferry;

int Generate(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s DIR CHUNKS POINTS WIDTH\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const uint64_t chunks = std::strtoull(argv[2], nullptr, 10);
  const uint64_t points = std::strtoull(argv[3], nullptr, 10);
  const uint64_t width = std::strtoull(argv[4], nullptr, 10);
  // Referenced: 90% of the chunks; the step spreads the points over them.
  const uint64_t referenced = chunks * 9 / 10;
  if (points == 0 || width == 0 || width > referenced) {
    std::fprintf(stderr, "bad sizes\n");
    return 2;
  }
  const uint64_t step = points > 1 ? (referenced - width) / (points - 1) : 0;
  RepositoryConfig config;
  config.chunk_size = 64 << 10;
  config.zstd_level = 0;
  Repository::Init(dir, config);
  auto repo = Repository::Open(dir);

  std::vector<Digest> digests(chunks);
  ChunkEncoder encoder(0);
  std::vector<uint8_t> encoded;
  for (uint64_t i = 0; i < chunks; ++i) {
    uint8_t plain[8];
    for (int b = 0; b < 8; ++b) plain[b] = static_cast<uint8_t>(i >> (8 * b));
    digests[i] = Sha256(plain, sizeof plain);
    encoder.Encode({plain, sizeof plain}, &encoded);
    repo->chunks().Insert(digests[i], encoded);
  }

  uint64_t entries = 0, last_end = 0;
  for (uint64_t p = 0; p < points; ++p) {
    RestorePointManifest m;
    m.id = NewPointId();
    m.vm = {"bench-vm" + std::to_string(p % 10), "", "qemu"};
    m.chain = "default";
    m.started_at = m.completed_at = NowRfc3339();
    const std::string point_dir = dir + "/points/" + m.id;
    MakeDirectory(point_dir);
    DiskRecord d;
    d.name = "virtio0";
    d.chunk_size = config.chunk_size;
    // Every chunk but the last covers a whole 64 KiB; these hold 8 bytes, so
    // the disk is one chunk long per entry for the index, and a restore
    // would be refused: this repository is for GC and space accounting only.
    d.size = width * config.chunk_size;
    d.source_format = "raw";
    d.index_file = "disk-0.fidx";
    FixedIndexWriter index(point_dir + "/" + d.index_file, d.size, d.chunk_size);
    const uint64_t begin = p * step;
    for (uint64_t i = 0; i < width; ++i) index.Set(i, digests[begin + i]);
    d.index_sha256 = index.Finish();
    d.chunks = width;
    entries += width;
    last_end = begin + width;
    m.disks.push_back(d);
    WriteFileAtomically(point_dir + "/manifest.json", ManifestToJson(m));
  }

  // A day old: older than any GC cutoff.
  struct timespec old[2];
  old[0].tv_sec = old[1].tv_sec = ::time(nullptr) - 86400;
  old[0].tv_nsec = old[1].tv_nsec = 0;
  for (uint64_t i = 0; i < chunks; ++i) {
    std::string path = repo->chunks().Describe(digests[i]);
    if (::utimensat(AT_FDCWD, path.c_str(), old, 0) != 0) {
      std::perror(path.c_str());
      return 1;
    }
  }
  std::printf("chunks=%llu\npoints=%llu\nreferenced_chunks=%llu\ngarbage_chunks=%llu\nindex_entries=%llu\n",
              static_cast<unsigned long long>(chunks), static_cast<unsigned long long>(points),
              static_cast<unsigned long long>(last_end), static_cast<unsigned long long>(chunks - last_end),
              static_cast<unsigned long long>(entries));
  return 0;
}

int main(int argc, char** argv) {
  try {
    return Generate(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
}
