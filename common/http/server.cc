#include "ferry/http/server.h"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

#include "ferry/common/error.h"
#include "ferry/common/log.h"

namespace ferry::http {

namespace {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using boost::system::error_code;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;
using RequestMessage = bhttp::request<bhttp::string_body>;
using ResponseMessage = bhttp::response<bhttp::string_body>;

constexpr uint32_t kHeaderLimit = 16 * 1024;
// After rejecting a request whose body is still arriving, the server reads and
// discards the rest for a while: closing with unread data makes the kernel send
// a reset, and the peer would lose the error response.
constexpr std::chrono::seconds kDrainTime{2};
constexpr size_t kDrainLimit = 16 << 20;
// A peer that never answers close_notify must not hold the connection.
constexpr std::chrono::seconds kTlsShutdownTime{2};
// Accept fails repeatedly while the process is out of file descriptors.
constexpr std::chrono::milliseconds kAcceptBackoff{100};

auto Redirect(error_code& ec) { return net::redirect_error(net::use_awaitable, ec); }

std::string ErrorBody(const char* kind, const std::string& message) {
  boost::json::object error{{"kind", kind}, {"message", message}};
  return boost::json::serialize(boost::json::object{{"error", std::move(error)}});
}

Response ErrorResponse(int status, const char* kind, const std::string& message) {
  Response response;
  response.status = status;
  response.body = ErrorBody(kind, message);
  return response;
}

Response InternalError() { return ErrorResponse(500, "internal", "internal server error"); }

tcp::endpoint ParseListen(const std::string& listen) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput, "bad listen address \"" + listen + "\": " + why);
  };
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) throw bad("expected ADDR:PORT");
  std::string host = listen.substr(0, colon);
  std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string::npos) {
    throw bad("write an IPv6 address in brackets, e.g. [::1]:8080");
  }
  if (host == "localhost") host = "127.0.0.1";
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); }) ||
      std::stoul(port) > 65535) {
    throw bad("the port must be a number from 0 to 65535");
  }
  error_code ec;
  net::ip::address address = net::ip::make_address(host, ec);
  if (ec) throw bad("\"" + host + "\" is not a numeric IP address");
  return {address, static_cast<uint16_t>(std::stoul(port))};
}

std::string FormatEndpoint(const tcp::endpoint& endpoint) {
  const net::ip::address& address = endpoint.address();
  std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

// OpenSSL's own messages for a missing file are vague; check first so the error
// names the file and the OS reason.
void CheckReadable(const char* what, const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw Error(ErrorKind::kBadInput, std::string("cannot read TLS ") + what + " file \"" + path +
                                          "\": " + std::strerror(errno));
  }
  ::close(fd);
}

ssl::context MakeTlsContext(const TlsFiles& files) {
  CheckReadable("certificate", files.cert_file);
  CheckReadable("key", files.key_file);
  ssl::context context(ssl::context::tls_server);
  context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::single_dh_use);
  SSL_CTX_set_min_proto_version(context.native_handle(), TLS1_2_VERSION);
  // An encrypted key would make OpenSSL prompt on the terminal; fail instead.
  context.set_password_callback(
      [](size_t, ssl::context::password_purpose) { return std::string(); });
  error_code ec;
  context.use_certificate_chain_file(files.cert_file, ec);
  if (ec) {
    throw Error(ErrorKind::kBadInput,
                "loading TLS certificate file \"" + files.cert_file + "\": " + ec.message());
  }
  context.use_private_key_file(files.key_file, ssl::context::pem, ec);
  if (ec) {
    throw Error(ErrorKind::kBadInput, "loading TLS key file \"" + files.key_file +
                                          "\" (it must be an unencrypted PEM key matching \"" +
                                          files.cert_file + "\"): " + ec.message());
  }
  return context;
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
  });
}

