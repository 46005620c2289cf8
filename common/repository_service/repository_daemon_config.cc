#include "repository_daemon_config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <set>
#include <sstream>

#include "ferry/common/arguments.h"
#include "ferry/common/command_line.h"
#include "ferry/common/checksum.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/ids.h"
#include "ferry/common/manifest.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::repository_daemon {

namespace {

std::string Trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) {
    part = Trim(part);
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

bool ValidName(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

}  // namespace

namespace {

ProgramSpec MakeProgram() {
  ProgramSpec p;
  p.name = "ferry-repository";
  p.summary = "the Ferry repository service";
  p.man_section = 8;
  p.description =
      "Serves the repositories of this machine to workers and to `ferry` over Cap'n Proto with TLS "
      "(docs/repository-service.md). Every option may also be given in the configuration file as \"name = value\"; "
      "the command line wins.";
  CommandSpec serve;
  serve.synopsis = "--repository NAME=DIR ... (--tokens FILE | --coordinator-key FILE) [--config FILE] [OPTIONS]";
  serve.summary = "serve the repositories";
  serve.options = {
      Option("config", "FILE", "the configuration file (e.g. /etc/ferry/repository.conf)").Files(),
      Option("listen", "HOST:PORT", "where to listen (default 0.0.0.0:8720)"),
      Option("tls-cert", "FILE", "the service's certificate chain (PEM)").Files(),
      Option("tls-key", "FILE", "its private key (PEM)").Files(),
      Flag("no-tls", "serve plain TCP (only on a trusted network or loopback)"),
      Option("repository", "NAME=DIR", "a repository to serve as NAME (create it with `ferry init --repo DIR`)").Repeatable(),
      Option("tokens", "FILE", "who may open what: lines \"<SHA-256 of a token> NAME[,NAME...]\" (add one with `ferry-repository grant`)").Files(),
      Option("coordinator-key", "FILE", "also accept the per-worker tokens a coordinator mints with this key (make it with `ferry-repository key`, give its text to the coordinator as the repository's token)").Files(),
      Option("max-connections", "N", "connections open at once (default 256)"),
      Option("max-connections-per-address", "N", "of those, from one peer address (default 64)"),
      Option("handshake-timeout", "DUR", "from connecting to a successful open (TLS handshake included) may take this long (default 10s)"),
      Option("metrics-listen", "HOST:PORT",
             "also serve GET /healthz (to anyone) and GET /metrics (Prometheus text; Authorization: Bearer <the token "
             "of --metrics-token-file>) there, over HTTPS with the service's certificate when it has one (default: off)"),
      Option("metrics-token-file", "FILE",
             "the token /metrics wants (one line, at least 16 characters; required with --metrics-listen)")
          .Files()};
  for (OptionSpec& flag : VerbosityFlags()) serve.options.push_back(std::move(flag));
  p.commands.push_back(serve);
  p.commands.push_back({"key", "--key-file FILE", "make a key shared with a coordinator (file 0600) and print it (frk-...)",
                        "Give its text to the coordinator as the repository's token (POST /api/v1/repositories "
                        "{\"location\": \"ferry+tls://HOST:PORT/NAME\", \"token\": \"frk-...\"}); the coordinator then "
                        "gives each worker tokens of its own, for that repository only, that this service checks.",
                        {},
                        {Option("key-file", "FILE", "where the key goes (refused if it exists)").Files()},
                        ""});
  p.commands.push_back({"grant", "--tokens FILE --repository NAME [--repository NAME ...]",
                        "make a new token for the named repositories and print it",
                        "Appends its line (the token's SHA-256, never the token) to the tokens file. Restart the "
                        "service to load it. Clients give it as --repo-token-file.",
                        {},
                        {Option("tokens", "FILE", "the tokens file (created 0600)").Files(),
                         Option("repository", "NAME", "a repository the token opens").Repeatable()},
                        ""});
  p.footer = "Durations: 90s, 30m, 24h, 7d, 500ms or plain seconds.";
  return p;
}

}  // namespace

const ProgramSpec& Program() {
  static const ProgramSpec program = MakeProgram();
  return program;
}

std::vector<rpc::RepositoryGrant> ParseTokensFile(const std::string& text, const std::string& path,
                                                  const std::map<std::string, std::string>& known) {
  std::vector<rpc::RepositoryGrant> grants;
  std::stringstream in(text);
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    line = Trim(line);
    if (line.empty()) continue;
    const auto bad = [&](const std::string& why) {
      return Error(ErrorKind::kBadInput, path + " line " + std::to_string(number) + ": " + why);
    };
    const auto space = line.find_first_of(" \t");
    if (space == std::string::npos) throw bad("expected '<SHA-256 hex> NAME[,NAME...]'");
    const std::string hex = line.substr(0, space);
    rpc::RepositoryGrant g;
    try {
      g.token_sha256 = Digest::FromHex(hex);
    } catch (const Error&) {
      throw bad("'" + hex.substr(0, 80) + "' is not a SHA-256 in hex (64 digits)");
    }
    for (const std::string& name : SplitCommas(line.substr(space + 1))) {
      if (!known.count(name)) throw bad("repository '" + name + "' is not served here (no --repository " + name + "=DIR)");
      g.repositories.insert(name);
    }
    if (g.repositories.empty()) throw bad("the grant names no repository");
    grants.push_back(std::move(g));
  }
  return grants;
}

