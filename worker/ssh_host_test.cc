// SshHost against a real sshd on 127.0.0.1 (started here, as root, with a
// fresh host key and client key), and the HostEnv contract that it and
// LocalHostEnv() both keep. Skipped where sshd cannot run (not root, no
// openssh-server).
#include "ferry/worker/ssh_host.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/subprocess.h"

namespace ferry::worker {
namespace {

namespace fs = std::filesystem;

// --- pure functions ---

TEST(SshTargetTest, ParsesUserHostAndPort) {
  SshTarget t = ParseSshTarget("root@pve1:2222");
  EXPECT_EQ(t.user, "root");
  EXPECT_EQ(t.host, "pve1");
  EXPECT_EQ(t.port, 2222);
  EXPECT_EQ(t.ToString(), "root@pve1:2222");
  t = ParseSshTarget("10.0.0.5");
  EXPECT_EQ(t.user, "");
  EXPECT_EQ(t.port, 22);
  EXPECT_EQ(t.ToString(), "10.0.0.5:22");
  t = ParseSshTarget("backup@[fd00::1]:2200");
  EXPECT_EQ(t.host, "fd00::1");
  EXPECT_EQ(t.ToString(), "backup@[fd00::1]:2200");
}

TEST(SshTargetTest, RefusesWhatSshWouldTakeForAnOption) {
  for (const char* bad : {"", "-oProxyCommand=sh", "root@-x", "-l@host", "root@", "h:", "h:0", "h:70000", "h:22x",
                          "fd00::1", "[fd00::1", "a b", "h;reboot", "root@h:22:1"}) {
    EXPECT_THROW(ParseSshTarget(bad), Error) << bad;
  }
}

TEST(ShellQuoteTest, EveryByteSurvivesTheShell) {
  const std::string nasty = "a b'c\"d$e`f\\g\n*?;&|<>(){}[]~#!%";
  std::string out = RunProgram({"sh", "-c", "printf '%s' " + ShellQuote(nasty)});
  EXPECT_EQ(out, nasty);
  EXPECT_EQ(ShellQuote(""), "''");
}

TEST(SshMessageTest, KeepsTheLastLinesThatSayWhy) {
  // What OpenSSH 9.2 prints for a changed host key.
  std::string changed =
      "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
      "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
      "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
      "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n"
      "Offending ED25519 key in /etc/ferry/known_hosts:1\r\n"
      "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\r\n"
      "Host key verification failed.\r\n";
  EXPECT_EQ(TrimSshMessage(changed),
            "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking. Host key "
            "verification failed.");
  EXPECT_EQ(TrimSshMessage(""), "(ssh said nothing)");
  SshHostOptions o;
  o.target = ParseSshTarget("root@127.0.0.1:2222");
  o.known_hosts_file = "/etc/ferry/known_hosts";
  o.key_file = "/etc/ferry/id_ed25519";
  Error e = DescribeSshFailure(o, changed);
  EXPECT_EQ(e.kind(), ErrorKind::kEnvironment);
  EXPECT_NE(std::string(e.what()).find("ssh to root@127.0.0.1:2222: its host key is unknown or changed"),
            std::string::npos)
      << e.what();
  e = DescribeSshFailure(o, "root@127.0.0.1: Permission denied (publickey).\r\n");
  EXPECT_EQ(e.kind(), ErrorKind::kEnvironment);
  EXPECT_NE(std::string(e.what()).find("the login was refused (key /etc/ferry/id_ed25519"), std::string::npos);
  e = DescribeSshFailure(o, "ssh: connect to host 127.0.0.1 port 2222: Connection refused\r\n");
  EXPECT_EQ(e.kind(), ErrorKind::kRetryable);
  EXPECT_NE(std::string(e.what()).find("cannot reach the host: ssh: connect to host 127.0.0.1 port 2222: "
                                       "Connection refused"),
            std::string::npos);
}

// --- a real sshd ---

uint16_t FreePort() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A listening unix socket (a stand-in for a QMP monitor) that greets each
// client with `greeting`.
class GreetingSocket {
 public:
  GreetingSocket(const std::string& path, std::string greeting) : greeting_(std::move(greeting)) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    ::unlink(path.c_str());
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 4) != 0) ADD_FAILURE();
    thread_ = std::thread([this] {
      for (;;) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        (void)!::write(c, greeting_.data(), greeting_.size());
        ::close(c);
      }
    });
  }
  ~GreetingSocket() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }

 private:
  int fd_ = -1;
  std::string greeting_;
  std::thread thread_;
};