bool IsSafeHeaderValue(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// Returns why the handler's response cannot be sent as is, or "" when it can.
std::string CheckResponse(const Response& response) {
  if (response.status < 200 || response.status > 599) {
    return "status " + std::to_string(response.status) + " is not a final status";
  }
  if ((response.status == 204 || response.status == 304) && !response.body.empty()) {
    return "status " + std::to_string(response.status) + " cannot have a body";
  }
  if (!IsSafeHeaderValue(response.content_type)) return "bad Content-Type";
  for (const auto& [name, value] : response.headers) {
    if (!IsToken(name) || !IsSafeHeaderValue(value)) return "bad header \"" + name + "\"";
  }
  return "";
}

bool IsFramingHeader(std::string_view name) {
  return beast::iequals(name, "Content-Length") || beast::iequals(name, "Transfer-Encoding") ||
         beast::iequals(name, "Connection");
}

// A response to HEAD has the headers a GET would get (Content-Length
// included) and no body: a body would be read as the next response.
ResponseMessage ToMessage(Response response, unsigned version, bool keep_alive, bool head,
                          const std::vector<std::pair<std::string, std::string>>& default_headers) {
  ResponseMessage message{static_cast<bhttp::status>(response.status), version};
  message.set(bhttp::field::server, "ferry");
  for (const auto& [name, value] : default_headers) message.set(name, value);
  if (!response.content_type.empty())
    message.set(bhttp::field::content_type, response.content_type);
  for (const auto& [name, value] : response.headers) {
    if (!IsFramingHeader(name)) message.set(name, value);
  }
  message.body() = std::move(response.body);
  message.keep_alive(keep_alive);
  message.prepare_payload();
  if (head) message.body().clear();
  return message;
}

bool IsHttpProtocolError(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category();
}

// The response for a request that could not be read, or nothing when the peer
// went away (closed, reset, timed out) and there is nobody to answer.
std::optional<Response> ReadErrorResponse(const error_code& ec, size_t body_limit) {
  if (ec == bhttp::error::body_limit) {
    return ErrorResponse(
        413, "too_large",
        "request body exceeds the limit of " + std::to_string(body_limit) + " bytes");
  }
  if (ec == bhttp::error::header_limit) {
    return ErrorResponse(
        431, "too_large",
        "request header exceeds the limit of " + std::to_string(kHeaderLimit) + " bytes");
  }
  if (IsHttpProtocolError(ec) && ec != bhttp::error::end_of_stream &&
      ec != bhttp::error::partial_message) {
    return ErrorResponse(400, "bad_input", "malformed HTTP request: " + ec.message());
  }
  return std::nullopt;
}

bool ContainsNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// RFC 9112 section 6: a request's only transfer coding this server reads is
// chunked. Anything else (gzip, "chunked, gzip", a repeated header), or
// Transfer-Encoding with Content-Length or in HTTP/1.0, would leave the
// body's end unknown, and the bytes after it could be read as another
// request (smuggling): 400, and the connection is closed.
std::optional<Response> CheckFraming(const bhttp::request_header<>& header) {
  size_t codings = header.count(bhttp::field::transfer_encoding);
  if (codings == 0) return std::nullopt;
  std::string value(header[bhttp::field::transfer_encoding]);
  auto trim = [](std::string& s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
    size_t i = 0;
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    s.erase(0, i);
  };
  trim(value);
  if (codings > 1 || !beast::iequals(value, "chunked"))
    return ErrorResponse(400, "bad_input", "Transfer-Encoding '" + value + "' is not supported: only chunked");
  if (header.count(bhttp::field::content_length))
    return ErrorResponse(400, "bad_input", "a request cannot have both Transfer-Encoding and Content-Length");
  if (header.version() < 11) return ErrorResponse(400, "bad_input", "Transfer-Encoding needs HTTP/1.1");
  return std::nullopt;
}

void LogConnectionFailure(std::exception_ptr failure) {
  if (!failure) return;
  try {
    std::rethrow_exception(failure);
  } catch (const std::exception& e) {
    LogError(std::string("http: connection failed: ") + e.what());
  } catch (...) {
    LogError("http: connection failed with an unknown exception");
  }
}

}  // namespace

