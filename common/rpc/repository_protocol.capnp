@0x81e7c391b85fb020;
# The repository service protocol (docs/repository-service.md): a worker (or
# the ferry CLI) reaches a repository that lives on another machine, with the
# same operations as a local one (ChunkStore, ChunkReader, PointStore).
# Version 1. Additions keep old ordinals and are optional.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ferry::rpc");

const repositoryProtocolVersion :UInt32 = 1;

interface RepositoryService {
  # The bootstrap capability. Fails ("bad_input: ...") for a token that is not
  # one of the service's, or a repository that token was not given.
  open @0 (protocolVersion :UInt32, token :Text, repository :Text)
       -> (repository :Repository, info :RepositoryInfo);
}

struct RepositoryInfo {
  name @0 :Text;
  chunkSize @1 :UInt32;
  format @2 :Text;         # ferry-repository-v2
  id @3 :Text;             # the repository's id (ferry-repository.json)
  zstdLevel @4 :Int32;     # what backups into it compress with
  # An encrypted repository's key fingerprint (docs/encryption.md); "" for a
  # plain one. Added within v1: an older service leaves it empty, and an
  # older service cannot open an encrypted (v3) repository at all.
  keyFingerprint @5 :Text;
}

interface Repository {
  # --- chunks (ChunkStore, ChunkReader) ---
  # The positions in `digests` (32 bytes each, at most 4096) of chunks the
  # repository does not hold.
  findMissing @0 (digests :List(Data)) -> (missing :List(UInt32));
  # Stores an encoded chunk (docs/repository-format.md, "Chunk files"); the
  # service checks its framing, CRC and digest before linking it in. False:
  # an intact-looking chunk of that digest was already there. A client keeps
  # a bounded window of inserts in flight; each reply acknowledges its chunk.
  insert @1 (digest :Data, encoded :Data) -> (stored :Bool);
  # Every chunk inserted so far is durable (the repository's sync level).
  sync @2 () -> ();
  # The encoded bytes of a chunk; "corrupt: ..." when it is missing.
  read @3 (digest :Data) -> (encoded :Data);
  # Moves a chunk found damaged into the repository's quarantine.
  quarantine @4 (digest :Data, reason :Text) -> (where :Text);

  # --- restore points (PointStore) ---
  # Committed point ids, oldest first.
  listPoints @5 () -> (ids :List(Text));
  # Every readable manifest (manifest.json, verbatim: the client checks its
  # SHA-256) and one problem per bad entry of points/.
  loadPoints @6 () -> (manifests :List(Data), problems :List(PointProblem));
  loadPoint @7 (id :Text) -> (manifest :Data);
  # A disk's fixed index of a committed point, read in pieces (the client
  # checks it against the SHA-256 in the manifest it loaded).
  openIndex @8 (id :Text, disk :Text) -> (index :IndexReader, size :UInt64);
  # A configuration file of a committed point (at most 16 MiB).
  readFile @9 (id :Text, name :Text) -> (content :Data);
  # PointStore::Stage. The lease holds a point staged with expiry 0: while
  # the client holds it (its connection lives), the staging stays.
  stage @10 (header :StagedPoint) -> (header :StagedPoint, lease :StagingLease);
  # PointStore::WriteDisk: the disk's lock, held while the client holds the
  # upload. The index is sent once written, then finish() records the disk.
  writeDisk @11 (id :Text, disk :Text) -> (upload :IndexUpload, indexFile :Text);
  addFile @12 (id :Text, kind :Text, name :Text, content :Data, origin :Text) -> (record :ConfigFile);
  commit @13 (id :Text) -> (manifest :Data);
  discard @14 (id :Text) -> ();
  removeExpired @15 () -> (ids :List(Text));
  listStaged @16 () -> (ids :List(Text));

  # --- committed points' lifecycle (docs/retention.md); added within v1 ---
  # A service without them answers "unimplemented". Lock checks use the
  # service's clock, never the client's.
  # PointStore::Remove: refused while the point is locked or leased.
  removePoint @17 (id :Text) -> ();
  # PointStore::ReadLock; `present` false when the point has no lock.
  readLock @18 (id :Text) -> (present :Bool, lock :PointLock);
  # PointStore::SetLock until `lockedUntil` (Unix seconds).
  setLock @19 (id :Text, lockedUntil :Int64, reason :Text) -> (lock :PointLock);
  # PointStore::Lease: the service holds the point's read lease while the
  # client holds `lease` (and its connection lives).
  leasePoint @20 (id :Text) -> (lease :PointLease);

  # --- health checks (ferry/common/point_check.h); added within v1 ---
  # PointStore::LoadChecks: each a check record's JSON (ferry-point-check-v1).
  loadChecks @21 () -> (checks :List(Data));
  # PointStore::RecordCheck; the service parses the record before storing it.
  recordCheck @22 (check :Data) -> ();

  # --- upkeep (ferry/common/gc.h, docs/gc.md); added within v1 ---
  # Run on the service's directory, off its event loop; the reports are
  # their JSON (GcReportJson, SpaceReportJson). A second GC while one runs
  # fails "retryable: a GC is running ...". Cancelling the call (or losing
  # the connection) interrupts the GC, which the next one resumes.
  # windowS >= 0; threads 0 = the default (4), at most 64.
  collectGarbage @23 (windowS :Int64, dryRun :Bool, threads :UInt32) -> (report :Data);
  measureSpace @24 () -> (report :Data);
}

interface PointLease {}

struct PointLock {
  lockedUntil @0 :Int64;
  setAt @1 :Int64;
  reason @2 :Text;
}

interface IndexReader {
  # At most 4 MiB from `offset`; short only at the end.
  read @0 (offset :UInt64, length :UInt32) -> (data :Data);
}

interface IndexUpload {
  # The index's bytes, in order, at most 4 MiB a call.
  write @0 (offset :UInt64, data :Data) -> ();
  # Records the disk (DiskWriter::Finish): the service fills in index_file
  # and the index's SHA-256 from the bytes it received, which must match
  # `indexSha256` (what the client wrote).
  finish @1 (record :DiskRecord, indexSha256 :Data) -> ();
}

interface StagingLease {}

struct PointProblem {
  entry @0 :Text;
  message @1 :Text;
}

struct StagedPoint {
  id @0 :Text;
  vmName @1 :Text;
  vmUuid @2 :Text;
  vmHypervisor @3 :Text;
  chain @4 :Text;
  startedAt @5 :Text;
  disks @6 :List(Text);
  expiresAt @7 :Int64;
}

struct ConfigFile {
  kind @0 :Text;
  name @1 :Text;
  origin @2 :Text;
  sha256 @3 :Data;
}

struct DiskRecord {
  # manifest.h's DiskRecord (docs/repository-format.md, "Manifest").
  name @0 :Text;
  size @1 :UInt64;
  chunkSize @2 :UInt32;
  sourceFormat @3 :Text;
  chunks @4 :UInt64;
  zeroChunks @5 :UInt64;
  newChunks @6 :UInt64;
  reusedChunks @7 :UInt64;
  readBytes @8 :UInt64;
  storedBytes @9 :UInt64;
  unchangedChunks @10 :UInt64;
  healedChunks @11 :UInt64;
  cbtMode @12 :Text;
  cbtReason @13 :Text;
  cbtBitmap @14 :Text;
  cbtGeneration @15 :Text;
  cbtDiskIdentity @16 :Text;
  indexHmac @17 :Text;     # encrypted repository: RepositoryKey::DiskRecordMac
}
