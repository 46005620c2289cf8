// ferry: the one command users run, dispatching git-style.
//
// Every command line is parsed here against the definitions of
// ferry_program.cc (so --help, typos and bad options are answered without
// ferry-host). The coordinator commands (`ferry job list ...`) run here, over HTTP:
// this binary links only ferry_common and ferry_http, never the hypervisor
// libraries, so an HTTP-only installation needs neither libvirt nor libnbd.
// The host commands (backup, restore, ...) live in `ferry-host` beside this
// executable, which links ferry_worker; ferry execs it with its arguments
// unchanged, so the pid, exit code, output and signals
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
#include "ferry/common/command_line.h"
#include "ferry_program.h"
#include "ferry/common/arguments.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/version.h"

namespace {

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
  const ferry::ProgramSpec& program = ferry::cli::FerryProgram();
  std::vector<std::string> args(argv + 1, argv + argc);
  const ferry::CommandSpec* named = ferry::FindCommand(program, args);
  std::string command = named ? named->name : "";
  try {
    if (auto code = ferry::AnswerStandardRequests(program, args, std::cout)) return *code;
    // Mistakes are refused here, for host commands too, before any exec.
    ferry::ParsedCommandLine line = ferry::ParseCommandLine(program, args);
    // Before any signal setup here: ferry-host starts with the default dispositions.
    if (!ferry::cli::IsCoordinatorCommand(*line.command)) return ExecHost(command, argv);
    if (line.options.Has("verbose")) ferry::SetLogLevel(ferry::LogLevel::kDebug);
    if (line.options.Has("quiet")) ferry::SetLogLevel(ferry::LogLevel::kWarning);
    struct sigaction sa {};
    sa.sa_handler = OnSignal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
    return ferry::cli::CoordinatorCommand(line, g_interrupted);
  } catch (const ferry::Error& e) {
    std::cerr << "ferry" << (command.empty() ? "" : " " + command) << ": error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::cerr << "ferry" << (command.empty() ? "" : " " + command) << ": internal error: " << e.what() << std::endl;
    return ferry::ExitCodeFor(ferry::ErrorKind::kInternal);
  }
}
