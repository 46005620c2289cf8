#include "ferry/http/client.h"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/http/span_body.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/parse.hpp>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <optional>

#include "ferry/common/error.h"

namespace ferry::http {

namespace {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using boost::system::error_code;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;
// The request body refers to the caller's bytes (span_body): a PUT of a chunk
// sends it where it lies instead of copying it into a string first.
using RequestMessage = bhttp::request<bhttp::span_body<const char>>;
using ResponseMessage = bhttp::response<bhttp::string_body>;

// Bounds on what a misbehaving server can make the client buffer.
constexpr uint32_t kResponseHeaderLimit = 64 * 1024;
constexpr uint64_t kResponseBodyLimit = 256 << 20;
// Beast reads at most max(512, the buffer's free capacity) bytes per read
// (and at most 64 KiB). An empty buffer grows only to what the headers
// needed, so a 1 MiB body came in hundreds of small reads, each a recvmsg
// and a re-armed deadline timer (timerfd_settime): perf of a restore from
// S3 showed that loop ahead of anything else. A buffer of the full 64 KiB,
// allocated once per client, makes it 16 reads per MiB.
constexpr size_t kReadBufferBytes = 64 * 1024;

auto Redirect(error_code& ec) { return net::redirect_error(net::use_awaitable, ec); }

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
  });
}

bool IsSafeHeaderValue(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// Visible ASCII only: the target goes on the request line as is.
bool IsValidTarget(std::string_view s) {
  return !s.empty() && s.front() == '/' &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return c > 0x20 && c < 0x7f; });
}

// The outcome of one request/response exchange on an open connection.
struct Exchange {
  error_code ec;
  bool got_response_bytes = false;
  ResponseMessage response;
};

}  // namespace

struct Client::Impl {
  Impl(const std::string& base_url, ClientOptions client_options);

  void Connect(const std::string& url);
  Exchange Transfer(const RequestMessage& request, bool head);
  void Disconnect();
  bool connected() const { return plain.has_value() || tls.has_value(); }
  Error ExchangeError(const error_code& ec, const std::string& url) const;

  // Runs a coroutine to completion on the client's private io_context; the
  // stream deadlines bound how long that takes.
  template <class T>
  T Run(net::awaitable<T> task);
  net::awaitable<error_code> ConnectAsync(std::string& stage);
  template <class Stream>
  net::awaitable<Exchange> TransferAsync(Stream& stream, const RequestMessage& request, bool head);

  std::string base_url;  // "scheme://host:port", for messages
  bool use_tls = false;
  std::string host;         // for resolving and certificate checks; no brackets
  bool host_is_ip = false;  // IP literals are checked against the certificate's IP entries
  std::string port;
  std::string host_header;
  ClientOptions options;

  net::io_context io;
  std::optional<ssl::context> tls_context;
  std::optional<beast::tcp_stream> plain;
  std::optional<TlsStream> tls;
  beast::flat_buffer buffer;
};

Client::Impl::Impl(const std::string& url, ClientOptions client_options)
    : options(std::move(client_options)) {
  buffer.reserve(kReadBufferBytes);
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput, "bad server URL \"" + url + "\": " + why);
  };
  boost::system::result<boost::urls::url_view> parsed = boost::urls::parse_uri(url);
  if (!parsed) throw bad("expected http://HOST[:PORT] or https://HOST[:PORT]");
  if (parsed->scheme_id() == boost::urls::scheme::https) {
    use_tls = true;
  } else if (parsed->scheme_id() != boost::urls::scheme::http) {
    throw bad("the scheme must be http or https");
  }
  if (!parsed->has_authority() || parsed->encoded_host().empty()) throw bad("no host");
  if (parsed->has_userinfo()) throw bad("credentials in the URL are not supported");
  if (!parsed->encoded_path().empty() && parsed->encoded_path() != "/")
    throw bad("a path is not supported");
  if (parsed->has_query() || parsed->has_fragment())
    throw bad("a query or fragment is not supported");

  switch (parsed->host_type()) {
    case boost::urls::host_type::ipv4:
    case boost::urls::host_type::ipv6:
      host = parsed->host_address();
      host_is_ip = true;
      break;
    case boost::urls::host_type::name:
      host = parsed->host();
      break;
    default:
      throw bad("unsupported host");
  }
  if (host.empty()) throw bad("no host");
  port = parsed->has_port() ? std::string(parsed->port()) : (use_tls ? "443" : "80");
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); }) ||
      std::stoul(port) == 0 || std::stoul(port) > 65535) {
    throw bad("the port must be a number from 1 to 65535");
  }
  std::string authority = std::string(parsed->encoded_host_and_port());
  host_header = authority;
  base_url = (use_tls ? "https://" : "http://") + authority;

  if (!use_tls) return;
  tls_context.emplace(ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(tls_context->native_handle(), TLS1_2_VERSION);
  if (!options.verify_tls) {
    tls_context->set_verify_mode(ssl::verify_none);
    return;
  }
  tls_context->set_verify_mode(ssl::verify_peer);
  error_code ec;
  if (options.ca_file.empty()) {
    tls_context->set_default_verify_paths(ec);
    if (ec)
      throw Error(ErrorKind::kEnvironment,
                  "loading the system's trusted certificates: " + ec.message());
  } else {
    // OpenSSL's message for a missing file does not say which; check first.
    int fd = ::open(options.ca_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw Error(ErrorKind::kBadInput,
                  "cannot read CA file \"" + options.ca_file + "\": " + std::strerror(errno));
    }
    ::close(fd);
    tls_context->load_verify_file(options.ca_file, ec);
    if (ec)
      throw Error(ErrorKind::kBadInput,
                  "loading CA file \"" + options.ca_file + "\": " + ec.message());
  }
}

