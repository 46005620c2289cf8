// The worker RPC port against hostile peers (issue 15): oversized frames,
// silent and idle connections, too many connections. Raw TCP sockets on
// loopback play the attacker; a real client (CoordinatorConnection) the
// worker that must still get through. See docs/worker-protocol.md, "Limits".
#include "ferry/coordinator/worker_rpc_server.h"

#include <arpa/inet.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/async-io.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "ferry/coordinator/database.h"
#include "ferry/coordinator/session_runner.h"
#include "ferry/coordinator/worker_records.h"
#include "ferry/rpc/protocol.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::coordinator {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The process's resident set in KiB (the server runs in this process).
int64_t RssKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoll(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

// A TCP connection to 127.0.0.1:port from `source` (any 127/8 address: a
// different peer address for the server's per-address cap).
int RawConnect(uint16_t port, const char* source = "127.0.0.2") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &from.sin_addr);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from), 0) << std::strerror(errno);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0) << std::strerror(errno);
  return fd;
}

// True when the server closes (or resets) fd within `within`; false when it
// is still open then.
bool ClosedByPeer(int fd, std::chrono::milliseconds within) {
  timeval tv{static_cast<time_t>(within.count() / 1000), static_cast<suseconds_t>((within.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) return true;
    if (n < 0) return false;  // timed out: still open
  }
}

class WorkerRpcServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ferry-rpc-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    runner_ = std::make_unique<SessionRunner>(Database::Open(dir_ + "/coordinator.db"), RunnerOptions{}, NowMs);
    runner_->Recover();
    token_ = NewToken();
    token2_ = NewToken();
    runner_->Write([&](Database& db) { return InsertWorkerRecord(db, "w1", "", token_); });
    runner_->Write([&](Database& db) { return InsertWorkerRecord(db, "w2", "", token2_); });
  }
  void TearDown() override {
    server_.reset();
    runner_.reset();
    std::filesystem::remove_all(dir_);
  }
  uint16_t Start(WorkerRpcOptions options) {
    server_ = std::make_unique<WorkerRpcServer>(*runner_, std::move(options));
    server_->Start();
    return server_->port();
  }

  // The real client side, on this thread's event loop.
  kj::Own<rpc::CoordinatorConnection> Connect(uint16_t port) {
    auto address = io_.provider->getNetwork().parseAddress("127.0.0.1", port).wait(io_.waitScope);
    return rpc::CoordinatorConnection::Connect(*address, io_.provider->getTimer(), nullptr, "").wait(io_.waitScope);
  }
  rpc::WorkerSession::Client Register(rpc::CoordinatorConnection& conn, const std::string& token = "") {
    auto req = conn.coordinator().registerWorkerRequest();
    auto r = req.initRequest();
    r.setProtocolVersion(rpc::PROTOCOL_VERSION);
    r.setToken(token.empty() ? token_ : token);
    r.setHost(token == token2_ ? "h2" : "h1");
    r.setPlatform("libvirt");
    r.setTaskSlots(2);
    r.setVersion("test");
    return req.send().wait(io_.waitScope).getSession();
  }
  void Heartbeat(rpc::WorkerSession::Client& session) {
    auto req = session.heartbeatRequest();
    req.initRunning(0);
    req.send().wait(io_.waitScope);
  }
  void Wait(std::chrono::milliseconds ms) {
    io_.provider->getTimer().afterDelay(ms.count() * kj::MILLISECONDS).wait(io_.waitScope);
  }
  // A worker registers on a connection of its own and gets an answer.
  void ExpectWorkerGetsThrough(uint16_t port) {
    auto conn = Connect(port);
    auto session = Register(*conn);
    EXPECT_NO_THROW(Heartbeat(session));
  }

  // (Held by pointer: its destructor is noexcept(false), the fixture's may not be.)
  std::unique_ptr<kj::AsyncIoContext> loop_ = std::make_unique<kj::AsyncIoContext>(kj::setupAsyncIo());
  kj::AsyncIoContext& io_ = *loop_;
  std::string dir_;
  std::string token_, token2_;
  std::unique_ptr<SessionRunner> runner_;
  std::unique_ptr<WorkerRpcServer> server_;
};