std::string ReadFromSocket(const std::string& path) {
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  std::string out;
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    char buf[256];
    for (ssize_t n; (n = ::read(s, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  }
  ::close(s);
  return out;
}

class TestSshd {
 public:
  // Fresh keys and a config in `dir`; sshd started on a free port.
  explicit TestSshd(const std::string& dir) : dir_(dir) {
    RunProgram({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/host_key"});
    RunProgram({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/client_key"});
    RunProgram({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir + "/other_key"});
    fs::copy_file(dir + "/client_key.pub", dir + "/authorized_keys");
    port_ = FreePort();
    std::ofstream(dir + "/sshd_config")
        << "Port " << port_ << "\nListenAddress 127.0.0.1\nHostKey " << dir << "/host_key\nPidFile " << dir
        << "/sshd.pid\nAuthorizedKeysFile " << dir
        << "/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
           "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowStreamLocalForwarding yes\n"
           "AllowTcpForwarding local\n";
    std::string host_pub = Slurp(dir + "/host_key.pub");
    std::ofstream(dir + "/known_hosts") << "[127.0.0.1]:" << port_ << " " << host_pub.substr(0, host_pub.rfind(' '))
                                        << "\n";
    fs::create_directories("/run/sshd");  // sshd's privilege separation directory
    sshd_ = ChildProcess::Spawn({"/usr/sbin/sshd", "-D", "-e", "-f", dir + "/sshd_config"}, dir + "/sshd.log");
    for (int i = 0; i < 200 && Slurp(dir + "/sshd.log").find("Server listening") == std::string::npos; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  uint16_t port() const { return port_; }
  bool up() { return sshd_.running() && Slurp(dir_ + "/sshd.log").find("Server listening") != std::string::npos; }
  std::string log() const { return Slurp(dir_ + "/sshd.log"); }

 private:
  std::string dir_;
  uint16_t port_ = 0;
  ChildProcess sshd_;  // stopped (by pid) when the test ends
};

class SshHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0 || !PathExists("/usr/sbin/sshd")) GTEST_SKIP() << "needs root and openssh-server";
    char tmpl[] = "/tmp/ferry-ssh-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    fs::create_directories(dir_ + "/host/qmp");
    sshd_ = std::make_unique<TestSshd>(dir_);
    ASSERT_TRUE(sshd_->up()) << sshd_->log();
  }
  void TearDown() override {
    host_.reset();
    sshd_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  SshHostOptions Options() const {
    SshHostOptions o;
    o.target = ParseSshTarget("root@127.0.0.1:" + std::to_string(sshd_->port()));
    o.key_file = dir_ + "/client_key";
    o.known_hosts_file = dir_ + "/known_hosts";
    o.qmp_dir = dir_ + "/host/qmp";
    o.host_runtime_dir = dir_ + "/host/run";
    o.host_scratch_dir = dir_ + "/host/scratch";
    o.local_dir = dir_ + "/w";
    o.connect_timeout_s = 5;
    return o;
  }

  std::string dir_;
  std::unique_ptr<TestSshd> sshd_;
  std::unique_ptr<SshHost> host_;
};

// The HostEnv contract, for both implementations.
void CheckHostEnvContract(HostEnv& env, const std::string& base) {
  SCOPED_TRACE(env.name());
  EXPECT_TRUE(env.ListDirectory(base + "/absent").empty());
  EXPECT_FALSE(env.ReadFile(base + "/absent").has_value());

  const std::string secret = "ferry-1a2b3c4d:0123456789abcdef\n";
  env.CreatePrivateFile(base + "/s.tls", "keys.psk", secret);
  struct stat st {};
  ASSERT_EQ(::stat((base + "/s.tls").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((base + "/s.tls/keys.psk").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(env.ReadFile(base + "/s.tls/keys.psk").value_or(""), secret);
  EXPECT_THROW(env.CreatePrivateFile(base + "/s.tls", "keys.psk", secret), Error);  // exists already

  std::string binary("a\0b\nc\xff", 6);
  std::ofstream(base + "/bin", std::ios::binary) << binary;
  EXPECT_EQ(env.ReadFile(base + "/bin").value_or(""), binary);
  fs::create_directories(base + "/full/x");
  std::ofstream(base + "/it's here") << "x";
  EXPECT_EQ(env.ListDirectory(base),
            (std::vector<std::string>{"bin", "full", "it's here", "s.tls"}));

  HostRemoval r = env.Remove({base + "/s.tls/keys.psk", base + "/s.tls", base + "/absent", base + "/it's here",
                              base + "/full"});
  EXPECT_EQ(r.removed, (std::vector<std::string>{base + "/s.tls/keys.psk", base + "/s.tls", base + "/it's here"}));
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_EQ(r.failed[0].rfind(base + "/full", 0), 0u) << r.failed[0];
  EXPECT_EQ(env.ListDirectory(base), (std::vector<std::string>{"bin", "full"}));
}

TEST_F(SshHostTest, LocalHostEnvKeepsTheContract) {
  fs::create_directories(dir_ + "/local");
  CheckHostEnvContract(*LocalHostEnv(), dir_ + "/local");
}

TEST_F(SshHostTest, SshHostKeepsTheContractOverOneConnection) {
  fs::create_directories(dir_ + "/remote");
  host_ = std::make_unique<SshHost>(Options());
  EXPECT_EQ(host_->master_pid(), -1);  // connects when first used
  CheckHostEnvContract(*host_, dir_ + "/remote");
  // The host's directories, made at connection.
  struct stat st {};
  ASSERT_EQ(::stat((dir_ + "/host/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0711u);
  ASSERT_EQ(::stat((dir_ + "/host/scratch").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // One login for all of that: every command went through the master.
  std::string log = sshd_->log();
  size_t logins = 0;
  for (size_t at = 0; (at = log.find("Accepted publickey", at)) != std::string::npos; ++at) ++logins;
  EXPECT_EQ(logins, 1u) << log;
  // The secret never reached a command line: sshd logs none, and the
  // key appears nowhere but in the file.
  EXPECT_EQ(log.find("0123456789abcdef"), std::string::npos);
}

TEST_F(SshHostTest, MirrorsTheHostsQmpSocketsAndFollowsThem) {
  auto a = std::make_unique<GreetingSocket>(dir_ + "/host/qmp/101.qmp", "monitor 101\n");
  GreetingSocket b(dir_ + "/host/qmp/102.qmp", "monitor 102\n");
  std::ofstream(dir_ + "/host/qmp/102.pid") << ::getpid() << "\n";  // a live VM's pid file (Proxmox keeps one)
  std::ofstream(dir_ + "/host/qmp/103.qmp") << "not a socket";
  // A VM killed: its socket is left, its pid file names a process that is gone.
  GreetingSocket stale(dir_ + "/host/qmp/104.qmp", "monitor 104\n");
  pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ASSERT_GT(gone, 0);
  ::waitpid(gone, nullptr, 0);
  std::ofstream(dir_ + "/host/qmp/104.pid") << gone << "\n";
  host_ = std::make_unique<SshHost>(Options());
  std::string mirror = host_->Refresh();
  EXPECT_EQ(mirror, dir_ + "/w/qmp");
  EXPECT_EQ(ListDirectory(mirror), (std::vector<std::string>{"101.qmp", "102.qmp"}));
  EXPECT_EQ(ReadFromSocket(mirror + "/102.qmp"), "monitor 102\n");
  EXPECT_EQ(ReadFromSocket(mirror + "/101.qmp"), "monitor 101\n");

  // A VM goes: its socket leaves the mirror.
  a.reset();
  ::unlink((dir_ + "/host/qmp/101.qmp").c_str());
  host_->Refresh();
  EXPECT_EQ(ListDirectory(mirror), (std::vector<std::string>{"102.qmp"}));

  // The master dies (the host rebooted, say): the next use reconnects and
  // forwards again.
  int pid = host_->master_pid();
  ASSERT_GT(pid, 0);
  ::kill(pid, SIGKILL);
  for (int i = 0; i < 100 && host_->master_pid() == pid; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  host_->Refresh();
  EXPECT_NE(host_->master_pid(), pid);
  EXPECT_EQ(ReadFromSocket(mirror + "/102.qmp"), "monitor 102\n");

  // Ended: the mirror is empty and the master gone.
  int last = host_->master_pid();
  host_.reset();
  EXPECT_TRUE(ListDirectory(mirror).empty());
  EXPECT_NE(::kill(last, 0), 0);
}

TEST_F(SshHostTest, FailuresNameTheHostAndTheCause) {
  auto expect = [&](SshHostOptions o, ErrorKind kind, const std::string& want) {
    SshHost host(o);
    try {
      host.ListDirectory("/");
      ADD_FAILURE() << "connected";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(o.target.ToString()), std::string::npos) << e.what();
    }
    EXPECT_EQ(host.master_pid(), -1);
  };
  SshHostOptions o = Options();
  o.key_file = dir_ + "/other_key";
  expect(o, ErrorKind::kEnvironment, "the login was refused (key " + o.key_file + "; is it in the host's authorized_keys?): root@127.0.0.1: Permission denied (publickey).");
  o = Options();
  std::ofstream(dir_ + "/empty_known_hosts") << "";
  o.known_hosts_file = dir_ + "/empty_known_hosts";
  expect(o, ErrorKind::kEnvironment, "its host key is unknown or changed");
  o = Options();
  o.target.port = FreePort();  // nobody listens
  expect(o, ErrorKind::kRetryable, "cannot reach the host: ssh: connect to host 127.0.0.1 port " +
                                       std::to_string(o.target.port) + ": Connection refused");
  // An unknown key was not learnt.
  EXPECT_EQ(Slurp(dir_ + "/empty_known_hosts"), "");
}

}  // namespace
}  // namespace ferry::worker
