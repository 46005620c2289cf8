// ferry-host: the host commands of `ferry` (backup, restore, the point store,
// inventory, the guardian), which need the hypervisor libraries. Users run
// `ferry`, which execs this binary with its arguments unchanged (cli/main.cc),
// so messages say "ferry COMMAND". main() only parses the subcommand, installs
// signal handling and maps errors to exit codes; the commands live in
// commands.cc, the work in the ferry_worker and ferry_common libraries.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "ferry/common/allocator.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"

namespace {

const char kUsage[] = R"(usage: ferry-host [--verbose|--quiet] COMMAND [OPTIONS]

Runs the host commands of `ferry` (init, backup, list, restore, restore-vm,
verify, prune, remove, lock, gc, space, inventory, stage, backup-disk, commit, discard);
`ferry` runs this program for them. See `ferry --help` and docs/cli.md.
)";

void OnSignal(int) { ferry::cli::g_interrupted = true; }

// This ferry-host binary, which the guardian re-runs as `_guardian` (argv[0]
// is the `ferry` the user typed, so /proc/self/exe first).
std::string SelfPath(const char* argv0) {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, static_cast<size_t>(n));
  return argv0;
}

}  // namespace

int main(int argc, char** argv) {
  ferry::KeepFreedMemory();
  std::vector<std::string> args(argv + 1, argv + argc);
  while (!args.empty() && (args[0] == "--verbose" || args[0] == "--quiet")) {
    ferry::SetLogLevel(args[0] == "--verbose" ? ferry::LogLevel::kDebug : ferry::LogLevel::kWarning);
    args.erase(args.begin());
  }
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  // A verify holds a read lease (an open directory) on every point it checks
  // until it ends: a repository of thousands of points needs more than the
  // usual soft limit of 1024 descriptors. The hard limit is the system's word.
  if (struct rlimit nofile; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::string command = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (command == "init") return ferry::cli::InitCommand(rest);
    if (command == "backup") return ferry::cli::BackupCommand(rest, SelfPath(argv[0]));
    if (command == "list") return ferry::cli::ListCommand(rest);
    if (command == "restore") return ferry::cli::RestoreCommand(rest);
    if (command == "restore-vm") return ferry::cli::RestoreVmCommand(rest);
    if (command == "verify") return ferry::cli::VerifyCommand(rest);
    if (command == "prune") return ferry::cli::PruneCommand(rest);
    if (command == "remove") return ferry::cli::RemoveCommand(rest);
    if (command == "lock") return ferry::cli::LockCommand(rest);
    if (command == "gc") return ferry::cli::GcCommand(rest);
    if (command == "space") return ferry::cli::SpaceCommand(rest);
    if (command == "inventory") return ferry::cli::InventoryCommand(rest);
    if (command == "stage") return ferry::cli::StageCommand(rest);
    if (command == "backup-disk") return ferry::cli::BackupDiskCommand(rest);
    if (command == "commit") return ferry::cli::CommitCommand(rest);
    if (command == "discard") return ferry::cli::DiscardCommand(rest);
    if (command == "_guardian") return ferry::cli::GuardianCommand(rest);
    std::cerr << "ferry-host: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  } catch (const ferry::Error& e) {
    std::cerr << "ferry " << command << ": error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "ferry " << command << ": internal error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(ferry::ErrorKind::kInternal);
  }
}
