// A small HTTP/1.1 server (optionally HTTPS) on Boost.Beast. The application
// logic lives in one Handler; the server owns framing, limits, timeouts and the
// JSON errors it produces itself:
//   {"error": {"kind": "bad_input" | "too_large" | "internal", "message": "..."}}
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry::http {

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // decoded path without query, e.g. "/api/v1/jobs/3"
  // Decoded query parameters ('+' is a space); a repeated key keeps its last value.
  std::map<std::string, std::string> query;
  std::string body;
  std::string content_type;
  std::string authorization;  // raw Authorization header value ("" if none); never log it
  std::string if_none_match;  // raw If-None-Match header value ("" if none)
  std::string remote;         // "ip:port" of the peer ("[v6]:port" for IPv6)
};

struct Response {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  // Extra headers. On the server, Content-Length, Transfer-Encoding and
  // Connection are ignored because framing is the server's job. On the
  // client, every header of the received response.
  std::vector<std::pair<std::string, std::string>> headers;
};

// Called on an io thread, possibly from several threads at once: it must be
// thread-safe, and it should not block for long (it holds an io thread).
// Whatever it throws becomes a generic 500 response; the detail is logged.
using Handler = std::function<Response(const Request&)>;

struct TlsFiles {
  std::string cert_file;  // PEM certificate chain
  std::string key_file;   // PEM private key, unencrypted
};

struct ServerOptions {
  // "ADDR:PORT" with a numeric address (or "localhost"); port 0 picks a free
  // one; IPv6 as "[::1]:0".
  std::string listen = "127.0.0.1:8080";
  size_t body_limit = 1 << 20;  // larger bodies get 413 and the handler is not called
  unsigned threads = 2;         // io threads
  std::optional<TlsFiles> tls;  // HTTPS (TLS 1.2+) when set
  // How long a keep-alive connection may sit idle before a request, and the
  // deadline for reading one request's body or writing one response.
  std::chrono::seconds idle_timeout{60};
  // The deadline for a request's header from its first byte, and for a TLS
  // handshake: a client cannot hold a connection by trickling bytes.
  std::chrono::seconds header_timeout{10};
  // Connections at once, in all and from one client address; one more is
  // closed at once (and logged, at most once a minute).
  unsigned max_connections = 512;
  unsigned max_connections_per_address = 64;
  // Called with a request's head (everything but the body) before its body
  // is read: a response refuses the request there, and the connection is
  // closed without the body ever being buffered (an unauthenticated client
  // cannot make the server hold megabytes). nullopt: go on. Must be
  // thread-safe and quick, like the handler.
  std::function<std::optional<Response>(const Request& head)> admit;
  // Sent with every response, the server's own errors included (e.g. the
  // coordinator's security headers); a header of the same name in the
  // handler's response replaces the default for that response.
  std::vector<std::pair<std::string, std::string>> default_headers;
};

class Server {
 public:
  // Validates the options and loads the TLS files. Throws ferry::Error
  // kBadInput for a bad listen address or an unreadable or mismatched
  // certificate/key (the message names the file).
  Server(ServerOptions options, Handler handler);
  ~Server();  // Stop()s
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds, listens and starts the io threads; returns once listening. Throws
  // ferry::Error kEnvironment when the port is in use or binding is refused.
  void Start();
  uint16_t port() const;  // the bound port (useful with port 0); 0 before Start
  // Closes the listener and every connection and joins the io threads, after
  // any handler calls in progress return. Idempotent. Must not be called from
  // the handler. The server cannot be restarted.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::http
