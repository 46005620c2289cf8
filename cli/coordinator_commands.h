// The coordinator commands of `ferry` (`ferry job list`, `ferry restore disk
// ...`): the CLI over the coordinator's web API (docs/cli.md). Every command
// is one or a few HTTP calls; nothing here knows the database, the scheduler
// or a hypervisor. Their definitions are in ferry_program.cc.
#pragma once

#include <atomic>

#include "ferry/common/command_line.h"

namespace ferry::cli {

// `line`: a coordinator command, parsed. `interrupted` (set by SIGINT/SIGTERM)
// stops a watch. Returns the exit code.
int CoordinatorCommand(const ParsedCommandLine& line, const std::atomic<bool>& interrupted);

}  // namespace ferry::cli
