// ferry-repository: the repository service daemon (docs/repository-service.md).
// main() only wires the parts: the configuration, the RepositoryServer (its
// own thread and event loop), with --metrics-listen the operations endpoint
// (its own HTTP threads) reading the server's counters, and SIGTERM/SIGINT to
// stop.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "ferry/common/allocator.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/service_notify.h"
#include "ferry/common/version.h"
#include "ferry/rpc/repository_service.h"
#include "repository_daemon_config.h"
#include "repository_metrics.h"

int main(int argc, char** argv) {
  using namespace ferry;
  KeepFreedMemory();
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (auto code = AnswerStandardRequests(repository_daemon::Program(), args, std::cout)) return *code;
    const ParsedCommandLine line = ParseCommandLine(repository_daemon::Program(), args);
    if (line.command->name == "key") {
      std::cout << repository_daemon::KeyCommand(line.options) << std::endl;
      return 0;
    }
    if (line.command->name == "grant") {
      std::cout << repository_daemon::GrantCommand(line.options) << std::endl;
      return 0;
    }
    repository_daemon::DaemonConfig config = repository_daemon::ParseDaemonConfig(line.options);
    SetLogLevel(config.log_level == 0 ? LogLevel::kDebug : config.log_level == 2 ? LogLevel::kWarning : LogLevel::kInfo);
    // Signals are taken synchronously, before any thread exists.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    signal(SIGPIPE, SIG_IGN);

    const size_t repositories = config.service.repositories.size(), grants = config.service.grants.size();
    const bool tls = !config.server.tls_cert.empty();
    auto stats = std::make_shared<rpc::RepositoryServiceStats>();
    config.service.stats = stats;
    rpc::RepositoryServer server(std::move(config.service), config.server);
    LogInfo("ferry-repository: serving " + std::to_string(repositories) + " repositories to " +
            std::to_string(grants) + " tokens on " + server.address() + (tls ? " (TLS)" : " (plain TCP, no TLS)"));
    std::unique_ptr<repository_daemon::OperationsEndpoint> operations;  // stopped before the server goes
    if (!config.metrics_listen.empty()) {
      std::optional<http::TlsFiles> https;
      if (tls) https = http::TlsFiles{config.server.tls_cert, config.server.tls_key};
      operations = std::make_unique<repository_daemon::OperationsEndpoint>(
          config.metrics_listen, https, config.metrics_token_sha256, stats, [&server] { return server.connections(); });
      operations->Start();
      const std::string host = config.metrics_listen.substr(0, config.metrics_listen.rfind(':'));
      LogInfo("ferry-repository: /healthz and /metrics on " + std::string(tls ? "https://" : "http://") + host + ":" +
              std::to_string(operations->port()));
    }
    if (std::string why = NotifyServiceManager("READY=1"); !why.empty()) LogWarning(why);
    int signo = 0;
    sigwait(&stop, &signo);
    LogInfo("ferry-repository: signal " + std::to_string(signo) + ", stopping");
    NotifyServiceManager("STOPPING=1");
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "ferry-repository: %s\n", e.what());
    return ExitCodeFor(e.kind());
  }
}
