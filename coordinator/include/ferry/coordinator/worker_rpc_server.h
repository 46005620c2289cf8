// WorkerRpcServer: the worker-facing endpoint (docs/worker-protocol.md).
//
// Cap'n Proto two-party RPC over TCP, TLS when given a certificate. It runs
// its own KJ event loop on one thread and calls into the SessionRunner
// (which has its own lock). A connection gets only the Coordinator
// bootstrap; registerWorker checks the worker's token and returns a
// WorkerSession capability, so holding one is proof of authentication. When
// the session capability is dropped (the worker disconnected), the runner
// hears of it.
//
// Untrusted peers are bounded in frame size, connections, and time to
// register and between messages: see WorkerRpcOptions.
//
// pullWork is a long poll: with nothing to hand out, the call parks until
// the runner's work generation changes or its wait expires.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ferry/coordinator/session_runner.h"
#include "ferry/rpc/protocol.h"

namespace ferry::coordinator {

// Limits on what a peer may cost (rpc/guarded_server.h; the reasoning is in
// docs/worker-protocol.md, "Limits"): frames as in rpc/protocol.h
// (kUnregisteredMessageBytes, kMaxMessageBytes), connections, time.
using rpc::kMaxMessageBytes;
using rpc::kUnregisteredMessageBytes;

// The idle timeout for a heartbeat deadline: twice the deadline. The runner
// declares a worker lost at the deadline; the connection outlives that by as
// much again, so a live but slow worker is never cut before the runner
// itself gave up on it.
inline int64_t IdleTimeoutFor(int64_t heartbeat_deadline_ms) { return 2 * heartbeat_deadline_ms; }

struct WorkerRpcOptions {
  std::string listen = "127.0.0.1:0";  // ADDR:PORT
  std::string tls_cert_file;           // both set: TLS
  std::string tls_key_file;
  int tick_ms = 250;                   // runner.Tick() period
  // Connections open at once, in all and from one peer address; past
  // either, a new one is closed at once (and logged).
  unsigned max_connections = 2048;
  unsigned max_connections_per_address = 64;
  // A connection that has not registered (a valid worker token) this long
  // after it was accepted is closed: a TLS handshake that does not finish, a
  // partial frame, silence.
  std::chrono::milliseconds registration_timeout{10000};
  // A registered connection that sends no whole message this long is
  // closed; nullopt: IdleTimeoutFor(the runner's heartbeat deadline), 0: never.
  std::optional<std::chrono::milliseconds> idle_timeout;
};

class WorkerRpcServer {
 public:
  WorkerRpcServer(SessionRunner& runner, WorkerRpcOptions options);
  ~WorkerRpcServer();

  // Starts the event-loop thread; returns once listening (throws on failure).
  void Start();
  uint16_t port() const;
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::coordinator
