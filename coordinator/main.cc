// ferry-coordinator: main() parses options (its definitions: MakeProgram) and wires the parts (database,
// session runner, web API, worker RPC); the work is in ferry_coordinator.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "ferry/common/allocator.h"
#include "ferry/common/arguments.h"
#include "ferry/common/command_line.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/common/service_notify.h"
#include "ferry/common/version.h"
#include "ferry/coordinator/api.h"
#include "ferry/coordinator/appliance_deployer.h"
#include "ferry/coordinator/session_webhook.h"
#include "ferry/coordinator/database.h"
#include "ferry/coordinator/local_repositories.h"
#include "ferry/coordinator/security_headers.h"
#include "ferry/coordinator/session_runner.h"
#include "ferry/coordinator/worker_rpc_server.h"
#include "ferry/rpc/repository_service.h"
#include "ferry/http/server.h"

namespace {

// What ferry-coordinator takes (ferry/common/command_line.h): --help, the
// man page and the bash completion come from here.
ferry::ProgramSpec MakeProgram() {
  using ferry::Flag;
  using ferry::Option;
  ferry::ProgramSpec p;
  p.name = "ferry-coordinator";
  p.summary = "the Ferry coordinator: configuration, schedules, sessions, the web API and the worker RPC";
  p.man_section = 8;
  p.description =
      "Holds the configuration in an SQLite database, runs backup jobs on schedule, assigns their disk tasks to "
      "workers, and serves the web API (HTTP/JSON), the worker RPC endpoint and a repository service for "
      "repositories at local paths (docs/coordinator.md).";
  const ferry::OptionSpec config =
      Option("config", "FILE",
             "the options in a file, \"name = value\" a line (a flag: its bare name), e.g. "
             "/etc/ferry/coordinator.conf; the command line wins (docs/packaging.md)")
          .Files();
  const ferry::OptionSpec data = Option("data", "DIR", "the coordinator's state directory (its SQLite database)").Directories();
  p.global_options = {Flag("verbose", "log more, on stderr")};
  p.commands.push_back({"init", "--data DIR [--config FILE]",
                        "create the coordinator's state in DIR and print the first admin API token",
                        "The token is shown once and stored hashed.", {}, {data, config}, ""});
  p.commands.push_back(
      {"run",
       "--data DIR [--config FILE] [--listen ADDR:PORT] [--rpc-listen ADDR:PORT] [--tls-cert FILE --tls-key FILE] "
       "[--ready-file FILE] [--heartbeat-interval-ms N] [--heartbeat-deadline-ms N] "
       "[--repository-listen ADDR:PORT|off] [--repository-advertise HOST] [--appliance-image DIR] "
       "[--gc-window MINUTES] [--webhook URL [--webhook-token-file FILE] [--webhook-ca FILE]] "
       "[--rpc-max-connections N] [--rpc-max-connections-per-address N] [--console-dir DIR]",
       "serve the web API, the worker RPC endpoint and the local repositories",
       "TLS on all three when given a certificate and key. Also served: GET /healthz (no token) and GET /metrics "
       "(Prometheus text format, with a token), and the web console's files at / (no token; --console-dir). A worker RPC connection that has not registered within 10 s, or "
       "whose worker sends nothing for twice the heartbeat deadline, is closed (docs/worker-protocol.md, "
       "\"Limits\").",
       {},
       {data, config, Option("listen", "ADDR:PORT", "the web API (default 127.0.0.1:8080)"),
        Option("rpc-listen", "ADDR:PORT", "the worker RPC endpoint (default 127.0.0.1:8081)"),
        Option("tls-cert", "FILE", "the certificate chain (PEM) for TLS on every port").Files(),
        Option("tls-key", "FILE", "its private key (PEM)").Files(),
        Option("ready-file", "FILE", "once listening, write {\"api\": URL, \"rpc\": \"ADDR:PORT\", \"pid\"} there").Files(),
        Option("heartbeat-interval-ms", "N", "how often workers send a heartbeat (default 5000)"),
        Option("heartbeat-deadline-ms", "N", "a worker silent this long is lost (default 15000; at least twice the interval)"),
        Option("repository-listen", "ADDR:PORT|off",
               "the repository service for repositories at local paths (default: the RPC address's host, a free "
               "port kept across restarts; off: none)"),
        Option("repository-advertise", "HOST", "the name workers reach that service by"),
        Option("appliance-image", "DIR",
               "scripts/build-image's OUTDIR; enables POST /hosts/{id}/worker, which deploys the worker appliance "
               "onto a libvirt host")
            .Directories(),
        Option("gc-window", "MINUTES", "the safety window of the GC that follows a job's retention (default 5; 0 only for tests)"),
        Option("webhook", "URL", "POST a JSON notice there when a session ends failed or with warnings"),
        Option("webhook-token-file", "FILE", "its token, sent as Authorization: Bearer").Files(),
        Option("webhook-ca", "FILE", "CA certificates to trust for an https:// webhook").Files(),
        Option("rpc-max-connections", "N", "worker RPC connections open at once (default 2048)"),
        Option("rpc-max-connections-per-address", "N",
               "... from one address (default 64; raise it when many workers share one address)"),
        Option("console-dir", "DIR",
               "the web console's files, served at / (default: share/ferry/console of the installation, "
               "/usr/share/ferry/console for /usr/bin/ferry-coordinator; '' or a missing directory: no console)")
            .Directories()},
       ""});
  p.footer = "Exit codes: 0 ok, 2 bad input, 5 environment (see docs/error-policy.md).";
  return p;
}

const ferry::ProgramSpec& Program() {
  static const ferry::ProgramSpec program = MakeProgram();
  return program;
}

// SIGINT/SIGTERM are blocked in every thread (the mask is inherited) and
// taken by the main thread with sigtimedwait: a handler plus pause() would
// miss a signal the kernel hands to one of the server threads.
sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// The web console as installed beside this binary: BINDIR/../share/ferry/console
// (/proc/self/exe: a symlink to the binary finds the real installation's).
std::string InstalledConsoleDir() {
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  return (std::filesystem::path(std::string(self, static_cast<size_t>(n))).parent_path() / FERRY_CONSOLE_FROM_BIN)
      .lexically_normal()
      .string();
}

struct Options {
  std::string data;
  std::string listen = "127.0.0.1:8080";
  std::string rpc_listen = "127.0.0.1:8081";
  std::string tls_cert, tls_key, ready_file;
  // The coordinator's repository service for repositories at local paths:
  // "" = on the RPC address's host, a free port; "off" = none (workers then
  // open those paths themselves, so they must reach them).
  std::string repository_listen, repository_advertise;
  std::string appliance_image;  // "": no appliance deployment
  std::string console_dir = InstalledConsoleDir();  // "": no web console
  int64_t heartbeat_interval_ms = 5000;
  int64_t heartbeat_deadline_ms = 15000;
  int64_t gc_window_min = ferry::kDefaultGcWindow.count() / 60;
  std::string webhook_url, webhook_token_file, webhook_ca;
  ferry::coordinator::WorkerRpcOptions rpc;  // the limits; listen and TLS are set from the above
};

// The command line of init or run. A --config file may hold any of run's
// options (one file serves both the service and the `init` before it).
Options Parse(const ferry::ParsedCommandLine& line) {
  const ferry::ProgramSpec& program = Program();
  const ferry::CommandSpec& run = *program.Find("run");
  ferry::Arguments a = line.options;
  if (auto path = line.options.Get("config")) {
    a = ferry::Arguments::Layered(ferry::Arguments::ReadConfigFile(*path, ferry::ValuedOptions(program, run),
                                                                   ferry::FlagOptions(program, run)),
                                  line.options);
  }
  if (a.Has("verbose")) ferry::SetLogLevel(ferry::LogLevel::kDebug);
  Options o;
  o.data = a.Require("data");
  o.listen = a.Get("listen").value_or(o.listen);
  o.rpc_listen = a.Get("rpc-listen").value_or(o.rpc_listen);
  o.tls_cert = a.Get("tls-cert").value_or("");
  o.tls_key = a.Get("tls-key").value_or("");
  o.ready_file = a.Get("ready-file").value_or("");
  o.repository_listen = a.Get("repository-listen").value_or("");
  o.repository_advertise = a.Get("repository-advertise").value_or("");
  o.appliance_image = a.Get("appliance-image").value_or("");
  o.console_dir = a.Get("console-dir").value_or(o.console_dir);
  o.heartbeat_interval_ms = a.GetInt("heartbeat-interval-ms", 100, 3600000).value_or(o.heartbeat_interval_ms);
  o.heartbeat_deadline_ms = a.GetInt("heartbeat-deadline-ms", 100, 3600000).value_or(o.heartbeat_deadline_ms);
  o.gc_window_min = a.GetInt("gc-window", 0, 7 * 24 * 60).value_or(o.gc_window_min);
  o.webhook_url = a.Get("webhook").value_or("");
  o.webhook_token_file = a.Get("webhook-token-file").value_or("");
  o.webhook_ca = a.Get("webhook-ca").value_or("");
  if (o.webhook_url.empty() && (!o.webhook_token_file.empty() || !o.webhook_ca.empty()))
    throw ferry::Error(ferry::ErrorKind::kBadInput, "--webhook-token-file and --webhook-ca need --webhook URL");
  if (auto n = a.GetInt("rpc-max-connections", 1, 1000000)) o.rpc.max_connections = static_cast<unsigned>(*n);
  if (auto n = a.GetInt("rpc-max-connections-per-address", 1, 1000000))
    o.rpc.max_connections_per_address = static_cast<unsigned>(*n);
  if (o.tls_cert.empty() != o.tls_key.empty())
    throw ferry::Error(ferry::ErrorKind::kBadInput, "--tls-cert and --tls-key go together");
  if (o.heartbeat_deadline_ms < 2 * o.heartbeat_interval_ms)
    throw ferry::Error(ferry::ErrorKind::kBadInput, "--heartbeat-deadline-ms must be at least twice the interval");
  return o;
}

std::string DatabasePath(const std::string& data) { return data + "/coordinator.db"; }

int Init(const Options& o) {
  if (::mkdir(o.data.c_str(), 0700) != 0 && errno != EEXIST) throw ferry::ErrnoError("creating " + o.data, errno);
  if (::access(DatabasePath(o.data).c_str(), F_OK) == 0)
    throw ferry::Error(ferry::ErrorKind::kBadInput, o.data + " already holds a coordinator database; "
                                                             "its admin token was shown when it was created");
  ::umask(077);  // the database holds token hashes: owner only
  ferry::coordinator::Database db = ferry::coordinator::Database::Open(DatabasePath(o.data));
  std::string token = ferry::coordinator::CreateAdminToken(db, "admin");
  std::cout << token << std::endl;
  ferry::LogInfo("created coordinator state in " + o.data + " (schema version " +
                 std::to_string(ferry::coordinator::LatestSchemaVersion()) + ")");
  return 0;
}

void WriteReadyFile(const std::string& path, const std::string& api, const std::string& rpc) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << boost::json::serialize(boost::json::object{{"api", api}, {"rpc", rpc}, {"pid", ::getpid()}}) << "\n";
    if (!out) throw ferry::ErrnoError("writing " + tmp, errno);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw ferry::ErrnoError("renaming " + tmp, errno);
}

