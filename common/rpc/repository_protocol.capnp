@0x81e7c391b85fb020;
# The repository service protocol (docs/repository-service.md): a worker (or
# the ferry CLI) reaches a repository that lives on another machine. Version
# 1, first slice: chunk storage (what a backup, a restore and a verify need
# of ChunkStore / ChunkReader). Additions keep old ordinals and are optional.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ferry::rpc");

const repositoryProtocolVersion :UInt32 = 1;

interface RepositoryService {
  # The bootstrap capability. Fails ("bad input: ...") for a token that is not
  # one of the service's, or a repository that token was not given.
  open @0 (protocolVersion :UInt32, token :Text, repository :Text)
       -> (repository :Repository, info :RepositoryInfo);
}

struct RepositoryInfo {
  name @0 :Text;
  chunkSize @1 :UInt32;
  format @2 :Text;         # ferry-repository-v2
}

interface Repository {
  # The positions in `digests` (32 bytes each, at most 4096) of chunks the
  # repository does not hold.
  findMissing @0 (digests :List(Data)) -> (missing :List(UInt32));
  # Stores an encoded chunk (docs/repository-format.md, "Chunk files"); the
  # service checks its framing, CRC and digest before linking it in. False:
  # an intact-looking chunk of that digest was already there.
  insert @1 (digest :Data, encoded :Data) -> (stored :Bool);
  # Every chunk inserted so far is durable (the repository's sync level).
  sync @2 () -> ();
  # The encoded bytes of a chunk; "corrupt: ..." when it is missing.
  read @3 (digest :Data) -> (encoded :Data);
  # Moves a chunk found damaged into the repository's quarantine.
  quarantine @4 (digest :Data, reason :Text) -> (where :Text);
}
