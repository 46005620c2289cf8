// Snapshot exports over TCP with per-session TLS-PSK, against the real
// thing: two paused, guest-less QEMUs (q35, one virtio-blk disk of known
// data each), a QMP host with QmpHostOptions::export_tcp, and libnbd reading
// over 127.0.0.1. Checks that the right credentials read the exact bytes,
// that a wrong key, no TLS, or another session's credentials do not get in,
// that the key shows in no description, message or log line, and that
// releasing the snapshot leaves nothing behind (TLS object, keys, server).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/worker/block_reader.h"
#include "ferry/worker/qmp_host.h"
#include "ferry/worker/qmp_snapshot.h"

extern char** environ;

namespace ferry::worker {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr uint64_t kDiskSize = 8 << 20;

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/ferry-tcp-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool OnPath(const char* program) {
  for (const char* dir : {"/usr/bin", "/usr/local/bin", "/bin"}) {
    if (::access((std::string(dir) + "/" + program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// A raw disk: random data in the first MiB, a pattern at 3 MiB, holes else.
std::string MakeDisk(const std::string& path, unsigned seed) {
  std::string bytes(kDiskSize, '\0');
  std::mt19937 random(seed);
  for (size_t i = 0; i < (1 << 20); ++i) bytes[i] = static_cast<char>(random());
  for (size_t i = 3 << 20; i < (3 << 20) + 65536; ++i) bytes[i] = static_cast<char>(0xc0 + i % 7);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ::truncate(path.c_str(), kDiskSize);
  return bytes;
}

// One paused QEMU with disk "disk0" on `image`; killed with the object.
class Qemu {
 public:
  Qemu(const std::string& dir, const std::string& image) : socket_(dir + "/qmp.sock") {
    std::vector<std::string> args = {"qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-accel", "tcg",
                                     "-display", "none", "-nodefaults", "-S", "-m", "64",
                                     "-qmp", "unix:" + socket_ + ",server=on,wait=off",
                                     "-blockdev", "driver=file,filename=" + image + ",node-name=disk0-file",
                                     "-blockdev", "driver=raw,file=disk0-file,node-name=disk0-fmt",
                                     "-device", "virtio-blk-pci,drive=disk0-fmt,id=disk0"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (dir + "/qemu.log").c_str(), O_WRONLY | O_CREAT, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    int rc = ::posix_spawnp(&pid_, "qemu-system-x86_64", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      ADD_FAILURE() << "posix_spawnp: " << std::strerror(rc);
      return;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    struct stat st {};
    while (::stat(socket_.c_str(), &st) != 0) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) != 0) {
        ADD_FAILURE() << "qemu exited early; see " << dir << "/qemu.log";
        pid_ = -1;
        return;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "qemu did not create " << socket_;
        return;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
  }
  ~Qemu() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  std::string address() const { return "unix:" + socket_; }

 private:
  std::string socket_;
  pid_t pid_ = -1;
};

// A listening TCP socket on 127.0.0.1 (port 0: the kernel picks), held open.
class HeldPort {
 public:
  HeldPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 1) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ADD_FAILURE() << "binding a port: " << std::strerror(errno);
    }
    port_ = ntohs(a.sin_port);
  }
  ~HeldPort() { ::close(fd_); }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

// Reads the whole export through the BlockReader interface.
std::string ReadAll(BlockReader& reader) {
  std::string out(reader.size(), '\0');
  constexpr uint32_t kPiece = 1 << 20;
  int failures = 0;
  for (uint64_t off = 0; off < out.size(); off += kPiece) {
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(kPiece, out.size() - off));
    reader.SubmitRead(out.data() + off, off, len, [&](int error) { failures += error != 0; });
  }
  while (reader.in_flight() > 0) reader.Poll(1000);
  EXPECT_EQ(failures, 0);
  return out;
}

// The message of the error opening `source` throws; "" (and a failure) if
// it opens.
std::string OpenFails(const NbdSource& source) {
  try {
    OpenNbdReader(source);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "opened " << source.tcp_address << " as " << source.tls_identity;
  return "";
}

// Whether anything accepts TCP connections on 127.0.0.1:port.
bool Listening(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

uint16_t PortOf(const std::string& tcp_address) {
  return static_cast<uint16_t>(std::stoi(SplitNbdTcpAddress(tcp_address).second));
}

// Sends fd 2 (where Ferry logs) into a file while alive.
class CapturedStderr {
 public:
  explicit CapturedStderr(const std::string& path) : path_(path) {
    saved_ = ::dup(2);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~CapturedStderr() { Restore(); }
  std::string Restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, 2);
      ::close(saved_);
      saved_ = -1;
    }
    return ReadWholeFile(path_);
  }

 private:
  std::string path_;
  int saved_ = -1;
};

class QmpTcpExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!OnPath("qemu-system-x86_64") || !OnPath("qemu-img")) GTEST_SKIP() << "QEMU is not installed";
    for (const char* d : {"/run", "/scratch", "/vm1", "/vm2", "/tmp"}) fs::create_directory(dir_.path() + d);
    ::chmod((dir_.path() + "/run").c_str(), 0711);
    ::setenv("TMPDIR", (dir_.path() + "/tmp").c_str(), 1);  // the reader's temporary keys
    paths_ = LocalSnapshotPaths(dir_.path() + "/run", dir_.path() + "/scratch");
    data1_ = MakeDisk(dir_.path() + "/vm1/disk.raw", 1);
    data2_ = MakeDisk(dir_.path() + "/vm2/disk.raw", 2);
    qemu1_ = std::make_unique<Qemu>(dir_.path() + "/vm1", dir_.path() + "/vm1/disk.raw");
    qemu2_ = std::make_unique<Qemu>(dir_.path() + "/vm2", dir_.path() + "/vm2/disk.raw");
  }
  void TearDown() override { ::unsetenv("TMPDIR"); }

  QmpHostOptions Options(const Qemu& qemu) {
    QmpHostOptions o;
    o.address = qemu.address();
    o.paths = paths_;
    o.lock_wait_ms = 5000;
    // The first port of the range is taken: the server must move on.
    o.export_tcp = NbdExportNetwork{"127.0.0.1", "127.0.0.1", held_.port(),
                                    static_cast<uint16_t>(held_.port() + 40)};
    return o;
  }

  // Begins a full backup of the VM's one disk.
  std::unique_ptr<HostBackup> Begin(Host& host) {
    return host.BeginBackup(host.vm().disks, std::vector<CbtPlan>(host.vm().disks.size()));
  }

  std::vector<std::string> RuntimeFiles() {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(paths_.runtime_dir)) {
      std::string n = e.path().filename().string();
      if (!n.starts_with("vm-")) names.push_back(n);  // VM locks stay, by design
    }
    return names;
  }