// The largest legitimate messages fit the limits with room to spare: an
// inventory of 20,000 VMs (long names, four tags, three disks each) after
// registration, a registration with 1,024 running assignments and 1,000
// held snapshots before it. The figures are printed (docs/worker-protocol.md
// quotes them).
TEST_F(WorkerRpcServerTest, LargestLegitimateMessagesFitTheLimits) {
  capnp::MallocMessageBuilder inventory;
  auto params = inventory.initRoot<rpc::WorkerSession::ReportInventoryParams>();
  const unsigned kVms = 20000;
  auto vms = params.initVms(kVms);
  for (unsigned i = 0; i < kVms; ++i) {
    auto vm = vms[i];
    std::string n = std::to_string(100000 + i);
    vm.setName("customer-production-database-cluster-node-" + n + "-eu-west");
    vm.setUuid("6f1c2b9e-4d3a-4e8b-9c1f-0a2b3c" + n);
    vm.setState("running");
    auto tags = vm.initTags(4);
    tags.set(0, "backup-tier-gold");
    tags.set(1, "department-finance");
    tags.set(2, "environment-production");
    tags.set(3, "owner-team-databases");
    auto disks = vm.initDisks(3);
    for (unsigned d = 0; d < 3; ++d) {
      disks[d].setName(std::string("scsi") + std::to_string(d));
      disks[d].setSizeBytes(uint64_t{500} << 30);
      disks[d].setFormat("qcow2");
    }
  }
  const uint64_t inventory_bytes = capnp::computeSerializedSizeInWords(inventory) * sizeof(capnp::word);
  std::cout << "inventory of " << kVms << " VMs: " << inventory_bytes << " bytes ("
            << inventory_bytes / kVms << " per VM); limit " << kMaxMessageBytes << std::endl;
  EXPECT_LT(inventory_bytes * 2, kMaxMessageBytes) << "less than half the limit";

  capnp::MallocMessageBuilder hello;
  auto r = hello.initRoot<rpc::Coordinator::RegisterWorkerParams>().initRequest();
  r.setToken(NewToken());
  r.setHost("hypervisor-host-with-a-long-name.example.com");
  r.setPlatform("libvirt");
  r.setVersion("ferry 1.0.0");
  auto running = r.initRunning(1024);
  for (unsigned i = 0; i < 1024; ++i) running.set(i, "a-" + std::to_string(1000000000 + i) + "-" + std::to_string(i));
  auto held = r.initHeldSnapshots(1000);
  for (unsigned i = 0; i < 1000; ++i) held.set(i, 1000000 + i);
  const uint64_t hello_bytes = capnp::computeSerializedSizeInWords(hello) * sizeof(capnp::word);
  std::cout << "registration with 1024 running, 1000 held: " << hello_bytes << " bytes; limit "
            << kUnregisteredMessageBytes << std::endl;
  EXPECT_LT(hello_bytes * 4, kUnregisteredMessageBytes) << "less than a quarter of the limit";
}

// (a) The attack: 10 connections each send a frame header claiming
// 60 MiB, then its body. Each is closed after the header; the memory the
// server holds does not grow by the bodies (before: 8 MiB each was read
// into a 60 MiB buffer, RSS grew by 80 MiB here).
TEST_F(WorkerRpcServerTest, FrameClaiming60MiBClosesTheConnectionBeforeItsBody) {
  WorkerRpcOptions o;
  uint16_t port = Start(o);
  const int64_t rss_before = RssKiB();
  std::vector<int> fds;
  const size_t kBody = size_t{8} << 20;
  std::vector<char> body(size_t{1} << 20, 'x');
  auto started = Clock::now();
  for (int i = 0; i < 10; ++i) {
    int fd = RawConnect(port);
    fds.push_back(fd);
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    uint32_t header[2] = {0, (uint32_t{60} << 20) / 8};  // one segment of 60 MiB
    ASSERT_EQ(::send(fd, header, sizeof header, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof header));
    size_t sent = 0;
    while (sent < kBody) {
      ssize_t n = ::send(fd, body.data(), body.size(), MSG_NOSIGNAL);
      if (n <= 0) break;  // reset by the server (or the send timeout)
      sent += static_cast<size_t>(n);
    }
  }
  for (int fd : fds) EXPECT_TRUE(ClosedByPeer(fd, std::chrono::milliseconds(2000))) << "an oversized frame closes";
  const int64_t grown_kib = RssKiB() - rss_before;
  std::cout << "RSS grew by " << grown_kib << " KiB in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count() << " ms"
            << std::endl;
  EXPECT_LT(grown_kib, 8 * 1024) << "the server buffered the bodies of frames it should have refused";
  for (int fd : fds) ::close(fd);
  ExpectWorkerGetsThrough(port);
}

// Before registration even a modest frame (300 KiB: over 256 KiB) closes.
TEST_F(WorkerRpcServerTest, FrameOverTheUnregisteredLimitCloses) {
  uint16_t port = Start(WorkerRpcOptions{});
  int fd = RawConnect(port);
  uint32_t header[2] = {0, (uint32_t{300} << 10) / 8};
  ASSERT_EQ(::send(fd, header, sizeof header, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof header));
  EXPECT_TRUE(ClosedByPeer(fd, std::chrono::milliseconds(2000)));
  ::close(fd);
}