class Server::Impl {
 public:
  Impl(ServerOptions options, Handler handler)
      : options_(std::move(options)),
        handler_(std::move(handler)),
        endpoint_(ParseListen(options_.listen)) {
    if (options_.threads == 0)
      throw Error(ErrorKind::kBadInput, "the HTTP server needs at least one thread");
    if (options_.idle_timeout.count() <= 0 || options_.header_timeout.count() <= 0) {
      throw Error(ErrorKind::kBadInput, "the HTTP idle and header timeouts must be positive");
    }
    if (options_.max_connections == 0 || options_.max_connections_per_address == 0)
      throw Error(ErrorKind::kBadInput, "the HTTP connection caps must be at least 1");
    if (options_.tls) tls_context_.emplace(MakeTlsContext(*options_.tls));
  }

  ~Impl() { Stop(); }

  void Start();
  void Stop();
  uint16_t port() const { return port_; }

 private:
  // Keeps a connection's file descriptor in the set Stop() shuts down. It must
  // be destroyed before the socket is closed, so that Stop() never touches a
  // descriptor number the process has already reused.
  class Registration {
   public:
    Registration(Impl& server, int fd, std::string address) : server_(server), fd_(fd), address_(std::move(address)) {
      std::lock_guard lock(server_.mutex_);
      if (server_.stopping_) return;
      unsigned& from_address = server_.per_address_[address_];
      if (server_.connections_.size() >= server_.options_.max_connections ||
          from_address >= server_.options_.max_connections_per_address) {
        if (from_address == 0) server_.per_address_.erase(address_);
        server_.NoteRefusedLocked(address_);
        return;
      }
      ++from_address;
      active_ = true;
      server_.connections_.insert(fd_);
    }
    ~Registration() {
      std::lock_guard lock(server_.mutex_);
      if (!active_) return;
      server_.connections_.erase(fd_);
      auto it = server_.per_address_.find(address_);
      if (it != server_.per_address_.end() && --it->second == 0) server_.per_address_.erase(it);
    }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    bool active() const { return active_; }

   private:
    Impl& server_;
    int fd_;
    std::string address_;
    bool active_ = false;
  };
  void NoteRefusedLocked(const std::string& address) {
    ++refused_;
    auto now = std::chrono::steady_clock::now();
    if (now - last_refusal_log_ < std::chrono::minutes(1) && refused_ > 1) return;
    last_refusal_log_ = now;
    LogWarning("http: port " + std::to_string(port_) + " refused a connection from " + address + ": at most " +
               std::to_string(options_.max_connections) + " connections, " +
               std::to_string(options_.max_connections_per_address) + " from one address (" +
               std::to_string(refused_) + " refused so far)");
  }

  // The request's head as the handler sees it; a response when the target
  // cannot be (a bad target, an encoded NUL).
  std::optional<Response> ReadHead(const bhttp::request_header<>& header, const std::string& remote, Request* out);
  net::awaitable<void> Accept();
  net::awaitable<void> RunConnection(tcp::socket socket);
  template <class Stream>
  net::awaitable<void> Serve(Stream& stream, std::string remote, std::string address);
  template <class Stream>
  net::awaitable<void> ServeRequests(Stream& stream, beast::flat_buffer& buffer,
                                     const std::string& remote);
  template <class Stream>
  net::awaitable<error_code> Write(Stream& stream, ResponseMessage message);
  template <class Stream>
  net::awaitable<void> Close(Stream& stream, bool drain);
  Response Dispatch(RequestMessage message, const std::string& remote);

  ServerOptions options_;
  Handler handler_;
  tcp::endpoint endpoint_;
  std::optional<ssl::context> tls_context_;
  net::io_context io_{static_cast<int>(options_.threads)};
  std::optional<tcp::acceptor> acceptor_;
  uint16_t port_ = 0;
  std::vector<std::thread> threads_;