  TempDir dir_;
  SnapshotPaths paths_;
  HeldPort held_;
  std::string data1_, data2_;
  std::unique_ptr<Qemu> qemu1_, qemu2_;
};

TEST_F(QmpTcpExportTest, OnlyTheSessionsCredentialsReadItsExportAndReleaseLeavesNothing) {
  SetLogLevel(LogLevel::kDebug);
  CapturedStderr log(dir_.path() + "/ferry.log");
  auto host1 = OpenQmpHost(Options(*qemu1_));
  auto host2 = OpenQmpHost(Options(*qemu2_));
  ASSERT_EQ(host1->vm().disks.size(), 1u);
  ASSERT_EQ(host1->vm().disks[0].size, kDiskSize);
  auto backup1 = Begin(*host1);
  auto backup2 = Begin(*host2);
  const NbdSource a = backup1->exports().at(0).source;
  const NbdSource b = backup2->exports().at(0).source;

  // The form of a TCP source: address in the range (not the held port),
  // identity of the session, a 256-bit key; the two sessions differ.
  EXPECT_EQ(a.unix_socket, "");
  EXPECT_EQ(a.export_name, "disk0");
  EXPECT_NE(PortOf(a.tcp_address), held_.port());
  EXPECT_NE(PortOf(a.tcp_address), PortOf(b.tcp_address));
  EXPECT_GE(PortOf(b.tcp_address), held_.port());
  EXPECT_LE(PortOf(b.tcp_address), held_.port() + 40);
  EXPECT_TRUE(a.tls_identity.starts_with("ferry-")) << a.tls_identity;
  EXPECT_EQ(a.tls_psk_key.size(), 64u);
  EXPECT_NE(a.tls_identity, b.tls_identity);
  EXPECT_NE(a.tls_psk_key, b.tls_psk_key);
  // The key file QEMU reads: private.
  std::string session1 = a.tls_identity.substr(6);
  struct stat st {};
  ASSERT_EQ(::stat((paths_.runtime_dir + "/" + session1 + ".tls/keys.psk").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((paths_.runtime_dir + "/" + session1 + ".tls").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  // (a) The right credentials read the exact bytes, over TLS.
  {
    auto reader = OpenNbdReader(a);
    EXPECT_EQ(reader->size(), kDiskSize);
    EXPECT_EQ(reader->description().find(a.tls_psk_key), std::string::npos) << reader->description();
    EXPECT_NE(reader->description().find(a.tcp_address), std::string::npos) << reader->description();
    // The reader's temporary keys file is gone once connected.
    EXPECT_TRUE(fs::is_empty(dir_.path() + "/tmp"));
    EXPECT_TRUE(ReadAll(*reader) == data1_) << "the export's bytes differ from the disk's";
    auto second = OpenNbdReader(b);
    EXPECT_TRUE(ReadAll(*second) == data2_) << "the second export's bytes differ from its disk's";
  }

  // (b) A wrong key does not connect; the message names neither key.
  NbdSource wrong = a;
  wrong.tls_psk_key = std::string(64, '0');
  std::string message = OpenFails(wrong);
  EXPECT_EQ(message.find(a.tls_psk_key), std::string::npos) << message;
  EXPECT_EQ(message.find(wrong.tls_psk_key), std::string::npos) << message;
  EXPECT_NE(message.find(a.tcp_address), std::string::npos) << message;

  // (c) No TLS: Ferry's reader refuses to try, and the server refuses a
  // client that tries anyway.
  NbdSource plain = a;
  plain.tls_identity = plain.tls_psk_key = "";
  EXPECT_NE(OpenFails(plain).find("without TLS"), std::string::npos);
  {
    nbd_handle* h = nbd_create();
    ASSERT_NE(h, nullptr);
    ASSERT_EQ(nbd_set_tls(h, LIBNBD_TLS_DISABLE), 0);
    ASSERT_EQ(nbd_set_export_name(h, a.export_name.c_str()), 0);
    std::string port = std::to_string(PortOf(a.tcp_address));
    EXPECT_EQ(nbd_connect_tcp(h, "127.0.0.1", port.c_str()), -1) << "the server served a plain client";
    nbd_close(h);
  }

  // (d) The other session's credentials do not open this session's export
  // (nor its key under this session's identity).
  NbdSource other = b;
  other.tcp_address = a.tcp_address;
  OpenFails(other);
  other.tls_identity = a.tls_identity;
  OpenFails(other);

  // (e) Released: no TLS object, no keys, no server, no session files.
  EXPECT_TRUE(backup1->End());
  EXPECT_TRUE(backup2->End());
  EXPECT_TRUE(RuntimeFiles().empty()) << RuntimeFiles().front();
  EXPECT_TRUE(fs::is_empty(paths_.host_scratch_dir));
  EXPECT_FALSE(Listening(PortOf(a.tcp_address)));
  EXPECT_FALSE(Listening(PortOf(b.tcp_address)));
  host1.reset();  // leaves the monitor, so the test can ask QEMU itself
  host2.reset();
  for (Qemu* q : {qemu1_.get(), qemu2_.get()}) {
    auto qmp = QmpClient::Connect(q->address());
    EXPECT_TRUE(ListFerryObjects(*qmp).empty()) << ListFerryObjects(*qmp).front();
    bool tls_object = false;
    boost::json::value objects = qmp->Execute("qom-list", {{"path", "/objects"}});
    for (const auto& o : objects.as_array()) {
      tls_object |= std::string(o.at("type").as_string()).find("tls-creds") != std::string::npos;
    }
    EXPECT_FALSE(tls_object);
  }

  std::string logged = log.Restore();
  EXPECT_EQ(logged.find(a.tls_psk_key), std::string::npos) << "the key was logged";
  EXPECT_EQ(logged.find(b.tls_psk_key), std::string::npos) << "the key was logged";
  EXPECT_NE(logged.find("snapshot of 1 disk(s) taken"), std::string::npos) << logged;
}

// A session killed with its snapshot in place: the next backup of the VM
// removes its TLS object and keys with the rest.
TEST_F(QmpTcpExportTest, HunterRemovesADeadSessionsTlsObjectAndKeys) {
  NbdSource a;
  {
    auto host = OpenQmpHost(Options(*qemu1_));
    auto backup = Begin(*host);
    a = backup->exports().at(0).source;
    // Death without cleanup: the session's lock is freed and nothing else.
    std::string session = a.tls_identity.substr(6);
    ::unlink((paths_.runtime_dir + "/" + session + ".lock").c_str());
    backup.release();  // leaks its FileLock's fd too; a dying process would drop it
  }
  ASSERT_TRUE(Listening(PortOf(a.tcp_address)));
  auto host = OpenQmpHost(Options(*qemu1_));  // runs the hunter
  EXPECT_TRUE(RuntimeFiles().empty()) << RuntimeFiles().front();
  EXPECT_FALSE(Listening(PortOf(a.tcp_address)));
  host.reset();
  auto qmp = QmpClient::Connect(qemu1_->address());
  EXPECT_TRUE(ListFerryObjects(*qmp).empty()) << ListFerryObjects(*qmp).front();
}

// With credentials, TLS is required: a server that offers none (here QEMU's
// plain NBD server on TCP) does not get the reads.
TEST_F(QmpTcpExportTest, ReaderWithCredentialsRefusesAServerWithoutTls) {
  auto qmp = QmpClient::Connect(qemu2_->address());
  uint16_t port = 0;
  for (uint16_t p = held_.port() + 41; p < held_.port() + 80 && port == 0; ++p) {
    try {
      qmp->Execute("nbd-server-start", {{"addr", {{"type", "inet"}, {"data", {{"host", "127.0.0.1"},
                                                                          {"port", std::to_string(p)}}}}}});
      port = p;
    } catch (const QmpError&) {
    }
  }
  ASSERT_NE(port, 0) << "no free port for a plain NBD server";
  qmp->Execute("block-export-add", {{"type", "nbd"}, {"id", "plain"}, {"node-name", "disk0-fmt"},
                                    {"name", "disk0"}, {"writable", false}});
  NbdSource s;
  s.tcp_address = JoinNbdTcpAddress("127.0.0.1", port);
  s.export_name = "disk0";
  s.tls_identity = "ferry-00000000";
  s.tls_psk_key = std::string(64, 'f');
  std::string message = OpenFails(s);
  EXPECT_NE(message.find("TLS"), std::string::npos) << message;
  // The same export, asked without TLS by plain libnbd, is served: the
  // refusal above is the reader's, not an unreachable server.
  nbd_handle* h = nbd_create();
  ASSERT_NE(h, nullptr);
  nbd_set_export_name(h, "disk0");
  EXPECT_EQ(nbd_connect_tcp(h, "127.0.0.1", std::to_string(port).c_str()), 0) << nbd_get_error();
  nbd_close(h);
}

// Without export_tcp nothing changes: a unix socket, no credentials.
TEST_F(QmpTcpExportTest, DefaultIsTheUnixSocket) {
  QmpHostOptions o = Options(*qemu1_);
  o.export_tcp.reset();
  auto host = OpenQmpHost(o);
  auto backup = Begin(*host);
  const NbdSource& s = backup->exports().at(0).source;
  EXPECT_NE(s.unix_socket, "");
  EXPECT_EQ(s.tcp_address, "");
  EXPECT_EQ(s.tls_psk_key, "");
  EXPECT_TRUE(ReadAll(*OpenNbdReader(s)) == data1_);
  EXPECT_TRUE(backup->End());
  EXPECT_TRUE(RuntimeFiles().empty()) << RuntimeFiles().front();
}

}  // namespace
}  // namespace ferry::worker