DaemonConfig ParseDaemonConfig(const Arguments& command_line) {
  DaemonConfig c;
  Arguments a = command_line;
  if (auto path = command_line.Get("config")) {
    const CommandSpec& serve = *Program().Find("");
    a = Arguments::Layered(
        Arguments::ReadConfigFile(*path, ValuedOptions(Program(), serve), FlagOptions(Program(), serve)), command_line);
  }
  const Arguments& loudness = command_line.Has("verbose") || command_line.Has("quiet") ? command_line : a;
  c.log_level = loudness.Has("verbose") ? 0 : loudness.Has("quiet") ? 2 : 1;

  c.server.listen = a.Get("listen").value_or("0.0.0.0:8720");
  rpc::SplitHostPort(c.server.listen.ends_with(":0") ? c.server.listen.substr(0, c.server.listen.size() - 1) + "1"
                                                     : c.server.listen);
  c.server.tls_cert = a.Get("tls-cert").value_or("");
  c.server.tls_key = a.Get("tls-key").value_or("");
  if (c.server.tls_cert.empty() != c.server.tls_key.empty()) {
    throw Error(ErrorKind::kBadInput, "give both --tls-cert and --tls-key, or neither with --no-tls");
  }
  if (c.server.tls_cert.empty() && !a.Has("no-tls")) {
    throw Error(ErrorKind::kBadInput, "give --tls-cert FILE and --tls-key FILE (or --no-tls to serve plain TCP)");
  }
  if (!c.server.tls_cert.empty() && a.Has("no-tls")) {
    throw Error(ErrorKind::kBadInput, "--no-tls and --tls-cert contradict each other");
  }
  if (auto n = a.GetInt("max-connections", 1, 65536)) c.server.max_connections = static_cast<unsigned>(*n);
  if (auto n = a.GetInt("max-connections-per-address", 1, 65536)) c.server.max_per_address = static_cast<unsigned>(*n);
  if (auto d = a.GetDuration("handshake-timeout")) c.server.handshake_timeout = *d;

  for (const std::string& spec : a.GetAll("repository")) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos) throw Error(ErrorKind::kBadInput, "option --repository: '" + spec + "' is not NAME=DIR");
    std::string name = Trim(spec.substr(0, eq)), dir = Trim(spec.substr(eq + 1));
    if (!ValidName(name)) {
      throw Error(ErrorKind::kBadInput, "option --repository: '" + name + "' is not a name (1 to 64 of A-Z a-z 0-9 . - _)");
    }
    if (dir.empty() || dir[0] != '/') throw Error(ErrorKind::kBadInput, "option --repository " + name + ": give an absolute directory");
    if (!c.service.repositories.emplace(name, dir).second) {
      throw Error(ErrorKind::kBadInput, "option --repository: " + name + " is given twice");
    }
  }
  if (c.service.repositories.empty()) throw Error(ErrorKind::kBadInput, "give at least one --repository NAME=DIR");
  if (auto key = a.Get("coordinator-key")) c.service.worker_key = rpc::WorkerTokenKey::FromFile(*key, false);
  if (!a.Has("tokens") && !a.Has("coordinator-key")) {
    throw Error(ErrorKind::kBadInput, "give who may open the repositories: --tokens FILE and/or --coordinator-key FILE");
  }
  if (auto listen = a.Get("metrics-listen")) {
    c.metrics_listen = *listen;
    auto file = a.Get("metrics-token-file");
    if (!file) throw Error(ErrorKind::kBadInput, "--metrics-listen needs --metrics-token-file FILE (the token /metrics wants)");
    const std::string token = Trim(ReadWholeFile(*file));
    if (token.size() < 16 || token.find_first_of(" \t\r\n") != std::string::npos) {
      throw Error(ErrorKind::kBadInput, "option --metrics-token-file: " + *file + " does not hold one token of 16 or more characters");
    }
    c.metrics_token_sha256 = Sha256(token.data(), token.size());
  } else if (a.Has("metrics-token-file")) {
    throw Error(ErrorKind::kBadInput, "--metrics-token-file is for --metrics-listen, which is not given");
  }
  if (auto tokens = a.Get("tokens")) {
    c.tokens_file = *tokens;
    c.service.grants = ParseTokensFile(ReadWholeFile(c.tokens_file), c.tokens_file, c.service.repositories);
  }
  return c;
}

std::string KeyCommand(const Arguments& a) {
  const std::string path = a.Require("key-file");
  if (PathExists(path)) throw Error(ErrorKind::kBadInput, path + " exists; a key is made once (delete it to make another)");
  return rpc::WorkerTokenKey::FromFile(path, /*create=*/true).ToText();
}

std::string GrantCommand(const Arguments& a) {
  const std::string path = a.Require("tokens");
  std::vector<std::string> names = a.GetAll("repository");
  if (names.empty()) throw Error(ErrorKind::kBadInput, "give the repositories the token opens with --repository NAME");
  std::string joined;
  for (const auto& n : names) {
    if (!ValidName(n)) throw Error(ErrorKind::kBadInput, "option --repository: '" + n + "' is not a name");
    joined += (joined.empty() ? "" : ",") + n;
  }
  const std::string token = "fr1-" + RandomHex(40);
  const Digest hash = Sha256(token.data(), token.size());
  const std::string line = hash.Hex() + " " + joined + "  # granted " + NowRfc3339() + "\n";
  UniqueFd fd = OpenOrThrow(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    throw ErrnoError("appending to " + path, errno);
  }
  FsyncOrThrow(fd.get(), path);
  return token;
}

}  // namespace ferry::repository_daemon
