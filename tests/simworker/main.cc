// ferry-simworker: simulated workers over the real worker RPC. See --help and
// docs/worker-protocol.md ("The simulator").
#include <signal.h>
#include <sys/resource.h>

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/rpc/tls.h"
#include "ferry/rpc/worker_client.h"
#include "sim_config.h"
#include "simulator.h"

namespace {

// Each simulated worker holds a socket; 1,000 of them pass the usual soft
// limit of 1,024 descriptors.
void RaiseFileLimit(size_t workers) {
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t want = static_cast<rlim_t>(workers) + 64;
  if (lim.rlim_cur >= want) return;
  lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < want) {
    ferry::LogWarning("simworker: cannot raise the open-file limit to " + std::to_string(want) +
                      " for " + std::to_string(workers) + " workers; some may fail to connect");
  }
}

int Main(int argc, char** argv) {
  using namespace ferry;
  simworker::SimOptions options;
  std::vector<simworker::WorkerSpec> workers;
  kj::Own<kj::TlsContext> tls;
  try {
    options = simworker::ParseCommandLine(std::vector<std::string>(argv + 1, argv + argc));
    if (options.help) {
      std::fputs(simworker::Usage(), stdout);
      return 0;
    }
    rpc::SplitHostPort(options.coordinator);  // validates --coordinator
  } catch (const Error& e) {
    std::fprintf(stderr, "ferry-simworker: %s\n%s", e.what(), simworker::Usage());
    return ExitCodeFor(e.kind());
  }
  try {
    workers = simworker::LoadWorkersFile(options.workers_file);
    if (options.tls) tls = rpc::MakeClientTlsContext(options.tls_ca);
  } catch (const Error& e) {
    std::fprintf(stderr, "ferry-simworker: %s\n", e.what());
    return ExitCodeFor(e.kind());
  }
  if (options.quiet) SetLogLevel(LogLevel::kWarning);
  RaiseFileLimit(workers.size());

  // Signals must be captured before any thread exists (kj resolves host
  // names on helper threads).
  signal(SIGPIPE, SIG_IGN);
  kj::UnixEventPort::captureSignal(SIGTERM);
  kj::UnixEventPort::captureSignal(SIGINT);
  auto io = kj::setupAsyncIo();

  simworker::Simulator sim(io, options, std::move(workers), tls.get());
  auto on_signal = io.unixEventPort.onSignal(SIGTERM)
                       .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
                       .then([](siginfo_t info) {
                         LogInfo("simworker: signal " + std::to_string(info.si_signo) +
                                 ", writing the report and exiting");
                       });
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    sim.Run().exclusiveJoin(kj::mv(on_signal)).wait(io.waitScope);
  })) {
    LogError("simworker: " + std::string(e->getDescription().cStr()));
    return 70;
  }
  if (!options.report_file.empty()) {
    try {
      sim.WriteReport(options.report_file);
    } catch (const Error& e) {
      LogError(std::string("simworker: writing the report: ") + e.what());
      return ExitCodeFor(e.kind());
    }
    LogInfo("simworker: report written to " + options.report_file);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
