// TLS plumbing (ferry/rpc/tls.h) and the client connection
// (ferry/rpc/worker_client.h) against an in-test coordinator over real TCP.
#include <gtest/gtest.h>

#include <kj/async-io.h>

#include <fstream>
#include <string>

#include "fake_coordinator.h"
#include "ferry/common/error.h"
#include "ferry/rpc/tls.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::simworker::testing {
namespace {

using rpc::CoordinatorConnection;
using rpc::CoordinatorEndpoint;

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = MakeTestPki(); }
  static void TearDownTestSuite() { RemoveTestDir(pki_.dir); }
  void SetUp() override {
    if (pki_.dir.empty()) GTEST_SKIP() << "the openssl tool is not available";
  }

  // Connects and calls registerWorker with `token`; returns the workerId, or
  // throws the kj::Exception the connection or the call failed with.
  uint64_t ConnectAndRegister(kj::AsyncIoContext& io, kj::TlsContext* client,
                              const CoordinatorEndpoint& endpoint, const std::string& token) {
    auto conn = CoordinatorConnection::Connect(io, client, endpoint).wait(io.waitScope);
    auto req = conn->coordinator().registerWorkerRequest();
    auto r = req.initRequest();
    r.setProtocolVersion(rpc::kProtocolVersion);
    r.setToken(token);
    r.setHost("h1");
    r.setPlatform("libvirt");
    r.setTaskSlots(1);
    r.setVersion("test");
    auto resp = req.send().wait(io.waitScope);
    return resp.getReply().getWorkerId();
  }

  static std::string Garbage(const std::string& name) {
    std::string path = pki_.dir + "/" + name;
    std::ofstream(path) << "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    return path;
  }

  static TestPki pki_;
};
TestPki TlsTest::pki_;

