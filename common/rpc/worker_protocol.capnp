@0xa5e34b4c4815e2a4;
# Ferry worker protocol, version 1: between a worker and the coordinator.
# Documented in docs/worker-protocol.md. Rules for changing it: never renumber
# or retype a field; add fields with new ordinals; bump protocolVersion only
# for a change an old peer cannot ignore.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ferry::rpc");

const protocolVersion :UInt32 = 1;

interface Coordinator {
  # The bootstrap capability, the only one a connection gets for free. Every
  # other call goes through the WorkerSession that registerWorker returns, so
  # holding that capability is the proof of a valid worker token.
  registerWorker @0 (request :RegisterRequest) -> (session :WorkerSession, reply :RegisterReply);
}

struct RegisterRequest {
  protocolVersion @0 :UInt32;
  token @1 :Text;        # the worker's own token (POST /api/v1/workers); never logged
  host @2 :Text;         # name of the hypervisor host the worker runs on
  platform @3 :Text;     # proxmox | ovirt | ahv | libvirt
  cluster @4 :Text;      # empty: keep the cluster configured for the host
  taskSlots @5 :UInt32;  # disk tasks it runs at once (>= 1)
  version @6 :Text;      # worker software version
  running @7 :List(Text);  # assignment ids still running from an earlier connection
  # The snapshots this worker process holds (taken, not yet released), when
  # reportsHeld: a snapshot the coordinator counts as held by this worker but
  # not listed is lost (the worker restarted). Without reportsHeld (an older
  # worker, the simulator) the coordinator cannot tell and assumes it is held.
  heldSnapshots @8 :List(UInt64);
  reportsHeld @9 :Bool;
  # It reaches only its own host's hypervisor (QMP sockets, local libvirt):
  # never give it snapshots of other hosts' VMs, even when their host has no
  # worker. False (an older worker, the simulator): any host's.
  ownHostSnapshotsOnly @10 :Bool;
}

struct RegisterReply {
  workerId @0 :UInt64;
  workerName @1 :Text;
  heartbeatIntervalMs @2 :UInt32;  # send a heartbeat at least this often
  heartbeatDeadlineMs @3 :UInt32;  # silent longer: unreachable, its work requeued
  resumed @4 :List(Text);          # of `running`, the assignments still the worker's
  # Of `heldSnapshots`, those the coordinator does not count as this
  # worker's (lost and retaken meanwhile, or never known): remove them.
  dropSnapshots @5 :List(UInt64);
}

interface WorkerSession {
  heartbeat @0 (running :List(Text)) -> (cancel :List(Text));
  # `running`: assignment ids the worker is executing. `cancel`: the ones it
  # must stop (session stopped, or the assignment was given to another worker).

  reportInventory @1 (vms :List(VmInventory)) -> ();
  # The VMs on the worker's host, replacing what was reported before.

  pullWork @2 (freeSlots :UInt32, waitMs :UInt32) -> (items :List(WorkItem));
  # Asks for work: disk tasks up to `freeSlots`, plus any snapshot/release work
  # (which takes no slot). Waits up to `waitMs` when there is nothing yet
  # (long poll). Work for the worker's own host comes first.

  reportProgress @3 (progress :Progress) -> (cancel :Bool, repositoryBytesPerS :UInt64);
  # repositoryBytesPerS (disk work): this task's share of its repository's
  # bandwidth cap from now on (bytes/s sent to the repository; 0: no cap).

  reportResult @4 (result :WorkResult) -> (accepted :Bool);
  # accepted = false: the assignment is no longer this worker's (it was
  # requeued after a missed deadline); the worker discards its result.
}

struct VmInventory {
  name @0 :Text;
  uuid @1 :Text;
  state @2 :Text;          # running | shut-off | paused
  tags @3 :List(Text);
  disks @4 :List(DiskInventory);
}

struct DiskInventory {
  name @0 :Text;           # target name, e.g. vda, scsi0
  sizeBytes @1 :UInt64;
  format @2 :Text;         # qcow2 | raw | ...
}

struct VmRef {
  name @0 :Text;
  uuid @1 :Text;
  host @2 :Text;
  platform @3 :Text;
}

struct RepositoryRef {
  id @0 :UInt64;
  name @1 :Text;
  location @2 :Text;       # a path reachable from the worker, or a repository service
                           # address (ferry+tls://HOST:PORT/NAME, docs/repository-service.md)
  token @3 :Text;          # for a service address: the token to open it with (never logged)
}

struct WorkItem {
  assignmentId @0 :Text;   # unique per attempt; progress and results quote it
  sessionId @1 :UInt64;
  vm @2 :VmRef;
  union {
    snapshot @3 :SnapshotWork;
    backupDisk @4 :DiskWork;
    release @5 :ReleaseWork;
    restore @6 :RestoreWork;   # added in protocol version 1: an older worker reports it internal
  }
}

struct SnapshotWork {
  # Take one crash-consistent snapshot of the listed disks of the VM.
  snapshotId @0 :UInt64;
  disks @1 :List(Text);
  chain @2 :Text;
  pointId @3 :Text;        # the restore point this snapshot's disks go into
  repository @4 :RepositoryRef;  # where the point is staged (and the chain's history read)
}

