// ferry-repository's configuration (docs/repository-service.md,
// "Deployment"): options from a file and the command line (ferry::Arguments),
// and the tokens file that says which token opens which repositories.
#pragma once

#include <string>
#include <vector>

#include "ferry/common/command_line.h"
#include "ferry/rpc/repository_service.h"

namespace ferry::repository_daemon {

struct DaemonConfig {
  int log_level = 1;  // 0 debug, 1 info, 2 warnings only
  rpc::RepositoryServiceConfig service;
  rpc::RepositoryServer::Options server;
  std::string tokens_file;
  // --metrics-listen: /healthz and /metrics over HTTP(S) there ("": none);
  // /metrics wants the token of --metrics-token-file, known by its SHA-256.
  std::string metrics_listen;
  Digest metrics_token_sha256;
};

// Its commands and options (ferry/common/command_line.h): the default
// command serves; `key` and `grant` below.
const ProgramSpec& Program();
// The serving command's options, under its --config file's. Throws
// kBadInput naming the option (or the tokens file and line).
DaemonConfig ParseDaemonConfig(const Arguments& command_line);

// The tokens file: one grant a line, "<SHA-256 of the token, 64 hex> NAME[,NAME...]",
// '#' comments and blank lines ignored. Every NAME must be in `known`.
std::vector<rpc::RepositoryGrant> ParseTokensFile(const std::string& text, const std::string& path,
                                                  const std::map<std::string, std::string>& known);

// `ferry-repository grant`: makes a new random token, appends its grant line
// to the tokens file (created 0600) and returns the token (printed once).
std::string GrantCommand(const Arguments& a);
// `ferry-repository key --key-file FILE`: creates the key shared with a
// coordinator (0600; refuses an existing file) and returns its text.
std::string KeyCommand(const Arguments& a);

}  // namespace ferry::repository_daemon