std::string HostPart(const std::string& listen) { return listen.substr(0, listen.rfind(':')); }

int Run(const Options& o) {
  if (::access(DatabasePath(o.data).c_str(), F_OK) != 0)
    throw ferry::Error(ferry::ErrorKind::kBadInput, "no coordinator database in " + o.data + "; run 'ferry-coordinator init --data " + o.data + "' first");
  ::umask(077);
  auto clock = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  };
  ferry::coordinator::RunnerOptions runner_options{o.heartbeat_interval_ms, o.heartbeat_deadline_ms};
  ferry::coordinator::SessionRunner runner(ferry::coordinator::Database::Open(DatabasePath(o.data)), runner_options, clock);
  runner.Recover();
  // A failed commit leaves the scheduler's memory ahead of the database:
  // stop (exit code of an environment error) and let a restart rebuild it.
  runner.SetFatalHandler([](const std::string&) { ::kill(::getpid(), SIGTERM); });  // wakes the wait below
  // Worker appliances onto libvirt hosts (appliance_deployer.h), given an image.
  std::unique_ptr<ferry::coordinator::ApplianceDeployer> appliances;
  if (!o.appliance_image.empty()) {
    if (::access((o.appliance_image + "/ferry-appliance.qcow2").c_str(), R_OK) != 0)
      throw ferry::Error(ferry::ErrorKind::kBadInput, "--appliance-image " + o.appliance_image +
                                                          ": no readable ferry-appliance.qcow2 (scripts/build-image OUTDIR)");
    appliances = std::make_unique<ferry::coordinator::ApplianceDeployer>(runner, DatabasePath(o.data), o.appliance_image, clock);
    appliances->Start();
  }
  // Locks, retention, GC, space and health checks of the jobs' points
  // (repository_lifecycle.h).
  ferry::coordinator::LifecycleOptions lifecycle_options;
  lifecycle_options.gc_window = std::chrono::minutes(o.gc_window_min);
  ferry::coordinator::RepositoryLifecycle lifecycle(runner, clock, lifecycle_options);
  lifecycle.Start();
  // The web console's files, read once (console_assets.h).
  const ferry::coordinator::ConsoleAssets console = ferry::coordinator::ConsoleAssets::Load(o.console_dir);
  if (console.empty())
    ferry::LogInfo(o.console_dir.empty() ? std::string("no web console (--console-dir '')")
                                         : "no web console: no directory " + o.console_dir + " (--console-dir)");
  ferry::coordinator::Api api(runner, DatabasePath(o.data), ferry::kVersion, appliances.get(), &lifecycle, &console);

  ferry::http::ServerOptions http_options;
  http_options.listen = o.listen;
  http_options.default_headers = ferry::coordinator::SecurityHeaders(!o.tls_cert.empty());
  if (!o.tls_cert.empty()) http_options.tls = ferry::http::TlsFiles{o.tls_cert, o.tls_key};
  // Unauthenticated requests are refused before their body is read.
  http_options.admit = [&api](const ferry::http::Request& head) { return api.Admit(head); };
  ferry::http::Server http(http_options, [&api](const ferry::http::Request& r) { return api.Handle(r); });
  http.Start();

  ferry::coordinator::WorkerRpcOptions rpc_options = o.rpc;
  rpc_options.listen = o.rpc_listen;
  rpc_options.tls_cert_file = o.tls_cert;
  rpc_options.tls_key_file = o.tls_key;
  ferry::coordinator::WorkerRpcServer rpc(runner, rpc_options);
  rpc.Start();

  std::string api_url = std::string(o.tls_cert.empty() ? "http://" : "https://") + HostPart(o.listen) + ":" +
                        std::to_string(http.port());
  std::string rpc_address = HostPart(o.rpc_listen) + ":" + std::to_string(rpc.port());

  // Repositories at local paths, served to the workers (local_repositories.h).
  std::unique_ptr<ferry::rpc::RepositoryServer> repository_service;
  std::string repository_url = "off";
  if (o.repository_listen != "off") {
    auto local = std::make_shared<ferry::coordinator::LocalRepositories>(o.data + "/repository-service.key");
    ferry::rpc::RepositoryServiceConfig config;
    config.catalog = local;
    ferry::rpc::RepositoryServer::Options options;
    // A port picked here is kept for the next start: the addresses running
    // tasks hold stay good across a restart.
    const std::string port_file = o.data + "/repository-service.port";
    std::string port = "0";
    if (o.repository_listen.empty() && ::access(port_file.c_str(), F_OK) == 0) port = ferry::ReadWholeFile(port_file);
    options.listen = o.repository_listen.empty() ? HostPart(o.rpc_listen) + ":" + port : o.repository_listen;
    options.tls_cert = o.tls_cert;
    options.tls_key = o.tls_key;
    try {
      repository_service = std::make_unique<ferry::rpc::RepositoryServer>(config, options);
    } catch (const ferry::Error& e) {
      if (port == "0") throw;
      ferry::LogWarning("the repository service's previous port " + port + " is taken; picking another (" + e.what() + ")");
      options.listen = HostPart(o.rpc_listen) + ":0";
      repository_service = std::make_unique<ferry::rpc::RepositoryServer>(std::move(config), options);
    }
    if (o.repository_listen.empty()) ferry::WriteFileAtomically(port_file, std::to_string(repository_service->port()));
    std::string host = o.repository_advertise;
    if (host.empty()) {
      host = HostPart(options.listen);
      if (host == "0.0.0.0" || host == "[::]" || host == "::") {
        char name[256] = {};
        ::gethostname(name, sizeof name - 1);
        host = name;
      }
    }
    repository_url = std::string(o.tls_cert.empty() ? "ferry://" : "ferry+tls://") + host + ":" +
                     std::to_string(repository_service->port());
    runner.ServeLocalRepositories(repository_url, local);
  }
  if (!console.empty())
    ferry::LogInfo("serving the web console at " + api_url + "/ (" + std::to_string(console.size()) + " files from " +
                   o.console_dir + ")");
  ferry::LogInfo("serving the API at " + api_url + ", worker RPC at " + rpc_address + ", local repositories at " +
                 repository_url +
                 (o.tls_cert.empty() ? " (no TLS: loopback or trusted networks only)" : " (TLS)"));
  // Failed and warning sessions announced to a webhook (session_webhook.h).
  std::unique_ptr<ferry::coordinator::SessionWebhook> webhook;
  if (!o.webhook_url.empty()) {
    ferry::coordinator::WebhookOptions w;
    w.url = o.webhook_url;
    if (!o.webhook_token_file.empty()) {
      w.token = ferry::ReadWholeFile(o.webhook_token_file);
      while (!w.token.empty() && std::isspace(static_cast<unsigned char>(w.token.back()))) w.token.pop_back();
    }
    w.ca_file = o.webhook_ca;
    w.coordinator = api_url;
    webhook = std::make_unique<ferry::coordinator::SessionWebhook>(std::move(w), DatabasePath(o.data));
    webhook->Start();
    runner.SetSessionEndHandler([hook = webhook.get()](const ferry::coordinator::SessionOutcome& s) { hook->Notify(s); });
  }
  if (!o.ready_file.empty()) WriteReadyFile(o.ready_file, api_url, rpc_address);
  if (std::string why = ferry::NotifyServiceManager("READY=1"); !why.empty()) ferry::LogWarning(why);

  sigset_t stop_signals = StopSignals();
  const timespec kPoll{1, 0};
  while (runner.FatalError().empty()) {
    int signal = ::sigtimedwait(&stop_signals, nullptr, &kPoll);
    if (signal == SIGINT || signal == SIGTERM) break;
  }
  ferry::LogInfo("stopping");
  ferry::NotifyServiceManager("STOPPING=1");
  http.Stop();
  if (appliances) appliances->Stop();
  rpc.Stop();
  if (std::string fatal = runner.FatalError(); !fatal.empty())
    throw ferry::Error(ferry::ErrorKind::kEnvironment, fatal);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // The scheduler allocates and frees small objects at a high rate on
  // several threads (~10% of its CPU at scale without this).
  ferry::KeepFreedMemory();
  sigset_t stop_signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // before any thread starts
  signal(SIGPIPE, SIG_IGN);
  try {
    if (auto code = ferry::AnswerStandardRequests(Program(), args, std::cout)) return *code;
    ferry::ParsedCommandLine line = ferry::ParseCommandLine(Program(), args);
    Options options = Parse(line);
    if (line.command->name == "init") return Init(options);
    return Run(options);
  } catch (const ferry::Error& e) {
    std::cerr << "ferry-coordinator: " << e.what() << std::endl;
    return ferry::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "ferry-coordinator: internal error: " << e.what() << std::endl;
    return 70;
  }
}
