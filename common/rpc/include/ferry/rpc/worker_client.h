// The worker's side of the connection to the coordinator: TCP, optionally TLS,
// carrying Cap'n Proto two-party RPC whose bootstrap capability is the
// Coordinator (worker_protocol.capnp, docs/worker-protocol.md). Used by the
// worker daemon and by the simulator (tests/simworker).
//
// Everything here runs on one thread's KJ event loop. A process may hold many
// connections on one loop (the simulator holds a thousand).
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/tls.h>
#include <kj/time.h>

#include <cstdint>
#include <string>

#include "ferry/common/error.h"
#include "ferry/rpc/protocol.h"

namespace ferry::rpc {

struct CoordinatorEndpoint {
  std::string address;      // "host:port"; IPv6 literals as "[::1]:port"
  bool tls = false;
  std::string ca_file;      // with tls: PEM CA(s) to trust; empty: the system store
  std::string server_name;  // with tls: the name the coordinator's certificate
                            // must carry; empty: the host part of `address`.
                            // kj-tls matches DNS names only, so for an IP
                            // address give a DNS name of the certificate
                            // (e.g. "localhost" for 127.0.0.1).
};

struct HostPort {
  std::string host;  // without brackets for IPv6
  uint16_t port = 0;
};

// Splits "host:port" or "[v6]:port". Throws kBadInput naming the address when
// the port is missing, not a number, or out of range.
HostPort SplitHostPort(const std::string& address);

// True for an IPv4 or IPv6 literal (not a DNS name).
bool IsIpLiteral(const std::string& host);

// The name the coordinator's certificate is checked against:
// endpoint.server_name, else the host part of endpoint.address.
std::string TlsServerName(const CoordinatorEndpoint& endpoint);

// Resolves endpoint.address (a DNS lookup for a name: kj runs it on a helper
// thread). A process that connects many times to one coordinator resolves once
// and passes the address to CoordinatorConnection::Connect. A malformed
// address throws ferry::Error kBadInput at once; a failed lookup fails the
// promise with a kj::Exception naming the address.
kj::Promise<kj::Own<kj::NetworkAddress>> ResolveCoordinator(kj::Network& network,
                                                            const CoordinatorEndpoint& endpoint);

// TCP_NODELAY (a call is one small message: Nagle would hold it for the
// previous one's ACK) and, when keepalive_idle > 0, TCP keepalive, so a peer
// that vanished silently is noticed after about idle + 3 probes. Best effort:
// a stream that is not a TCP socket is left alone. Clients and servers both.
void TuneTcpSocket(kj::AsyncIoStream& stream, kj::Duration keepalive_idle);

struct ConnectOptions {
  // TCP connect plus TLS handshake; past it the promise fails (DISCONNECTED).
  kj::Duration connect_timeout = 10 * kj::SECONDS;
  // TCP keepalive so a silently vanished coordinator host is noticed (about
  // idle + 3 probes); 0 leaves the kernel defaults (usually off).
  kj::Duration keepalive_idle = 30 * kj::SECONDS;
  // What is being connected to, for messages ("connecting to <peer_kind> ADDR").
  std::string peer_kind = "coordinator";
};

// One connection to the coordinator: owns the byte stream and the RPC system
// on it.
//
// Ownership and lifetime:
// - Destroying the object closes the connection. Every capability obtained
//   through it (the Coordinator, a WorkerSession) then fails calls with a
//   DISCONNECTED exception, and calls in flight fail the same way. Drop those
//   capabilities before the event loop is destroyed.
// - The kj::TlsContext passed to Connect must outlive the connection.
// - One connection per worker: a WorkerSession belongs to the connection it was
//   registered on and dies with it. After a loss the worker connects again and
//   calls registerWorker again (docs/worker-protocol.md, "Reconnection").
class CoordinatorConnection {
 public:
  // Resolves endpoint.address, then connects as below. `tls` is required
  // (non-null) when endpoint.tls is set, and ignored otherwise. A malformed
  // address throws ferry::Error kBadInput at once (not through the promise).
  static kj::Promise<kj::Own<CoordinatorConnection>> Connect(kj::AsyncIoContext& io,
                                                             kj::TlsContext* tls,
                                                             const CoordinatorEndpoint& endpoint,
                                                             ConnectOptions options = {});

  // Connects to a resolved address: TCP (TCP_NODELAY, keepalive), then, when
  // `tls` is non-null, the TLS handshake checking the certificate against
  // `tls_server_name` (also sent as SNI). Fails with a kj::Exception whose
  // description starts "connecting to coordinator <address>: ";
  // ECONNREFUSED, resets and the timeout are DISCONNECTED, a certificate that
  // does not verify is FAILED.
  static kj::Promise<kj::Own<CoordinatorConnection>> Connect(kj::NetworkAddress& address,
                                                             kj::Timer& timer,
                                                             kj::TlsContext* tls,
                                                             const std::string& tls_server_name,
                                                             ConnectOptions options = {});

  // Wraps an already connected (and, if wanted, TLS-wrapped) stream; `peer`
  // names it in messages. Connect uses this; tests can pass one end of a
  // kj::newTwoWayPipe().
  CoordinatorConnection(kj::Own<kj::AsyncIoStream> stream, std::string peer);
  ~CoordinatorConnection();
  CoordinatorConnection(const CoordinatorConnection&) = delete;
  CoordinatorConnection& operator=(const CoordinatorConnection&) = delete;

  // The bootstrap capability. Cheap to copy; valid while this object lives.
  Coordinator::Client coordinator() { return coordinator_; }
  // The peer's bootstrap capability, for another protocol over the same
  // connection code (the repository service's).
  capnp::Capability::Client bootstrap() { return coordinator_; }

  // Resolves when the connection is gone (peer closed or reset, or a protocol
  // error). Each call returns a new branch; several may wait at once. It does
  // not notice a peer that is alive at TCP level but stuck: use call deadlines
  // (the heartbeat's) for that.
  kj::Promise<void> onDisconnect() { return client_.onDisconnect(); }

  const std::string& peer() const { return peer_; }

 private:
  // Order matters: destroyed bottom-up, the RPC system before its stream.
  kj::Own<kj::AsyncIoStream> stream_;
  capnp::TwoPartyClient client_;
  Coordinator::Client coordinator_;
  std::string peer_;
};

// True when `e` means the connection is gone (kj DISCONNECTED): reconnect and
// register again.
inline bool IsDisconnected(const kj::Exception& e) {
  return e.getType() == kj::Exception::Type::DISCONNECTED;
}

// A kj::Exception (from a connect, or from a call, where the coordinator's
// own errors arrive as "remote exception: ...") as a ferry::Error:
// DISCONNECTED and OVERLOADED are kRetryable, UNIMPLEMENTED and FAILED
// kInternal. The message is "<context>: <description>".
Error ErrorFromKj(const kj::Exception& e, const std::string& context);

}  // namespace ferry::rpc
