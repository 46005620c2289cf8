// The repository service (docs/repository-service.md), first slice: the
// chunk storage of repositories on another machine, over Cap'n Proto
// (repository_protocol.capnp), TCP and optionally TLS, with a token.
//
//   server  MakeRepositoryService: serves local repositories (by name) to
//           the holders of the tokens granted them. Every chunk a client
//           inserts is decoded and its SHA-256 checked before it is stored:
//           a buggy or hostile client cannot store data under a wrong digest.
//   client  RemoteRepository: a connection on a thread of its own (its own
//           KJ event loop), whose chunks() is a ChunkStore and ChunkReader,
//           so the backup pipeline, restore and verify use it like a local
//           repository. Calls block the calling thread (any thread).
#pragma once

#include <capnp/capability.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "ferry/common/chunk_store.h"

namespace ferry::rpc {

// --- server ---

struct RepositoryGrant {
  std::string token;                     // never logged
  std::set<std::string> repositories;    // names it may open
};

struct RepositoryServiceConfig {
  std::map<std::string, std::string> repositories;  // name -> local directory
  std::vector<RepositoryGrant> grants;
};

// The bootstrap capability to serve on each connection (one per service:
// repositories are opened once and shared). Throws ferry::Error for a
// repository that does not open.
capnp::Capability::Client MakeRepositoryService(RepositoryServiceConfig config);

// That service listening on `listen` ("host:port"; port 0 picks a free one),
// with TLS when a certificate and key are given, on a thread (and KJ event
// loop) of its own until destroyed: the standalone service's core, and what
// a process embedding one runs (tests, benchmarks, later the coordinator).
class RepositoryServer {
 public:
  struct Options {
    std::string listen = "127.0.0.1:0";
    std::string tls_cert, tls_key;  // PEM files; both empty: plain TCP
  };
  // Throws ferry::Error when a repository does not open, the certificate or
  // key is bad, or the address cannot be listened on.
  RepositoryServer(RepositoryServiceConfig config, Options options);
  ~RepositoryServer();
  RepositoryServer(const RepositoryServer&) = delete;
  RepositoryServer& operator=(const RepositoryServer&) = delete;

  uint16_t port() const { return port_; }
  std::string address() const;  // host:port as listening

 private:
  struct Loop;
  std::string host_;
  uint16_t port_ = 0;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

// --- client ---

struct RepositoryEndpoint {
  std::string address;      // host:port
  bool tls = false;
  std::string ca_file;      // with tls: the CA certificates to trust ("" = system store)
  std::string server_name;  // with tls: the name in the service's certificate ("" = the host)
  std::string token;        // never logged
  std::string repository;   // the name to open
};

struct RemoteRepositoryInfo {
  std::string name;
  uint32_t chunk_size = 0;
  std::string format;
};

class RemoteRepository {
 public:
  // Connects and opens the repository. Throws ferry::Error: kBadInput for a
  // refused token or repository, kRetryable when the service cannot be reached.
  static std::unique_ptr<RemoteRepository> Connect(const RepositoryEndpoint& endpoint);
  virtual ~RemoteRepository() = default;

  virtual const RemoteRepositoryInfo& info() const = 0;
  // ChunkStore and ChunkReader; valid while this object lives.
  virtual ChunkStore& chunks() = 0;
  virtual ChunkReader& chunk_reader() = 0;
};

}  // namespace ferry::rpc
