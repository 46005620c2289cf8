// Encryption's compute cost per chunk, without I/O (bench/encryption.sh runs
// it after the backups): the digest (SHA-256 or the key's HMAC) and the
// encoding (zstd, and AES-256-GCM with the key) of the first GiB of a file,
// 1 MiB chunks, one thread, best of 5 rounds each, in thread CPU time (so
// that other load on the machine blurs it less than wall time).
// Usage: ferry-bench-chunk-encryption FILE [ZSTD_LEVEL]
#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/repository_key.h"

using namespace ferry;

namespace {
double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE [ZSTD_LEVEL]\n", argv[0]);
    return 2;
  }
  const int level = argc > 2 ? std::atoi(argv[2]) : 1;
  std::ifstream in(argv[1], std::ios::binary);
  constexpr size_t kChunk = 1 << 20;
  std::vector<std::vector<uint8_t>> chunks;
  for (size_t i = 0; i < 1024; ++i) {
    std::vector<uint8_t> c(kChunk);
    if (!in.read(reinterpret_cast<char*>(c.data()), kChunk)) break;
    chunks.push_back(std::move(c));
  }
  const RepositoryKey key = RepositoryKey::Generate();
  double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};  // [plain, encrypted][hash, hash + encode]
  for (int round = 0; round < 5; ++round) {
    for (int encrypted = 0; encrypted < 2; ++encrypted) {
      const RepositoryKey* k = encrypted ? &key : nullptr;
      ChunkHasher hasher(k);
      ChunkEncoder encoder(level, k);
      std::vector<uint8_t> out;
      const double t0 = CpuSeconds();
      for (const auto& c : chunks) (void)hasher(c);
      const double t1 = CpuSeconds();
      for (const auto& c : chunks) encoder.Encode(c, hasher(c), &out);
      const double t2 = CpuSeconds();
      best[encrypted][0] = std::min(best[encrypted][0], t1 - t0);
      best[encrypted][1] = std::min(best[encrypted][1], t2 - t1);
    }
  }
  const double mib = static_cast<double>(chunks.size());
  std::printf("chunks=%zu\n", chunks.size());
  std::printf("plain_hash_mib_per_s=%.0f\nencrypted_hash_mib_per_s=%.0f\n", mib / best[0][0], mib / best[1][0]);
  std::printf("plain_compute_mib_per_s=%.0f\nencrypted_compute_mib_per_s=%.0f\n", mib / best[0][1], mib / best[1][1]);
  std::printf("compute_encrypted_vs_plain=%.3f\n", best[0][1] / best[1][1]);
  return 0;
}
