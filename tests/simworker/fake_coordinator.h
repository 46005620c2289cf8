// Test helpers: a scripted in-process coordinator speaking the real worker
// RPC (plain TCP or TLS on 127.0.0.1), and a throw-away PKI made with the
// openssl command line tool.
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/tls.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ferry/rpc/protocol.h"

namespace ferry::simworker::testing {

// A work item the fake hands out.
struct FakeItem {
  std::string assignment;
  enum Kind { kSnapshot, kDisk, kRelease, kRestore } kind = kDisk;  // kRestore: to a qcow2 file
  uint64_t session_id = 1;
  std::string vm;
  std::vector<std::string> disks;  // snapshot
  std::string disk;                // disk, restore
  std::string export_uri;          // disk; restore: the target file
  std::string tier = "host";       // disk
  uint32_t attempt = 1;            // disk
  uint64_t snapshot_id = 1;
  uint64_t task_id = 0;
  bool commit = true;              // release
  std::string point_id;            // snapshot, disk, release: the reserved point
  std::string read_plan;           // disk
};

struct FakeRegistration {
  uint32_t protocol_version = 0;
  std::string token, host, platform, cluster, version;
  uint32_t slots = 0;
  std::vector<std::string> running;
};

struct FakeResult {
  uint64_t worker_id = 0;
  std::string assignment;
  bool ok = false;
  std::string error_kind, error;
  uint64_t bytes_read = 0, bytes_stored = 0, bytes_sent = 0;
  std::optional<StageBusy> stages;  // WorkResult.stages, when set
  std::vector<std::pair<std::string, std::string>> exports;
  std::vector<std::string> read_plans;  // of each export
  std::string point_id;
};

class FakeCoordinator {
 public:
  // `tls`: nullable server context (MakeServerTlsContext); must outlive this.
  FakeCoordinator(kj::AsyncIoContext& io, kj::TlsContext* tls = nullptr);
  ~FakeCoordinator();

  // Listens on 127.0.0.1 at an ephemeral port; returns "127.0.0.1:PORT".
  std::string Listen();
  // Closes every worker connection (as if the coordinator died); keeps
  // listening.
  void DropConnections();

  // --- script ---
  std::deque<FakeItem> queue;              // handed out by pullWork
  std::function<void(const FakeResult&)> on_result;
  std::function<bool(const std::string&)> resume;  // which running ids to resume; default all
  std::set<std::string> refuse_tokens;     // registerWorker throws for these
  std::set<std::string> cancel;            // heartbeats return these when listed
  uint32_t heartbeat_interval_ms = 50;
  uint32_t heartbeat_deadline_ms = 2000;
  uint32_t max_wait_ms = 20;               // cap on the long poll, to keep tests fast
  bool accept_results = true;

  // --- observations ---
  std::vector<FakeRegistration> registrations;  // successful ones
  int refused_registrations = 0;
  std::vector<std::vector<std::string>> heartbeats;
  std::vector<std::string> progress;            // assignment ids
  std::vector<std::optional<StageBusy>> progress_stages;  // Progress.stages of each
  std::vector<FakeResult> results;
  std::vector<std::vector<std::string>> inventories;  // VM names per report
  std::vector<std::string> handshake_errors;          // TLS failures seen by the server
  std::vector<uint32_t> pull_free_slots;

  class SessionImpl;
  class CoordinatorImpl;

 private:
  struct Connection;
  kj::Promise<void> AcceptLoop();
  void Serve(kj::Own<kj::AsyncIoStream> stream);

  kj::AsyncIoContext& io_;
  kj::TlsContext* tls_;
  kj::Own<kj::ConnectionReceiver> listener_;
  std::list<kj::Own<Connection>> connections_;
  kj::Own<kj::TaskSet::ErrorHandler> error_handler_;
  kj::Own<kj::TaskSet> tasks_;
  uint64_t next_worker_id_ = 1;
};

// A CA, and a server certificate it signed for IP:127.0.0.1 and DNS:localhost
// (CN "ferry-test-server"), plus an unrelated second CA. Empty `dir` when the
// openssl tool is missing.
struct TestPki {
  std::string dir;
  std::string ca_pem, ca_key, server_pem, server_key, other_ca_pem, other_ca_key;
};
TestPki MakeTestPki();
void RemoveTestDir(const std::string& dir);

}  // namespace ferry::simworker::testing