  std::mutex mutex_;  // guards started_, stopping_ and connections_
  bool started_ = false;
  bool stopping_ = false;
  std::unordered_set<int> connections_;
  std::unordered_map<std::string, unsigned> per_address_;  // open connections by client address
  uint64_t refused_ = 0;
  std::chrono::steady_clock::time_point last_refusal_log_{};
};

void Server::Impl::Start() {
  {
    std::lock_guard lock(mutex_);
    if (started_ || stopping_) {
      throw Error(ErrorKind::kInternal,
                  "HTTP server on " + options_.listen + " started twice or after Stop");
    }
    started_ = true;
  }
  // The acceptor lives on a strand so Stop() can close it from another thread.
  acceptor_.emplace(net::make_strand(io_));
  error_code ec;
  acceptor_->open(endpoint_.protocol(), ec);
  // Lets a restarted server bind while old connections sit in TIME_WAIT; Linux
  // still refuses a port another socket listens on.
  if (!ec) acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint_, ec);
  if (!ec) acceptor_->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    acceptor_.reset();
    // A well-formed address that is not this machine's is a configuration mistake.
    ErrorKind kind = ec == boost::system::errc::address_not_available ? ErrorKind::kBadInput
                                                                      : ErrorKind::kEnvironment;
    throw Error(kind, "listening on " + options_.listen + ": " + ec.message());
  }
  const tcp::endpoint bound = acceptor_->local_endpoint();
  port_ = bound.port();
  net::co_spawn(acceptor_->get_executor(), Accept(), LogConnectionFailure);
  for (unsigned i = 0; i < options_.threads; ++i) threads_.emplace_back([this] { io_.run(); });
  LogInfo("http: listening on " + FormatEndpoint(bound) + (tls_context_ ? " (https)" : " (http)"));
}

void Server::Impl::Stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    // Shutting the sockets down (rather than closing them) is safe from this
    // thread: each connection's pending read or write fails, and its coroutine
    // ends and closes the socket on its own strand.
    for (int fd : connections_) ::shutdown(fd, SHUT_RDWR);
  }
  if (acceptor_) {
    net::post(acceptor_->get_executor(), [this] {
      error_code ignored;
      acceptor_->close(ignored);
    });
  }
  // The io threads return once every connection has ended.
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

net::awaitable<void> Server::Impl::Accept() {
  for (;;) {
    // Each connection gets its own strand: its coroutine and the stream's
    // timeout handler never run at the same time.
    tcp::socket socket(net::make_strand(io_));
    error_code ec;
    co_await acceptor_->async_accept(socket, Redirect(ec));
    if (!acceptor_->is_open()) co_return;
    if (ec) {
      LogWarning("http: accepting a connection on port " + std::to_string(port_) +
                 " failed: " + ec.message());
      net::steady_timer backoff(co_await net::this_coro::executor, kAcceptBackoff);
      co_await backoff.async_wait(Redirect(ec));
      continue;
    }
    net::co_spawn(socket.get_executor(), RunConnection(std::move(socket)), LogConnectionFailure);
  }
}

net::awaitable<void> Server::Impl::RunConnection(tcp::socket socket) {
  error_code ec;
  tcp::endpoint peer = socket.remote_endpoint(ec);
  if (ec) co_return;  // the peer is already gone
  // Each response goes out in one write; Nagle's algorithm would only delay it.
  socket.set_option(tcp::no_delay(true), ec);
  if (tls_context_) {
    TlsStream stream(std::move(socket), *tls_context_);
    co_await Serve(stream, FormatEndpoint(peer), peer.address().to_string());
  } else {
    beast::tcp_stream stream(std::move(socket));
    co_await Serve(stream, FormatEndpoint(peer), peer.address().to_string());
  }
}

