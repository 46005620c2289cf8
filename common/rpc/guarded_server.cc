#include "ferry/rpc/guarded_server.h"

#include <arpa/inet.h>
#include <capnp/rpc-twoparty.h>
#include <capnp/serialize-async.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "ferry/common/log.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::rpc {
namespace {

kj::Duration ToKj(std::chrono::milliseconds ms) { return ms.count() * kj::MILLISECONDS; }

std::string PeerAddress(kj::AsyncIoStream& stream) {
  sockaddr_storage addr{};
  uint len = sizeof addr;
  bool ok = kj::runCatchingExceptions([&] { stream.getpeername(reinterpret_cast<sockaddr*>(&addr), &len); }) == nullptr;
  if (!ok) return "(unknown address)";
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&addr)->sin_addr, text, sizeof text);
  } else if (addr.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr, text, sizeof text);
  } else {
    return "(local socket)";
  }
  return text;
}

std::string Bytes(uint64_t words) {
  uint64_t bytes = words * sizeof(capnp::word);
  if (bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes % (1 << 10) == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " bytes";
}

// The connection's messages, read under the gate's frame limit and stamped
// with the time each one was whole.
class GatedMessageStream final : public capnp::MessageStream {
 public:
  GatedMessageStream(kj::AsyncIoStream& stream, ConnectionGate& gate, kj::Timer& timer, const ConnectionLimits& limits,
                     std::function<void(const std::string&)> warn)
      : inner_(stream), gate_(gate), timer_(timer), limits_(limits), warn_(std::move(warn)) {}

  kj::Promise<kj::Maybe<capnp::MessageReaderAndFds>> tryReadMessage(kj::ArrayPtr<kj::AutoCloseFd> fds,
                                                                    capnp::ReaderOptions options,
                                                                    kj::ArrayPtr<capnp::word> scratch) override {
    const bool authenticated = gate_.authenticated();
    uint64_t limit = authenticated ? limits_.max_message_words : limits_.unauthenticated_message_words;
    if (limit < options.traversalLimitInWords) options.traversalLimitInWords = limit;
    return inner_.tryReadMessage(fds, options, scratch)
        .then(
            [this](kj::Maybe<capnp::MessageReaderAndFds>&& message) {
              gate_.MessageReceived(timer_.now());
              return kj::mv(message);
            },
            [this, limit, authenticated](kj::Exception&& e) -> kj::Maybe<capnp::MessageReaderAndFds> {
              if (e.getType() != kj::Exception::Type::DISCONNECTED) {
                std::string why = e.getDescription().cStr();
                if (why.find("Message is too large") != std::string::npos) {
                  why = "a frame larger than the limit of " + Bytes(limit) +
                        (authenticated ? "" : " before " + limits_.auth_step);
                } else if (why.find("too many segments") != std::string::npos) {
                  why = "a frame with too many segments";
                }
                warn_("closed the connection from " + gate_.peer() + ": " + why);
              }
              kj::throwFatalException(kj::mv(e));
            });
  }
  kj::Promise<void> writeMessage(kj::ArrayPtr<const int> fds,
                                 kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) override {
    return inner_.writeMessage(fds, segments);
  }
  kj::Promise<void> writeMessages(kj::ArrayPtr<kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>> messages) override {
    return inner_.writeMessages(messages);
  }
  kj::Maybe<int> getSendBufferSize() override { return inner_.getSendBufferSize(); }
  kj::Promise<void> end() override { return inner_.end(); }

 private:
  capnp::AsyncIoMessageStream inner_;
  ConnectionGate& gate_;
  kj::Timer& timer_;
  const ConnectionLimits& limits_;
  std::function<void(const std::string&)> warn_;
};

// Destroyed bottom-up: the RPC system, then the network, then the stream.
struct GuardedConnection {
  GuardedConnection(kj::Own<kj::AsyncIoStream> s, capnp::Capability::Client bootstrap, ConnectionGate& gate,
                    kj::Timer& timer, const ConnectionLimits& limits, std::function<void(const std::string&)> warn)
      : stream(kj::mv(s)),
        messages(*stream, gate, timer, limits, std::move(warn)),
        // The network's own limit is the larger one: capnp also refuses to
        // send a message over it (our answers are far below).
        network(messages, capnp::rpc::twoparty::Side::SERVER, capnp::ReaderOptions{limits.max_message_words, 64}),
        rpc(capnp::makeRpcServer(network, kj::mv(bootstrap))) {
    rpc.setFlowLimit(limits.flow_limit_words);
  }
  kj::Own<kj::AsyncIoStream> stream;
  GatedMessageStream messages;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};

}  // namespace

GuardedAcceptor::GuardedAcceptor(kj::ConnectionReceiver& receiver, kj::Timer& timer, kj::TlsContext* tls,
                                 BootstrapFactory bootstrap, ConnectionLimits limits)
    : receiver_(receiver), timer_(timer), tls_(tls), bootstrap_(std::move(bootstrap)), limits_(std::move(limits)),
      tasks_(ignore_) {}

GuardedAcceptor::~GuardedAcceptor() = default;

