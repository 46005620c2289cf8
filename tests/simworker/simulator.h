// The simulated workers: N workers, each with its own connection to the
// coordinator, all on the caller's KJ event loop (no thread per worker).
// Each is the real protocol client (ferry::rpc::WorkerAgent) over a simulated
// executor: this file holds only the simulation (durations, --fail/--hang, the
// report records). Behaviour is described in docs/worker-protocol.md ("The
// simulator").
#pragma once

#include <kj/async-io.h>
#include <kj/compat/tls.h>

#include <boost/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ferry/rpc/worker_agent.h"
#include "ferry/rpc/worker_client.h"
#include "sim_config.h"

namespace ferry::simworker {

// What happened to one work item, as written to the report.
struct ItemRecord {
  std::string assignment;
  std::string kind;  // snapshot | disk | release | restore
  std::string vm;
  std::string disk;  // disk and restore items ("" for a whole-VM restore)
  std::string tier;  // disk and restore items
  uint64_t session_id = 0;
  uint64_t snapshot_id = 0;
  uint64_t task_id = 0;
  uint32_t attempt = 0;
  std::string export_uri;  // disk items: where the coordinator said to read
  std::vector<std::string> disks;  // snapshot items
  bool commit = false;     // release items
  std::string point_id;    // release items with commit; restore items
  std::string target;      // restore items: file | into_domain | new_domain | over_original
  int64_t start_ms = 0;    // epoch milliseconds
  int64_t end_ms = 0;
  bool ok = false;         // the result the worker reported
  bool accepted = false;   // the coordinator's reply to it
  // done: result reported and accepted; rejected: reported, accepted=false;
  // cancelled: by heartbeat or progress reply; dropped: not resumed after a
  // reconnection; report_failed: reportResult threw; running: still running
  // (or its result not yet delivered) when the report was written.
  std::string outcome;
  std::string error;
};

class Simulator {
 public:
  // `tls` (nullable) must outlive the simulator; with it, connections use TLS
  // checking the certificate against options.tls_name (or the host part).
  Simulator(kj::AsyncIoContext& io, SimOptions options, std::vector<WorkerSpec> workers,
            kj::TlsContext* tls);
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  // Starts every worker. Resolves once --exit-when-idle-ms of idleness have
  // passed (never when it is negative); the caller then writes the report.
  kj::Promise<void> Run();

  boost::json::object Report() const;
  // Writes Report() to `path` atomically (temporary file + rename).
  void WriteReport(const std::string& path) const;

  // For tests and the idle check.
  size_t ActiveItems() const;     // received, not yet finished and reported
  size_t FinishedItems() const;   // in any final outcome
  size_t RegisteredWorkers() const;

  // Shared state the workers use.
  class Worker;
  struct Shared;

 private:
  kj::Promise<void> ResolveLoop();
  kj::Promise<void> IdleWatch();

  kj::AsyncIoContext& io_;
  std::unique_ptr<Shared> shared_;
  std::vector<kj::Own<Worker>> workers_;
  int64_t idle_since_ms_ = -1;
  int resolve_failures_ = 0;
};

}  // namespace ferry::simworker