// (b) A connection that never registers is closed after the registration
// timeout, whether it says nothing or stops half way through a frame; a
// registered one is not.
TEST_F(WorkerRpcServerTest, UnregisteredConnectionsAreClosedAfterTheRegistrationTimeout) {
  WorkerRpcOptions o;
  o.registration_timeout = std::chrono::milliseconds(500);
  uint16_t port = Start(o);
  auto conn = Connect(port);
  auto session = Register(*conn);
  auto started = Clock::now();
  int silent = RawConnect(port);
  int partial = RawConnect(port);
  uint32_t header[2] = {0, 16};  // 16 words announced, 3 bytes sent
  ASSERT_EQ(::send(partial, header, sizeof header, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof header));
  ASSERT_EQ(::send(partial, "abc", 3, MSG_NOSIGNAL), 3);
  EXPECT_TRUE(ClosedByPeer(silent, std::chrono::milliseconds(3000)));
  EXPECT_TRUE(ClosedByPeer(partial, std::chrono::milliseconds(3000)));
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
  EXPECT_GE(took, 400) << "not before the timeout";
  EXPECT_LE(took, 2500) << "the timeout plus at most a second's grace";
  ::close(silent);
  ::close(partial);
  // The registered connection outlived the registration deadline.
  EXPECT_NO_THROW(Heartbeat(session));
}

// (b') A registered connection that goes silent is closed after the idle
// timeout; one that heartbeats stays.
TEST_F(WorkerRpcServerTest, RegisteredConnectionThatGoesSilentIsClosed) {
  WorkerRpcOptions o;
  o.idle_timeout = std::chrono::milliseconds(600);
  uint16_t port = Start(o);
  auto busy_conn = Connect(port);
  auto busy = Register(*busy_conn);
  auto quiet_conn = Connect(port);
  auto quiet = Register(*quiet_conn, token2_);
  bool quiet_gone = false;
  auto gone = quiet_conn->onDisconnect().then([&] { quiet_gone = true; }).eagerlyEvaluate(nullptr);
  for (int i = 0; i < 12; ++i) {  // 2.4 s
    Heartbeat(busy);
    Wait(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(quiet_gone) << "the silent connection is still open";
  EXPECT_THROW(Heartbeat(quiet), kj::Exception);
  EXPECT_NO_THROW(Heartbeat(busy)) << "the heartbeating connection was closed";
}

// The default idle timeout follows the runner's heartbeat deadline.
TEST(WorkerRpcLimits, IdleTimeoutIsTwiceTheHeartbeatDeadline) {
  EXPECT_EQ(IdleTimeoutFor(RunnerOptions{}.heartbeat_deadline_ms), 30000);
  EXPECT_GT(IdleTimeoutFor(RunnerOptions{}.heartbeat_deadline_ms), RunnerOptions{}.heartbeat_deadline_ms);
}

// (c) One address opens more connections than its cap: the extra ones are
// closed at once, the held ones stay, and a worker from another address
// registers and gets answers.
TEST_F(WorkerRpcServerTest, ConnectionsPastThePerAddressCapAreClosed) {
  WorkerRpcOptions o;
  o.max_connections_per_address = 3;
  uint16_t port = Start(o);
  std::vector<int> held;
  for (int i = 0; i < 3; ++i) held.push_back(RawConnect(port, "127.0.0.2"));
  std::vector<int> extra;
  for (int i = 0; i < 3; ++i) extra.push_back(RawConnect(port, "127.0.0.2"));
  for (int fd : extra) EXPECT_TRUE(ClosedByPeer(fd, std::chrono::milliseconds(2000))) << "past the cap";
  ExpectWorkerGetsThrough(port);  // from 127.0.0.1
  for (int fd : held) EXPECT_FALSE(ClosedByPeer(fd, std::chrono::milliseconds(100))) << "within the cap";
  for (int fd : held) ::close(fd);
  for (int fd : extra) ::close(fd);
  // Closed connections give their slots back.
  bool admitted = false;
  for (int attempt = 0; attempt < 50 && !admitted; ++attempt) {
    int fd = RawConnect(port, "127.0.0.2");
    admitted = !ClosedByPeer(fd, std::chrono::milliseconds(100));
    ::close(fd);
  }
  EXPECT_TRUE(admitted);
}

// And the cap on all connections.
TEST_F(WorkerRpcServerTest, ConnectionsPastTheTotalCapAreClosed) {
  WorkerRpcOptions o;
  o.max_connections = 4;
  uint16_t port = Start(o);
  std::vector<int> held;
  const char* sources[] = {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"};
  for (const char* s : sources) held.push_back(RawConnect(port, s));
  for (int fd : held) EXPECT_FALSE(ClosedByPeer(fd, std::chrono::milliseconds(50)));
  int extra = RawConnect(port, "127.0.0.6");
  EXPECT_TRUE(ClosedByPeer(extra, std::chrono::milliseconds(2000))) << "past the total cap";
  ::close(extra);
  ::close(held[0]);
  // A slot is free again once the server has seen the close.
  bool ok = false;
  for (int attempt = 0; attempt < 50 && !ok; ++attempt) {
    try {
      ExpectWorkerGetsThrough(port);
      ok = true;
    } catch (const kj::Exception&) {
      Wait(std::chrono::milliseconds(50));
    }
  }
  EXPECT_TRUE(ok);
  for (size_t i = 1; i < held.size(); ++i) ::close(held[i]);
}

}  // namespace
}  // namespace ferry::coordinator