template <typename F>
std::string BadInputMessage(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

// The description of the kj::Exception `f` throws (recorded as a test
// property, so --gtest_output=xml shows what kj-tls said).
int failures_recorded = 0;

template <typename F>
std::string KjFailure(F&& f) {
  KJ_IF_MAYBE(e, kj::runCatchingExceptions(f)) {
    ::testing::Test::RecordProperty("failure" + std::to_string(++failures_recorded),
                                    e->getDescription().cStr());
    return e->getDescription().cStr();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

TEST_F(TlsTest, BadFilesAreBadInputNamingTheFile) {
  std::string m = BadInputMessage([] { rpc::MakeServerTlsContext("/nonexistent/s.pem", pki_.server_key); });
  EXPECT_NE(m.find("/nonexistent/s.pem"), std::string::npos) << m;
  m = BadInputMessage([] { rpc::MakeServerTlsContext(pki_.server_pem, "/nonexistent/s.key"); });
  EXPECT_NE(m.find("/nonexistent/s.key"), std::string::npos) << m;
  std::string garbage = Garbage("garbage.pem");
  m = BadInputMessage([&] { rpc::MakeServerTlsContext(garbage, pki_.server_key); });
  EXPECT_NE(m.find("invalid TLS certificate " + garbage), std::string::npos) << m;
  m = BadInputMessage([] { rpc::MakeServerTlsContext(pki_.server_pem, pki_.server_pem); });
  EXPECT_NE(m.find("invalid TLS private key " + pki_.server_pem), std::string::npos) << m;
  m = BadInputMessage([] { rpc::MakeServerTlsContext(pki_.server_pem, pki_.other_ca_key); });
  EXPECT_NE(m.find("private key " + pki_.other_ca_key + " does not belong to the certificate in " +
                   pki_.server_pem),
            std::string::npos)
      << m;

  m = BadInputMessage([] { rpc::MakeClientTlsContext("/nonexistent/ca.pem"); });
  EXPECT_NE(m.find("/nonexistent/ca.pem"), std::string::npos) << m;
  m = BadInputMessage([&] { rpc::MakeClientTlsContext(garbage); });
  EXPECT_NE(m.find("invalid TLS CA certificate " + garbage), std::string::npos) << m;
  m = BadInputMessage([] { rpc::MakeClientTlsContext(pki_.server_key); });
  EXPECT_NE(m.find("no PEM certificate"), std::string::npos) << m;
}

TEST_F(TlsTest, HandshakeThenRegisterWorkerOverTls) {
  auto io = kj::setupAsyncIo();
  auto server_tls = rpc::MakeServerTlsContext(pki_.server_pem, pki_.server_key);
  auto client_tls = rpc::MakeClientTlsContext(pki_.ca_pem);
  FakeCoordinator fake(io, server_tls.get());
  fake.refuse_tokens = {"bad-token"};
  CoordinatorEndpoint endpoint;
  endpoint.address = fake.Listen();
  endpoint.tls = true;
  endpoint.server_name = "localhost";

  // A refused registration arrives as the coordinator's exception.
  std::string m = KjFailure([&] { ConnectAndRegister(io, client_tls.get(), endpoint, "bad-token"); });
  EXPECT_NE(m.find("unknown worker token"), std::string::npos) << m;
  EXPECT_EQ(fake.refused_registrations, 1);

  EXPECT_EQ(ConnectAndRegister(io, client_tls.get(), endpoint, "good-token"), 1u);
  ASSERT_EQ(fake.registrations.size(), 1u);
  EXPECT_EQ(fake.registrations[0].token, "good-token");
  EXPECT_EQ(fake.registrations[0].protocol_version, rpc::kProtocolVersion);
  EXPECT_TRUE(fake.handshake_errors.empty());
}

// kj-tls checks the name with X509_VERIFY_PARAM_set1_host, which compares DNS
// names only: the certificate's IP:127.0.0.1 SAN does not make "127.0.0.1"
// acceptable. Documented in tls.h and docs/worker-protocol.md.
TEST_F(TlsTest, IpAddressAsServerNameIsNotAcceptedUseADnsName) {
  auto io = kj::setupAsyncIo();
  auto server_tls = rpc::MakeServerTlsContext(pki_.server_pem, pki_.server_key);
  auto client_tls = rpc::MakeClientTlsContext(pki_.ca_pem);
  FakeCoordinator fake(io, server_tls.get());
  CoordinatorEndpoint endpoint;
  endpoint.address = fake.Listen();
  endpoint.tls = true;  // server name defaults to the host part, 127.0.0.1
  std::string m = KjFailure([&] { ConnectAndRegister(io, client_tls.get(), endpoint, "t"); });
  EXPECT_NE(m.find("connecting to coordinator"), std::string::npos) << m;
  EXPECT_NE(m.find("hostname mismatch"), std::string::npos) << m;
  EXPECT_TRUE(fake.registrations.empty());

  endpoint.server_name = "localhost";
  EXPECT_EQ(ConnectAndRegister(io, client_tls.get(), endpoint, "t"), 1u);

  endpoint.server_name = "coordinator.example";  // not in the certificate
  m = KjFailure([&] { ConnectAndRegister(io, client_tls.get(), endpoint, "t"); });
  EXPECT_NE(m.find("hostname mismatch"), std::string::npos) << m;
}

TEST_F(TlsTest, UntrustedCertificateIsRefusedAndServerKeepsAccepting) {
  auto io = kj::setupAsyncIo();
  auto server_tls = rpc::MakeServerTlsContext(pki_.server_pem, pki_.server_key);
  FakeCoordinator fake(io, server_tls.get());
  CoordinatorEndpoint endpoint;
  endpoint.address = fake.Listen();
  endpoint.tls = true;
  endpoint.server_name = "localhost";

  auto other_ca = rpc::MakeClientTlsContext(pki_.other_ca_pem);
  std::string m = KjFailure([&] { ConnectAndRegister(io, other_ca.get(), endpoint, "t"); });
  EXPECT_NE(m.find("connecting to coordinator"), std::string::npos) << m;
  EXPECT_NE(m.find("not trusted"), std::string::npos) << m;

  auto system_store = rpc::MakeClientTlsContext("");
  m = KjFailure([&] { ConnectAndRegister(io, system_store.get(), endpoint, "t"); });
  EXPECT_NE(m.find("connecting to coordinator"), std::string::npos) << m;

  // A client speaking plain TCP to the TLS port gets nowhere either.
  CoordinatorEndpoint plain = endpoint;
  plain.tls = false;
  m = KjFailure([&] {
    auto conn = CoordinatorConnection::Connect(io, nullptr, plain).wait(io.waitScope);
    auto req = conn->coordinator().registerWorkerRequest();
    req.initRequest().setToken("t");
    io.provider->getTimer()
        .timeoutAfter(5 * kj::SECONDS, req.send())
        .wait(io.waitScope);
  });
  EXPECT_FALSE(m.empty());
  EXPECT_TRUE(fake.registrations.empty());

  // None of that stopped the server from accepting a good client.
  auto good = rpc::MakeClientTlsContext(pki_.ca_pem);
  EXPECT_EQ(ConnectAndRegister(io, good.get(), endpoint, "t"), 1u);
}

TEST_F(TlsTest, CaBundleTrustsEveryCertificateInIt) {
  std::string bundle = pki_.dir + "/bundle.pem";
  {
    std::ifstream other(pki_.other_ca_pem), ca(pki_.ca_pem);
    std::ofstream out(bundle);
    out << other.rdbuf() << ca.rdbuf();  // ours second
  }
  auto io = kj::setupAsyncIo();
  auto server_tls = rpc::MakeServerTlsContext(pki_.server_pem, pki_.server_key);
  FakeCoordinator fake(io, server_tls.get());
  CoordinatorEndpoint endpoint;
  endpoint.address = fake.Listen();
  endpoint.tls = true;
  endpoint.server_name = "localhost";
  auto client_tls = rpc::MakeClientTlsContext(bundle);
  EXPECT_EQ(ConnectAndRegister(io, client_tls.get(), endpoint, "t"), 1u);
}

TEST(PlainTcp, ConnectionRefusedIsDisconnected) {
  auto io = kj::setupAsyncIo();
  // Find a free port by listening and closing.
  uint port;
  {
    auto addr = io.provider->getNetwork().parseAddress("127.0.0.1", 0).wait(io.waitScope);
    port = addr->listen()->getPort();
  }
  CoordinatorEndpoint endpoint;
  endpoint.address = "127.0.0.1:" + std::to_string(port);
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
    CoordinatorConnection::Connect(io, nullptr, endpoint).wait(io.waitScope);
  })) {
    EXPECT_TRUE(rpc::IsDisconnected(*e)) << e->getDescription().cStr();
    std::string d = e->getDescription().cStr();
    EXPECT_EQ(d.rfind("connecting to coordinator 127.0.0.1:" + std::to_string(port), 0), 0u) << d;
    Error fe = rpc::ErrorFromKj(*e, "worker");
    EXPECT_EQ(fe.kind(), ErrorKind::kRetryable);
  } else {
    ADD_FAILURE() << "connected to a closed port";
  }
}

TEST(PlainTcp, OnDisconnectFiresWhenTheCoordinatorGoes) {
  auto io = kj::setupAsyncIo();
  auto fake = kj::heap<FakeCoordinator>(io);
  CoordinatorEndpoint endpoint;
  endpoint.address = fake->Listen();
  auto conn = CoordinatorConnection::Connect(io, nullptr, endpoint).wait(io.waitScope);
  auto req = conn->coordinator().registerWorkerRequest();
  req.initRequest().setToken("t");
  auto session = req.send().wait(io.waitScope).getSession();
  fake = nullptr;  // the coordinator goes away
  io.provider->getTimer().timeoutAfter(5 * kj::SECONDS, conn->onDisconnect()).wait(io.waitScope);
  // Calls on the dead session fail as DISCONNECTED.
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&] {
    session.heartbeatRequest().send().wait(io.waitScope);
  })) {
    EXPECT_TRUE(rpc::IsDisconnected(*e)) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "heartbeat on a dead connection succeeded";
  }
}

}  // namespace
}  // namespace ferry::simworker::testing
