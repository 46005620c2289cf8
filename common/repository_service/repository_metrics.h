// ferry-repository's operations endpoint (docs/repository-service.md,
// "Metrics"): GET /healthz for anyone, GET /metrics (the Prometheus text
// format) for the holder of the metrics token, on common/http's server (HTTPS
// with the service's certificate when it has one), beside the Cap'n Proto
// port. The figures are the service's RepositoryServiceStats, read at each
// scrape: nothing is computed on the calls' paths but their atomic counts.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "ferry/common/checksum.h"
#include "ferry/http/server.h"
#include "ferry/rpc/repository_service.h"

namespace ferry::repository_daemon {

// The /metrics text: the service's counters (names prefixed
// ferry_repository_) and `connections`, the RPC connections open now.
std::string RepositoryMetricsText(const rpc::RepositoryServiceStats& stats, unsigned connections);

class OperationsEndpoint {
 public:
  // `token_sha256`: the SHA-256 of the one token /metrics accepts.
  // `connections`: asked at each scrape (RepositoryServer::connections).
  // Throws kBadInput for a bad address or TLS file (http::Server).
  OperationsEndpoint(std::string listen, std::optional<http::TlsFiles> tls, Digest token_sha256,
                     std::shared_ptr<const rpc::RepositoryServiceStats> stats, std::function<unsigned()> connections);
  void Start() { server_.Start(); }
  uint16_t port() const { return server_.port(); }

 private:
  bool Authorized(const http::Request& request) const;
  std::optional<http::Response> Admit(const http::Request& head) const;
  http::Response Handle(const http::Request& request) const;

  Digest token_sha256_;
  std::shared_ptr<const rpc::RepositoryServiceStats> stats_;
  std::function<unsigned()> connections_;
  http::Server server_;  // last: stopped (its handler calls over) before the rest goes
};

}  // namespace ferry::repository_daemon
