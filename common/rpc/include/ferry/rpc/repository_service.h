// The repository service (docs/repository-service.md): repositories on
// another machine, over Cap'n Proto (repository_protocol.capnp), TCP and
// optionally TLS, with a token.
//
//   server  MakeRepositoryService / RepositoryServer: serves local
//           repositories (by name) to the holders of the tokens granted them.
//           Every chunk a client inserts is decoded and its SHA-256 checked
//           before it is stored, and every disk index it uploads is checked
//           against the SHA-256 the client recorded: a buggy or hostile
//           client cannot store data under a wrong digest.
//   client  RemoteRepository: a ferry::Repository (chunks, chunk reader,
//           point store) whose connection runs on a thread of its own (its
//           own KJ event loop), so backup, restore and verify use it like a
//           local directory. Calls block the calling thread (any thread).
//           A lost connection is made again (every reconnect_interval, for
//           up to reconnect_for) and the call repeated; a disk's chunks are
//           sent with a bounded window in flight, and after a reconnect only
//           the chunks the service had not acknowledged are sent again.
#pragma once

#include <capnp/capability.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ferry/common/checksum.h"
#include "ferry/common/gc.h"
#include "ferry/common/repository.h"
#include "ferry/rpc/worker_tokens.h"

namespace ferry::rpc {

// --- server ---

// Who may open what: a token, known by its SHA-256 only (the service never
// stores or logs a token), and the repositories it may open.
struct RepositoryGrant {
  Digest token_sha256;
  std::set<std::string> repositories;
  static RepositoryGrant ForToken(const std::string& token, std::set<std::string> repositories);
};

// Who may open which repository, and where it is, decided per `open` (so a
// process that creates repositories and workers as it runs, the coordinator,
// serves them without a restart). Called on the service's thread.
class RepositoryCatalog {
 public:
  virtual ~RepositoryCatalog() = default;
  // The local directory of `repository` if `token` may open it; nullopt
  // otherwise, the same for a repository that does not exist.
  virtual std::optional<std::string> Resolve(const std::string& token, const std::string& repository) const = 0;
};

// What a service counts, for ferry-repository's /metrics
// (docs/repository-service.md, "Metrics"): relaxed atomics bumped on the
// calls' paths (no lock on a chunk's), read from any thread at any time.
class RepositoryServiceStats {
 public:
  // One repository's, by the name it is served as.
  struct Repository {
    std::atomic<uint64_t> chunks_queried{0};   // digests asked about (findMissing)
    std::atomic<uint64_t> chunks_missing{0};   // of those, not held (the rest need not be sent)
    std::atomic<uint64_t> chunks_received{0};  // insert calls (decoded and checked)
    std::atomic<uint64_t> chunks_stored{0};    // of those, new to the store (the rest: dedup hits)
    std::atomic<uint64_t> bytes_received{0};   // their encoded bytes
    std::atomic<uint64_t> bytes_stored{0};     // encoded bytes of the chunks stored
    std::atomic<uint64_t> points_committed{0};
    std::atomic<uint64_t> gc_runs{0};          // collectGarbage calls started (dry runs too)
  };

  // The counters of the repository served as `name`, made on first use (at
  // open, under a mutex: never on a chunk's path).
  std::shared_ptr<Repository> ForRepository(const std::string& name);
  // Every repository counted so far (those of a static configuration from
  // the start, a catalog's from their first open), by name.
  std::vector<std::pair<std::string, std::shared_ptr<const Repository>>> Repositories() const;
  // Calls by method ("open", "insert", "commit", ...): every method of the
  // protocol, in schema order, with the calls it received.
  std::vector<std::pair<std::string, uint64_t>> Calls() const;
  // Failed calls by the kind of their error (WireErrorKind: "bad_input",
  // ...; "other" for a failure that names none).
  std::vector<std::pair<std::string, uint64_t>> Errors() const;

  // For the service: method `method` of interface Repository (or, with
  // `bootstrap`, of RepositoryService) was called; a call failed with `e`.
  void CountCall(bool bootstrap, uint16_t method);
  void CountError(const kj::Exception& e);

