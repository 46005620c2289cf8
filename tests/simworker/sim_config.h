// ferry-simworker's inputs: the workers file, DISKSPECs and the command line.
// Every problem is a ferry::Error kBadInput naming the option or the field
// (e.g. "[2].vms[0].disks[1].size"), so main exits 2 with a clear message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::simworker {

struct SimDisk {
  std::string name;
  uint64_t size = 0;  // 0: unknown (a backup then claims 1 GiB read)
  std::string format = "raw";
};

struct SimVm {
  std::string name;
  std::string uuid;
  std::string state = "running";
  std::vector<std::string> tags;
  std::vector<SimDisk> disks;
};

struct WorkerSpec {
  std::string token;
  std::string host;
  std::string platform = "libvirt";
  std::string cluster;
  uint32_t slots = 1;
  std::vector<SimVm> vms;
};

// "vm/disk": one disk of one VM. The VM name is everything before the last '/'.
struct DiskRef {
  std::string vm;
  std::string disk;
  bool operator==(const DiskRef&) const = default;
};

// "vm/disk:N": the first N attempts of that disk fail (retryable).
struct FailSpec {
  DiskRef disk;
  int count = 0;
};

struct SimOptions {
  std::string coordinator;  // HOST:PORT
  bool tls = false;
  std::string tls_ca;       // implies tls
  std::string tls_name;     // server name checked against the certificate
  std::string workers_file;
  std::string report_file;  // empty: no report
  int task_ms = 200;
  int snapshot_ms = 20;
  int release_ms = 5;
  int pull_wait_ms = 1000;
  int exit_when_idle_ms = -1;  // < 0: run until a signal
  int reconnect_ms = 500;
  std::vector<FailSpec> fails;
  std::vector<DiskRef> hangs;
  bool quiet = false;
  bool help = false;
};

// Parses a workers file's JSON text; `source` names it in messages.
std::vector<WorkerSpec> ParseWorkersJson(const std::string& text, const std::string& source);
// Reads and parses a workers file (unreadable: kBadInput naming the file).
std::vector<WorkerSpec> LoadWorkersFile(const std::string& path);

DiskRef ParseDiskSpec(const std::string& spec);
FailSpec ParseFailSpec(const std::string& spec);

// argv[1..]: throws kBadInput naming the option. --help sets `help`.
SimOptions ParseCommandLine(const std::vector<std::string>& args);

const char* Usage();

}  // namespace ferry::simworker
