// RestoreRequest: what POST /api/v1/restores asks for, read strictly from its
// JSON body (docs/api.md, "Restores").
//
// This file checks the request's form only: members, types, which target
// goes with a disk and which with a whole VM. Whether the point, the disk
// and the host exist, and whether the host has a worker to run it, is the
// SessionRunner's to check against the database (StartRestore). The target
// is stored with the restore as canonical JSON (RestoreTargetToJson), and
// read back from there when the work is handed out (RestoreTargetFromJson).
#pragma once

#include <cstdint>
#include <string>

#include <boost/json.hpp>

namespace ferry::coordinator {

struct RestoreTarget {
  enum class Type {
    kFile,            // disk: a new image file on the host
    kLibvirtDomain,   // disk: into an existing, shut-off libvirt domain of the host
    kNewDomain,       // VM: a new libvirt domain on the host
    kOriginalDomain,  // VM: over the original libvirt domain (powered off first)
  };
  Type type = Type::kFile;
  std::string path;         // file: absolute
  std::string format;       // file: raw (default) | qcow2; new_domain: qcow2 (default) | raw
  std::string vm;           // libvirt_domain: the domain, by name or UUID
  std::string disk;         // libvirt_domain: its disk to replace (default: the disk restored)
  std::string name;         // new_domain: default "<VM>-restored" (filled in by StartRestore)
  std::string directory;    // new_domain: where the images go, or
  std::string pool;         //   a directory-backed storage pool
  bool keep_macs = false;   // new_domain
};

// "file", "libvirt_domain", "new_domain", "original_domain".
const char* RestoreTargetTypeName(RestoreTarget::Type type);
// Whether the target takes a whole VM (no `disk` in the request).
bool RestoresWholeVm(RestoreTarget::Type type);

struct RestoreRequest {
  int64_t point = 0;   // the id of a restore point (GET /points)
  std::string disk;    // the point's disk; empty: the whole VM
  std::string host;    // the target host; empty only for original_domain (the VM's host)
  RestoreTarget target;
  int64_t retry_count = 3;
  int64_t retry_interval_s = 60;
};

// Reads a request body; FieldError naming the member for anything wrong.
RestoreRequest ParseRestoreRequest(const std::string& body);

// The canonical JSON of a target (defaults filled in), as stored and shown.
boost::json::object RestoreTargetToJson(const RestoreTarget& target);
// Reads a stored target back; kInternal if it is not one (a bug: only
// RestoreTargetToJson writes them).
RestoreTarget RestoreTargetFromJson(const boost::json::value& json);

// "host-a:/var/restore/vda.qcow2", "disk vdb of domain web01 on host-a", ...:
// where a restore goes, for the session log and reason.
std::string DescribeRestoreTarget(const RestoreTarget& target, const std::string& host);

}  // namespace ferry::coordinator
