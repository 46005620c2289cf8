// ferry: the command-line front end. main() only parses the subcommand,
// installs signal handling and maps errors to exit codes; the commands live
// in commands.cc, the work in the ferry_worker and ferry_common libraries.
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "coordinator_commands.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"

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
           list restore points
  restore  --repo DIR --point ID --disk NAME --to PATH [--format raw|qcow2]
           restore one disk into a new image file (thin)
  restore  --repo DIR --point ID --disk NAME --libvirt URI --vm NAME [--target-disk DEV]
           restore one disk into an existing, shut-off libvirt domain
  restore-vm --repo DIR --point ID --libvirt URI [--name NEW] [--dir PATH | --pool POOL]
           [--format qcow2|raw] [--keep-macs] | [--overwrite --yes]
           restore a whole VM as a new libvirt domain, or over the original
  verify   --repo DIR [--point ID]
           check every manifest and index, read back and check every chunk the
           points reference; damaged chunks are quarantined (the next backup
           stores them again)

  inventory (--qmp-dir DIR | --libvirt URI) [--timeout SECONDS] [--json]
           list the VMs of a host (a directory of QMP sockets, or libvirt)

A restore point written by several processes (the coordinator's disk tasks):
  stage    --repo DIR --point ID --vm NAME --disk NAME ... [--chain NAME] [--expires 24h]
  backup-disk --repo DIR --point ID --disk NAME --file PATH [--rate-limit BYTES/s]
  commit   --repo DIR --point ID      (every staged disk must be written)
  discard  --repo DIR --point ID

Against a coordinator (jobs, sessions, workers, hosts, restore points):
  ferry --coordinator URL RESOURCE ACTION ...    (ferry --coordinator URL help)

Global options (before COMMAND): --verbose, --quiet
Exit codes: 0 ok, 2 bad input, 3 not found, 4 corrupt data, 5 environment
(permissions, disk full), 6 retryable, 130 interrupted. See docs/cli.md.
)";

void OnSignal(int) { ferry::cli::g_interrupted = true; }

std::string SelfPath(const char* argv0) {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, static_cast<size_t>(n));
  return argv0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  while (!args.empty() && (args[0] == "--verbose" || args[0] == "--quiet")) {
    ferry::SetLogLevel(args[0] == "--verbose" ? ferry::LogLevel::kDebug : ferry::LogLevel::kWarning);
    args.erase(args.begin());
  }
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::string command = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (command == "--coordinator") {
      if (rest.empty()) throw ferry::Error(ferry::ErrorKind::kBadInput, "--coordinator needs a URL");
      std::string url = rest[0];
      return ferry::cli::CoordinatorCommand(url, std::vector<std::string>(rest.begin() + 1, rest.end()));
    }
    if (command == "init") return ferry::cli::InitCommand(rest);
    if (command == "backup") return ferry::cli::BackupCommand(rest, SelfPath(argv[0]));
    if (command == "list") return ferry::cli::ListCommand(rest);
    if (command == "restore") return ferry::cli::RestoreCommand(rest);
    if (command == "restore-vm") return ferry::cli::RestoreVmCommand(rest);
    if (command == "verify") return ferry::cli::VerifyCommand(rest);
    if (command == "inventory") return ferry::cli::InventoryCommand(rest);
    if (command == "stage") return ferry::cli::StageCommand(rest);
    if (command == "backup-disk") return ferry::cli::BackupDiskCommand(rest);
    if (command == "commit") return ferry::cli::CommitCommand(rest);
    if (command == "discard") return ferry::cli::DiscardCommand(rest);
    if (command == "_guardian") return ferry::cli::GuardianCommand(rest);
    std::cerr << "ferry: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  } catch (const ferry::Error& e) {
    std::cerr << "ferry " << command << ": error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "ferry " << command << ": internal error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(ferry::ErrorKind::kInternal);
  }
}
