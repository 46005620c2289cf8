// Tests for QmpClient against a scripted fake QMP peer (a thread speaking the
// protocol over a real socket with plain POSIX calls, so it shares no code
// with the client) and one test against a real qemu-system-x86_64.
#include "ferry/worker/qmp_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ferry::worker {
namespace {

namespace json = boost::json;
using std::chrono::milliseconds;

// Like gmock's HasSubstr, without depending on gmock.
::testing::AssertionResult Contains(std::string_view text,
                                    std::string_view part) {
  if (text.find(part) != std::string_view::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "'" << text << "' does not contain '" << part << "'";
}

// A fresh directory under /tmp (short, so socket paths fit in sun_path).
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/ferry-qmp-XXXXXX";
    if (mkdtemp(pattern) == nullptr) {
      ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string GreetingLine(int major, int minor, int micro) {
  json::object qemu{{"major", major}, {"minor", minor}, {"micro", micro}};
  json::object greeting{{"QMP",
                         {{"version", {{"qemu", qemu}, {"package", "fake"}}},
                          {"capabilities", json::array{"oob"}}}}};
  return json::serialize(greeting) + "\r\n";
}

std::string ReplyLine(const json::value& id, json::value result) {
  return json::serialize(
             json::object{{"return", std::move(result)}, {"id", id}}) +
         "\r\n";
}

std::string ErrorLine(const json::value& id, std::string_view error_class,
                      std::string_view desc) {
  json::object error{{"class", error_class}, {"desc", desc}};
  return json::serialize(json::object{{"error", error}, {"id", id}}) + "\r\n";
}

std::string EventLine(std::string_view name, json::object data = {}) {
  json::object event{
      {"event", name},
      {"timestamp", {{"seconds", 1700000000}, {"microseconds", 5}}}};
  if (!data.empty()) event["data"] = std::move(data);
  return json::serialize(event) + "\r\n";
}

// The peer's side of one accepted connection.
class PeerConnection {
 public:
  explicit PeerConnection(int fd) : fd_(fd) {}
  ~PeerConnection() { Close(); }

  void Send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t written =
          ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (written < 0) {
        if (errno == EINTR) continue;
        return;  // the client went away; the test checks its own side
      }
      bytes.remove_prefix(static_cast<std::size_t>(written));
    }
  }

  // Sends `bytes` in pieces of `piece` bytes with a pause in between, so the
  // client sees them in separate reads.
  void SendInPieces(std::string_view bytes, std::size_t piece) {
    while (!bytes.empty()) {
      const std::size_t n = std::min(piece, bytes.size());
      Send(bytes.substr(0, n));
      bytes.remove_prefix(n);
      std::this_thread::sleep_for(milliseconds(2));
    }
  }

  // Returns one line without its terminator, or nullopt on EOF or timeout.
  std::optional<std::string> ReadLine(
      milliseconds timeout = milliseconds(5000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (const std::size_t newline = buffer_.find('\n');
          newline != std::string::npos) {
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd readable{fd_, POLLIN, 0};
      if (::poll(&readable, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      const ssize_t got = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (got <= 0) return std::nullopt;
      buffer_.append(chunk, static_cast<std::size_t>(got));
    }
  }

  // Reads one command; on EOF returns an empty object (and the test fails).
  json::object ReadCommand() {
    std::optional<std::string> line = ReadLine();
    if (!line) {
      ADD_FAILURE() << "peer: expected a command, got EOF/timeout";
      return {};
    }
    json::value command = json::parse(*line);
    EXPECT_TRUE(command.is_object()) << *line;
    EXPECT_TRUE(command.as_object().contains("execute")) << *line;
    EXPECT_TRUE(command.as_object().contains("id")) << *line;
    return command.as_object();
  }

  void Reply(const json::object& command, json::value result) {
    Send(ReplyLine(command.at("id"), std::move(result)));
  }

  // Greeting plus capability negotiation, as QEMU does it.
  void Handshake() {
    Send(GreetingLine(7, 2, 1));
    json::object capabilities = ReadCommand();
    EXPECT_EQ(capabilities["execute"], "qmp_capabilities");
    Reply(capabilities, json::object{});
  }

  // Waits until the client closes the connection.
  void WaitForClose() {
    while (ReadLine()) {
    }
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
  std::string buffer_;
};

// Listens on a unix socket (or TCP on 127.0.0.1) and runs a script against the
// first connection in a background thread.
class FakeQmpPeer {
 public:
  enum class Transport { kUnix, kTcp };

  explicit FakeQmpPeer(Transport transport = Transport::kUnix) {
    if (transport == Transport::kUnix) {
      socket_path_ = temp_dir_.path() + "/qmp.sock";
      listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      std::strncpy(address.sun_path, socket_path_.c_str(),
                   sizeof(address.sun_path) - 1);
      EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address),
                       sizeof(address)),
                0)
          << std::strerror(errno);
    } else {
      listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address),
                       sizeof(address)),
                0)
          << std::strerror(errno);
      socklen_t length = sizeof(address);
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length);
      tcp_port_ = ntohs(address.sin_port);
    }
    EXPECT_EQ(::listen(listen_fd_, 4), 0) << std::strerror(errno);
  }

  ~FakeQmpPeer() {
    if (script_thread_.joinable()) script_thread_.join();
    ::close(listen_fd_);
  }

  const std::string& socket_path() const { return socket_path_; }
  int tcp_port() const { return tcp_port_; }
  std::string unix_address() const { return "unix:" + socket_path_; }

  void Run(std::function<void(PeerConnection&)> script) {
    script_thread_ = std::thread([this, script = std::move(script)] {
      pollfd acceptable{listen_fd_, POLLIN, 0};
      if (::poll(&acceptable, 1, 5000) != 1) {
        ADD_FAILURE() << "peer: no client connected";
        return;
      }
      PeerConnection connection(::accept(listen_fd_, nullptr, nullptr));
      script(connection);
    });
  }

 private:
  TempDir temp_dir_;
  std::string socket_path_;
  int tcp_port_ = 0;
  int listen_fd_ = -1;
  std::thread script_thread_;
};

