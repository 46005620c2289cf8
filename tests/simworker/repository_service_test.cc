// The repository service's first slice (ferry/rpc/repository_service.h): a
// real service over loopback TCP (plain and TLS) on a thread of its own, and
// RemoteRepository clients. What a backup, restore and verify need of the
// chunk store: batched findMissing, insert (checked by the service), read,
// quarantine; tokens and grants.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "fake_coordinator.h"
#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/repository.h"
#include "ferry/rpc/repository_service.h"
#include "ferry/rpc/tls.h"

namespace ferry::simworker::testing {
namespace {

using rpc::RemoteRepository;
using rpc::RepositoryEndpoint;

// A service on 127.0.0.1 (plain, or TLS with the test PKI's server certificate).
std::unique_ptr<rpc::RepositoryServer> Serve(rpc::RepositoryServiceConfig config, const TestPki* pki) {
  rpc::RepositoryServer::Options options;
  if (pki) options.tls_cert = pki->server_pem, options.tls_key = pki->server_key;
  return std::make_unique<rpc::RepositoryServer>(std::move(config), options);
}

class RepositoryServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = MakeTestPki(); }
  static void TearDownTestSuite() { RemoveTestDir(pki_.dir); }
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("ferry-repo-service-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Repository::Init((dir_ / "a").string(), RepositoryConfig{});
    Repository::Init((dir_ / "b").string(), RepositoryConfig{});
    config_.repositories = {{"a", (dir_ / "a").string()}, {"b", (dir_ / "b").string()}};
    config_.grants = {{"tok-a", {"a"}}, {"tok-b", {"b"}}};
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  RepositoryEndpoint Endpoint(const rpc::RepositoryServer& s, std::string token, std::string repo) const {
    RepositoryEndpoint e;
    e.address = s.address();
    e.token = std::move(token);
    e.repository = std::move(repo);
    return e;
  }
  // An encoded chunk of `fill` bytes and its digest.
  static std::pair<Digest, std::vector<uint8_t>> Chunk(uint8_t fill, size_t size = 64 * 1024) {
    std::vector<uint8_t> plain(size);
    for (size_t i = 0; i < size; ++i) plain[i] = static_cast<uint8_t>(fill + i % 7);
    ChunkEncoder encoder(3);
    std::vector<uint8_t> encoded;
    encoder.Encode(plain, &encoded);
    return {Sha256(plain.data(), plain.size()), encoded};
  }
  static ErrorKind KindOf(const std::function<void()>& f, std::string* message = nullptr) {
    try {
      f();
    } catch (const Error& e) {
      if (message) *message = e.what();
      return e.kind();
    }
    ADD_FAILURE() << "no error";
    return ErrorKind::kInternal;
  }

  static TestPki pki_;
  std::filesystem::path dir_;
  rpc::RepositoryServiceConfig config_;
};
TestPki RepositoryServiceTest::pki_;

TEST_F(RepositoryServiceTest, InsertFindMissingReadAndQuarantine) {
  auto server = Serve(config_, nullptr);
  auto& service = *server;
  auto remote = RemoteRepository::Connect(Endpoint(service, "tok-a", "a"));
  EXPECT_EQ(remote->info().name, "a");
  EXPECT_EQ(remote->info().chunk_size, RepositoryConfig{}.chunk_size);
  auto [d1, e1] = Chunk(1);
  auto [d2, e2] = Chunk(2);
  std::vector<Digest> both = {d1, d2};
  std::vector<size_t> missing;
  remote->chunks().FindMissing(both, &missing);
  EXPECT_EQ(missing, (std::vector<size_t>{0, 1}));
  EXPECT_TRUE(remote->chunks().Insert(d1, e1));
  EXPECT_FALSE(remote->chunks().Insert(d1, e1)) << "already there";
  remote->chunks().Sync();
  missing.clear();
  remote->chunks().FindMissing(both, &missing);
  EXPECT_EQ(missing, (std::vector<size_t>{1}));
  // It landed in repository a's directory, read back bit-exact both ways.
  auto local = Repository::Open((dir_ / "a").string());
  EXPECT_TRUE(local->chunks().Contains(d1));
  std::vector<uint8_t> back;
  remote->chunk_reader().Read(d1, &back);
  EXPECT_EQ(back, e1);
  ChunkDecoder decoder;
  std::vector<uint8_t> encoded, plain;
  FetchChunk(remote->chunk_reader(), decoder, d1, 64 * 1024, &encoded, &plain);
  EXPECT_EQ(Sha256(plain.data(), plain.size()), d1);
  EXPECT_EQ(KindOf([&] { remote->chunk_reader().Read(d2, &back); }), ErrorKind::kCorrupt);
  EXPECT_NE(remote->chunk_reader().Quarantine(d1, "test"), "");
  EXPECT_FALSE(local->chunks().Contains(d1)) << "quarantined through the service";
}

TEST_F(RepositoryServiceTest, ManyDigestsGoInBatches) {
  auto server = Serve(config_, nullptr);
  auto& service = *server;
  auto remote = RemoteRepository::Connect(Endpoint(service, "tok-a", "a"));
  auto [d, e] = Chunk(9);
  ASSERT_TRUE(remote->chunks().Insert(d, e));
  std::vector<Digest> many(10000);
  for (size_t i = 0; i < many.size(); ++i) many[i].bytes[0] = static_cast<uint8_t>(i), many[i].bytes[1] = static_cast<uint8_t>(i >> 8), many[i].bytes[2] = 1;
  many[7777] = d;
  std::vector<size_t> missing;
  remote->chunks().FindMissing(many, &missing);
  ASSERT_EQ(missing.size(), many.size() - 1);
  EXPECT_TRUE(std::find(missing.begin(), missing.end(), size_t{7777}) == missing.end());
  EXPECT_EQ(missing.back(), many.size() - 1);
}

TEST_F(RepositoryServiceTest, TheServiceRefusesDataThatIsNotItsDigests) {
  auto server = Serve(config_, nullptr);
  auto& service = *server;
  auto remote = RemoteRepository::Connect(Endpoint(service, "tok-a", "a"));
  auto [d1, e1] = Chunk(1);
  auto [d2, e2] = Chunk(2);
  std::string message;
  EXPECT_EQ(KindOf([&] { remote->chunks().Insert(d1, e2); }, &message), ErrorKind::kCorrupt);
  EXPECT_NE(message.find("insert of chunk " + d1.Hex()), std::string::npos) << message;
  std::vector<uint8_t> torn(e1.begin(), e1.begin() + static_cast<long>(e1.size() / 2));
  EXPECT_EQ(KindOf([&] { remote->chunks().Insert(d1, torn); }), ErrorKind::kCorrupt);
  EXPECT_FALSE(Repository::Open((dir_ / "a").string())->chunks().Contains(d1)) << "nothing was stored";
}

TEST_F(RepositoryServiceTest, TokensAndGrants) {
  auto server = Serve(config_, nullptr);
  auto& service = *server;
  std::string message;
  EXPECT_EQ(KindOf([&] { RemoteRepository::Connect(Endpoint(service, "wrong", "a")); }, &message), ErrorKind::kBadInput);
  EXPECT_NE(message.find("repository token refused"), std::string::npos) << message;
  EXPECT_EQ(message.find("wrong"), std::string::npos) << "the token is not echoed: " << message;
  EXPECT_EQ(KindOf([&] { RemoteRepository::Connect(Endpoint(service, "tok-b", "a")); }, &message), ErrorKind::kBadInput);
  EXPECT_NE(message.find("is not open to this token"), std::string::npos) << message;
  std::string unknown;
  KindOf([&] { RemoteRepository::Connect(Endpoint(service, "tok-b", "nope")); }, &unknown);
  EXPECT_EQ(unknown.substr(unknown.find("repository '")).substr(0, 12), message.substr(message.find("repository '")).substr(0, 12));
  EXPECT_NE(unknown.find("is not open to this token"), std::string::npos) << "same answer for a name that does not exist";
  EXPECT_NO_THROW(RemoteRepository::Connect(Endpoint(service, "tok-b", "b")));
}

TEST_F(RepositoryServiceTest, OverTlsAndANameTheCertificateLacks) {
  if (pki_.dir.empty()) GTEST_SKIP() << "the openssl tool is not available";
  auto server = Serve(config_, &pki_);
  auto& service = *server;
  RepositoryEndpoint e = Endpoint(service, "tok-a", "a");
  e.tls = true;
  e.ca_file = pki_.ca_pem;
  e.server_name = "localhost";
  auto remote = RemoteRepository::Connect(e);
  auto [d, enc] = Chunk(5);
  EXPECT_TRUE(remote->chunks().Insert(d, enc));
  e.server_name = "elsewhere.example";
  EXPECT_NE(KindOf([&] { RemoteRepository::Connect(e); }), ErrorKind::kBadInput) << "a TLS failure, not a refusal";
  e.server_name = "localhost";
  e.ca_file = pki_.other_ca_pem;
  EXPECT_NE(KindOf([&] { RemoteRepository::Connect(e); }), ErrorKind::kBadInput);
}

TEST_F(RepositoryServiceTest, AServerThatCannotStartSaysWhy) {
  rpc::RepositoryServiceConfig bad = config_;
  bad.repositories["c"] = (dir_ / "nope").string();
  EXPECT_EQ(KindOf([&] { rpc::RepositoryServer(bad, {}); }), ErrorKind::kNotFound);
  auto first = Serve(config_, nullptr);
  rpc::RepositoryServer::Options taken;
  taken.listen = first->address();
  std::string message;
  EXPECT_EQ(KindOf([&] { rpc::RepositoryServer(config_, taken); }, &message), ErrorKind::kEnvironment);
  EXPECT_NE(message.find(first->address()), std::string::npos) << message;
}

TEST_F(RepositoryServiceTest, AnUnreachableServiceIsRetryable) {
  RepositoryEndpoint e;
  e.address = "127.0.0.1:1";
  e.token = "tok-a";
  e.repository = "a";
  EXPECT_EQ(KindOf([&] { RemoteRepository::Connect(e); }), ErrorKind::kRetryable);
}

TEST_F(RepositoryServiceTest, AServiceGoneMidwayIsRetryable) {
  auto service = Serve(config_, nullptr);
  auto remote = RemoteRepository::Connect(Endpoint(*service, "tok-a", "a"));
  service.reset();
  auto [d, e] = Chunk(3);
  EXPECT_EQ(KindOf([&] { remote->chunks().Insert(d, e); }), ErrorKind::kRetryable);
}

}  // namespace
}  // namespace ferry::simworker::testing
