#include "ferry_program.h"

#include <utility>

namespace ferry::cli {
namespace {

const char kRepositories[] = "Repositories and restore points";
const char kHosts[] = "Hosts";
const char kStaged[] = "A restore point written by several processes (the coordinator's disk tasks)";
const char kKeys[] = "Keys of encrypted repositories (docs/encryption.md)";
const char kCoordinator[] = "Against a coordinator (--coordinator URL, or FERRY_COORDINATOR)";

OptionSpec Repo() {
  return Option("repo", "DIR",
                "the repository: a directory, a repository service ferry+tls://HOST:PORT/NAME, or a bucket "
                "s3://BUCKET/PREFIX?endpoint=URL&region=NAME (docs/object-storage.md) (default: $FERRY_REPO)")
      .Directories();
}

// A repository command's options: its own after --repo, then how to reach a
// repository service (commands.h, RepoAccess).
std::vector<OptionSpec> WithRepo(std::vector<OptionSpec> own) {
  std::vector<OptionSpec> out = {Repo()};
  out.insert(out.end(), own.begin(), own.end());
  out.push_back(Option("repo-token-file", "FILE", "a repository service's token (default: $FERRY_REPOSITORY_TOKEN)").Files());
  out.push_back(Option("repo-ca", "FILE", "CA certificates to trust for ferry+tls://").Files());
  out.push_back(Option("repo-server-name", "NAME", "the name in the repository service's certificate"));
  return out;
}

// An encrypted repository's key file and its passphrase (never on the command line).
OptionSpec KeyFile() {
  return Option("key-file", "FILE", "the key file of an encrypted repository (docs/encryption.md)").Files();
}
OptionSpec PassphraseFile() {
  return Option("passphrase-file", "FILE", "the key file's passphrase, its first line (default: $FERRY_PASSPHRASE)")
      .Files();
}
std::vector<OptionSpec> WithKey(std::vector<OptionSpec> own) {
  own.push_back(KeyFile());
  own.push_back(PassphraseFile());
  return own;
}

OptionSpec Point() { return Option("point", "ID", "the restore point (an id of `ferry list`)"); }
OptionSpec Threads() { return Option("threads", "N", "compute threads (default: one per core)"); }
OptionSpec Bandwidth() { return Option("bandwidth", "CAP", "a bandwidth cap, e.g. \"100MiB/s; 50MB/s 08:00-18:00 mon-fri\" or unlimited (docs/throttling.md)"); }
OptionSpec Json() { return Flag("json", "print JSON instead of a table"); }
OptionSpec Chain() { return Option("chain", "NAME", "the backup chain (default `default`); one per job or target repository"); }

std::vector<OptionSpec> RetentionRules() {
  return {
      Option("keep-last", "N", "keep the N newest points"),
      Option("keep-within", "Nd", "keep every point of the last N days (written 30d)"),
      Option("keep-daily", "N", "keep the newest point of each of the last N days that have one"),
      Option("keep-weekly", "N", "... of each of the last N ISO weeks"),
      Option("keep-monthly", "N", "... of each of the last N months"),
      Option("keep-yearly", "N", "... of each of the last N years"),
  };
}

std::vector<CommandSpec> HostCommands() {
  std::vector<CommandSpec> c;
  c.push_back({"init",
               "--repo DIR [--chunk-size SIZE] [--compression-level -7..19] [--sync-level filesystem|file] "
               "[--encrypt --key-file FILE [--passphrase-file FILE]]",
               "create a repository",
               "DIR is created if missing and must be empty. Defaults: 1 MiB chunks, zstd level 1, sync level "
               "filesystem. --encrypt makes an encrypted repository, for good: with the key of FILE, or a new key "
               "written to FILE when it does not exist (print its recovery copy: `ferry key recovery`).",
               {},
               WithKey({Option("repo", "DIR", "the directory of the new repository").Directories(),
                        Option("chunk-size", "SIZE", "the chunk size, a power of two from 64K to 16M (default 1M)"),
                        Option("compression-level", "-7..19", "zstd's level (default 1)"),
                        Option("sync-level", "LEVEL",
                               "filesystem: one syncfs per point; file: fsync per file (default filesystem)")
                            .Choices({"filesystem", "file"}),
                        Flag("encrypt", "encrypt the repository's chunks at the source (needs --key-file)")}),
               kRepositories});
  c.push_back({"backup",
               "--repo DIR (--qmp SOCKET [--vm NAME] | --libvirt URI --vm NAME) [--disk NAME ...] [--exclude-disk NAME ...] "
               "[--chain NAME] [--rate-limit BYTES] [--threads N] [--key-file FILE [--passphrase-file FILE]]",
               "back up the disks of a running QEMU VM as one crash-consistent restore point; prints its id",
               "Incremental (only what the chain's dirty bitmaps mark) whenever the bitmaps can be trusted, full "
               "otherwise; `ferry list` says which and why (docs/cbt.md). SOCKET is a QMP monitor of Ferry's own: a "
               "unix socket path, unix:PATH or tcp:HOST:PORT.",
               {},
               WithRepo({Option("qmp", "SOCKET", "the VM's QMP monitor").Files(),
                         Option("libvirt", "URI", "a libvirt connection (qemu:///system, qemu+ssh://host/system)"),
                         Option("vm", "NAME", "the libvirt domain (name or UUID); with --qmp, refuse unless QEMU's -name is NAME"),
                         Option("disk", "NAME", "back up only this disk (QMP device id or libvirt target)").Repeatable(),
                         Option("exclude-disk", "NAME", "leave this disk out").Repeatable(), Chain(),
                         Option("rate-limit", "BYTES", "cap the read rate, bytes per second (4M, 100M)"), Threads(),
                         KeyFile(), PassphraseFile()}),
               kRepositories});
  c.push_back({"list", "--repo DIR [--json]", "list restore points, their chains, modes, locks and checks", "",
               {}, WithRepo({Json()}), kRepositories});
  c.push_back({"restore",
               "--repo DIR --point ID --disk NAME (--to PATH [--format raw|qcow2] [--threads N] | --libvirt URI --vm NAME "
               "[--target-disk DEV]) [--key-file FILE [--passphrase-file FILE]]",
               "restore one disk into a new image file (thin), or into an existing, shut-off libvirt domain",
               "A new image at PATH is refused if PATH exists; holes and zero blocks stay unallocated.",
               {},
               WithRepo({Point(), Option("disk", "NAME", "the disk of the point"),
                         Option("to", "PATH", "the new image file").Files(),
                         Option("format", "FORMAT", "the image's format (default raw)").Choices({"raw", "qcow2"}), Threads(),
                         Option("libvirt", "URI", "restore into a domain of this libvirt connection"),
                         Option("vm", "NAME", "the shut-off domain to restore into"),
                         Option("target-disk", "DEV", "its disk to overwrite (default: the disk's own target)"),
                         KeyFile(), PassphraseFile()}),
               kRepositories});
  c.push_back({"restore-vm",
               "--repo DIR --point ID --libvirt URI ([--name NEW] (--dir PATH | --pool POOL) [--format qcow2|raw] "
               "[--keep-macs] | --overwrite --yes) [--key-file FILE [--passphrase-file FILE]]",
               "restore a whole VM as a new libvirt domain, or over the original",
               "A new domain gets every disk of the point (thin) in PATH or the pool's directory, the NVRAM, and the "
               "saved definition with a new name (default <original>-restored), UUID and, unless --keep-macs, MAC "
               "addresses. --overwrite --yes powers the original off and rebuilds its disks in place.",
               {},
               WithRepo({Point(), Option("libvirt", "URI", "the libvirt connection"),
                         Option("name", "NEW", "the new domain's name"),
                         Option("dir", "PATH", "where the new disk images go").Directories(),
                         Option("pool", "POOL", "a directory-backed storage pool for them"),
                         Option("format", "FORMAT", "the new images' format (default qcow2)").Choices({"qcow2", "raw"}),
                         Flag("keep-macs", "keep the saved MAC addresses"),
                         Flag("overwrite", "restore over the original domain (needs --yes)"),
                         Flag("yes", "confirm --overwrite"), KeyFile(), PassphraseFile()}),
               kRepositories});
  c.push_back({"verify",
               "--repo DIR [--point ID] [--chain NAME] [--threads N] [--skip-verified-within DURATION] [--no-record]"
               " [--key-file FILE [--passphrase-file FILE]]",
               "check every manifest and index and read back every chunk the points reference",
               "Damaged chunks are quarantined (the next backup stores them again). Each point checked gets a check "
               "record that `ferry list` shows. Exit 0 when clean, 4 when damaged. An encrypted repository without "
               "--key-file: framing and CRC of the stored (cipher) bytes only.",
               {},
               WithRepo({Option("point", "ID", "check only this point"),
                         Option("chain", "NAME", "check only the points of this chain"), Threads(),
                         Option("skip-verified-within", "DURATION",
                                "do not read again chunks a clean check read within this long (7d)"),
                         Flag("no-record", "write no check records"), KeyFile(), PassphraseFile()}),
               kRepositories});
  c.push_back({"copy",
               "--repo SRC --to DST [--point ID]... [--vm NAME] [--chain NAME] [--bandwidth CAP] [--dry-run] [--json]",
               "copy restore points into another repository, sending only the chunks it lacks",
               "Each copy keeps the point's id and is complete or absent; points the target has are left alone, so "
               "a copy started again goes on where it stopped. The target's own retention applies (ferry prune on "
               "it). Exit 0 when every point was copied or present, 6 when one failed (docs/copy.md).",
               {},
               WithRepo({Option("to", "DST", "the target repository: a directory, ferry+tls://HOST:PORT/NAME or s3://...")
                             .Directories(),
                         Option("to-token-file", "FILE", "the target repository service's token").Files(),
                         Option("to-ca", "FILE", "CA certificates to trust for a ferry+tls:// target").Files(),
                         Option("to-server-name", "NAME", "the name in the target service's certificate"),
                         Option("point", "ID", "copy this point (default: every point)").Repeatable(),
                         Option("vm", "NAME", "only this VM's points"), Option("chain", "NAME", "only this chain's points"),
                         Flag("dry-run", "count what would travel, send nothing"), Bandwidth(), Json()}),
               kRepositories});
  std::vector<OptionSpec> prune = RetentionRules();
  prune.push_back(Option("vm", "NAME", "only this VM's points (name or uuid)"));
  prune.push_back(Option("chain", "NAME", "only this chain's points"));
  prune.push_back(Flag("dry-run", "say what would be removed, remove nothing"));
  prune.push_back(Json());
  c.push_back({"prune",
               "--repo DIR [--keep-last N] [--keep-within Nd] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] "
               "[--keep-yearly N] [--vm NAME] [--chain NAME] [--dry-run] [--json]",
               "remove the points no retention rule keeps, per VM and chain",
               "Prints each point, keep or remove, and why (docs/retention.md). Locked and in-use points stay. At "
               "least one rule is required.",
               {},
               WithRepo(prune),
               kRepositories});
  c.push_back({"remove", "--repo DIR --point ID", "remove one restore point (refused while it is locked or in use)", "",
               {}, WithRepo({Point()}), kRepositories});
  c.push_back({"lock", "--repo DIR --point ID (--days N | --for DURATION) [--reason TEXT]",
               "lock a point against removal; a lock is extended, never shortened", "", {},
               WithRepo({Point(), Option("days", "N", "for N days from now"),
                         Option("for", "DURATION", "for this long from now (90s, 12h, 7d)"),
                         Option("reason", "TEXT", "why, shown with the lock")}),
               kRepositories});
  c.push_back({"gc", "--repo DIR|URL [--dry-run] [--json] [--window MINUTES] [--threads N]",
               "remove the chunks no restore point references",
               "Safe while backups, restores and verifies run; a killed GC resumes where it stopped (docs/gc.md). "
               "In a bucket, backups that start meanwhile wait for it (docs/object-storage.md).",
               {},
               WithRepo({Flag("dry-run", "count what would be removed, remove nothing"), Json(),
                         Option("window", "MINUTES", "chunks younger than this stay (default 5)"), Threads()}),
               kRepositories});
  c.push_back({"space", "--repo DIR|URL [--json]", "stored, logical and unique bytes per point, dedup ratio, garbage",
               "", {}, WithRepo({Json()}), kRepositories});
  c.push_back({"inventory", "(--qmp-dir DIR | --libvirt URI) [--timeout SECONDS] [--json]",
               "list the VMs of a host (a directory of QMP sockets, or libvirt)", "", {},
               {Option("qmp-dir", "DIR", "a directory of QMP sockets, one per VM").Directories(),
                Option("libvirt", "URI", "a libvirt connection"),
                Option("timeout", "SECONDS", "how long a monitor's greeting may take (default 2)"), Json()},
               kHosts});
  c.push_back({"stage", "--repo DIR --point ID --vm NAME --disk NAME ... [--chain NAME] [--expires 24h]",
               "stage a point whose disks other processes write", "", {},
               WithRepo({Option("point", "ID", "the new point's id"), Option("vm", "NAME", "the VM's name"),
                         Option("vm-uuid", "UUID", "the VM's uuid"),
                         Option("hypervisor", "KIND", "the hypervisor kind recorded in the point"),
                         Option("disk", "NAME", "a disk the point will have").Repeatable(), Chain(),
                         Option("expires", "DURATION", "an abandoned staged point is removed after this (24h)")}),
               kStaged});
  c.push_back({"backup-disk", "--repo DIR --point ID --disk NAME --file PATH [--rate-limit BYTES] [--key-file FILE [--passphrase-file FILE]]",
               "write one disk of a staged point from a file or block device", "", {},
               WithRepo({Point(), Option("disk", "NAME", "the staged disk"),
                         Option("file", "PATH", "what to read (an image, a snapshot's block device)").Files(),
                         Option("rate-limit", "BYTES", "cap the read rate, bytes per second"), Threads(), KeyFile(),
                         PassphraseFile()}),
               kStaged});
  c.push_back({"commit", "--repo DIR --point ID", "make a staged point visible (every staged disk must be written)", "",
               {}, WithRepo({Point()}), kStaged});
  c.push_back({"discard", "--repo DIR --point ID", "give a staged point up", "", {}, WithRepo({Point()}), kStaged});
  c.push_back({"key create", "--key-file FILE [--passphrase-file FILE]",
               "make a new key file (a random key, wrapped under the passphrase); prints its fingerprint",
               "The file is written 0600 and never overwritten. Losing both it and its recovery copy loses the data "
               "of every repository encrypted with it.",
               {}, {KeyFile(), PassphraseFile()}, kKeys});
  c.push_back({"key recovery", "--key-file FILE [--passphrase-file FILE]",
               "print the key's recovery copy, to print or write on paper and keep safe", "", {},
               {KeyFile(), PassphraseFile()}, kKeys});
  c.push_back({"key restore", "--key-file FILE --recovery-file FILE [--passphrase-file FILE]",
               "make a key file again from a recovery copy (- reads it from stdin)", "", {},
               {KeyFile(), Option("recovery-file", "FILE", "the recovery copy, as `ferry key recovery` printed it")
                               .Files(),
                PassphraseFile()},
               kKeys});
  c.push_back({"key passwd", "--key-file FILE [--passphrase-file FILE] [--new-passphrase-file FILE]",
               "change a key file's passphrase (the key, and so the repositories, stay as they are)", "", {},
               {KeyFile(), PassphraseFile(),
                Option("new-passphrase-file", "FILE", "the new passphrase (default: $FERRY_NEW_PASSPHRASE)").Files()},
               kKeys});
  CommandSpec guardian{"_guardian", "", "internal: cleans up a backup's snapshot if the backup process dies", "", {},
                       {Option("qmp", "SOCKET", ""), Option("session", "ID", ""), Option("vm-key", "KEY", ""),
                        Option("runtime-dir", "DIR", ""), Option("scratch-dir", "DIR", "")},
                       kRepositories};
  guardian.hidden = true;
  c.push_back(guardian);
  return c;
}

// A coordinator command's options: its own, then how to reach the coordinator.
std::vector<OptionSpec> Connected(std::vector<OptionSpec> own) {
  own.push_back(Option("coordinator", "URL", "the coordinator's web API, http[s]://HOST:PORT (default: $FERRY_COORDINATOR)"));
  own.push_back(Option("token-file", "FILE", "the API token (default: $FERRY_TOKEN; never on the command line)").Files());
  own.push_back(Option("ca", "FILE", "CA certificates to trust for https:// (default: $FERRY_CA)").Files());
  return own;
}

std::vector<OptionSpec> Paged(std::vector<OptionSpec> own) {
  own.push_back(Json());
  own.push_back(Option("limit", "N", "at most N rows (a page)"));
  own.push_back(Option("offset", "N", "skip the first N rows"));
  return Connected(own);
}

CommandSpec Remote(std::string name, std::vector<std::string> positionals, std::string synopsis, std::string summary,
                   std::vector<OptionSpec> options, std::string details = "") {
  return {std::move(name), std::move(synopsis), std::move(summary), std::move(details), std::move(positionals),
          Connected(std::move(options)), kCoordinator};
}

CommandSpec RemoteList(std::string name, std::string summary, std::vector<OptionSpec> filters, std::string synopsis = "") {
  std::string s = synopsis.empty() ? "[--json] [--limit N] [--offset N]" : synopsis + " [--json] [--limit N] [--offset N]";
  return {std::move(name), s, std::move(summary), "", {}, Paged(std::move(filters)), kCoordinator};
}


std::vector<CommandSpec> CoordinatorCommands() {
  std::vector<CommandSpec> c;
  // HOST, WORKER, REPO, VM, JOB: an id or a name; POINT: an id of `point
  // list` or a point's id in its repository; sessions: ids.
  c.push_back(Remote("status", {}, "", "version, workers connected, queue depth", {}));
  c.push_back(RemoteList("host list", "hypervisor hosts, with their worker appliance's state", {}));
  c.push_back(Remote("host show", {"HOST"}, "[--json]", "one host, with its appliance", {Json()}));
  c.push_back(Remote("host add", {"NAME"}, "--platform proxmox|ovirt|ahv|libvirt [--cluster C]", "add a hypervisor host",
                     {Option("platform", "PLATFORM", "the host's hypervisor").Choices({"proxmox", "ovirt", "ahv", "libvirt"}),
                      Option("cluster", "C", "its cluster")}));
  c.push_back(Remote("host set", {"HOST"}, "[--platform P] [--cluster C]", "change a host",
                     {Option("platform", "PLATFORM", "the host's hypervisor").Choices({"proxmox", "ovirt", "ahv", "libvirt"}),
                      Option("cluster", "C", "its cluster")}));
  c.push_back(Remote("host rm", {"HOST"}, "", "remove a host", {}));
  c.push_back(RemoteList("vm list", "the VMs workers report", {Option("host", "NAME", "only this host's")}, "[--host NAME]"));
  c.push_back(Remote("vm show", {"VM"}, "[--json]", "one VM", {Json()}));
  c.push_back(RemoteList("worker list", "workers, their state, slots, heartbeat and version", {}));
  c.push_back(Remote("worker show", {"WORKER"}, "[--json]", "one worker", {Json()}));
  c.push_back(Remote("worker add", {"NAME"}, "[--bandwidth CAP]", "add a worker; prints its token once", {Bandwidth()}));
  c.push_back(Remote("worker set", {"WORKER"}, "--bandwidth CAP", "change a worker's bandwidth cap", {Bandwidth()}));
  c.push_back(Remote("worker rm", {"WORKER"}, "", "remove a worker", {}));
  std::vector<OptionSpec> repo = {
      Option("location", "PATH|URL", "a directory on the coordinator's host, ferry+tls://HOST:PORT/NAME, or s3://BUCKET/PREFIX?endpoint=URL (docs/object-storage.md)"),
      Option("repo-token-file", "FILE", "the repository service's token, or its key frk-... (read from the file)").Files(),
      Option("slots", "N", "disk tasks writing at once"), Option("capacity", "BYTES", "the space it may use"),
      Bandwidth()};
  c.push_back(RemoteList("repo list", "repositories, their slots, points and caps", {}));
  c.push_back(Remote("repo show", {"REPO"}, "[--json]", "one repository, with its space", {Json()}));
  c.push_back(Remote("repo add", {"NAME"},
                     "--location PATH|ferry+tls://HOST:PORT/NAME [--repo-token-file FILE] [--slots N] [--capacity BYTES] "
                     "[--bandwidth CAP]",
                     "add a repository", repo));
  c.push_back(Remote("repo set", {"REPO"},
                     "[--location L] [--repo-token-file FILE] [--slots N] [--capacity BYTES] [--bandwidth CAP]",
                     "change a repository", repo));
  c.push_back(Remote("repo rm", {"REPO"}, "", "remove a repository (its data stays)", {}));

  c.push_back(RemoteList("job list", "backup and copy jobs, their schedules, next runs, retention and last check", {}));
  c.push_back(Remote("job show", {"JOB"}, "[--json]", "one job (JOB: an id or a name)", {Json()}));
  std::vector<OptionSpec> job = {
      Option("repo", "ID|NAME", "the repository the job writes to"),
      Option("copy-from", "JOB", "a copy job: copy the points of this backup job into --repo"),
      Option("vm", "NAME", "a VM to back up").Repeatable(),
      Option("tag", "T", "the VMs with this tag").Repeatable(),
      Option("host", "H", "the VMs of this host").Repeatable(),
      Option("cluster", "C", "the VMs of this cluster").Repeatable(),
      Option("exclude-disk", "[VM/]DISK", "leave this disk out (of every VM, or of VM)").Repeatable(),
      Option("daily", "HH:MM", "run every day at this time (UTC)"),
      Option("every", "HOURS", "run every HOURS hours"),
      Option("cron", "EXPR", "run on this cron schedule (docs/schedules.md)"),
      Option("permitted-hours", "0-6,22-23", "start only within these hours"),
      Option("retries", "N", "retry a failed VM N times"),
      Option("retry-interval", "SECONDS", "wait this long between retries"),
      Option("chain", "NAME", "the backup chain (default: the job's own)"),
      Flag("disabled", "create it disabled (no scheduled runs)")};
  for (auto& rule : RetentionRules()) job.push_back(rule);
  job.push_back(Option("lock-days", "N", "lock every new point for N days"));
  job.push_back(Option("check-daily", "HH:MM", "health check the job's points every day at this time"));
  job.push_back(Option("check-cron", "EXPR", "... on this cron schedule"));
  job.push_back(Option("check-skip-verified-days", "N", "a check skips chunks a clean check read within N days"));
  job.push_back(Option("file", "JOB.json", "the job as the API's JSON instead of the options").Files());
  c.push_back(Remote("job create", {"[NAME]"},
                     "--repo ID|NAME [--vm NAME ...] [--tag T ...] [--host H ...] [--cluster C ...] "
                     "[--exclude-disk [VM/]DISK ...] [--daily HH:MM | --every HOURS | --cron EXPR] "
                     "[--permitted-hours 0-6,22-23] [--retries N] [--retry-interval SECONDS] [--chain NAME] [--disabled] "
                     "[--keep-last N] [--keep-within Nd] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] "
                     "[--keep-yearly N] [--lock-days N] [--check-daily HH:MM | --check-cron EXPR] "
                     "[--check-skip-verified-days N] | --copy-from JOB --repo ID|NAME [schedule, retention, "
                     "--lock-days, check options] | --file JOB.json",
                     "create a backup job, or a copy job", job,
                     "A VM matching any of --vm, --tag, --host, --cluster is in. The retention options are those of "
                     "`ferry prune` (docs/retention.md, \"Jobs\"). A copy job (--copy-from) copies the restore points "
                     "of a backup job into another repository, only the chunks that repository lacks; its retention, "
                     "locks and checks apply there (docs/copy.md, \"Copy jobs\")."));
  c.push_back(Remote("job set", {"JOB"}, "--file PATCH.json", "change a job (the API's JSON members to change)",
                     {Option("file", "PATCH.json", "the members to change").Files()}));
  c.push_back(Remote("job rm", {"JOB"}, "", "remove a job", {}));
  c.push_back(Remote("job start", {"JOB"}, "[--watch]", "start a session of the job now",
                     {Flag("watch", "follow the session; exit 0 when it succeeded, 1 otherwise")}));
  c.push_back(Remote("job stop", {"JOB"}, "", "stop the job's running session", {}));
  c.push_back(Remote("job check", {"JOB"}, "[--watch]", "start a health check of the job's points (a session of kind check)",
                     {Flag("watch", "follow the session; exit 0 when it succeeded, 1 otherwise")}));

  c.push_back(RemoteList("session list", "sessions (backup unless --kind says otherwise)",
                         {Option("job", "JOB", "only this job's"),
                          Option("kind", "KIND", "backup (default), restore, check, copy or all")
                              .Choices({"backup", "restore", "check", "copy", "all"})},
                         "[--job JOB] [--kind backup|restore|check|copy|all]"));
  c.push_back(Remote("session show", {"ID"}, "[--json]",
                     "a session, its tasks' rates, how busy each stage was and the bottleneck", {Json()}));
  c.push_back(Remote("session log", {"ID"}, "[--json]", "a session's log", {Json()}));
  c.push_back(Remote("session watch", {"ID"}, "", "follow a session live; exit 0 when it succeeded, 1 otherwise", {}));
  c.push_back(Remote("session stop", {"ID"}, "", "stop a session (of any kind)", {}));

  c.push_back(RemoteList("point list", "restore points recorded by sessions, with their lock and last check",
                         {Option("job", "JOB", "only this job's"), Option("vm", "NAME", "only this VM's"),
                          Flag("removed", "include removed points")},
                         "[--job JOB] [--vm NAME] [--removed]"));
  c.push_back(Remote("point show", {"POINT"}, "[--json]", "one restore point", {Json()}));
  c.push_back(Remote("point rm", {"POINT"}, "", "remove a point from its repository (refused while locked)", {}));
  c.push_back(Remote("point lock", {"POINT"}, "(--days N | --until 2027-01-31T00:00:00Z) [--reason TEXT]",
                     "lock a point against removal (only ever longer)",
                     {Option("days", "N", "for N days from now"), Option("until", "TIME", "until this time (RFC 3339)"),
                      Option("reason", "TEXT", "why")}));

  std::vector<OptionSpec> retries = {Option("retries", "N", "retry a failed restore N times"),
                                     Option("retry-interval", "SECONDS", "wait this long between retries"),
                                     Flag("wait", "follow the session; exit 0 when it succeeded, 1 otherwise")};
  std::vector<OptionSpec> disk = {Option("host", "H", "the host whose worker restores"),
                                  Option("to", "PATH", "into a new image file on the host"),
                                  Option("format", "FORMAT", "its format (default raw)").Choices({"raw", "qcow2"}),
                                  Option("into-vm", "DOMAIN", "into this shut-off libvirt domain"),
                                  Option("target-disk", "D", "its disk to overwrite")};
  disk.insert(disk.end(), retries.begin(), retries.end());
  c.push_back(Remote("restore disk", {"POINT", "DISK"},
                     "--host H (--to PATH [--format raw|qcow2] | --into-vm DOMAIN [--target-disk D]) [--wait]",
                     "restore one disk onto host H, run by H's worker", disk,
                     "POINT is an id of `point list`, or a point's id in its repository."));
  std::vector<OptionSpec> vm = {Option("host", "H", "the host whose worker restores (default with --overwrite: the VM's)"),
                                Option("dir", "PATH", "where the new disk images go"),
                                Option("pool", "POOL", "a directory-backed storage pool for them"),
                                Option("name", "NEW", "the new domain's name"),
                                Option("format", "FORMAT", "the new images' format (default qcow2)").Choices({"qcow2", "raw"}),
                                Flag("keep-macs", "keep the saved MAC addresses"),
                                Flag("overwrite", "restore over the original domain (needs --yes)"),
                                Flag("yes", "confirm --overwrite")};
  vm.insert(vm.end(), retries.begin(), retries.end());
  c.push_back(Remote("restore vm", {"POINT"},
                     "--host H ((--dir PATH | --pool POOL) [--name NEW] [--format qcow2|raw] [--keep-macs] | --overwrite "
                     "--yes) [--wait]",
                     "restore a whole VM as a new libvirt domain on host H, or over the original", vm));
  c.push_back(RemoteList("restore list", "restore sessions (as `session list --kind restore`)", {}));
  return c;
}

ProgramSpec MakeFerryProgram() {
  ProgramSpec p;
  p.name = "ferry";
  p.summary = "back up and restore KVM virtual machines, and drive a Ferry coordinator";
  p.description =
      "The host commands (init ... discard) work on a repository and a hypervisor from this machine; the "
      "coordinator commands are calls to a coordinator's web API; they take an object by its id or its name "
      "(HOST, WORKER, REPO, VM, JOB; POINT: an id of `point list` or its id in the repository). Options go "
      "anywhere on the line, as --name value or --name=value. See docs/cli.md.";
  p.global_options = VerbosityFlags();
  for (auto& c : HostCommands()) p.commands.push_back(std::move(c));
  for (auto& c : CoordinatorCommands()) p.commands.push_back(std::move(c));
  p.footer =
      "Environment: FERRY_REPO stands for --repo, FERRY_REPOSITORY_TOKEN for --repo-token-file's token, "
      "FERRY_COORDINATOR for --coordinator, FERRY_TOKEN for --token-file's token, FERRY_CA for --ca, "
      "FERRY_PASSPHRASE for --passphrase-file's passphrase.\n"
      "\n"
      "Exit codes: 0 ok, 1 a watched session did not succeed, 2 bad input, 3 not found, 4 corrupt data, 5 "
      "environment (permissions, disk full), 6 retryable, 130 interrupted (docs/error-policy.md).";
  return p;
}

}  // namespace

const ProgramSpec& FerryProgram() {
  static const ProgramSpec program = MakeFerryProgram();
  return program;
}

bool IsCoordinatorCommand(const CommandSpec& command) { return command.group == kCoordinator; }

}  // namespace ferry::cli
