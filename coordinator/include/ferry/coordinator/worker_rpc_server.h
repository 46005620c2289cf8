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
// pullWork is a long poll: with nothing to hand out, the call parks until
// the runner's work generation changes or its wait expires.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ferry/coordinator/session_runner.h"

namespace ferry::coordinator {

struct WorkerRpcOptions {
  std::string listen = "127.0.0.1:0";  // ADDR:PORT
  std::string tls_cert_file;           // both set: TLS
  std::string tls_key_file;
  int tick_ms = 250;                   // runner.Tick() period
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
