// The host commands of `ferry`. Each takes its options, parsed against its
// definition in cli/ferry_program.cc, returns the process exit code, and throws ferry::Error for failures
// (main() turns those into a message and ExitCodeFor(kind)).
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ferry/common/arguments.h"
#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"
#include "ferry/rpc/repository_service.h"

namespace ferry::cli {

// Every command that takes --repo takes a directory or a repository service
// address (ferry+tls://HOST:PORT/NAME), and for an address the options
// --repo-token-file, --repo-ca and --repo-server-name (cli/ferry_program.cc,
// WithRepo). OpenRepo opens what --repo names; RepoAccess is those options
// alone (for the calls that take a location and open it themselves: gc, space).
// --repo, else $FERRY_REPO; kBadInput naming both when neither is given.
std::string RepoLocation(const Arguments& a);
std::unique_ptr<Repository> OpenRepo(const Arguments& a);
rpc::RepositoryAccess RepoAccess(const Arguments& a);
// The key of --key-file (its passphrase from --passphrase-file or
// $FERRY_PASSPHRASE), checked against `repo` (CheckKeyFits: an encrypted
// repository needs it, a plain one refuses it). nullopt for a plain one.
std::optional<RepositoryKey> LoadKeyFor(const Arguments& a, const Repository& repo);

// Set by SIGINT/SIGTERM; long operations stop with kInterrupted.
extern std::atomic<bool> g_interrupted;

int InitCommand(const Arguments& a);
// key create | key recovery | key restore | key passwd (docs/encryption.md).
int KeyCommand(const std::string& command, const Arguments& a);
int BackupCommand(const Arguments& a, const std::string& self_path);
int ListCommand(const Arguments& a);
int RestoreCommand(const Arguments& a);
int RestoreVmCommand(const Arguments& a);
int VerifyCommand(const Arguments& a);
// What runs on a host: the inventory a worker reports (inventory.h).
int InventoryCommand(const Arguments& a);
// The point store (point_commands.cc): stage, write one disk, commit, discard.
int StageCommand(const Arguments& a);
int BackupDiskCommand(const Arguments& a);
int CommitCommand(const Arguments& a);
int DiscardCommand(const Arguments& a);
// Committed points (retention_commands.cc): prune by a retention policy,
// remove one point, lock one against removal.
int PruneCommand(const Arguments& a);
int RemoveCommand(const Arguments& a);
int LockCommand(const Arguments& a);
// Repository upkeep (gc_commands.cc): garbage collection, space accounting.
int GcCommand(const Arguments& a);
int SpaceCommand(const Arguments& a);
// Restore points into another repository (copy_commands.cc).
int CopyCommand(const Arguments& a);
// Internal: cleans up a backup session's snapshot if the backup process dies.
int GuardianCommand(const Arguments& a);

}  // namespace ferry::cli
