// `ferry --coordinator URL RESOURCE ACTION ...`: the CLI over the
// coordinator's web API (docs/cli.md). Every command is one or a few HTTP
// calls; nothing here knows the database or the scheduler.
#pragma once

#include <string>
#include <vector>

namespace ferry::cli {

// args: everything after "--coordinator URL". Returns the exit code.
int CoordinatorCommand(const std::string& url, const std::vector<std::string>& args);

}  // namespace ferry::cli