// Runs `body` and returns the ferry::Error it throws (failing if none).
template <typename Body>
Error CatchError(Body body) {
  try {
    body();
  } catch (const Error& error) {
    return error;
  }
  ADD_FAILURE() << "expected a ferry::Error";
  return Error(ErrorKind::kInternal, "no error thrown");
}

TEST(QmpClientTest, ReadsGreetingSplitAcrossReadsAndNegotiatesCapabilities) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.SendInPieces(GreetingLine(7, 2, 1), 7);
    json::object capabilities = conn.ReadCommand();
    EXPECT_EQ(capabilities["execute"], "qmp_capabilities");
    EXPECT_FALSE(capabilities.contains("arguments"));
    conn.Reply(capabilities, json::object{});
    conn.WaitForClose();
  });
  // A bare path containing '/' is a unix socket.
  auto client = QmpClient::Connect(peer.socket_path());
  EXPECT_EQ(client->version().major, 7);
  EXPECT_EQ(client->version().minor, 2);
  EXPECT_EQ(client->version().micro, 1);
  EXPECT_EQ(client->address(), peer.socket_path());
}

TEST(QmpClientTest, HandlesSeveralMessagesInOneReadAndByteByByteReplies) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object first = conn.ReadCommand();
    EXPECT_EQ(first["execute"], "query-status");
    conn.Send(EventLine("STOP") +
              ReplyLine(first["id"], json::object{{"status", "paused"}}) +
              EventLine("RESUME"));
    json::object second = conn.ReadCommand();
    conn.SendInPieces(ReplyLine(second["id"], json::object{{"name", "vm1"}}),
                      1);
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  EXPECT_EQ(client->Execute("query-status").at("status"), "paused");
  EXPECT_EQ(client->Execute("query-name").at("name"), "vm1");
  std::vector<QmpEvent> events = client->TakeEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].name, "STOP");
  EXPECT_EQ(events[0].timestamp_us, 1700000000LL * 1000000 + 5);
  EXPECT_EQ(events[1].name, "RESUME");
  EXPECT_TRUE(client->PeekEvents().empty());
}

