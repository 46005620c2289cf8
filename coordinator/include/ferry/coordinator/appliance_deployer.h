// ApplianceDeployer: puts Ferry's worker appliance (scripts/build-image) onto
// libvirt hosts as a domain, and keeps it running only while its host has
// work (docs/appliance.md, "Deployment onto libvirt hosts").
//
// Design:
//   - POST /hosts/{id}/worker: Prepare() checks at once, on the calling
//     thread, what the host's libvirtd can refute (its URI, the pool, the
//     network, names already taken), so a bad request gets a 400 naming the
//     field and nothing is made. The API then writes the worker record
//     (worker_records.h, as POST /workers does) and the appliance row
//     (state `deploying`) in one transaction, and hands the token to
//     Deploy(), which only queues it.
//   - One thread of its own does the slow part: config drive (mkfs.fat and
//     mtools through RunProgram), both volumes uploaded over a virStream,
//     the domain defined and started. A failure undoes all of it (domain,
//     volumes, worker record); the row stays, `failed` with the reason,
//     until DELETE.
//   - The same thread, once a tick, runs the lifecycle of every appliance:
//     its state from the domain and its worker's connection; after
//     idle_shutdown_s without work for its host a graceful shutdown (ACPI),
//     destroyed after shutdown_timeout; started again (virDomainCreate) when
//     work for its host is queued. The scheduler is not told anything: work
//     for a host without a connected worker waits in its queue as it always
//     does, and the appliance's worker takes it once it registers.
//
// Locking: op_mu_ serializes libvirt operations on appliances (the thread's
// deployments and ticks, Remove() from the API); queue_mu_ guards the queue.
// The database is read through a read-only connection of the thread's own
// and written through SessionRunner::Write.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <boost/json.hpp>

#include "ferry/coordinator/database.h"
#include "ferry/coordinator/session_runner.h"
#include "libvirt_util.h"

namespace ferry::coordinator {

// The body of POST /hosts/{id}/worker, checked (docs/api.md, "Appliances").
struct ApplianceSpec {
  std::string libvirt_uri;
  std::string pool = "default";
  std::string network_type = "user";  // user | network | bridge
  std::string network_source;         // the libvirt network or the host's bridge
  int64_t memory_mib = 768;
  std::string coordinator_address;    // HOST:PORT of the worker RPC, as the appliance reaches it
  std::string worker_config;          // extra `name = value` lines for ferry-worker
  int64_t idle_shutdown_s = 900;      // 0: never shut down for idleness
  // More files of the configuration set, by name (ssh_key, known_hosts,
  // ca.pem): put on the config drive beside config and token, never stored.
  std::map<std::string, std::string> files;

  boost::json::object NetworkJson() const;
};

// Parses and checks a request body; FieldError naming the member.
ApplianceSpec ParseApplianceSpec(const std::string& body);

// The names an appliance of a host gets.
struct AppliancePlan {
  std::string domain;         // ferry-appliance-<host>
  std::string image_volume;   // <domain>.qcow2
  std::string config_volume;  // <domain>-cidata.img
  std::string worker_name;    // appliance-<host>
};

struct ApplianceTiming {
  int64_t tick_ms = 1000;
  int64_t shutdown_timeout_ms = 90000;  // after virDomainShutdown, then destroy
  // Starting without its worker registering, and no work for its host: shut
  // down after the longer of this and idle_shutdown_s.
  int64_t register_timeout_ms = 600000;
};

class ApplianceDeployer {
 public:
  using Clock = std::function<int64_t()>;  // milliseconds since the epoch

  // image_dir: scripts/build-image's OUTDIR (holds ferry-appliance.qcow2).
  ApplianceDeployer(SessionRunner& runner, std::string db_path, std::string image_dir, Clock clock,
                    ApplianceTiming timing = {});
  ~ApplianceDeployer();
  ApplianceDeployer(const ApplianceDeployer&) = delete;
  ApplianceDeployer& operator=(const ApplianceDeployer&) = delete;

  // Cleans up deployments a previous run left half done, then starts the thread.
  void Start();
  void Stop();

  // Checks the spec against the host's libvirtd and the image: FieldError
  // (libvirt_uri, pool, network.source), ConflictError (a domain or volume
  // of that name exists, no image). Makes nothing.
  AppliancePlan Prepare(const std::string& host_name, const ApplianceSpec& spec);
  // Queues the deployment of the row the API wrote (state deploying); the
  // token and `files` live only in memory until the config drive is made.
  void Deploy(int64_t host_id, std::string token, std::map<std::string, std::string> files = {});
  // DELETE /hosts/{id}/worker: destroys and undefines the domain, deletes
  // both volumes, the worker record and the row. kNotFound without one;
  // ConflictError while it is being deployed or libvirt cannot be reached.
  void Remove(int64_t host_id);

 private:
  struct Row;
  void Run();
  struct Pending {
    int64_t host_id;
    std::string token;
    std::map<std::string, std::string> files;
  };
  void RunDeployment(const Pending& pending);
  void Undo(const Row& row);
  void TickLocked();
  void SetState(int64_t host_id, const std::string& state, const std::string& reason,
                std::optional<int64_t> last_busy = std::nullopt);
  std::optional<Row> ReadRow(int64_t host_id);

  SessionRunner& runner_;
  std::string db_path_;
  std::string image_dir_;
  // Beside the database: where a deployment builds its config drive (the
  // worker's token is in it); emptied at Start, so a coordinator killed
  // mid-deployment leaves no token behind once it runs again.
  std::string work_dir_;
  Clock clock_;
  ApplianceTiming timing_;
  std::optional<Database> reader_;  // the thread's (and Remove's, under op_mu_)
  // The lifecycle's libvirt connections, by URI, kept from tick to tick (a
  // qemu+ssh:// one is an SSH session); dropped when one dies.
  std::map<std::string, worker::VirPtr<virConnect>> connections_;

  std::mutex op_mu_;
  std::mutex queue_mu_;
  std::condition_variable wake_;
  std::deque<Pending> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ferry::coordinator
