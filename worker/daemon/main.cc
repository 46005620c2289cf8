// ferry-worker: the per-host daemon (docs/worker.md). main() only wires the
// parts: the configuration, the host's executor (host_executor.h) and the
// protocol client (ferry/rpc/worker_agent.h) on one KJ event loop, until
// SIGTERM or SIGINT.
#include <signal.h>

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "ferry/common/allocator.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/service_notify.h"
#include "ferry/common/version.h"
#include "ferry/rpc/tls.h"
#include "ferry/rpc/worker_agent.h"
#include "ferry/rpc/worker_client.h"
#include "host_executor.h"
#include "worker_config.h"

namespace {

int Main(int argc, char** argv) {
  using namespace ferry;
  daemon::WorkerConfig config;
  kj::Own<kj::TlsContext> tls;
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (auto code = AnswerStandardRequests(daemon::WorkerProgram(), args, std::cout)) return *code;
    config = daemon::ParseWorkerConfig(args);
    if (config.coordinator.tls) tls = rpc::MakeClientTlsContext(config.coordinator.ca_file);
  } catch (const Error& e) {
    std::fprintf(stderr, "ferry-worker: %s\n", e.what());
    return ExitCodeFor(e.kind());
  }
  SetLogLevel(config.log_level == 0 ? LogLevel::kDebug : config.log_level == 2 ? LogLevel::kWarning : LogLevel::kInfo);

  // Signals must be captured before any thread exists.
  signal(SIGPIPE, SIG_IGN);
  kj::UnixEventPort::captureSignal(SIGTERM);
  kj::UnixEventPort::captureSignal(SIGINT);
  auto io = kj::setupAsyncIo();
  kj::Timer& timer = io.provider->getTimer();

  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    daemon::HostExecutor executor(timer, config.host);
    executor.ScanInventory();
    LogInfo("worker for host " + config.host.host + ": " + std::to_string(executor.Inventory().size()) +
            " VMs; coordinator " + config.coordinator.address + (config.coordinator.tls ? " (TLS)" : ""));

    kj::Own<kj::NetworkAddress> address;
    const std::string server_name = config.coordinator.tls ? rpc::TlsServerName(config.coordinator) : "";
    rpc::WorkerAgentOptions options;
    options.token = config.token;
    options.log_tag = config.host.host;
    options.reconnect_delay = config.reconnect_ms * kj::MILLISECONDS;
    rpc::WorkerAgent agent(
        timer,
        [&]() -> kj::Promise<kj::Own<rpc::CoordinatorConnection>> {
          // Resolved on every connection: the coordinator may move.
          return rpc::ResolveCoordinator(io.provider->getNetwork(), config.coordinator)
              .then([&](kj::Own<kj::NetworkAddress> resolved) {
                address = kj::mv(resolved);
                return rpc::CoordinatorConnection::Connect(*address, timer, tls.get(), server_name);
              });
        },
        executor, options);
    agent.Start();
    auto watch = executor.WatchInventory([&]() { agent.InventoryChanged(); }).eagerlyEvaluate([](kj::Exception&& e) {
      LogError("inventory watch stopped: " + std::string(e.getDescription().cStr()));
    });
    // Serving: the inventory is scanned and the agent (re)connects on its own.
    if (std::string why = NotifyServiceManager("READY=1"); !why.empty()) LogWarning(why);
    siginfo_t info = io.unixEventPort.onSignal(SIGTERM)
                         .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
                         .wait(io.waitScope);
    LogInfo("worker: signal " + std::to_string(info.si_signo) + ", stopping (held snapshots are removed)");
    NotifyServiceManager("STOPPING=1");
  })) {
    LogError("worker: " + std::string(e->getDescription().cStr()));
    return 70;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ferry::KeepFreedMemory();
  return Main(argc, argv);
}