TEST(QmpClientTest, MatchesReplyByIdDespiteEventsAndStaleReplies) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object command = conn.ReadCommand();
    EXPECT_EQ(command["arguments"].at("node-name"), "drive0");
    conn.Send(ReplyLine(987654, "reply to somebody else"));
    conn.Send(EventLine("JOB_STATUS_CHANGE",
                        {{"id", "job0"}, {"status", "running"}}));
    conn.Send(EventLine("JOB_STATUS_CHANGE",
                        {{"id", "job1"}, {"status", "running"}}));
    conn.Reply(command, "the right reply");
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  EXPECT_EQ(client->Execute("x-probe", {{"node-name", "drive0"}}),
            "the right reply");

  // Both events arrived before anybody waited; neither is lost, and the
  // predicate picks the second one while leaving the first queued.
  std::optional<QmpEvent> job1 = client->WaitEvent(
      "JOB_STATUS_CHANGE",
      [](const json::object& data) { return data.at("id") == "job1"; },
      milliseconds(0));
  ASSERT_TRUE(job1.has_value());
  EXPECT_EQ(job1->data.at("id"), "job1");
  std::vector<QmpEvent> left = client->PeekEvents();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].data.at("id"), "job0");
  EXPECT_TRUE(client->WaitEvent("JOB_STATUS_CHANGE", {}, milliseconds(0)));
  EXPECT_FALSE(client->WaitEvent("JOB_STATUS_CHANGE", {}, milliseconds(0)));
}

TEST(QmpClientTest, WaitEventWakesForLaterEventAndTimesOut) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object command = conn.ReadCommand();
    conn.Reply(command, json::object{});
    std::this_thread::sleep_for(milliseconds(100));
    conn.Send(EventLine("BLOCK_JOB_COMPLETED", {{"device", "backup0"}}));
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  client->Execute("blockdev-backup");

  const auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(client->WaitEvent("SHUTDOWN", {}, milliseconds(50)));
  EXPECT_GE(std::chrono::steady_clock::now() - started, milliseconds(50));

  std::optional<QmpEvent> completed =
      client->WaitEvent("BLOCK_JOB_COMPLETED", {}, milliseconds(5000));
  ASSERT_TRUE(completed.has_value());
  EXPECT_EQ(completed->data.at("device"), "backup0");
}

TEST(QmpClientTest, ErrorReplyThrowsQmpError) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object command = conn.ReadCommand();
    conn.Send(ErrorLine(command["id"], "GenericError",
                        "Duplicate nodes with node-name='drive0'"));
    command = conn.ReadCommand();
    conn.Send(
        ErrorLine(command["id"], "DeviceNotFound", "Device 'nope' not found"));
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  try {
    client->Execute("blockdev-add", {{"node-name", "drive0"}});
    FAIL() << "expected QmpError";
  } catch (const QmpError& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_EQ(error.command(), "blockdev-add");
    EXPECT_EQ(error.error_class(), "GenericError");
    EXPECT_EQ(error.description(), "Duplicate nodes with node-name='drive0'");
    EXPECT_STREQ(error.what(),
                 "QMP command 'blockdev-add' failed: Duplicate nodes with "
                 "node-name='drive0' (GenericError)");
  }
  Error not_found = CatchError([&] { client->Execute("block-job-cancel"); });
  EXPECT_EQ(not_found.kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(Contains(not_found.what(), "(DeviceNotFound)"));
}

TEST(QmpClientTest, HumanMonitorCommandReturnsOutput) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object command = conn.ReadCommand();
    EXPECT_EQ(command["execute"], "human-monitor-command");
    EXPECT_EQ(command["arguments"].at("command-line"), "info status");
    conn.Reply(command, "VM status: paused\r\n");
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  EXPECT_EQ(client->HumanMonitorCommand("info status"),
            "VM status: paused\r\n");
}

