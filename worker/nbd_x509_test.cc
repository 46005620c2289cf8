// The NBD reader over TCP with x509 TLS, the way libvirt's pull-mode exports
// of a remote host are read (qemu.conf backup_tls_x509_cert_dir on the host,
// the worker's libvirt-export-tls-dir): a qemu-nbd with a tls-creds-x509
// server object verifying clients, certificates made here with openssl.
// Checks that the worker's certificates read the exact bytes, and that
// plaintext, a client without a certificate, or another CA do not get in.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ferry/common/error.h"
#include "ferry/common/subprocess.h"
#include "ferry/worker/block_reader.h"

namespace ferry::worker {
namespace {

namespace fs = std::filesystem;

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// A CA, a certificate signed by it for `cn` (with `san`), and its key.
void Sign(const fs::path& ca_dir, const fs::path& cert, const fs::path& key, const std::string& cn,
          const std::string& san) {
  fs::path csr = cert.string() + ".csr", ext = cert.string() + ".ext";
  std::ofstream(ext) << "subjectAltName=" << san << "\nextendedKeyUsage=serverAuth,clientAuth\n";
  RunProgram({"openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key.string(), "-subj",
              "/CN=" + cn, "-out", csr.string()});
  RunProgram({"openssl", "x509", "-req", "-in", csr.string(), "-CA", (ca_dir / "ca-cert.pem").string(), "-CAkey",
              (ca_dir / "ca-key.pem").string(), "-CAcreateserial", "-days", "2", "-extfile", ext.string(), "-out",
              cert.string()});
}

void MakeCa(const fs::path& dir) {
  fs::create_directories(dir);
  RunProgram({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", (dir / "ca-key.pem").string(),
              "-subj", "/CN=ferry test CA", "-days", "2", "-out", (dir / "ca-cert.pem").string()});
}

class NbdX509Test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/usr/bin/openssl", X_OK) != 0 || ::access("/usr/bin/qemu-nbd", X_OK) != 0) {
      GTEST_SKIP() << "needs openssl and qemu-nbd";
    }
    dir_ = fs::temp_directory_path() / ("ferry-nbd-x509-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    MakeCa(dir_ / "ca");
    MakeCa(dir_ / "other-ca");
    // The host's directory (QEMU's layout) and the worker's (libnbd's).
    fs::create_directories(dir_ / "server");
    fs::copy_file(dir_ / "ca/ca-cert.pem", dir_ / "server/ca-cert.pem");
    Sign(dir_ / "ca", dir_ / "server/server-cert.pem", dir_ / "server/server-key.pem", "127.0.0.1", "IP:127.0.0.1");
    fs::create_directories(dir_ / "client");
    fs::copy_file(dir_ / "ca/ca-cert.pem", dir_ / "client/ca-cert.pem");
    Sign(dir_ / "ca", dir_ / "client/client-cert.pem", dir_ / "client/client-key.pem", "ferry-worker",
         "DNS:ferry-worker");
    // Trusts the host's CA but has no certificate of its own.
    fs::create_directories(dir_ / "anonymous");
    fs::copy_file(dir_ / "ca/ca-cert.pem", dir_ / "anonymous/ca-cert.pem");
    // A certificate of another CA.
    fs::create_directories(dir_ / "stranger");
    fs::copy_file(dir_ / "other-ca/ca-cert.pem", dir_ / "stranger/ca-cert.pem");
    Sign(dir_ / "other-ca", dir_ / "stranger/client-cert.pem", dir_ / "stranger/client-key.pem", "stranger",
         "DNS:stranger");

    data_.resize(4 << 20);
    for (size_t i = 0; i < data_.size(); ++i) data_[i] = static_cast<char>((i * 7919) >> 9);
    std::ofstream(dir_ / "disk.raw", std::ios::binary).write(data_.data(), static_cast<std::streamsize>(data_.size()));
    port_ = FreePort();
    server_ = ChildProcess::Spawn(
        {"qemu-nbd", "--object",
         "tls-creds-x509,id=tls0,dir=" + (dir_ / "server").string() + ",endpoint=server,verify-peer=on",
         "--tls-creds", "tls0", "--read-only", "--format=raw", "--export-name=ferry-0123456789abcdef-vda",
         "--bind=127.0.0.1", "--port=" + std::to_string(port_), "--shared=4", "--persistent", (dir_ / "disk.raw").string()},
        (dir_ / "qemu-nbd.log").string());
    for (int i = 0; i < 200; ++i) {
      try {
        OpenNbdReader(Source("client"));
        return;
      } catch (const Error&) {
        if (!server_.running()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
    }
    std::ifstream log(dir_ / "qemu-nbd.log");
    FAIL() << "qemu-nbd did not serve over x509 TLS: " << std::string(std::istreambuf_iterator<char>(log), {});
  }
  void TearDown() override {
    server_.Terminate();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  NbdSource Source(const std::string& certificates) const {
    NbdSource s;
    s.tcp_address = "127.0.0.1:" + std::to_string(port_);
    s.export_name = "ferry-0123456789abcdef-vda";
    s.tls_x509_dir = (dir_ / certificates).string();
    return s;
  }

  fs::path dir_;
  std::string data_;
  int port_ = 0;
  ChildProcess server_;
};

TEST_F(NbdX509Test, TheWorkersCertificatesReadTheExactBytes) {
  std::unique_ptr<BlockReader> r = OpenNbdReader(Source("client"));
  EXPECT_EQ(r->size(), data_.size());
  EXPECT_NE(r->description().find("nbds://127.0.0.1:"), std::string::npos) << r->description();
  std::string got(data_.size(), '\0');
  int pending = 0, failed = 0;
  for (uint64_t off = 0; off < data_.size(); off += 1 << 20) {
    ++pending;
    r->SubmitRead(got.data() + off, off, 1 << 20, [&](int error) {
      --pending;
      failed += error != 0;
    });
  }
  while (pending > 0) r->Poll(1000);
  EXPECT_EQ(failed, 0);
  EXPECT_TRUE(got == data_) << "the bytes read over x509 TLS differ";
}

TEST_F(NbdX509Test, PlaintextNoCertificateOrAnotherCaDoNotGetIn) {
  NbdSource plain = Source("client");
  plain.tls_x509_dir.clear();
  plain.plaintext = true;
  for (const NbdSource& s : {plain, Source("anonymous"), Source("stranger")}) {
    try {
      OpenNbdReader(s);
      ADD_FAILURE() << "read " << (s.plaintext ? "in plaintext" : "with " + s.tls_x509_dir);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kRetryable) << e.what();
    }
  }
  EXPECT_NO_THROW(OpenNbdReader(Source("client")));  // refused for their credentials, not a dead server
}

}  // namespace
}  // namespace ferry::worker
