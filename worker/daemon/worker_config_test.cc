#include "worker_config.h"

#include <gtest/gtest.h>

#include <sstream>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "ferry/common/error.h"
#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"
#include "key_directory.h"
#include "ferry/worker/libvirt_host.h"

namespace ferry::daemon {
namespace {

class WorkerConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("ferry-worker-config-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_ / "qmp");
    Write("token", "fy_0123456789\n");
    unsetenv("FERRY_WORKER_TOKEN");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(Path(name)) << text; }
  // The options every valid configuration needs, plus `more`.
  std::vector<std::string> Args(std::vector<std::string> more = {}) const {
    std::vector<std::string> a = {"--coordinator", "coord:8081", "--token-file", Path("token"), "--qmp-dir",
                                  Path("qmp"), "--runtime-dir", Path("run"), "--scratch-dir", Path("scratch")};
    a.insert(a.end(), more.begin(), more.end());
    return a;
  }
  // The message of the error ParseWorkerConfig throws, and its kind.
  std::pair<ErrorKind, std::string> Refused(const std::vector<std::string>& args) const {
    try {
      ParseWorkerConfig(args);
    } catch (const Error& e) {
      return {e.kind(), e.what()};
    }
    ADD_FAILURE() << "accepted";
    return {ErrorKind::kInternal, ""};
  }

