#include "ferry/rpc/worker_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <kj/debug.h>

#include <charconv>

namespace ferry::rpc {
namespace {

kj::Exception WithContext(const kj::Exception& e, const std::string& context) {
  return kj::Exception(e.getType(), __FILE__, __LINE__,
                       kj::str(context.c_str(), ": ", e.getDescription()));
}

}  // namespace

// Best effort: a stream that is not a TCP socket (a pipe in a test) refuses.
void TuneTcpSocket(kj::AsyncIoStream& stream, kj::Duration keepalive_idle) {
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    int one = 1;
    stream.setsockopt(IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int idle = static_cast<int>(keepalive_idle / kj::SECONDS);
    if (idle > 0) {
      stream.setsockopt(SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      int interval = idle >= 30 ? 10 : (idle + 2) / 3;
      int count = 3;
      stream.setsockopt(IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
      stream.setsockopt(IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
      stream.setsockopt(IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    }
  })) {
    (void)e;
  }
}

HostPort SplitHostPort(const std::string& address) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput,
                 "coordinator address '" + address + "': " + why + " (expected HOST:PORT)");
  };
  HostPort out;
  std::string port;
  if (!address.empty() && address[0] == '[') {
    size_t close = address.find(']');
    if (close == std::string::npos) throw bad("missing ']'");
    out.host = address.substr(1, close - 1);
    if (close + 1 >= address.size() || address[close + 1] != ':') throw bad("missing port");
    port = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) throw bad("missing port");
    out.host = address.substr(0, colon);
    if (out.host.find(':') != std::string::npos) throw bad("IPv6 addresses need brackets");
    port = address.substr(colon + 1);
  }
  if (out.host.empty()) throw bad("missing host");
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 ||
      value > 65535) {
    throw bad("port '" + port + "' is not a number from 1 to 65535");
  }
  out.port = static_cast<uint16_t>(value);
  return out;
}

bool IsIpLiteral(const std::string& host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string TlsServerName(const CoordinatorEndpoint& endpoint) {
  if (!endpoint.server_name.empty()) return endpoint.server_name;
  return SplitHostPort(endpoint.address).host;
}

kj::Promise<kj::Own<kj::NetworkAddress>> ResolveCoordinator(kj::Network& network,
                                                            const CoordinatorEndpoint& endpoint) {
  HostPort hp = SplitHostPort(endpoint.address);  // validates before kj sees it
  std::string address = endpoint.address;
  return network.parseAddress(kj::StringPtr(endpoint.address.c_str()), hp.port)
      .catch_([address](kj::Exception&& e) -> kj::Promise<kj::Own<kj::NetworkAddress>> {
        return WithContext(e, "resolving coordinator address " + address);
      });
}

kj::Promise<kj::Own<CoordinatorConnection>> CoordinatorConnection::Connect(
    kj::AsyncIoContext& io, kj::TlsContext* tls, const CoordinatorEndpoint& endpoint,
    ConnectOptions options) {
  if (endpoint.tls && tls == nullptr) {
    throw Error(ErrorKind::kInternal, "CoordinatorConnection::Connect: TLS wanted, no context");
  }
  kj::TlsContext* use_tls = endpoint.tls ? tls : nullptr;
  std::string server_name = use_tls ? TlsServerName(endpoint) : std::string();
  kj::Timer& timer = io.provider->getTimer();
  return ResolveCoordinator(io.provider->getNetwork(), endpoint)
      .then([&timer, use_tls, server_name, options](kj::Own<kj::NetworkAddress> address) {
        auto connected = Connect(*address, timer, use_tls, server_name, options);
        return connected.attach(kj::mv(address));
      });
}

kj::Promise<kj::Own<CoordinatorConnection>> CoordinatorConnection::Connect(
    kj::NetworkAddress& address, kj::Timer& timer, kj::TlsContext* tls,
    const std::string& tls_server_name, ConnectOptions options) {
  std::string peer = std::string(address.toString().cStr());
  std::string context = "connecting to " + options.peer_kind + " " + peer;
  auto connected =
      address.connect()
          .then([tls, tls_server_name, options](kj::Own<kj::AsyncIoStream> stream)
                    -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
            TuneTcpSocket(*stream, options.keepalive_idle);
            if (tls == nullptr) return kj::mv(stream);
            return tls->wrapClient(kj::mv(stream), kj::StringPtr(tls_server_name.c_str()));
          })
          .then([peer](kj::Own<kj::AsyncIoStream> stream) {
            return kj::heap<CoordinatorConnection>(kj::mv(stream), peer);
          });
  auto timeout = timer.afterDelay(options.connect_timeout)
                     .then([options]() -> kj::Promise<kj::Own<CoordinatorConnection>> {
                       return KJ_EXCEPTION(DISCONNECTED,
                                           kj::str("no connection within ",
                                                   options.connect_timeout / kj::MILLISECONDS,
                                                   " ms"));
                     });
  return connected.exclusiveJoin(kj::mv(timeout))
      .catch_([context](kj::Exception&& e) -> kj::Promise<kj::Own<CoordinatorConnection>> {
        return WithContext(e, context);
      });
}

CoordinatorConnection::CoordinatorConnection(kj::Own<kj::AsyncIoStream> stream, std::string peer)
    : stream_(kj::mv(stream)),
      client_(*stream_),
      coordinator_(client_.bootstrap().castAs<Coordinator>()),
      peer_(std::move(peer)) {}

CoordinatorConnection::~CoordinatorConnection() = default;

Error ErrorFromKj(const kj::Exception& e, const std::string& context) {
  ErrorKind kind = ErrorKind::kInternal;
  switch (e.getType()) {
    case kj::Exception::Type::DISCONNECTED:
    case kj::Exception::Type::OVERLOADED: kind = ErrorKind::kRetryable; break;
    case kj::Exception::Type::FAILED:
    case kj::Exception::Type::UNIMPLEMENTED: kind = ErrorKind::kInternal; break;
  }
  return Error(kind, context + ": " + std::string(e.getDescription().cStr()));
}

}  // namespace ferry::rpc
