// The `ferry` command's definitions (ferry/common/command_line.h): every
// command, host and coordinator, with its options. Both binaries of `ferry`
// use it: `ferry` (cli/main.cc) parses, answers --help and runs the
// coordinator commands; `ferry-host` (worker/cli/main.cc) runs the host ones.
#pragma once

#include "ferry/common/command_line.h"

namespace ferry::cli {

const ProgramSpec& FerryProgram();

// The commands over a coordinator's web API (coordinator_commands.cc), as
// against the host commands, which ferry-host runs.
bool IsCoordinatorCommand(const CommandSpec& command);

}  // namespace ferry::cli