template <class Stream>
net::awaitable<void> Server::Impl::Serve(Stream& stream, std::string remote, std::string address) {
  beast::tcp_stream& tcp = beast::get_lowest_layer(stream);
  // Registered for the whole connection, and gone before the stream closes
  // the socket (see Registration); over a cap the connection closes at once.
  Registration registration(*this, tcp.socket().native_handle(), std::move(address));
  if (!registration.active()) co_return;
  beast::flat_buffer buffer;
  if constexpr (std::is_same_v<Stream, TlsStream>) {
    error_code ec;
    // Detection and handshake within one header timeout.
    tcp.expires_after(options_.header_timeout);
    bool is_tls = co_await beast::async_detect_ssl(tcp, buffer, Redirect(ec));
    if (ec) {
      LogDebug("http: connection from " + remote +
               " ended before the TLS handshake: " + ec.message());
      co_return;
    }
    if (!is_tls) {
      // Answer in plain HTTP so a client that used http:// by mistake learns why.
      Response refusal =
          ErrorResponse(400, "bad_input", "this port speaks HTTPS; use an https:// URL");
      ec = co_await Write(tcp, ToMessage(std::move(refusal), 11, false, false, options_.default_headers));
      if (!ec) co_await Close(tcp, /*drain=*/true);
      co_return;
    }
    size_t used =
        co_await stream.async_handshake(ssl::stream_base::server, buffer.data(), Redirect(ec));
    if (ec) {
      LogDebug("http: TLS handshake with " + remote + " failed: " + ec.message());
      co_return;
    }
    buffer.consume(used);
  }
  co_await ServeRequests(stream, buffer, remote);
}

template <class Stream>
net::awaitable<void> Server::Impl::ServeRequests(Stream& stream, beast::flat_buffer& buffer,
                                                 const std::string& remote) {
  beast::tcp_stream& tcp = beast::get_lowest_layer(stream);
  for (;;) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(kHeaderLimit);
    parser.body_limit(options_.body_limit);
    error_code ec;
    // Idle until the next request's first byte; then one deadline for the
    // whole header, so a slow sender cannot hold the connection by trickling.
    if (buffer.size() == 0) {
      tcp.expires_after(options_.idle_timeout);
      size_t n = co_await stream.async_read_some(buffer.prepare(4096), Redirect(ec));
      if (ec) {
        LogDebug("http: connection from " + remote + " ended: " + ec.message());
        co_return;
      }
      buffer.commit(n);
    }
    tcp.expires_after(options_.header_timeout);
    co_await bhttp::async_read_header(stream, buffer, parser, Redirect(ec));
    if (!ec) {
      // Before the body: the framing, then the application's admission.
      std::optional<Response> refusal = CheckFraming(parser.get());
      Request head;
      if (!refusal) refusal = ReadHead(parser.get(), remote, &head);
      if (!refusal && options_.admit) refusal = options_.admit(head);
      if (refusal) {
        LogDebug("http: refused a request from " + remote + " before its body: " + std::to_string(refusal->status));
        ec = co_await Write(stream, ToMessage(std::move(*refusal), 11, false, false, options_.default_headers));
        if (!ec) co_await Close(stream, /*drain=*/true);
        co_return;
      }
    }
    if (!ec && parser.get().version() >= 11 &&
        beast::iequals(parser.get()[bhttp::field::expect], "100-continue")) {
      // curl and others wait for this before sending a large body.
      bhttp::response<bhttp::empty_body> proceed{bhttp::status::continue_, 11};
      co_await bhttp::async_write(stream, proceed, Redirect(ec));
    }
    if (!ec) {
      tcp.expires_after(options_.idle_timeout);
      co_await bhttp::async_read(stream, buffer, parser, Redirect(ec));
    }
    if (ec) {
      std::optional<Response> error = ReadErrorResponse(ec, options_.body_limit);
      if (!error) {
        LogDebug("http: connection from " + remote + " ended: " + ec.message());
        co_return;
      }
      LogDebug("http: rejected a request from " + remote + ": " + ec.message());
      ec = co_await Write(stream, ToMessage(std::move(*error), 11, false, false, options_.default_headers));
      if (!ec) co_await Close(stream, /*drain=*/true);
      co_return;
    }

    RequestMessage request = parser.release();
    const unsigned version = request.version();
    const bool keep_alive = request.keep_alive();
    const std::string method(request.method_string());
    const bool head = request.method() == bhttp::verb::head;
    const std::string path(request.target().substr(0, request.target().find('?')));
    Response response = Dispatch(std::move(request), remote);
    const int status = response.status;
    ec = co_await Write(stream, ToMessage(std::move(response), version, keep_alive, head, options_.default_headers));
    // The query string is left out: it may carry something secret.
    LogDebug("http: " + remote + " " + method + " " + path + " -> " + std::to_string(status));
    if (ec) {
      LogDebug("http: writing the response to " + remote + " failed: " + ec.message());
      co_return;
    }
    if (!keep_alive) {
      co_await Close(stream, /*drain=*/false);
      co_return;
    }
  }
}