kj::Promise<void> GuardedAcceptor::Run() {
  return receiver_.accept().then(
      [this](kj::Own<kj::AsyncIoStream> stream) {
        Accepted(kj::mv(stream));
        return Run();
      },
      [this](kj::Exception&& e) {
        // Out of file descriptors, typically: not a reason to spin.
        Warn(std::string("accept failed: ") + e.getDescription().cStr());
        return timer_.afterDelay(100 * kj::MILLISECONDS).then([this] { return Run(); });
      });
}

void GuardedAcceptor::Warn(const std::string& message) {
  kj::TimePoint now = timer_.now();
  KJ_IF_MAYBE(last, last_warning_) {
    if (now - *last < 1 * kj::SECONDS) {
      ++suppressed_;
      return;
    }
  }
  last_warning_ = now;
  std::string more = suppressed_ ? " (and " + std::to_string(suppressed_) + " more such events in the last second)" : "";
  suppressed_ = 0;
  LogWarning(limits_.what + ": " + message + more);
}

void GuardedAcceptor::Accepted(kj::Own<kj::AsyncIoStream> stream) {
  std::string peer = PeerAddress(*stream);
  if (count_.load() >= limits_.max_connections) {
    Warn("refused a connection from " + peer + ": " + std::to_string(limits_.max_connections) +
         " connections are open, the limit (max_connections)");
    return;  // dropping the stream closes it
  }
  unsigned& from_peer = per_address_[peer];
  if (from_peer >= limits_.max_per_address) {
    Warn("refused a connection from " + peer + ": " + std::to_string(from_peer) +
         " connections from that address are open, the limit (max_per_address)");
    return;
  }
  ++from_peer;
  ++count_;
  // Keepalive: a peer whose host vanished is noticed.
  TuneTcpSocket(*stream, 30 * kj::SECONDS);
  const kj::TimePoint accepted = timer_.now();
  kj::Own<ConnectionGate> gate = kj::refcounted<ConnectionGate>(peer, accepted);
  kj::Promise<kj::Own<kj::AsyncIoStream>> ready = nullptr;
  if (tls_) {
    ready = tls_->wrapServer(kj::mv(stream));  // bounded by the authentication deadline
  } else {
    ready = kj::mv(stream);
  }
  ConnectionGate& g = *gate;
  auto served = ready.then([this, &g](kj::Own<kj::AsyncIoStream> secure) {
    auto conn = kj::heap<GuardedConnection>(kj::mv(secure), bootstrap_(kj::addRef(g)), g, timer_, limits_,
                                            [this](const std::string& m) { Warn(m); });
    auto gone = conn->network.onDisconnect();
    return gone.attach(kj::mv(conn));
  });
  tasks_.add(served.exclusiveJoin(Watch(g, accepted))
                 .catch_([this, &g](kj::Exception&& e) {
                   if (!g.authenticated() && tls_) {
                     LogDebug(limits_.what + ": TLS handshake with " + g.peer() + " failed: " + e.getDescription().cStr());
                   } else {
                     LogDebug(limits_.what + ": the connection from " + g.peer() + " ended: " + e.getDescription().cStr());
                   }
                 })
                 .then([this, peer] {
                   --count_;
                   auto it = per_address_.find(peer);
                   if (it != per_address_.end() && --it->second == 0) per_address_.erase(it);
                 })
                 .attach(kj::mv(gate)));
}

// Resolves when the connection is to be closed. A deadline noticed late (the
// loop was busy: messages may be waiting unread) gets one second's grace.
kj::Promise<void> GuardedAcceptor::Watch(ConnectionGate& gate, kj::TimePoint accepted) {
  kj::TimePoint deadline = accepted + ToKj(limits_.auth_timeout);
  if (gate.authenticated()) {
    if (limits_.idle_timeout.count() <= 0) return kj::NEVER_DONE;
    deadline = gate.last_message() + ToKj(limits_.idle_timeout);
  }
  kj::TimePoint now = timer_.now();
  if (now < deadline) {
    kj::Promise<void> wake = timer_.atTime(deadline);
    if (!gate.authenticated()) wake = wake.exclusiveJoin(gate.OnAuthenticated());  // the idle clock starts
    return wake.then([this, &gate, accepted] { return Watch(gate, accepted); });
  }
  return timer_.afterDelay(1 * kj::SECONDS).then([this, &gate, accepted, deadline]() -> kj::Promise<void> {
    if (gate.authenticated() && gate.last_message() + ToKj(limits_.idle_timeout) > deadline) return Watch(gate, accepted);
    if (!gate.authenticated()) {
      Warn("closed the connection from " + gate.peer() + ": no " + limits_.auth_step + " within " +
           std::to_string(limits_.auth_timeout.count()) + " ms of connecting (auth_timeout)");
    } else {
      Warn("closed the connection from " + gate.peer() + ": nothing received for " +
           std::to_string(limits_.idle_timeout.count()) + " ms (idle_timeout)");
    }
    return kj::READY_NOW;
  });
}

}  // namespace ferry::rpc
