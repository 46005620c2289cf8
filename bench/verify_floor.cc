// The verify benchmark's floor (bench/verify.sh): what checking a
// repository's chunks costs at the least, without Ferry's code: read every
// chunk file of <repo>/chunks once, decompress its stored bytes (zstd -d,
// libzstd) and SHA-256 the plain data (OpenSSL), on N threads. It parses
// only the chunk header's sizes and compression byte (docs/repository-format.md,
// "Chunk files"); no CRC, no digest comparison, no index reading.
// Usage: ferry-bench-verify-floor CHUNKS_DIR THREADS
// Prints: floor_s=<wall> chunks=<n> stored_bytes=<n> plain_bytes=<n>
#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

std::vector<std::string> ListChunkFiles(const std::string& dir) {
  std::vector<std::string> out;
  DIR* top = ::opendir(dir.c_str());
  if (!top) {
    std::perror(dir.c_str());
    std::exit(1);
  }
  while (dirent* e = ::readdir(top)) {
    if (e->d_name[0] == '.') continue;
    std::string sub = dir + "/" + e->d_name;
    DIR* d = ::opendir(sub.c_str());
    if (!d) continue;
    while (dirent* f = ::readdir(d)) {
      if (f->d_name[0] != '.') out.push_back(sub + "/" + f->d_name);
    }
    ::closedir(d);
  }
  ::closedir(top);
  return out;
}

uint32_t Le32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CHUNKS_DIR THREADS\n", argv[0]);
    return 2;
  }
  const unsigned threads = static_cast<unsigned>(std::max(1, std::atoi(argv[2])));
  auto start = std::chrono::steady_clock::now();
  std::vector<std::string> files = ListChunkFiles(argv[1]);
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> stored{0}, plain{0};
  std::atomic<bool> failed{false};
  auto work = [&] {
    std::vector<unsigned char> file, out;
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ZSTD_DCtx* dctx = ZSTD_createDCtx();
    for (size_t i; (i = next++) < files.size();) {
      int fd = ::open(files[i].c_str(), O_RDONLY | O_CLOEXEC);
      struct stat st;
      if (fd < 0 || ::fstat(fd, &st) != 0) {
        failed = true;
        if (fd >= 0) ::close(fd);
        continue;
      }
      file.resize(static_cast<size_t>(st.st_size));
      ssize_t n = ::pread(fd, file.data(), file.size(), 0);
      ::close(fd);
      if (n != st.st_size || file.size() < 24) {
        failed = true;
        continue;
      }
      const uint32_t plain_size = Le32(&file[12]), stored_size = Le32(&file[16]);
      const unsigned char* body = file.data() + 24;
      const unsigned char* data = body;
      size_t length = stored_size;
      if (file[8] == 1) {
        out.resize(plain_size);
        size_t r = ZSTD_decompressDCtx(dctx, out.data(), out.size(), body, stored_size);
        if (ZSTD_isError(r) || r != plain_size) {
          failed = true;
          continue;
        }
        data = out.data();
        length = r;
      }
      unsigned char md[32];
      unsigned int md_len = 0;
      EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
      EVP_DigestUpdate(ctx, data, length);
      EVP_DigestFinal_ex(ctx, md, &md_len);
      stored += static_cast<uint64_t>(st.st_size);
      plain += length;
    }
    ZSTD_freeDCtx(dctx);
    EVP_MD_CTX_free(ctx);
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed) {
    std::fprintf(stderr, "ferry-bench-verify-floor: a chunk file could not be read or decoded\n");
    return 1;
  }
  std::printf("floor_s=%.2f chunks=%zu stored_bytes=%llu plain_bytes=%llu\n", wall, files.size(),
              static_cast<unsigned long long>(stored.load()), static_cast<unsigned long long>(plain.load()));
  return 0;
}