struct DiskWork {
  taskId @0 :UInt64;
  disk @1 :Text;
  snapshotId @2 :UInt64;
  exportUri @3 :Text;      # where the snapshot holder exports this disk (NBD URI)
  repository @4 :RepositoryRef;
  chain @5 :Text;
  tier @6 :Text;           # host | cluster | any: why this worker got it
  attempt @7 :UInt32;
  pointId @8 :Text;        # write this disk's index into this (staged) restore point
  readPlan @9 :Text;       # the snapshot holder's plan for this disk (DiskExport.readPlan), verbatim
  workerBandwidth @10 :Text;  # the worker's cap as configured in the API (docs/throttling.md
                              # grammar, local time of the worker); "": the worker's own setting
  repositoryBytesPerS @11 :UInt64;  # this task's share of the repository's cap (0: no cap);
                                    # updated by reportProgress replies
}

struct ReleaseWork {
  # The VM's disk tasks have all ended: commit the restore point if `commit`,
  # then remove the snapshot.
  snapshotId @0 :UInt64;
  commit @1 :Bool;
  repository @2 :RepositoryRef;
  pointId @3 :Text;        # the staged restore point to commit (or discard)
}

struct RestoreWork {
  # Restore from a committed restore point onto this worker's own host (the
  # coordinator hands it to a worker of the target host only): one disk, or
  # the whole VM. Takes one slot for its whole run. WorkItem.vm is the VM the
  # point was made of. The result's bytesRead is the restored size,
  # bytesStored the data bytes written (holes excluded).
  taskId @0 :UInt64;
  repository @1 :RepositoryRef;
  pointId @2 :Text;
  disk @3 :Text;           # the point's disk to restore; empty: the whole VM
  tier @4 :Text;           # host: why this worker got it
  attempt @5 :UInt32;
  union {
    toFile @6 :RestoreToFile;              # disk: a new image file
    intoDomain @7 :RestoreIntoDomain;      # disk: into an existing, shut-off libvirt domain
    newDomain @8 :RestoreNewDomain;        # VM: a new libvirt domain
    overOriginal @9 :Void;                 # VM: over the original libvirt domain (powered off first)
  }
}

struct RestoreToFile {
  path @0 :Text;           # absolute; refused if it exists (nothing is overwritten)
  format @1 :Text;         # raw | qcow2
}

struct RestoreIntoDomain {
  domain @0 :Text;         # a libvirt domain of this host, by name or UUID; must be shut off
  targetDisk @1 :Text;     # its disk whose image is rebuilt (same format) and renamed over
}

struct RestoreNewDomain {
  name @0 :Text;           # the new domain's name (the coordinator fills in the default)
  directory @1 :Text;      # where the images go, or:
  pool @2 :Text;           # a directory-backed storage pool
  format @3 :Text;         # qcow2 | raw
  keepMacs @4 :Bool;
}

struct Progress {
  assignmentId @0 :Text;
  bytesDone @1 :UInt64;
  bytesTotal @2 :UInt64;
  bytesStored @3 :UInt64;
  # Disk work, live (docs/worker-protocol.md, "Statistics"): bytes read from
  # the source and sent to the repository so far, and the stages' busy time
  # so far. Not set by an older worker (stages: hasStages() false).
  bytesRead @4 :UInt64;
  bytesSent @5 :UInt64;
  stages @6 :StageStats;
}

struct StageStats {
  # How busy each stage of a disk's data path was (ferry/common/stage_busy.h),
  # in microseconds of wall time: the bottleneck is the busiest stage.
  wallUs @0 :UInt64;         # the disk's run so far
  sourceBusyUs @1 :UInt64;   # a read or map request outstanding at the source
  computeBusyUs @2 :UInt64;  # the compute threads' busy time over their number
  networkBusyUs @3 :UInt64;  # waiting for a repository service (remoteStore)
  targetBusyUs @4 :UInt64;   # waiting for a local repository's storage (not remoteStore)
  remoteStore @5 :Bool;      # a repository service: network measured, target inside it
}

struct DiskExport {
  disk @0 :Text;
  uri @1 :Text;
  readPlan @2 :Text;       # how to read it (incremental base, bitmap, CBT record): JSON owned by
                           # the workers (docs/worker-protocol.md), carried to the disk task verbatim
  hostLocal @3 :Bool;      # readable only on the snapshot's host (a unix socket): the
                           # disk's tasks go to workers on that host only (host tier)
}

struct WorkResult {
  assignmentId @0 :Text;
  ok @1 :Bool;
  errorKind @2 :Text;      # as in docs/error-policy.md: retryable, bad_input, ...
  error @3 :Text;
  bytesRead @4 :UInt64;
  bytesStored @5 :UInt64;
  exports @6 :List(DiskExport);  # snapshot work: one per disk
  pointId @7 :Text;              # release work with commit: the restore point
  log @8 :List(Text);
  # Disk work (docs/worker-protocol.md, "Statistics"): encoded bytes sent to
  # the repository (resends included) and the stages' busy time over the
  # whole disk. Not set by an older worker (stages: hasStages() false).
  bytesSent @9 :UInt64;
  stages @10 :StageStats;
}
