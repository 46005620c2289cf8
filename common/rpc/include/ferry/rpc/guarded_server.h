// The accept side of a Cap'n Proto two-party RPC port open to untrusted
// peers: the worker RPC port (coordinator/worker_rpc_server.cc) and the
// repository service (repository_service.cc) share it. See
// docs/worker-protocol.md, "Limits".
//
// What a peer that has not authenticated can cost is bounded:
// - frames: a frame's segment table is checked against the reader's
//   traversal limit before its body is allocated (capnp's AsyncMessageReader
//   does so, 0.9.x included), so a header claiming 60 MiB closes the
//   connection after 8 bytes. Before authentication the limit is
//   `unauthenticated_message_words`, after it `max_message_words`;
// - connections: at most `max_connections` open, `max_per_address` from one
//   peer address; past either, a new connection is closed at once;
// - time: a connection that has not authenticated `auth_timeout` after it
//   was accepted is closed, whatever it is doing (a TLS handshake that does
//   not finish, a partial first frame, nothing at all). After
//   authentication, one that has not sent a whole message for
//   `idle_timeout` is closed (0: never).
// And per connection the words of calls in flight are capped
// (`flow_limit_words`): past it the connection is not read from until
// answers go out.
//
// The service says a connection has authenticated through the
// ConnectionGate its bootstrap was made for (Authenticated()).
#pragma once

#include <capnp/capability.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/compat/tls.h>
#include <kj/refcount.h>
#include <kj/timer.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace ferry::rpc {

struct ConnectionLimits {
  // Names the port in log lines ("worker RPC", "repository service").
  std::string what = "RPC";
  // What authenticating is on this port, for log lines ("registerWorker").
  std::string auth_step = "authentication";
  unsigned max_connections = 1024;
  unsigned max_per_address = 64;
  // Largest frame (whole message, segment table excluded) accepted before
  // and after authentication, in 8-byte words.
  uint64_t unauthenticated_message_words = (uint64_t{256} << 10) / 8;  // 256 KiB
  uint64_t max_message_words = (uint64_t{64} << 20) / 8;                // capnp's default
  size_t flow_limit_words = (size_t{64} << 20) / 8;
  std::chrono::milliseconds auth_timeout{10000};
  std::chrono::milliseconds idle_timeout{0};  // 0: an authenticated connection may idle forever
};

// One connection's state as the service sees it. Lives as long as either
// the connection or the bootstrap made for it.
class ConnectionGate final : public kj::Refcounted {
 public:
  ConnectionGate(std::string peer, kj::TimePoint accepted) : peer_(std::move(peer)), last_message_(accepted) {}

  // The peer proved who it is (a valid token): from now on the larger frame
  // limit and the idle timeout apply instead of the authentication deadline.
  void Authenticated() {
    if (authenticated_) return;
    authenticated_ = true;
    KJ_IF_MAYBE(f, wake_) (*f)->fulfill();
    wake_ = nullptr;
  }
  bool authenticated() const { return authenticated_; }
  // Resolves on Authenticated() (one waiter at a time: the watchdog).
  kj::Promise<void> OnAuthenticated() {
    auto paf = kj::newPromiseAndFulfiller<void>();
    wake_ = kj::mv(paf.fulfiller);
    return kj::mv(paf.promise);
  }
  // The peer's address ("192.0.2.7", "::1"), for log lines.
  const std::string& peer() const { return peer_; }

  kj::TimePoint last_message() const { return last_message_; }
  void MessageReceived(kj::TimePoint now) { last_message_ = now; }

 private:
  std::string peer_;
  bool authenticated_ = false;
  kj::TimePoint last_message_;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> wake_;
};

// Makes the bootstrap capability of one connection; the service keeps the
// gate to call Authenticated() on it.
using BootstrapFactory = std::function<capnp::Capability::Client(kj::Own<ConnectionGate>)>;

// Accepts connections from `receiver` on the calling thread's event loop and
// serves each under `limits`. `tls` (may be null) and `timer` must outlive
// it. Destroying it closes every connection it accepted.
class GuardedAcceptor {
 public:
  GuardedAcceptor(kj::ConnectionReceiver& receiver, kj::Timer& timer, kj::TlsContext* tls, BootstrapFactory bootstrap,
                  ConnectionLimits limits);
  ~GuardedAcceptor();
  GuardedAcceptor(const GuardedAcceptor&) = delete;
  GuardedAcceptor& operator=(const GuardedAcceptor&) = delete;

  // The accept loop; never resolves (a failed accept is logged and retried).
  kj::Promise<void> Run();

  // Connections open right now (readable from any thread).
  unsigned connections() const { return count_.load(); }

 private:
  void Accepted(kj::Own<kj::AsyncIoStream> stream);
  kj::Promise<void> Watch(ConnectionGate& gate, kj::TimePoint accepted);
  void Warn(const std::string& message);

  class ErrorHandler : public kj::TaskSet::ErrorHandler {
   public:
    void taskFailed(kj::Exception&&) override {}
  };

  kj::ConnectionReceiver& receiver_;
  kj::Timer& timer_;
  kj::TlsContext* tls_;
  BootstrapFactory bootstrap_;
  const ConnectionLimits limits_;
  std::atomic<unsigned> count_{0};
  std::map<std::string, unsigned> per_address_;
  // Refusals are logged at most once a second (a flood must not flood the log).
  kj::Maybe<kj::TimePoint> last_warning_;
  unsigned suppressed_ = 0;
  ErrorHandler ignore_;
  kj::TaskSet tasks_;  // last: its connections go first
};

}  // namespace ferry::rpc
