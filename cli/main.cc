// ferry: the one command users run, dispatching git-style.
//
// The admin commands (`ferry --coordinator URL ...`) run here, over HTTP:
// this binary links only ferry_common and ferry_http, never the hypervisor
// libraries, so an HTTP-only installation needs neither libvirt nor libnbd.
// The host commands (backup, restore, ...) live in `ferry-host` beside this
// executable, which links ferry_worker; ferry execs it with its arguments
// unchanged (global options too), so the pid, exit code, output and signals
// are exactly those of the host command.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include <algorithm>

#include "coordinator_commands.h"
#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/version.h"

namespace {

const char kUsage[] = R"(usage: ferry COMMAND [OPTIONS]

Commands:
  init     --repo DIR [--chunk-size SIZE] [--compression-level -7..19] [--sync-level filesystem|file]
           create a repository
  backup   --repo DIR (--qmp SOCKET | --libvirt URI --vm NAME) [--vm NAME]
           [--disk NAME ...] [--exclude-disk NAME ...] [--chain NAME]
           [--rate-limit BYTES/s] [--threads N]
           back up the disks of a running QEMU VM as one crash-consistent restore
           point (incremental when the chain's dirty bitmaps can be trusted);
           prints the point's id
  list     --repo DIR [--json]
           list restore points (and their locks)
  restore  --repo DIR --point ID --disk NAME --to PATH [--format raw|qcow2] [--threads N]
           restore one disk into a new image file (thin)
  restore  --repo DIR --point ID --disk NAME --libvirt URI --vm NAME [--target-disk DEV]
           restore one disk into an existing, shut-off libvirt domain
  restore-vm --repo DIR --point ID --libvirt URI [--name NEW] [--dir PATH | --pool POOL]
           [--format qcow2|raw] [--keep-macs] | [--overwrite --yes]
           restore a whole VM as a new libvirt domain, or over the original
  verify   --repo DIR [--point ID] [--chain NAME] [--threads N] [--skip-verified-within DURATION]
           [--no-record]
           check every manifest and index, read back and check every chunk the
           points reference; damaged chunks are quarantined (the next backup
           stores them again); records each point's check (ferry list shows it);
           --skip-verified-within 7d: chunks a clean check read within 7 days
           are not read again
  prune    --repo DIR [--keep-last N] [--keep-within Nd] [--keep-daily N] [--keep-weekly N]
           [--keep-monthly N] [--keep-yearly N] [--vm NAME] [--chain NAME] [--dry-run] [--json]
           remove the points no rule keeps, per VM and chain; prints each point,
           keep or remove, and why (docs/retention.md). Locked and in-use points stay
  remove   --repo DIR --point ID
           remove one restore point (refused while it is locked or in use)
  lock     --repo DIR --point ID (--days N | --for DURATION) [--reason TEXT]
           lock a point against removal; a lock is extended, never shortened
  gc       --repo DIR [--dry-run] [--json] [--window MINUTES] [--threads N]
           remove the chunks no restore point references (safe while backups,
           restores and verifies run; resumes where a killed GC stopped)
  space    --repo DIR [--json]
           stored, logical and unique bytes per point, dedup ratio, garbage

  inventory (--qmp-dir DIR | --libvirt URI) [--timeout SECONDS] [--json]
           list the VMs of a host (a directory of QMP sockets, or libvirt)

A restore point written by several processes (the coordinator's disk tasks):
  stage    --repo DIR --point ID --vm NAME --disk NAME ... [--chain NAME] [--expires 24h]
  backup-disk --repo DIR --point ID --disk NAME --file PATH [--rate-limit BYTES/s]
  commit   --repo DIR --point ID      (every staged disk must be written)
  discard  --repo DIR --point ID

Against a coordinator (jobs, sessions, workers, hosts, restore points):
  ferry --coordinator URL RESOURCE ACTION ...    (ferry --coordinator URL help)

--repo also takes a repository service, ferry+tls://HOST:PORT/NAME, with
--repo-token-file FILE, --repo-ca FILE, --repo-server-name NAME (docs/repository-service.md).

Global options (before COMMAND): --verbose, --quiet
Exit codes: 0 ok, 2 bad input, 3 not found, 4 corrupt data, 5 environment
(permissions, disk full), 6 retryable, 130 interrupted. See docs/cli.md.
)";

// Run by ferry-host (worker/cli/main.cc); `_guardian` is ferry-host's own
// re-exec of itself, listed so `ferry _guardian` keeps working too.
const std::set<std::string> kHostCommands = {"init",  "backup",      "list",   "restore", "restore-vm", "verify",
                                             "prune", "remove", "lock", "gc", "space", "inventory", "stage",
                                             "backup-disk", "commit", "discard", "_guardian"};

std::atomic<bool> g_interrupted{false};
void OnSignal(int) { g_interrupted = true; }

// Replaces this process with the ferry-host beside this executable
// (/proc/self/exe, so a symlink to ferry finds the real installation's);
// returns only if that fails, with the exit code of an environment error.
int ExecHost(const std::string& command, char** argv) {
  std::string message;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    message = std::string("cannot find ferry-host: reading /proc/self/exe: ") + std::strerror(errno);
  } else {
    std::string dir(self, static_cast<size_t>(n));
    dir.resize(dir.rfind('/'));
    std::string host = dir + "/ferry-host";
    ::execv(host.c_str(), argv);
    message = errno == ENOENT ? "this installation has no host commands (ferry-host not found in " + dir +
                                    "); install Ferry's worker package"
                              : "cannot run " + host + ": " + std::strerror(errno);
  }
  std::cerr << "ferry " << command << ": error: " << message << std::endl;
  return ferry::ExitCodeFor(ferry::ErrorKind::kEnvironment);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  size_t globals = 0;
  while (globals < args.size() && (args[globals] == "--verbose" || args[globals] == "--quiet")) ++globals;
  if (globals == args.size() || args[globals] == "--help" || args[globals] == "-h" || args[globals] == "help") {
    std::cout << kUsage;
    return globals == args.size() ? 2 : 0;
  }
  std::string command = args[globals];
  if (command == "--version") {
    std::cout << ferry::VersionLine("ferry") << "\n";
    return 0;
  }
  // Before any signal setup here: ferry-host starts with the default dispositions.
  if (kHostCommands.count(command)) return ExecHost(command, argv);

  for (size_t i = 0; i < globals; ++i) {
    ferry::SetLogLevel(args[i] == "--verbose" ? ferry::LogLevel::kDebug : ferry::LogLevel::kWarning);
  }
  std::vector<std::string> rest(args.begin() + static_cast<long>(globals) + 1, args.end());
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  try {
    if (command == "--coordinator") {
      // The URL, or $FERRY_COORDINATOR when what follows is not one.
      const char* env = std::getenv("FERRY_COORDINATOR");
      if (!rest.empty() && rest[0].find("://") != std::string::npos) {
        std::string url = rest[0];
        return ferry::cli::CoordinatorCommand(url, std::vector<std::string>(rest.begin() + 1, rest.end()),
                                              g_interrupted);
      }
      if (env && *env) return ferry::cli::CoordinatorCommand(env, rest, g_interrupted);
      throw ferry::Error(ferry::ErrorKind::kBadInput,
                         "--coordinator needs a URL (http[s]://HOST:PORT), or set FERRY_COORDINATOR");
    }
    std::vector<std::string> known(kHostCommands.begin(), kHostCommands.end());
    known.erase(std::remove(known.begin(), known.end(), "_guardian"), known.end());
    known.push_back("--coordinator");
    std::cerr << "ferry: unknown command '" << command << "'" << ferry::DidYouMean(command, known)
              << "; 'ferry --help' lists the commands\n";
    return 2;
  } catch (const ferry::Error& e) {
    std::cerr << "ferry " << command << ": error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "ferry " << command << ": internal error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(ferry::ErrorKind::kInternal);
  }
}