template <class Stream>
net::awaitable<error_code> Server::Impl::Write(Stream& stream, ResponseMessage message) {
  error_code ec;
  beast::get_lowest_layer(stream).expires_after(options_.idle_timeout);
  co_await bhttp::async_write(stream, message, Redirect(ec));
  co_return ec;
}

template <class Stream>
net::awaitable<void> Server::Impl::Close(Stream& stream, bool drain) {
  beast::tcp_stream& tcp = beast::get_lowest_layer(stream);
  error_code ec;
  if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
    tcp.socket().shutdown(tcp::socket::shutdown_send, ec);
  }
  if (drain) {
    tcp.expires_after(kDrainTime);
    std::array<char, 16 * 1024> scratch;
    for (size_t drained = 0; drained < kDrainLimit && !ec;) {
      drained += co_await stream.async_read_some(net::buffer(scratch), Redirect(ec));
    }
  }
  if constexpr (std::is_same_v<Stream, TlsStream>) {
    tcp.expires_after(kTlsShutdownTime);
    co_await stream.async_shutdown(Redirect(ec));
  }
}

std::optional<Response> Server::Impl::ReadHead(const bhttp::request_header<>& header, const std::string& remote,
                                               Request* out) {
  boost::system::result<boost::urls::url_view> target = boost::urls::parse_origin_form(header.target());
  if (!target)
    return ErrorResponse(400, "bad_input", "bad request target: " + target.error().message());
  Request& request = *out;
  request.method = std::string(header.method_string());
  request.path = target->path();
  bool has_nul = ContainsNul(request.path);
  for (const auto& param : target->params()) {
    has_nul = has_nul || ContainsNul(param.key) || ContainsNul(param.value);
    request.query.insert_or_assign(param.key, param.value);
  }
  // A decoded NUL would silently truncate the path or a value wherever it
  // reaches a C API.
  if (has_nul) return ErrorResponse(400, "bad_input", "the request target encodes a NUL byte");
  request.content_type = std::string(header[bhttp::field::content_type]);
  request.authorization = std::string(header[bhttp::field::authorization]);
  request.if_none_match = std::string(header[bhttp::field::if_none_match]);
  request.remote = remote;
  return std::nullopt;
}

Response Server::Impl::Dispatch(RequestMessage message, const std::string& remote) {
  Request request;
  if (std::optional<Response> bad = ReadHead(message, remote, &request)) return *bad;
  request.body = std::move(message.body());

  const std::string what = "handler for " + request.method + " " + request.path;
  try {
    Response response = handler_(request);
    std::string problem = CheckResponse(response);
    if (problem.empty()) return response;
    LogError("http: " + what + " returned a bad response: " + problem);
  } catch (const std::exception& e) {
    LogError("http: " + what + " failed: " + e.what());
  } catch (...) {
    LogError("http: " + what + " threw a non-standard exception");
  }
  return InternalError();
}

Server::Server(ServerOptions options, Handler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}

Server::~Server() = default;

void Server::Start() { impl_->Start(); }

uint16_t Server::port() const { return impl_->port(); }

void Server::Stop() { impl_->Stop(); }

}  // namespace ferry::http
