// Running helper programs (qemu-img, qemu-nbd). No shell is involved: argv
// goes to execvp as given, so paths with spaces or quotes are safe.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace ferry {

// For a forked child about to exec: closes every descriptor above stderr.
// Async-signal-safe.
void CloseInheritedDescriptors();

// What a program that ran to completion said and how it ended.
struct ProgramResult {
  int exit_code = 0;  // its exit status; 128 + N when killed by signal N; 127: it could not start
  std::string out;    // stdout
  std::string err;    // stderr
};

// Runs a program to completion with `input` on its stdin (then end of file),
// collecting stdout and stderr. Never throws for how the program ended, only
// when it cannot be started at all (no pipe, no fork). `input` may be a
// secret: it goes through a pipe, never into argv.
ProgramResult RunProgramCapturing(const std::vector<std::string>& argv, const std::string& input = "");

// Runs a program to completion. Throws kEnvironment naming the program, its
// exit status and the tail of its stderr when it fails or cannot start.
// Returns its stdout.
std::string RunProgram(const std::vector<std::string>& argv);

// A child process that is terminated (SIGTERM, then SIGKILL after a grace
// period) and reaped when this object goes away.
class ChildProcess {
 public:
  // Starts the program with stdout and stderr going to `log_path` (or
  // /dev/null when empty). Throws if it cannot be started.
  static ChildProcess Spawn(const std::vector<std::string>& argv, const std::string& log_path = "");
  ChildProcess() = default;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool running();
  // Sends SIGTERM, waits up to `grace_ms`, then SIGKILL; reaps. Returns the
  // wait status.
  int Terminate(int grace_ms = 5000);

 private:
  pid_t pid_ = -1;
};

}  // namespace ferry
