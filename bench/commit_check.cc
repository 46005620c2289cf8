// What the commit-time check costs (issue 10): a point may not reference a
// chunk missing from the store at commit time, so Commit reads each disk's
// index and asks the chunk store, in one batch per disk, which of its
// distinct digests are missing. This times that on a disk of --disk-gib GiB
// (default 16) with 1 MiB chunks, every chunk distinct and present:
//   find_missing_s   ChunkStore::FindMissing over the distinct digests
//   commit_s         PointStore::Commit end to end (index checksum, the check,
//                    syncfs, manifest, renames)
//   contains_ns      one ChunkStore::Contains call (the backup's per-chunk
//                    dedupe question: a virtual call plus one fstatat)
// Chunk files hold a header only: the check never reads them, so their size
// does not matter. Run with cold caches by dropping them between the steps
// (bench/commit-check.sh does, when it may).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"

using namespace ferry;
using Clock = std::chrono::steady_clock;

static double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [DISK_GIB] [DROP_CACHES_CMD]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const uint64_t gib = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 16;
  const char* drop = argc > 3 ? argv[3] : nullptr;
  RepositoryConfig config;
  config.chunk_size = 1u << 20;
  Repository::Init(dir, config);
  auto repo = Repository::Open(dir);
  const uint64_t chunks = gib * 1024;
  std::vector<Digest> digests(chunks);
  std::vector<uint8_t> encoded(kChunkHeaderSize, 0);
  for (uint64_t i = 0; i < chunks; ++i) {
    digests[i] = Sha256(&i, sizeof i);
    repo->chunks().Insert(digests[i], encoded);
  }
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"bench", "", "qemu"};
  h.disks = {"disk0"};
  h.expires_at = 0;
  auto lease = repo->points().Stage(h);
  auto w = repo->points().WriteDisk(h.id, "disk0");
  DiskRecord rec;
  rec.size = chunks << 20;
  rec.chunk_size = config.chunk_size;
  rec.source_format = "raw";
  FixedIndexWriter index(w->index_path(), rec.size, rec.chunk_size);
  for (uint64_t i = 0; i < chunks; ++i) index.Set(i, digests[i]);
  rec.index_sha256 = index.Finish();
  w->Finish(rec);
  w.reset();
  ::sync();

  auto drop_caches = [&] {
    if (drop && std::system(drop) != 0) std::fprintf(stderr, "warning: '%s' failed\n", drop);
  };
  drop_caches();
  auto t = Clock::now();
  std::vector<size_t> missing;
  repo->chunks().FindMissing(digests, &missing);
  double find_cold = Since(t);
  t = Clock::now();
  missing.clear();
  repo->chunks().FindMissing(digests, &missing);
  double find_warm = Since(t);
  if (!missing.empty()) return 1;
  t = Clock::now();
  uint64_t present = 0;
  for (const auto& d : digests) present += repo->chunks().Contains(d);
  double contains = Since(t);
  drop_caches();
  t = Clock::now();
  repo->points().Commit(h.id);
  double commit = Since(t);
  std::printf("disk_gib=%llu chunks=%llu\nfind_missing_cold_s=%.3f\nfind_missing_warm_s=%.3f\ncommit_cold_s=%.3f\n"
              "contains_ns=%.0f\ncaches_dropped=%s\n",
              static_cast<unsigned long long>(gib), static_cast<unsigned long long>(chunks), find_cold, find_warm,
              commit, contains / static_cast<double>(present) * 1e9, drop ? "yes" : "no");
  return present == chunks ? 0 : 1;
}
