// Restore-point manifest (docs/repository-format.md, "Manifest").
// JSON, so a person can read it; the "format" member is its versioned magic.
// v2 (written since repository v2) ends in a SHA-256 over every other byte of
// the file, so any change to a committed manifest is detected; v1 manifests
// (Ferry 0.1) are read, and reported as unprotected by verify.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/common/checksum.h"

namespace ferry {

inline constexpr char kManifestFamily[] = "ferry-restore-point";
inline constexpr int kManifestVersion = 2;  // what this Ferry writes (and the newest it reads)

// How a disk's data was read, and the changed-block-tracking state the next
// backup of the same chain must find to trust an incremental (docs/cbt.md).
struct CbtRecord {
  std::string mode;            // "full" or "incremental"
  std::string reason;          // why a full read was needed ("" for incremental)
  std::string bitmap;          // the dirty bitmap started at this point's snapshot
  std::string generation;      // random token, also the bitmap name's suffix
  std::string disk_identity;   // the disk's image (file name) at this point
};

struct DiskRecord {
  std::string name;           // what the hypervisor calls the disk (QMP: device id)
  uint64_t size = 0;          // bytes
  uint32_t chunk_size = 0;
  std::string source_format;  // qcow2, raw, ...
  std::string index_file;     // file name inside the point's directory
  Digest index_sha256;
  // Encrypted repository: RepositoryKey::DiskRecordMac of this record, hex;
  // "" in a plain repository (docs/encryption.md, "Manifests").
  std::string index_hmac;
  // Statistics of the run that made this point.
  uint64_t chunks = 0;
  uint64_t zero_chunks = 0;
  uint64_t new_chunks = 0;     // chunks stored by this run
  uint64_t reused_chunks = 0;  // chunks already in the repository
  uint64_t read_bytes = 0;     // bytes read from the source
  uint64_t stored_bytes = 0;   // bytes written into the chunk store
  uint64_t unchanged_chunks = 0;  // incremental: digests taken from the previous point
  uint64_t healed_chunks = 0;     // incremental: unchanged, but read again because the
                                  // previous point's chunk was missing (quarantined)
  CbtRecord cbt;               // empty mode: made without CBT (older points)
};

struct VmIdentity {
  std::string name;
  std::string uuid;
  std::string hypervisor;  // "qemu" for a QMP host
};

// A file of the VM's configuration stored in the point's directory
// (domain XML, QEMU command line, UEFI NVRAM, ...).
struct ConfigFileRecord {
  std::string kind;    // "libvirt-domain-xml", "qemu-command-line", "uefi-nvram", ...
  std::string name;    // file name inside the point's directory
  std::string origin;  // where it came from on the host (a path)
  Digest sha256;
};

struct RestorePointManifest {
  int format_version = kManifestVersion;  // as read; written always as kManifestVersion
  std::string id;
  std::string chain;  // the backup chain this point belongs to ("" for none)
  VmIdentity vm;
  std::string started_at;    // RFC 3339, UTC
  std::string completed_at;  // RFC 3339, UTC
  std::vector<DiskRecord> disks;
  std::vector<ConfigFileRecord> config_files;
  // The program that wrote the file, "ferry 0.1.0" (WriterName()); "" in a
  // manifest written before the member existed. Informational only: no reader
  // decides anything by it. Kept as read, so a manifest passed on (over the
  // repository service, in `ferry list --json`) names its real writer.
  std::string writer;

  const DiskRecord* FindDisk(const std::string& name) const;
  const ConfigFileRecord* FindConfig(const std::string& kind) const;
};

// The v2 file: the JSON object, its last member "manifest_sha256" (see
// ManifestFromJson), and a newline.
std::string ManifestToJson(const RestorePointManifest& manifest);
// Reads v1 and v2. Throws kCorrupt naming `source` and what is wrong: a
// checksum that does not match, a member missing or of the wrong type, a disk
// (or index, or configuration file) named twice. A newer format: kBadInput.
RestorePointManifest ManifestFromJson(const std::string& json, const std::string& source);

// The v2 manifest's checksum layout, for other small JSON records too (a
// point's lock): `object_text` (one serialized JSON object) with a last
// member `member` holding the SHA-256 of the whole file without those 64 hex
// digits, and a newline.
std::string SealJson(std::string object_text, std::string_view member);
// Checks that layout and the digest before anything else is read; kCorrupt
// "<what>: ..." naming what is wrong.
void CheckSealedJson(std::string_view text, std::string_view member, const std::string& what);

// "ferry <kVersion>": the "writer" member of every JSON record a repository
// writes (manifests, the staged point header, locks, ferry-repository.json).
std::string WriterName();

// "2026-11-22T03:42:10Z" for now.
std::string NowRfc3339();

}  // namespace ferry
