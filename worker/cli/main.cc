// ferry-host: the host commands of `ferry` (backup, restore, the point store,
// inventory, the guardian), which need the hypervisor libraries. Users run
// `ferry`, which execs this binary with its arguments unchanged (cli/main.cc),
// so messages say "ferry COMMAND". main() only parses the command line against
// `ferry`'s definitions (cli/ferry_program.cc), installs signal handling and
// maps errors to exit codes; the commands live in
// commands.cc, the work in the ferry_worker and ferry_common libraries.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "ferry/common/command_line.h"
#include "ferry_program.h"
#include "ferry/common/allocator.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"

namespace {

void OnSignal(int) { ferry::cli::g_interrupted = true; }

// This ferry-host binary, which the guardian re-runs as `_guardian` (argv[0]
// is the `ferry` the user typed, so /proc/self/exe first).
std::string SelfPath(const char* argv0) {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, static_cast<size_t>(n));
  return argv0;
}

int Run(const std::string& command, const ferry::Arguments& a, const char* argv0) {
  using namespace ferry::cli;
  if (command == "init") return InitCommand(a);
  if (command.starts_with("key ")) return KeyCommand(command, a);
  if (command == "backup") return BackupCommand(a, SelfPath(argv0));
  if (command == "list") return ListCommand(a);
  if (command == "restore") return RestoreCommand(a);
  if (command == "restore-vm") return RestoreVmCommand(a);
  if (command == "verify") return VerifyCommand(a);
  if (command == "prune") return PruneCommand(a);
  if (command == "remove") return RemoveCommand(a);
  if (command == "lock") return LockCommand(a);
  if (command == "gc") return GcCommand(a);
  if (command == "space") return SpaceCommand(a);
  if (command == "copy") return CopyCommand(a);
  if (command == "inventory") return InventoryCommand(a);
  if (command == "stage") return StageCommand(a);
  if (command == "backup-disk") return BackupDiskCommand(a);
  if (command == "commit") return CommitCommand(a);
  if (command == "discard") return DiscardCommand(a);
  if (command == "_guardian") return GuardianCommand(a);
  throw ferry::Error(ferry::ErrorKind::kBadInput, "ferry-host runs only the host commands; run 'ferry " + command + "'");
}

}  // namespace

int main(int argc, char** argv) {
  ferry::KeepFreedMemory();
  const ferry::ProgramSpec& program = ferry::cli::FerryProgram();
  std::vector<std::string> args(argv + 1, argv + argc);
  const ferry::CommandSpec* named = ferry::FindCommand(program, args);
  std::string command = named ? named->name : "";
  try {
    if (auto code = ferry::AnswerStandardRequests(program, args, std::cout)) return *code;
    ferry::ParsedCommandLine line = ferry::ParseCommandLine(program, args);
    if (line.options.Has("verbose")) ferry::SetLogLevel(ferry::LogLevel::kDebug);
    if (line.options.Has("quiet")) ferry::SetLogLevel(ferry::LogLevel::kWarning);
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
    return Run(line.command->name, line.options, argv[0]);
  } catch (const ferry::Error& e) {
    std::cerr << "ferry" << (command.empty() ? "" : " " + command) << ": error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "ferry" << (command.empty() ? "" : " " + command) << ": internal error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(ferry::ErrorKind::kInternal);
  }
}