TEST(QmpClientTest, AcceptsLargeAndDeeplyNestedReplies) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object command = conn.ReadCommand();
    json::array nodes;
    for (int i = 0; i < 3000; ++i) {
      nodes.push_back(json::object{{"node-name", "node" + std::to_string(i)},
                                   {"file", std::string(200, 'x')}});
    }
    // A long backing chain nests deeper than Boost.JSON's default limit.
    json::value chain = json::object{{"filename", "base.qcow2"}};
    for (int depth = 0; depth < 100; ++depth) {
      chain = json::object{{"backing-image", std::move(chain)}};
    }
    nodes.push_back(json::object{{"node-name", "deep"}, {"image", chain}});
    conn.Reply(command, std::move(nodes));
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  json::value nodes = client->Execute("query-named-block-nodes");
  ASSERT_TRUE(nodes.is_array());
  EXPECT_EQ(nodes.as_array().size(), 3001u);
  EXPECT_GT(json::serialize(nodes).size(), 600u * 1024);
}

TEST(QmpClientTest, ConcurrentExecuteFromTwoThreadsGetsOwnReplies) {
  constexpr int kCommandsPerThread = 100;
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    // Each thread has one command in flight; answer each pair in reverse
    // order with an event in between so correlation is really exercised.
    for (int pair = 0; pair < kCommandsPerThread; ++pair) {
      json::object first = conn.ReadCommand();
      json::object second = conn.ReadCommand();
      conn.Send(ReplyLine(second["id"], second["arguments"]) +
                EventLine("PING") + ReplyLine(first["id"], first["arguments"]));
    }
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  auto run = [&](std::string thread_name) {
    for (int i = 0; i < kCommandsPerThread; ++i) {
      json::object arguments{{"thread", thread_name}, {"i", i}};
      EXPECT_EQ(client->Execute("echo", arguments), json::value(arguments));
    }
  };
  std::thread a(run, "a");
  std::thread b(run, "b");
  a.join();
  b.join();
  EXPECT_EQ(client->TakeEvents().size(),
            static_cast<size_t>(kCommandsPerThread));
}

TEST(QmpClientTest, PeerClosingMidCommandIsRetryable) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    conn.ReadCommand();
    conn.Close();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  Error error = CatchError([&] { client->Execute("query-status"); });
  EXPECT_EQ(error.kind(), ErrorKind::kRetryable);
  EXPECT_TRUE(Contains(error.what(), "'query-status'"));
  EXPECT_TRUE(Contains(error.what(), peer.unix_address()));

  // Later calls fail fast the same way.
  Error again = CatchError([&] { client->Execute("query-name"); });
  EXPECT_EQ(again.kind(), ErrorKind::kRetryable);
  EXPECT_TRUE(Contains(again.what(), "'query-name'"));
  Error waiting = CatchError(
      [&] { client->WaitEvent("SHUTDOWN", {}, milliseconds(5000)); });
  EXPECT_EQ(waiting.kind(), ErrorKind::kRetryable);
}

TEST(QmpClientTest, CommandTimeoutIsRetryableAndLateReplyIsDropped) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Handshake();
    json::object slow = conn.ReadCommand();
    json::object next = conn.ReadCommand();
    conn.Reply(slow, "late");
    conn.Reply(next, "on time");
    conn.WaitForClose();
  });
  auto client = QmpClient::Connect(peer.unix_address());
  Error error =
      CatchError([&] { client->Execute("slow", {}, milliseconds(100)); });
  EXPECT_EQ(error.kind(), ErrorKind::kRetryable);
  EXPECT_TRUE(Contains(error.what(), "'slow'"));
  EXPECT_TRUE(Contains(error.what(), "no reply"));
  EXPECT_EQ(client->Execute("next"), "on time");
}

TEST(QmpClientTest, PeerSayingHelloIsNotQmp) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Send("hello\n");
    conn.WaitForClose();
  });
  Error error = CatchError([&] { QmpClient::Connect(peer.unix_address()); });
  EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
  EXPECT_TRUE(
      Contains(error.what(), peer.unix_address() + " is not a QMP socket"));
  EXPECT_TRUE(Contains(error.what(), "'hello'"));
}

TEST(QmpClientTest, JsonThatIsNotAGreetingIsNotQmp) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Send("{\"jsonrpc\": \"2.0\"}\r\n");
    conn.WaitForClose();
  });
  Error error = CatchError([&] { QmpClient::Connect(peer.unix_address()); });
  EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
  EXPECT_TRUE(Contains(error.what(), "is not a QMP socket"));
}

