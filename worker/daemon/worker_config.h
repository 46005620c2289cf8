// ferry-worker's configuration: a file (docs/worker.md, "Configuration")
// whose every option is also a command-line flag of the same name; the
// command line wins. One parser for both (ferry/common/arguments.h).
#pragma once

#include <string>
#include <vector>

#include "ferry/common/command_line.h"
#include "ferry/rpc/worker_client.h"
#include "host_executor.h"

namespace ferry::daemon {

struct WorkerConfig {
  rpc::CoordinatorEndpoint coordinator;  // address, TLS, CA, server name
  std::string token;                     // read from token_file (or $FERRY_WORKER_TOKEN); never logged
  std::string token_file;
  HostSettings host;
  int reconnect_ms = 500;
  int log_level = 1;  // 0 debug, 1 info, 2 warnings only
};

// Throws kBadInput naming the option (and the file and line for a value
// from the file); kNotFound / kEnvironment for an unreadable file.
WorkerConfig ParseWorkerConfig(const std::vector<std::string>& args);

// Its options (ferry/common/command_line.h): --help, the man page and the
// bash completion come from here.
const ProgramSpec& WorkerProgram();

}  // namespace ferry::daemon