template <class T>
T Client::Impl::Run(net::awaitable<T> task) {
  std::exception_ptr failure;
  std::optional<T> result;
  net::co_spawn(io, std::move(task), [&](std::exception_ptr e, T value) {
    failure = e;
    result = std::move(value);
  });
  io.restart();
  io.run();
  if (failure) std::rethrow_exception(failure);
  return std::move(*result);
}

net::awaitable<error_code> Client::Impl::ConnectAsync(std::string& stage) {
  error_code ec;
  stage = "resolving " + host;
  tcp::resolver resolver(io);
  tcp::resolver::results_type endpoints = co_await resolver.async_resolve(host, port, Redirect(ec));
  if (ec) co_return ec;

  stage = "connecting";
  beast::tcp_stream stream(io);
  // One deadline for connecting and the TLS handshake.
  stream.expires_after(options.timeout);
  co_await stream.async_connect(endpoints, Redirect(ec));
  if (ec) co_return ec;
  stream.socket().set_option(tcp::no_delay(true), ec);
  if (!use_tls) {
    plain.emplace(std::move(stream));
    co_return error_code();
  }

  stage = "TLS handshake";
  tls.emplace(std::move(stream), *tls_context);
  SSL* ssl = tls->native_handle();
  if (!host_is_ip && SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) {
    throw Error(ErrorKind::kInternal, "setting the TLS server name " + host);
  }
  if (options.verify_tls) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    int ok = host_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                        : X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
    if (ok != 1) throw Error(ErrorKind::kInternal, "setting the expected TLS peer name " + host);
  }
  co_await tls->async_handshake(ssl::stream_base::client, Redirect(ec));
  co_return ec;
}

void Client::Impl::Connect(const std::string& url) {
  std::string stage;
  error_code ec;
  try {
    ec = Run(ConnectAsync(stage));
  } catch (...) {
    Disconnect();
    throw;
  }
  if (!ec) return;
  long verify_result = tls ? SSL_get_verify_result(tls->native_handle()) : X509_V_OK;
  Disconnect();
  if (verify_result != X509_V_OK) {
    throw Error(ErrorKind::kEnvironment,
                url + ": the server's TLS certificate is not trusted: " +
                    X509_verify_cert_error_string(verify_result) +
                    (options.ca_file.empty() ? " (set a CA file to trust a private CA)" : ""));
  }
  if (ec == beast::error::timeout) {
    throw Error(ErrorKind::kRetryable, url + ": " + stage + " timed out after " +
                                           std::to_string(options.timeout.count()) + "s");
  }
  if (ec.category() == net::error::get_ssl_category() || ec == net::ssl::error::stream_truncated) {
    throw Error(ErrorKind::kEnvironment, url + ": TLS handshake failed: " + ec.message());
  }
  if (ec == net::error::host_not_found)
    throw Error(ErrorKind::kBadInput, url + ": unknown host " + host);
  throw Error(ErrorKind::kRetryable, url + ": " + stage + ": " + ec.message());
}

