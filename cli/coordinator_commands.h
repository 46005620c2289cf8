// `ferry --coordinator URL RESOURCE ACTION ...`: the CLI over the
// coordinator's web API (docs/cli.md). Every command is one or a few HTTP
// calls; nothing here knows the database, the scheduler or a hypervisor.
#pragma once

#include <atomic>
#include <string>
#include <vector>

namespace ferry::cli {

// args: everything after "--coordinator URL". `interrupted` (set by
// SIGINT/SIGTERM) stops a watch. Returns the exit code.
int CoordinatorCommand(const std::string& url, const std::vector<std::string>& args,
                       const std::atomic<bool>& interrupted);

}  // namespace ferry::cli
