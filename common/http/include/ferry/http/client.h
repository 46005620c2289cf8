// A synchronous HTTP/1.1 client (optionally HTTPS) on Boost.Beast, for the
// ferry CLI and tests. One Client holds one keep-alive connection and is not
// thread-safe: use one Client per thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ferry/http/server.h"  // Response

namespace ferry::http {

struct ClientOptions {
  std::string ca_file;  // PEM to trust for https (empty: the system store)
  bool verify_tls = true;
  std::chrono::seconds timeout{30};  // for connecting, and for each request/response exchange
};

class Client {
 public:
  // base_url is "http://host[:port]" or "https://host[:port]" (a trailing "/"
  // is allowed). Throws ferry::Error kBadInput for a malformed URL or an
  // unreadable ca_file. Does not connect yet.
  explicit Client(const std::string& base_url, ClientOptions options = {});
  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;

  // Sends one request and returns the response, whatever its status. target
  // is the already-encoded path and query, starting with "/". The keep-alive
  // connection is reused; if the server closed it while idle, reconnects once
  // transparently. Content-Type defaults to application/json when a body is
  // given. Throws ferry::Error kRetryable when the server cannot be reached,
  // resets the connection or times out (the message names the URL),
  // kEnvironment when TLS fails (e.g. certificate verification), kBadInput for
  // a bad target or header.
  // The Host header every request carries ("host[:port]" as in the URL),
  // for request signatures that cover it (SigV4).
  const std::string& host_header() const;

  // The body is sent from the caller's memory, not copied (a chunk PUT is
  // MiBs); it must stay valid for the call.
  Response Send(const std::string& method, const std::string& target, std::string_view body = {},
                const std::vector<std::pair<std::string, std::string>>& headers = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::http