TEST(QmpClientTest, BinaryGarbageThenCloseIsNotQmp) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) {
    conn.Send(std::string("\x16\x03\x01\x00\xa5\x01\x00", 7));
    conn.Close();
  });
  Error error = CatchError([&] { QmpClient::Connect(peer.unix_address()); });
  EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
  EXPECT_TRUE(Contains(error.what(), "is not a QMP socket"));
}

// A silent peer is most likely a monitor busy with another client.
TEST(QmpClientTest, SilentPeerIsRetryableAfterTimeout) {
  FakeQmpPeer peer;
  peer.Run([](PeerConnection& conn) { conn.WaitForClose(); });
  Error error = CatchError(
      [&] { QmpClient::Connect(peer.unix_address(), milliseconds(200)); });
  EXPECT_EQ(error.kind(), ErrorKind::kRetryable);
  EXPECT_TRUE(Contains(error.what(), "no QMP greeting from " +
                                         peer.unix_address() +
                                         " within 200 ms"));
  EXPECT_TRUE(Contains(error.what(), "busy with another client"));
}

// QEMU listens on a monitor socket with a backlog of one. With one client
// served and one waiting, the kernel refuses the next connection (EAGAIN),
// which asio reports as connected; it used to fail at once as "not a QMP
// socket ... (Invalid argument)" (integration.test-worker-failover, a worker
// dropping a stale snapshot while taking a new one). It is a busy monitor:
// retried, then kRetryable, and connected once the monitor is free.
TEST(QmpClientTest, AMonitorWithAFullBacklogIsBusyNotBroken) {
  const std::string dir = ::testing::TempDir() + "/qmp-backlog-" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0700);
  const std::string path = dir + "/m.qmp";
  ::unlink(path.c_str());
  int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 1), 0);  // QEMU's backlog
  auto connect_raw = [&] {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    return fd;
  };
  int served_client = connect_raw();
  int served = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(served, 0);
  // The kernel queues backlog + 1 connections.
  int waiting1 = connect_raw(), waiting2 = connect_raw();

  Error error = CatchError([&] { QmpClient::Connect("unix:" + path, milliseconds(300)); });
  EXPECT_EQ(error.kind(), ErrorKind::kRetryable) << error.what();
  EXPECT_TRUE(Contains(error.what(), "the monitor is busy")) << error.what();

  // The monitor frees up while a client waits: it connects and is greeted.
  std::thread monitor([listener, fds = std::vector<int>{served, served_client, waiting1, waiting2}] {
    std::this_thread::sleep_for(milliseconds(200));
    for (int fd : fds) ::close(fd);
    // The queued connections were closed by their clients: accepted and dropped.
    for (int i = 0; i < 2; ++i) ::close(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    PeerConnection conn(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    conn.Handshake();
    conn.WaitForClose();
  });
  {
    auto client = QmpClient::Connect("unix:" + path, milliseconds(3000));
    EXPECT_EQ(client->version().major, 7);
  }
  monitor.join();
  ::close(listener);
  ::unlink(path.c_str());
}

TEST(QmpErrorTest, BusyNodeIsRetryable) {
  EXPECT_EQ(QmpError::KindFor("GenericError",
                              "Node 'd0-fmt' is busy: block device is in use "
                              "by block job: backup"),
            ErrorKind::kRetryable);
  EXPECT_EQ(QmpError::KindFor("GenericError", "Device 'x' is in use"),
            ErrorKind::kRetryable);
  EXPECT_EQ(QmpError::KindFor("GenericError", "Duplicate nodes"),
            ErrorKind::kBadInput);
  EXPECT_EQ(QmpError::KindFor("DeviceNotFound", "is busy"),
            ErrorKind::kNotFound);
  EXPECT_EQ(QmpError("blockdev-backup", "GenericError",
                     "Node 'n' is busy: block device is in use by block job")
                .kind(),
            ErrorKind::kRetryable);
}

TEST(QmpClientTest, MissingOrDeadSocketIsNotFound) {
  TempDir dir;
  const std::string missing = dir.path() + "/missing.sock";
  Error error = CatchError([&] { QmpClient::Connect(missing); });
  EXPECT_EQ(error.kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(Contains(error.what(), missing));

  // A socket file left behind by a dead QEMU: bound, nobody listening.
  const std::string stale = dir.path() + "/stale.sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, stale.c_str(), sizeof(address.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
            0);
  ::close(fd);
  Error refused = CatchError([&] { QmpClient::Connect("unix:" + stale); });
  EXPECT_EQ(refused.kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(Contains(refused.what(), stale));
}

TEST(QmpClientTest, MalformedAddressIsBadInput) {
  for (const char* address : {"nonsense", "tcp:", "localhost:", "unix:"}) {
    Error error = CatchError([&] { QmpClient::Connect(address); });
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput) << address;
    EXPECT_TRUE(Contains(error.what(), address));
  }
}

TEST(QmpClientTest, ConnectsOverTcp) {
  for (const std::string prefix : {"tcp:", ""}) {
    FakeQmpPeer peer(FakeQmpPeer::Transport::kTcp);
    peer.Run([](PeerConnection& conn) {
      conn.Handshake();
      json::object command = conn.ReadCommand();
      conn.Reply(command, json::object{{"status", "running"}});
      conn.WaitForClose();
    });
    auto client = QmpClient::Connect(
        prefix + "127.0.0.1:" + std::to_string(peer.tcp_port()));
    EXPECT_EQ(client->Execute("query-status").at("status"), "running");
  }
}

// Finds `program` on PATH; empty if absent.
std::string FindOnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/bin:/bin";
  while (!dirs.empty()) {
    const std::size_t colon = dirs.find(':');
    const std::string candidate =
        std::string(dirs.substr(0, colon)) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return {};
}

class RealQemuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string qemu = FindOnPath("qemu-system-x86_64");
    if (qemu.empty()) GTEST_SKIP() << "qemu-system-x86_64 is not installed";
    socket_path_ = dir_.path() + "/qmp.sock";
    const std::string qmp_option =
        "unix:" + socket_path_ + ",server=on,wait=off";
    std::vector<std::string> args = {
        qemu,     "-machine", "q35",      "-accel", "kvm",
        "-accel", "tcg",      "-display", "none",   "-nodefaults",
        "-S",     "-qmp",     qmp_option};
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    ASSERT_EQ(::posix_spawn(&qemu_pid_, qemu.c_str(), nullptr, nullptr,
                            argv.data(), environ),
              0);
    // QEMU creates the socket during startup; poll rather than sleep.
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(30);
    struct stat info {};
    while (::stat(socket_path_.c_str(), &info) != 0) {
      int status = 0;
      ASSERT_EQ(::waitpid(qemu_pid_, &status, WNOHANG), 0)
          << "qemu exited early with status " << status;
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "qemu did not create " << socket_path_;
      std::this_thread::sleep_for(milliseconds(20));
    }
  }

  void TearDown() override {
    if (qemu_pid_ > 0) {
      ::kill(qemu_pid_, SIGKILL);
      int status = 0;
      ::waitpid(qemu_pid_, &status, 0);
    }
  }

  TempDir dir_;
  std::string socket_path_;
  pid_t qemu_pid_ = -1;
};

TEST_F(RealQemuTest, TalksToQemu) {
  auto client = QmpClient::Connect("unix:" + socket_path_);
  EXPECT_GE(client->version().major, 7);

  json::value status = client->Execute("query-status");
  EXPECT_EQ(status.at("status"), "prelaunch");
  EXPECT_TRUE(client->Execute("query-name").is_object());

  client->Execute("cont");
  EXPECT_TRUE(client->WaitEvent("RESUME", {}, std::chrono::seconds(10)));

  try {
    client->Execute("x-no-such-command");
    FAIL() << "expected QmpError";
  } catch (const QmpError& error) {
    EXPECT_EQ(error.error_class(), "CommandNotFound");
    EXPECT_TRUE(Contains(error.what(), "'x-no-such-command'"));
  }
}

}  // namespace
}  // namespace ferry::worker
