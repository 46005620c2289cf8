#include "repository_metrics.h"

#include <openssl/crypto.h>

#include <cctype>
#include <utility>

#include "ferry/common/version.h"
#include "ferry/http/metrics_text.h"

namespace ferry::repository_daemon {

namespace {

http::Response ErrorResponse(int status, const std::string& kind, const std::string& message) {
  http::Response r;
  r.status = status;
  r.body = "{\"error\": {\"kind\": \"" + kind + "\", \"message\": \"" + message + "\"}}";
  return r;
}

http::Response Unauthorized() {
  http::Response r = ErrorResponse(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
  r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

http::ServerOptions Options(std::string listen, std::optional<http::TlsFiles> tls) {
  http::ServerOptions o;
  o.listen = std::move(listen);
  o.tls = std::move(tls);
  o.threads = 1;          // a scrape every few seconds
  o.body_limit = 4096;    // GET only
  o.max_connections = 32;
  o.max_connections_per_address = 8;
  return o;
}

}  // namespace

std::string RepositoryMetricsText(const rpc::RepositoryServiceStats& stats, unsigned connections) {
  http::MetricsText m;
  m.Family("ferry_repository_build_info", "gauge", "The service's version.");
  m.Sample("ferry_repository_build_info", {{"version", kVersion}}, 1);
  m.Family("ferry_repository_connections", "gauge", "RPC connections open now.");
  m.Sample("ferry_repository_connections", {}, connections);
  m.Family("ferry_repository_calls_total", "counter", "RPC calls received, by method (open, then the Repository interface's).");
  for (const auto& [method, n] : stats.Calls()) m.Sample("ferry_repository_calls_total", {{"method", method}}, static_cast<double>(n));
  m.Family("ferry_repository_call_errors_total", "counter", "RPC calls that failed, by the kind of their error.");
  for (const auto& [kind, n] : stats.Errors()) m.Sample("ferry_repository_call_errors_total", {{"kind", kind}}, static_cast<double>(n));
  const auto repositories = stats.Repositories();
  m.Family("ferry_repository_repositories", "gauge", "Repositories served (a catalog's: those opened so far).");
  m.Sample("ferry_repository_repositories", {}, static_cast<double>(repositories.size()));
  struct Counter {
    const char* name;
    const char* help;
    std::atomic<uint64_t> rpc::RepositoryServiceStats::Repository::*field;
  };
  using R = rpc::RepositoryServiceStats::Repository;
  const Counter counters[] = {
      {"ferry_repository_chunks_queried_total", "Chunk digests clients asked about (findMissing), by repository.",
       &R::chunks_queried},
      {"ferry_repository_chunks_missing_total", "Of those, chunks the repository did not hold (the rest need not be sent).",
       &R::chunks_missing},
      {"ferry_repository_chunks_received_total", "Chunks received (insert), decoded and checked, by repository.",
       &R::chunks_received},
      {"ferry_repository_chunks_stored_total", "Of those, chunks new to the store (received - stored: deduplicated).",
       &R::chunks_stored},
      {"ferry_repository_bytes_received_total", "Encoded bytes of the chunks received, by repository.", &R::bytes_received},
      {"ferry_repository_bytes_stored_total", "Encoded bytes of the chunks stored, by repository.", &R::bytes_stored},
      {"ferry_repository_points_committed_total", "Restore points committed, by repository.", &R::points_committed},
      {"ferry_repository_gc_runs_total", "Garbage collections started by clients (dry runs too), by repository.",
       &R::gc_runs},
  };
  for (const Counter& c : counters) {
    m.Family(c.name, "counter", c.help);
    for (const auto& [name, r] : repositories) {
      m.Sample(c.name, {{"repository", name}}, static_cast<double>(((*r).*c.field).load(std::memory_order_relaxed)));
    }
  }
  return m.Take();
}

OperationsEndpoint::OperationsEndpoint(std::string listen, std::optional<http::TlsFiles> tls, Digest token_sha256,
                                       std::shared_ptr<const rpc::RepositoryServiceStats> stats,
                                       std::function<unsigned()> connections)
    : token_sha256_(token_sha256),
      stats_(std::move(stats)),
      connections_(std::move(connections)),
      server_(
          [&] {
            http::ServerOptions o = Options(std::move(listen), std::move(tls));
            o.admit = [this](const http::Request& head) { return Admit(head); };
            return o;
          }(),
          [this](const http::Request& request) { return Handle(request); }) {}

bool OperationsEndpoint::Authorized(const http::Request& request) const {
  // The scheme is case-insensitive (RFC 7235); the token is compared by its
  // SHA-256, in constant time.
  const std::string prefix = "bearer ";
  if (request.authorization.size() <= prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(request.authorization[i])) != prefix[i]) return false;
  }
  const std::string token = request.authorization.substr(prefix.size());
  const Digest presented = Sha256(token.data(), token.size());
  return CRYPTO_memcmp(presented.bytes.data(), token_sha256_.bytes.data(), presented.bytes.size()) == 0;
}

// Refused from the head alone, before any body is read: /metrics without the token.
std::optional<http::Response> OperationsEndpoint::Admit(const http::Request& head) const {
  if (head.path == "/metrics" && head.method == "GET" && !Authorized(head)) return Unauthorized();
  return std::nullopt;
}

http::Response OperationsEndpoint::Handle(const http::Request& request) const {
  if (request.path != "/healthz" && request.path != "/metrics") {
    return ErrorResponse(404, "not_found", "no such path (this port serves GET /healthz and GET /metrics)");
  }
  if (request.method != "GET") {
    http::Response r = ErrorResponse(405, "method_not_allowed", "only GET is allowed here");
    r.headers.emplace_back("Allow", "GET");
    return r;
  }
  http::Response r;
  if (request.path == "/healthz") {  // answering at all: the RPC port listens (it was opened first)
    r.content_type = "text/plain; charset=utf-8";
    r.body = "ok\n";
    return r;
  }
  if (!Authorized(request)) return Unauthorized();
  r.content_type = http::kMetricsContentType;
  r.body = RepositoryMetricsText(*stats_, connections_());
  return r;
}

}  // namespace ferry::repository_daemon
