// Api: the coordinator's web API, /api/v1 (docs/api.md, openapi.json), and
// the web console's files around it.
//
// One handler for the HTTP server: authenticates (Bearer token, hashed
// compare), routes, validates the body strictly, and maps Ferry's error
// kinds to status codes with a JSON error naming the field. Reads go to a
// read-only connection (never blocked by scheduling); writes go through the
// SessionRunner's lock.
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ferry/coordinator/appliance_deployer.h"
#include "ferry/coordinator/console_assets.h"
#include "ferry/coordinator/database.h"
#include "ferry/coordinator/repository_lifecycle.h"
#include "ferry/coordinator/session_runner.h"
#include "ferry/http/server.h"

namespace ferry::coordinator {

struct Route {
  std::string method;
  std::string pattern;  // "/api/v1/jobs/{id}/start"
};

class Api {
 public:
  // db_path: the coordinator's database, opened read-only here.
  // appliances: deploys worker appliances (POST /hosts/{id}/worker); null
  // when the coordinator has no appliance image (those requests are 409).
  // lifecycle: the point calls (DELETE, lock) and health checks; null: 409.
  // console: the web console's files, served outside /api without a token;
  // null: none (a 404 that says so).
  Api(SessionRunner& runner, std::string db_path, std::string version, ApplianceDeployer* appliances = nullptr,
      RepositoryLifecycle* lifecycle = nullptr, const ConsoleAssets* console = nullptr);

  http::Response Handle(const http::Request& request);
  // The server's admission of a request's head, before its body is read
  // (http::ServerOptions::admit): a request without a valid token to
  // anything but the public route is answered from its head (401, or 404 and
  // 405 as for anyone), so an unauthenticated client never makes the
  // coordinator buffer a body.
  std::optional<http::Response> Admit(const http::Request& head);

  // Every route served, for the OpenAPI conformance test.
  static std::vector<Route> Routes();
  static const std::string& OpenApiDocument();

 private:
  struct Handler;
  bool Authorized(const http::Request& request);

  SessionRunner& runner_;
  ApplianceDeployer* appliances_;
  RepositoryLifecycle* lifecycle_;
  const ConsoleAssets* console_;
  std::string db_path_;
  // Read-only connections, one per concurrent reader (WAL: each sees a
  // consistent snapshot, none waits for the scheduler's writes).
  struct Reader {
    std::mutex mu;
    std::optional<Database> db;
  };
  std::array<Reader, 4> readers_;
  std::atomic<size_t> next_reader_{0};
  std::string version_;
  std::mutex tokens_mu_;
  std::set<std::string> token_hashes_;
};

// Creates the first admin token in a fresh database; returns it (shown once).
std::string CreateAdminToken(Database& db, const std::string& name);

}  // namespace ferry::coordinator