 private:
  static constexpr size_t kMaxMethods = 64, kKinds = 8;  // 7 ErrorKinds and "other"
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Repository>> repositories_;
  std::array<std::atomic<uint64_t>, kMaxMethods> calls_{}, bootstrap_calls_{};
  std::array<std::atomic<uint64_t>, kKinds> errors_{};
};

struct RepositoryServiceConfig {
  // Static: these repositories (opened at start), to the holders of these
  // grants and of tokens minted with `worker_key` (worker_tokens.h).
  std::map<std::string, std::string> repositories;  // name -> local directory
  std::vector<RepositoryGrant> grants;
  std::optional<WorkerTokenKey> worker_key;
  // Or dynamic: when set, it decides (repositories are opened on first use).
  std::shared_ptr<const RepositoryCatalog> catalog;
  // Where the service counts (nullptr: a count of its own nobody reads).
  std::shared_ptr<RepositoryServiceStats> stats;
};

// The bootstrap capability to serve on each connection (one per service:
// repositories are opened once and shared). Throws ferry::Error for a
// repository that does not open.
capnp::Capability::Client MakeRepositoryService(RepositoryServiceConfig config);

// That service listening on `listen` ("host:port"; port 0 picks a free one),
// with TLS when a certificate and key are given, on a thread (and KJ event
// loop) of its own until destroyed: the ferry-repository daemon's core, and
// what a process embedding one runs (tests, benchmarks, the coordinator).
//
// Hostile peers (rpc/guarded_server.h, the worker RPC port's mechanism):
// each connection's messages are capped (256 KiB until a repository is
// open, then a chunk's size plus headroom; larger frames close the
// connection before their body is read), as are the bytes of calls it has
// in flight, the number of connections (in all and per peer address), and
// the time from connecting to a successful open (TLS handshake included); a
// handshake never holds up other connections.
class RepositoryServer {
 public:
  struct Options {
    std::string listen = "127.0.0.1:0";
    std::string tls_cert, tls_key;  // PEM files; both empty: plain TCP
    unsigned max_connections = 256;
    // A worker host holds one connection per disk task (and lease) at most.
    unsigned max_per_address = 64;
    // A connection that has not opened a repository this long after it was
    // accepted (TLS handshake included) is closed.
    std::chrono::milliseconds handshake_timeout{10000};
    // After open: a connection that sends nothing this long is closed; 0
    // (the default): never, since a worker may hold a repository (and its
    // leases) idle between tasks.
    std::chrono::milliseconds idle_timeout{0};
  };
  // Throws ferry::Error when a repository does not open, the certificate or
  // key is bad, or the address cannot be listened on.
  RepositoryServer(RepositoryServiceConfig config, Options options);
  ~RepositoryServer();
  RepositoryServer(const RepositoryServer&) = delete;
  RepositoryServer& operator=(const RepositoryServer&) = delete;

  uint16_t port() const { return port_; }
  std::string address() const;  // host:port as listening
  // Connections open right now (for tests of the cap).
  unsigned connections() const;

 private:
  struct Loop;
  std::string host_;
  uint16_t port_ = 0;
  std::unique_ptr<Loop> loop_;
};

// --- client ---

struct RepositoryEndpoint {
  std::string address;      // host:port
  bool tls = false;
  std::string ca_file;      // with tls: the CA certificates to trust ("" = system store)
  std::string server_name;  // with tls: the name in the service's certificate ("" = the host)
  std::string token;        // never logged
  std::string repository;   // the name to open
  // After a lost connection: try again this often, for this long, then fail
  // (kRetryable). The first attempt is immediate.
  std::chrono::milliseconds reconnect_interval{15000};
  std::chrono::milliseconds reconnect_for{30 * 60 * 1000};
  // Encoded chunk bytes a disk backup keeps in flight, unacknowledged (and
  // in memory, to send again after a reconnect).
  size_t upload_window_bytes = size_t{32} << 20;
};

// How to reach a repository given by URL: the parts a URL does not carry.
struct RepositoryAccess {
  std::string token;        // also from $FERRY_REPOSITORY_TOKEN when empty
  std::string ca_file;
  std::string server_name;
  std::chrono::milliseconds reconnect_interval{15000};
  std::chrono::milliseconds reconnect_for{30 * 60 * 1000};
};

// A repository service URL: ferry://host:port/name (plain TCP) or
// ferry+tls://host:port/name. nullopt for anything else (a directory);
// kBadInput for a ferry URL that is malformed (naming it).
std::optional<RepositoryEndpoint> ParseRepositoryUrl(const std::string& location);
std::string RepositoryUrl(const RepositoryEndpoint& endpoint);

struct RemoteRepositoryInfo {
  std::string name;
  uint32_t chunk_size = 0;
  std::string format;
};

class RemoteRepository : public ferry::Repository {
 public:
  // Connects and opens the repository. Throws ferry::Error: kBadInput for a
  // refused token or repository, kRetryable when the service cannot be
  // reached (the first connection is not retried).
  static std::unique_ptr<RemoteRepository> Connect(const RepositoryEndpoint& endpoint);

  virtual const RemoteRepositoryInfo& info() const = 0;
  // Connections made again after a loss, so far.
  virtual uint64_t reconnects() const = 0;

  // Upkeep run by the service on its directory (collectGarbage,
  // measureSpace): ferry::CollectGarbage and ferry::MeasureSpace there, with
  // their errors' kinds (kRetryable: another GC is running). Of `options`,
  // window, dry_run, threads and cancel count: when *cancel turns true
  // (polled every 200 ms) the call is cancelled, which interrupts the
  // service's GC (resumable), and this throws kInterrupted. A service older
  // than these calls: kBadInput, saying so.
  virtual GcReport CollectGarbage(const GcOptions& options) = 0;
  virtual SpaceReport MeasureSpace() = 0;
};

// The one way a command or a worker opens a repository: a service URL
// (connecting with `access`), a bucket (s3://..., ferry/s3/object_repository.h),
// else a local directory (Repository::Open).
std::unique_ptr<ferry::Repository> OpenRepository(const std::string& location, const RepositoryAccess& access);
// Creates a repository: a local directory, or a bucket's prefix (s3://...).
// A repository service's repositories are created on its host (kBadInput).
void InitRepository(const std::string& location, const ferry::RepositoryConfig& config);

// GC and space accounting where the repository's files are: for a directory,
// ferry::CollectGarbage / ferry::MeasureSpace on it; for a service URL, the
// service runs them on its directory (RemoteRepository::CollectGarbage;
// `progress` is not sent over the wire and stays at kStarting).
GcReport CollectGarbage(const std::string& location, const RepositoryAccess& access, const GcOptions& options,
                        GcProgress* progress);
SpaceReport MeasureSpace(const std::string& location, const RepositoryAccess& access, GcProgress* progress = nullptr);

}  // namespace ferry::rpc
