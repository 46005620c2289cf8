// The repository service's first slice (issue 12): what one chunk costs
// through it against the local chunk store, before inserts are streamed.
// Inserts --chunks (default 512) distinct 1 MiB chunks of incompressible data
// (encoded once, beforehand), one after another from one thread, into
//   local   LocalChunkStore of a repository directory
//   remote  RemoteRepository over loopback TCP to a service thread in this
//           process (the service decodes and checks every chunk's SHA-256)
// then FindMissing over all of them, then reads them all back. Prints
// key=value lines (MiB/s, µs per call). Plain TCP: with --tls CERT KEY CA,
// over TLS.
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/repository.h"
#include "ferry/rpc/repository_service.h"
#include "ferry/rpc/tls.h"

using namespace ferry;
using Clock = std::chrono::steady_clock;

static double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int main(int argc, char** argv) {
  size_t n = 512;
  std::string cert, key, ca;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--chunks" && i + 1 < argc) n = std::stoul(argv[++i]);
    else if (a == "--tls" && i + 3 < argc) cert = argv[++i], key = argv[++i], ca = argv[++i];
    else { std::fprintf(stderr, "usage: %s [--chunks N] [--tls CERT KEY CA]\n", argv[0]); return 2; }
  }
  auto dir = std::filesystem::temp_directory_path() / ("ferry-bench-repo-service-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  Repository::Init((dir / "local").string(), RepositoryConfig{});
  Repository::Init((dir / "served").string(), RepositoryConfig{});

  std::vector<Digest> digests(n);
  std::vector<std::vector<uint8_t>> encoded(n);
  {
    std::mt19937_64 rng(42);
    std::vector<uint8_t> plain(1 << 20);
    ChunkEncoder encoder(1);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < plain.size(); j += 8) {
        uint64_t v = rng();
        std::memcpy(&plain[j], &v, 8);
      }
      digests[i] = Sha256(plain.data(), plain.size());
      encoder.Encode(plain, &encoded[i]);
    }
  }
  const double mib = static_cast<double>(n);

  rpc::RepositoryServiceConfig config;
  config.repositories = {{"served", (dir / "served").string()}};
  config.grants = {{"bench-token", {"served"}}};
  rpc::RepositoryServer::Options options;
  options.tls_cert = cert;
  options.tls_key = key;
  auto server = std::make_unique<rpc::RepositoryServer>(config, options);

  auto local = Repository::Open((dir / "local").string());
  rpc::RepositoryEndpoint e;
  e.address = server->address();
  e.token = "bench-token";
  e.repository = "served";
  if (!cert.empty()) {
    e.tls = true;
    e.ca_file = ca;
    e.server_name = "localhost";
  }
  auto remote = rpc::RemoteRepository::Connect(e);

  auto run = [&](const char* name, ChunkStore& store, ChunkReader& reader) {
    auto t = Clock::now();
    for (size_t i = 0; i < n; ++i) store.Insert(digests[i], encoded[i]);
    store.Sync();
    double insert_s = Since(t);
    t = Clock::now();
    std::vector<size_t> missing;
    store.FindMissing(digests, &missing);
    double find_s = Since(t);
    t = Clock::now();
    std::vector<uint8_t> back;
    for (size_t i = 0; i < n; ++i) reader.Read(digests[i], &back);
    double read_s = Since(t);
    std::printf("%s: insert_mib_s=%.0f insert_us_per_chunk=%.0f find_missing_us_per_digest=%.2f read_mib_s=%.0f missing=%zu\n",
                name, mib / insert_s, 1e6 * insert_s / n, 1e6 * find_s / n, mib / read_s, missing.size());
  };
  run("local", local->chunks(), local->chunk_reader());
  run(cert.empty() ? "remote_tcp" : "remote_tls", remote->chunks(), remote->chunk_reader());

  remote.reset();
  server.reset();
  std::filesystem::remove_all(dir);
  return 0;
}