template <class Stream>
net::awaitable<Exchange> Client::Impl::TransferAsync(Stream& stream, const RequestMessage& request,
                                                     bool head) {
  Exchange exchange;
  // One deadline for sending the request and reading the whole response.
  beast::get_lowest_layer(stream).expires_after(options.timeout);
  co_await bhttp::async_write(stream, request, Redirect(exchange.ec));
  if (exchange.ec) co_return exchange;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.header_limit(kResponseHeaderLimit);
  parser.body_limit(kResponseBodyLimit);
  parser.skip(head);  // a response to HEAD announces a body it does not carry
  co_await bhttp::async_read(stream, buffer, parser, Redirect(exchange.ec));
  exchange.got_response_bytes = parser.got_some();
  if (!exchange.ec) exchange.response = parser.release();
  co_return exchange;
}

Exchange Client::Impl::Transfer(const RequestMessage& request, bool head) {
  if (tls) return Run(TransferAsync(*tls, request, head));
  return Run(TransferAsync(*plain, request, head));
}

void Client::Impl::Disconnect() {
  // No TLS close_notify: responses are length-delimited, so the server cannot
  // be misled by a truncated stream.
  tls.reset();
  plain.reset();
  buffer.clear();
}

Error Client::Impl::ExchangeError(const error_code& ec, const std::string& url) const {
  if (ec == beast::error::timeout) {
    return Error(ErrorKind::kRetryable,
                 url + ": no response within " + std::to_string(options.timeout.count()) + "s");
  }
  if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
      ec == net::ssl::error::stream_truncated) {
    return Error(ErrorKind::kRetryable,
                 url + ": the server closed the connection before responding");
  }
  if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category()) {
    return Error(ErrorKind::kEnvironment, url + ": malformed HTTP response: " + ec.message() +
                                              (use_tls ? "" : " (is it an https server?)"));
  }
  return Error(ErrorKind::kRetryable, url + ": " + ec.message());
}

Client::Client(const std::string& base_url, ClientOptions options)
    : impl_(std::make_unique<Impl>(base_url, std::move(options))) {}

Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

const std::string& Client::host_header() const { return impl_->host_header; }

Response Client::Send(const std::string& method, const std::string& target, std::string_view body,
                      const std::vector<std::pair<std::string, std::string>>& headers) {
  // Error messages name the URL without its query, which may carry something secret.
  const std::string url = method + " " + impl_->base_url + target.substr(0, target.find('?'));
  if (!IsToken(method)) throw Error(ErrorKind::kBadInput, "bad HTTP method \"" + method + "\"");
  if (!IsValidTarget(target)) {
    throw Error(ErrorKind::kBadInput,
                url + ": the target must start with / and be percent-encoded");
  }

  RequestMessage request{bhttp::string_to_verb(method), target, 11};
  if (request.method() == bhttp::verb::unknown) request.method_string(method);
  request.set(bhttp::field::host, impl_->host_header);
  request.set(bhttp::field::user_agent, "ferry");
  if (!body.empty()) request.set(bhttp::field::content_type, "application/json");
  for (const auto& [name, value] : headers) {
    // Header values are never echoed: one may be an Authorization secret.
    if (!IsToken(name) || !IsSafeHeaderValue(value)) {
      throw Error(ErrorKind::kBadInput, url + ": bad request header \"" + name + "\"");
    }
    request.set(name, value);
  }
  request.body() = beast::span<const char>(body.data(), body.size());
  request.prepare_payload();
  const bool head = request.method() == bhttp::verb::head;

  const bool reused = impl_->connected();
  if (!reused) impl_->Connect(url);
  Exchange exchange = impl_->Transfer(request, head);
  if (exchange.ec && reused && !exchange.got_response_bytes &&
      exchange.ec != beast::error::timeout) {
    // Almost always the server closed the idle keep-alive connection, which it
    // does only between requests, so the request was not served and sending it
    // once more on a new connection does not repeat it.
    impl_->Disconnect();
    impl_->Connect(url);
    exchange = impl_->Transfer(request, head);
  }
  if (exchange.ec) {
    impl_->Disconnect();
    throw impl_->ExchangeError(exchange.ec, url);
  }
  if (!exchange.response.keep_alive()) impl_->Disconnect();

  Response response;
  response.status = static_cast<int>(exchange.response.result_int());
  response.content_type = std::string(exchange.response[bhttp::field::content_type]);
  for (const auto& field : exchange.response) {
    response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  response.body = std::move(exchange.response.body());
  return response;
}

}  // namespace ferry::http
