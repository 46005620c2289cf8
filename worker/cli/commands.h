// The `ferry` subcommands. Each takes its arguments (after the subcommand
// name), returns the process exit code, and throws ferry::Error for failures
// (main() turns those into a message and ExitCodeFor(kind)).
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "ferry/common/arguments.h"
#include "ferry/common/repository.h"
#include "ferry/rpc/repository_service.h"

namespace ferry::cli {

using Args = std::vector<std::string>;

// Every command that takes --repo takes a directory or a repository service
// address (ferry+tls://HOST:PORT/NAME), and for an address these options.
// RepoOptions adds them to a command's valued options; OpenRepo opens what
// --repo names; RepoAccess is those options alone (for the calls that take
// a location and open it themselves: gc, space).
//   --repo-token-file FILE   the service token (else $FERRY_REPOSITORY_TOKEN)
//   --repo-ca FILE           CA certificates to trust for ferry+tls://
//   --repo-server-name NAME  the name in the service's certificate
std::set<std::string> RepoOptions(std::set<std::string> valued);
// --repo, else $FERRY_REPO; kBadInput naming both when neither is given.
std::string RepoLocation(const Arguments& a);
std::unique_ptr<Repository> OpenRepo(const Arguments& a);
rpc::RepositoryAccess RepoAccess(const Arguments& a);

// Set by SIGINT/SIGTERM; long operations stop with kInterrupted.
extern std::atomic<bool> g_interrupted;

int InitCommand(const Args& args);
int BackupCommand(const Args& args, const std::string& self_path);
int ListCommand(const Args& args);
int RestoreCommand(const Args& args);
int RestoreVmCommand(const Args& args);
int VerifyCommand(const Args& args);
// What runs on a host: the inventory a worker reports (inventory.h).
int InventoryCommand(const Args& args);
// The point store (point_commands.cc): stage, write one disk, commit, discard.
int StageCommand(const Args& args);
int BackupDiskCommand(const Args& args);
int CommitCommand(const Args& args);
int DiscardCommand(const Args& args);
// Committed points (retention_commands.cc): prune by a retention policy,
// remove one point, lock one against removal.
int PruneCommand(const Args& args);
int RemoveCommand(const Args& args);
int LockCommand(const Args& args);
// Repository upkeep (gc_commands.cc): garbage collection, space accounting.
int GcCommand(const Args& args);
int SpaceCommand(const Args& args);
// Internal: cleans up a backup session's snapshot if the backup process dies.
int GuardianCommand(const Args& args);

}  // namespace ferry::cli