  std::filesystem::path dir_;
};

TEST_F(WorkerConfigTest, DefaultsFromTheFewestOptions) {
  WorkerConfig c = ParseWorkerConfig(Args({"--host", "pve1"}));
  EXPECT_EQ(c.coordinator.address, "coord:8081");
  EXPECT_FALSE(c.coordinator.tls);
  EXPECT_EQ(c.token, "fy_0123456789");  // the file's line, trimmed
  EXPECT_EQ(c.host.host, "pve1");
  EXPECT_EQ(c.host.platform, "proxmox");
  EXPECT_EQ(c.host.task_slots, 2u);
  EXPECT_EQ(c.host.inventory_interval, std::chrono::seconds(30));
  EXPECT_EQ(c.host.staging_expiry, std::chrono::hours(24));
  EXPECT_FALSE(c.host.export_tcp.has_value());
  EXPECT_EQ(c.host.paths.runtime_dir, Path("run"));
  EXPECT_TRUE(std::filesystem::is_directory(Path("scratch")));
  EXPECT_EQ(c.reconnect_ms, 500);
}

TEST_F(WorkerConfigTest, EveryOptionOfTheFileAndTheCommandLineWins) {
  Write("worker.conf", "# host B\n"
                       "coordinator = dead:1\n"
                       "token-file = " + Path("token") + "\n"
                       "host = host-b\ncluster = c1\n"
                       "qmp-dir = " + Path("qmp") + "\n"
                       "libvirt = qemu:///system\n"
                       "slots = 3\nthreads = 2\nrate-limit = 100M\n"
                       "runtime-dir = " + Path("run") + "\nscratch-dir = " + Path("scratch") + "\n"
                       "inventory-interval = 1500ms\nstaging-expiry = 2h\nmonitor-timeout = 5s\n"
                       "export-host = 10.0.0.2\nexport-ports = 20000-20010\n"
                       "tls-ca = /etc/ferry/ca.pem\ntls-name = coord.example\n"
                       "quiet\n");
  WorkerConfig c = ParseWorkerConfig({"--config", Path("worker.conf"), "--coordinator", "live:8081", "--slots", "4"});
  EXPECT_EQ(c.coordinator.address, "live:8081");
  EXPECT_TRUE(c.coordinator.tls);
  EXPECT_EQ(c.coordinator.ca_file, "/etc/ferry/ca.pem");
  EXPECT_EQ(c.coordinator.server_name, "coord.example");
  EXPECT_EQ(c.host.host, "host-b");
  EXPECT_EQ(c.host.cluster, "c1");
  EXPECT_EQ(c.host.libvirt_uri, "qemu:///system");
  EXPECT_EQ(c.host.task_slots, 4u);
  EXPECT_EQ(c.host.compute_threads, 2u);
  EXPECT_EQ(c.host.rate_limit_bytes_per_s, 100u << 20);
  EXPECT_EQ(c.host.inventory_interval, std::chrono::milliseconds(1500));
  EXPECT_EQ(c.host.staging_expiry, std::chrono::hours(2));
  EXPECT_EQ(c.host.monitor_timeout, std::chrono::seconds(5));
  ASSERT_TRUE(c.host.export_tcp.has_value());
  EXPECT_EQ(c.host.export_tcp->advertise_host, "10.0.0.2");
  EXPECT_EQ(c.host.export_tcp->listen_host, "0.0.0.0");
  EXPECT_EQ(c.host.export_tcp->port_min, 20000);
  EXPECT_EQ(c.host.export_tcp->port_max, 20010);
  EXPECT_EQ(c.log_level, 2);
}

TEST_F(WorkerConfigTest, BadInputNamesTheOption) {
  auto bad = [&](std::vector<std::string> args, const std::string& want) {
    auto [kind, message] = Refused(args);
    EXPECT_EQ(kind, ErrorKind::kBadInput) << message;
    EXPECT_NE(message.find(want), std::string::npos) << "'" << message << "' lacks '" << want << "'";
  };
  bad({"--token-file", Path("token"), "--qmp-dir", Path("qmp")}, "missing required option --coordinator");
  bad({"--coordinator", "coord:8081", "--qmp-dir", Path("qmp")}, "--token-file");
  bad({"--coordinator", "coord:8081", "--token-file", Path("token")},
      "--qmp-dir DIR or --qmp-ssh [USER@]HOST[:PORT], and/or --libvirt URI");
  bad(Args({"--platform", "vmware"}), "option --platform: 'vmware' is not proxmox, libvirt or ovirt");
  bad(Args({"--slots", "0"}), "option --slots: '0' is not an integer from 1 to 64");
  bad(Args({"--inventory-interval", "soon"}), "option --inventory-interval: 'soon' is not a duration");
  bad(Args({"--inventory-interval", "10ms"}), "at least 100ms");
  bad(Args({"--export-host", "h", "--export-ports", "9-1"}), "option --export-ports: '9-1' is not a range");
  bad(Args({"--export-ports", "1-2"}), "option --export-ports: only for exports over TCP");
  bad(Args({"--tls-name", "x"}), "only with --tls or --tls-ca");
  bad({"--coordinator", "c:1", "--token-file", Path("token"), "--libvirt", "qemu:///system", "--export-host", "h"},
      "option --export-host: a local libvirtd (a URI without a host) exports on unix sockets");
  bad(Args({"--frobnicate"}), "unknown option --frobnicate");
  Write("empty.token", "\n");
  bad({"--coordinator", "c:1", "--token-file", Path("empty.token"), "--qmp-dir", Path("qmp")}, "is empty");
  Write("bad.conf", "coordinator = c:1\n\nslots\n");
  bad({"--config", Path("bad.conf")}, Path("bad.conf") + " line 3: option 'slots' needs a value");
}

TEST_F(WorkerConfigTest, RemoteLibvirtExportsOverTcp) {
  auto base = [&](std::vector<std::string> more) {
    std::vector<std::string> a = {"--coordinator", "c:1",          "--token-file",  Path("token"),
                                  "--runtime-dir", Path("run"), "--scratch-dir", Path("scratch")};
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  // A local libvirtd: a unix socket, as before.
  EXPECT_FALSE(ParseWorkerConfig(base({"--libvirt", "qemu:///system"})).host.libvirt_export.has_value());
  // Remote: TCP at the URI's host, TLS by default (which needs the certificates).
  const std::string uri = "qemu+libssh://root@[fd00::7]:2222/system?keyfile=/k&known_hosts=/kh";
  auto [kind, message] = Refused(base({"--libvirt", uri}));
  EXPECT_EQ(kind, ErrorKind::kBadInput);
  EXPECT_NE(message.find("option --libvirt-export-tls-dir: required"), std::string::npos) << message;
  std::filesystem::create_directories(Path("pki"));
  EXPECT_EQ(Refused(base({"--libvirt", uri, "--libvirt-export-tls-dir", Path("pki")})).first, ErrorKind::kNotFound);
  Write("pki/ca-cert.pem", "x");
  WorkerConfig c = ParseWorkerConfig(base({"--libvirt", uri, "--libvirt-export-tls-dir", Path("pki"),
                                           "--export-ports", "20000-20001"}));
  ASSERT_TRUE(c.host.libvirt_export.has_value());
  EXPECT_EQ(c.host.libvirt_export->host, "fd00::7");
  EXPECT_TRUE(c.host.libvirt_export->tls);
  EXPECT_EQ(c.host.libvirt_export->tls_x509_dir, Path("pki"));
  EXPECT_EQ(c.host.libvirt_export->port_min, 20000);
  EXPECT_EQ(c.host.libvirt_export->port_max, 20001);
  EXPECT_TRUE(c.host.libvirt_export->scratch_dir.empty());
  EXPECT_FALSE(c.host.export_tcp.has_value());  // no QMP here
  c = ParseWorkerConfig(base({"--libvirt", "qemu+tls://hv1/system", "--libvirt-export-tls", "no", "--export-host",
                              "10.0.0.5", "--libvirt-scratch-dir", "/var/tmp/ferry"}));
  EXPECT_EQ(c.host.libvirt_export->host, "10.0.0.5");
  EXPECT_FALSE(c.host.libvirt_export->tls);
  EXPECT_EQ(c.host.libvirt_export->scratch_dir, "/var/tmp/ferry");
  auto bad = [&](std::vector<std::string> args, const std::string& want) {
    auto [k, m] = Refused(args);
    EXPECT_EQ(k, ErrorKind::kBadInput) << m;
    EXPECT_NE(m.find(want), std::string::npos) << "'" << m << "' lacks '" << want << "'";
  };
  bad(base({"--libvirt", uri, "--libvirt-export-tls", "maybe"}), "option --libvirt-export-tls: 'maybe' is not yes or no");
  bad(base({"--libvirt", uri, "--libvirt-export-tls", "no", "--libvirt-export-tls-dir", Path("pki")}),
      "option --libvirt-export-tls-dir: not with --libvirt-export-tls no");
  bad(base({"--libvirt", uri, "--libvirt-export-tls", "no", "--libvirt-scratch-dir", "tmp"}), "not an absolute path");
  bad(base({"--libvirt", "qemu:///system", "--libvirt-export-tls", "no"}),
      "option --libvirt-export-tls: only with a remote --libvirt URI");
}

TEST(LibvirtUriHostTest, HostPartOrNothing) {
  EXPECT_EQ(worker::LibvirtUriHost("qemu:///system"), "");
  EXPECT_EQ(worker::LibvirtUriHost("qemu+unix:///system?socket=/x"), "");
  EXPECT_EQ(worker::LibvirtUriHost("qemu+ssh://root@hv1:22/system?keyfile=/k"), "hv1");
  EXPECT_EQ(worker::LibvirtUriHost("qemu+tls://hv2.example/system"), "hv2.example");
  EXPECT_EQ(worker::LibvirtUriHost("qemu+libssh://root@[fd00::1]:2222/system"), "fd00::1");
  EXPECT_EQ(worker::LibvirtUriHost("qemu+tcp://10.0.0.1?x"), "10.0.0.1");
}

TEST_F(WorkerConfigTest, MissingFilesAreNotFound) {
  EXPECT_EQ(Refused({"--config", Path("nope.conf")}).first, ErrorKind::kNotFound);
  EXPECT_EQ(Refused(Args({"--qmp-dir", Path("nope")})).first, ErrorKind::kBadInput);  // given twice
  EXPECT_EQ(Refused({"--coordinator", "c:1", "--token-file", Path("token"), "--qmp-dir", Path("nope")}).first,
            ErrorKind::kNotFound);
}

class WorkerSshConfigTest : public WorkerConfigTest {
 protected:
  void SetUp() override {
    WorkerConfigTest::SetUp();
    Write("key", "not really a key\n");
    Write("known_hosts", "[127.0.0.1]:2222 ssh-ed25519 AAAA\n");
  }
  std::vector<std::string> Ssh(std::vector<std::string> more = {}) const {
    std::vector<std::string> a = {"--coordinator", "coord:8081", "--token-file", Path("token"),
                                  "--qmp-ssh", "root@127.0.0.1:2222", "--ssh-key", Path("key"),
                                  "--ssh-known-hosts", Path("known_hosts"), "--runtime-dir", Path("run")};
    a.insert(a.end(), more.begin(), more.end());
    return a;
  }
};

TEST_F(WorkerSshConfigTest, DefaultsOfTheSshPath) {
  WorkerConfig c = ParseWorkerConfig(Ssh());  // does not connect
  EXPECT_EQ(c.host.platform, "proxmox");
  ASSERT_TRUE(c.host.qmp_monitors);
  EXPECT_EQ(c.host.qmp_monitors->description(), "root@127.0.0.1:2222:/var/run/qemu-server (over ssh)");
  // Exports must be TCP: the worker cannot open the host's unix sockets.
  ASSERT_TRUE(c.host.export_tcp.has_value());
  EXPECT_EQ(c.host.export_tcp->advertise_host, "127.0.0.1");
  EXPECT_EQ(c.host.export_tcp->listen_host, "0.0.0.0");
  // Locks here, the rest on the host.
  EXPECT_EQ(c.host.paths.runtime_dir, Path("run"));
  EXPECT_EQ(c.host.paths.host_runtime_dir, "/run/ferry");
  EXPECT_EQ(c.host.paths.host_scratch_dir, "/var/tmp/ferry");
  ASSERT_TRUE(c.host.paths.host);
  EXPECT_EQ(c.host.paths.host->name(), "root@127.0.0.1:2222 (over ssh)");
  EXPECT_TRUE(std::filesystem::is_directory(Path("run")));
}

TEST_F(WorkerSshConfigTest, HostDirectoriesAndExportAddress) {
  Write("ssh.conf", "qmp-ssh = backup@[fd00::5]:2200\n"
                    "ssh-known-hosts = " + Path("known_hosts") + "\n"
                    "qmp-remote-dir = /srv/qmp\nhost-runtime-dir = /run/f2\nhost-scratch-dir = /srv/scratch\n"
                    "export-host = 10.0.0.9\nexport-listen = 10.0.0.9\n");
  WorkerConfig c = ParseWorkerConfig({"--config", Path("ssh.conf"), "--coordinator", "c:1", "--token-file",
                                      Path("token"), "--runtime-dir", Path("run")});
  EXPECT_EQ(c.host.qmp_monitors->description(), "backup@[fd00::5]:2200:/srv/qmp (over ssh)");
  EXPECT_EQ(c.host.paths.host_runtime_dir, "/run/f2");
  EXPECT_EQ(c.host.paths.host_scratch_dir, "/srv/scratch");
  EXPECT_EQ(c.host.export_tcp->advertise_host, "10.0.0.9");
  EXPECT_EQ(c.host.export_tcp->listen_host, "10.0.0.9");
}

TEST_F(WorkerSshConfigTest, BadSshOptionsNameTheOption) {
  auto bad = [&](std::vector<std::string> args, const std::string& want, ErrorKind kind = ErrorKind::kBadInput) {
    auto [got, message] = Refused(args);
    EXPECT_EQ(got, kind) << message;
    EXPECT_NE(message.find(want), std::string::npos) << "'" << message << "' lacks '" << want << "'";
  };
  bad(Ssh({"--qmp-dir", Path("qmp")}), "options --qmp-dir and --qmp-ssh: give one");
  bad(Args({"--ssh-key", Path("key")}), "option --ssh-key: only with --qmp-ssh");
  bad(Args({"--host-scratch-dir", "/x"}), "option --host-scratch-dir: only with --qmp-ssh");
  bad(Ssh({"--scratch-dir", Path("scratch")}), "give --host-scratch-dir");
  bad({"--coordinator", "c:1", "--token-file", Path("token"), "--qmp-ssh", "h", "--runtime-dir", Path("run")},
      "option --ssh-known-hosts: required with --qmp-ssh");
  bad({"--coordinator", "c:1", "--token-file", Path("token"), "--qmp-ssh", "h", "--ssh-known-hosts", Path("none"),
       "--runtime-dir", Path("run")},
      "option --ssh-known-hosts: " + Path("none") + " is not a file", ErrorKind::kNotFound);
  bad({"--coordinator", "c:1", "--token-file", Path("token"), "--qmp-ssh", "-oProxyCommand=x", "--ssh-known-hosts",
       Path("known_hosts"), "--runtime-dir", Path("run")},
      "option --qmp-ssh: SSH target '-oProxyCommand=x'");
  bad({"--coordinator", "c:1", "--token-file", Path("token"), "--qmp-ssh", "root@h:99999", "--ssh-known-hosts",
       Path("known_hosts"), "--runtime-dir", Path("run")},
      "'99999' is not a port");
  bad(Ssh({"--qmp-remote-dir", "relative/dir"}), "the host's QMP directory 'relative/dir'");
  bad(Ssh({"--host-runtime-dir", "/run/a b"}), "the host's runtime directory '/run/a b'");
}

TEST_F(WorkerConfigTest, TokenFromTheEnvironment) {
  setenv("FERRY_WORKER_TOKEN", "fy_env", 1);
  WorkerConfig c = ParseWorkerConfig({"--coordinator", "c:1", "--qmp-dir", Path("qmp"), "--runtime-dir", Path("run"),
                                      "--scratch-dir", Path("scratch")});
  EXPECT_EQ(c.token, "fy_env");
  unsetenv("FERRY_WORKER_TOKEN");
}

TEST_F(WorkerConfigTest, CommandLineVerbosityWinsOverTheFile) {
  Write("loud.conf", "verbose\n");
  EXPECT_EQ(ParseWorkerConfig(Args({"--config", Path("loud.conf"), "--quiet"})).log_level, 2);
  EXPECT_EQ(ParseWorkerConfig(Args({"--config", Path("loud.conf")})).log_level, 0);
}

TEST_F(WorkerConfigTest, HelpListsEveryOption) {
  std::ostringstream out;
  EXPECT_EQ(AnswerStandardRequests(WorkerProgram(), {"--help"}, out), 0);
  const CommandSpec& serve = *WorkerProgram().Find("");
  ASSERT_GT(serve.options.size(), 30u);
  for (const auto& o : serve.options) EXPECT_NE(out.str().find("--" + o.name), std::string::npos) << o.name;
}

TEST_F(WorkerConfigTest, KeyDirectoryAndItsPassphrase) {
  unsetenv("FERRY_PASSPHRASE");
  std::filesystem::create_directories(dir_ / "keys");
  Write("pass", "worker passphrase\n");
  Write("keys.conf", "key-dir = " + Path("keys") + "\npassphrase-file = " + Path("pass") + "\n");
  WorkerConfig c = ParseWorkerConfig(Args({"--config", Path("keys.conf")}));
  EXPECT_EQ(c.host.key_dir, Path("keys"));
  EXPECT_EQ(c.host.passphrase_file, Path("pass"));
  EXPECT_EQ(ParseWorkerConfig(Args()).host.key_dir, "");

  auto bad = [&](std::vector<std::string> args, const std::string& want, ErrorKind kind) {
    auto [got, message] = Refused(args);
    EXPECT_EQ(got, kind) << message;
    EXPECT_NE(message.find(want), std::string::npos) << "'" << message << "' lacks '" << want << "'";
  };
  bad(Args({"--key-dir", Path("none")}), "option --key-dir: " + Path("none") + " is not a directory",
      ErrorKind::kNotFound);
  bad(Args({"--key-dir", Path("keys")}), "option --key-dir: no passphrase for the key file: give --passphrase-file "
      "or set FERRY_PASSPHRASE", ErrorKind::kBadInput);
  Write("empty", "\n");
  bad(Args({"--key-dir", Path("keys"), "--passphrase-file", Path("empty")}), "passphrase file " + Path("empty") +
      " is empty", ErrorKind::kBadInput);
  bad(Args({"--passphrase-file", Path("pass")}), "option --passphrase-file: only with --key-dir", ErrorKind::kBadInput);
  setenv("FERRY_PASSPHRASE", "from the environment", 1);
  EXPECT_EQ(ParseWorkerConfig(Args({"--key-dir", Path("keys")})).host.passphrase_file, "");
  unsetenv("FERRY_PASSPHRASE");
}

TEST_F(WorkerConfigTest, KeyDirectoryFindsTheRepositorysKeyByFingerprint) {
  std::filesystem::create_directories(dir_ / "keys");
  Write("pass", "worker passphrase\n");
  RepositoryKey mine = RepositoryKey::Generate();
  RepositoryKey other = RepositoryKey::Generate();
  RepositoryKey absent = RepositoryKey::Generate();
  other.WriteKeyFile(Path("keys/a-other.key"), "worker passphrase");
  mine.WriteKeyFile(Path("keys/b-mine.key"), "worker passphrase");
  Write("keys/broken.key", "not a key file");
  absent.WriteKeyFile(Path("keys/absent.json"), "worker passphrase");  // not *.key: never read

  RepositoryConfig plain;
  RepositoryConfig encrypted;
  encrypted.key_fingerprint = mine.Fingerprint();
  KeyDirectory keys(Path("keys"), Path("pass"));
  EXPECT_FALSE(keys.For(plain, "'p' (/r/p)"));
  std::shared_ptr<const RepositoryKey> key = keys.For(encrypted, "'e' (/r/e)");
  ASSERT_TRUE(key);
  EXPECT_EQ(key->Fingerprint(), mine.Fingerprint());
  EXPECT_EQ(keys.For(encrypted, "'e' (/r/e)").get(), key.get());  // loaded once

  auto message = [&](const KeyDirectory& k, const RepositoryConfig& config, ErrorKind want) {
    try {
      k.For(config, "'x' (/r/x)");
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), want) << e.what();
      return std::string(e.what());
    }
    ADD_FAILURE() << "a key was found";
    return std::string();
  };
  RepositoryConfig unknown;
  unknown.key_fingerprint = absent.Fingerprint();
  EXPECT_EQ(message(keys, unknown, ErrorKind::kNotFound),
            "repository 'x' (/r/x) is encrypted with the key of fingerprint " + absent.Fingerprint() +
                ", and no key file in this worker's key directory " + Path("keys") +
                " (*.key) records that fingerprint: copy the repository's key file there (docs/worker.md)");
  EXPECT_EQ(message(KeyDirectory(), encrypted, ErrorKind::kBadInput),
            "repository 'x' (/r/x) is encrypted with the key of fingerprint " + mine.Fingerprint() +
                ", and this worker has no key directory (option key-dir: the directory of its key files; "
                "docs/worker.md)");
  // Copied in later: found without a restart.
  absent.WriteKeyFile(Path("keys/c-absent.key"), "worker passphrase");
  EXPECT_EQ(keys.For(unknown, "'x' (/r/x)")->Fingerprint(), absent.Fingerprint());
  // A wrong passphrase names the key file.
  Write("wrong", "not it\n");
  EXPECT_EQ(message(KeyDirectory(Path("keys"), Path("wrong")), encrypted, ErrorKind::kBadInput),
            "wrong passphrase for key file " + Path("keys/b-mine.key"));
}

TEST_F(WorkerConfigTest, StrayWordsAreRefused) {
  EXPECT_THROW(ParseWorkerConfig({"--coordinator", "c:1", "run"}), Error);
}

}  // namespace
}  // namespace ferry::daemon
