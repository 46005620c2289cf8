// The repository service's first slice (ferry/rpc/repository_service.h): a
// real service over loopback TCP (plain and TLS) on a thread of its own, and
// RemoteRepository clients. What a backup, restore and verify need of the
// chunk store: batched findMissing, insert (checked by the service), read,
// quarantine; tokens and grants.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_coordinator.h"
#include "ferry/common/chunk.h"
#include "ferry/common/repository_key.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/gc.h"
#include "ferry/common/manifest.h"
#include "ferry/common/repository.h"
#include "ferry/common/verify.h"
#include "ferry/rpc/repository_service.h"
#include "test_points.h"
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
    config_.grants = {rpc::RepositoryGrant::ForToken("tok-a", {"a"}), rpc::RepositoryGrant::ForToken("tok-b", {"b"})};
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

// The service's counters (RepositoryServiceStats, ferry-repository's
// /metrics) move by exactly what the calls did; a manifest keeps its writer
// over the wire.
TEST_F(RepositoryServiceTest, TheServiceCountsItsCalls) {
  auto stats = std::make_shared<rpc::RepositoryServiceStats>();
  config_.stats = stats;
  auto server = Serve(config_, nullptr);
  const auto calls = [&](const std::string& method) {
    for (const auto& [name, n] : stats->Calls()) {
      if (name == method) return n;
    }
    ADD_FAILURE() << "no method " << method;
    return uint64_t{0};
  };
  const auto errors = [&](const std::string& kind) {
    for (const auto& [name, n] : stats->Errors()) {
      if (name == kind) return n;
    }
    ADD_FAILURE() << "no kind " << kind;
    return uint64_t{0};
  };
  ASSERT_EQ(stats->Repositories().size(), 2u) << "both static repositories, at zero";
  std::shared_ptr<const rpc::RepositoryServiceStats::Repository> a = stats->Repositories()[0].second;
  EXPECT_EQ(stats->Repositories()[0].first, "a");
  EXPECT_EQ(calls("open"), 0u);

  auto remote = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  auto [d1, e1] = Chunk(1);
  auto [d2, e2] = Chunk(2);
  std::vector<Digest> both = {d1, d2};
  std::vector<size_t> missing;
  remote->chunks().FindMissing(both, &missing);
  EXPECT_TRUE(remote->chunks().Insert(d1, e1));
  EXPECT_FALSE(remote->chunks().Insert(d1, e1));  // a dedup hit
  EXPECT_TRUE(remote->chunks().Insert(d2, e2));
  EXPECT_EQ(calls("open"), 1u);
  EXPECT_EQ(calls("findMissing"), 1u);
  EXPECT_EQ(calls("insert"), 3u);
  EXPECT_EQ(a->chunks_queried.load(), 2u);
  EXPECT_EQ(a->chunks_missing.load(), 2u);
  EXPECT_EQ(a->chunks_received.load(), 3u);
  EXPECT_EQ(a->chunks_stored.load(), 2u);
  EXPECT_EQ(a->bytes_received.load(), 2 * e1.size() + e2.size());
  EXPECT_EQ(a->bytes_stored.load(), e1.size() + e2.size());

  std::string id = test::WriteTestPoint(*remote, {"x"});
  EXPECT_EQ(a->points_committed.load(), 1u);
  EXPECT_EQ(calls("commit"), 1u);
  EXPECT_EQ(remote->points().Load(id).writer, WriterName()) << "the writer, over the wire";
  EXPECT_EQ(remote->points().LoadAll().points.at(0).writer, WriterName());

  const uint64_t bad_input = errors("bad_input"), not_found = errors("not_found");
  EXPECT_EQ(KindOf([&] { RemoteRepository::Connect(Endpoint(*server, "tok-nope", "a")); }), ErrorKind::kBadInput);
  EXPECT_EQ(errors("bad_input"), bad_input + 1);
  EXPECT_EQ(KindOf([&] { remote->points().Load("20990101T000000Z-000000"); }), ErrorKind::kNotFound);
  EXPECT_EQ(errors("not_found"), not_found + 1);
  EXPECT_EQ(stats->Repositories()[1].second->chunks_received.load(), 0u) << "b's counters are b's";
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

// An encrypted repository (docs/encryption.md): the service has no key. It
// tells the client the key's fingerprint, stores encrypted chunks after
// checking their framing and CRC, and refuses plain chunks for it (and
// encrypted ones for a plain repository).
TEST_F(RepositoryServiceTest, AnEncryptedRepositoryWithoutTheKey) {
  const RepositoryKey key = RepositoryKey::Generate();
  RepositoryConfig enc;
  enc.key_fingerprint = key.Fingerprint();
  Repository::Init((dir_ / "e").string(), enc);
  config_.repositories["e"] = (dir_ / "e").string();
  config_.grants.push_back(rpc::RepositoryGrant::ForToken("tok-e", {"e", "a"}));
  auto server = Serve(config_, nullptr);
  auto remote = RemoteRepository::Connect(Endpoint(*server, "tok-e", "e"));
  EXPECT_EQ(remote->config().key_fingerprint, key.Fingerprint());
  EXPECT_EQ(remote->info().format, "ferry-repository-v3");

  std::vector<uint8_t> plain(64 * 1024);
  for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<uint8_t>(i % 11);
  const Digest d = ChunkHasher(&key)(plain);
  ChunkEncoder encoder(1, &key);
  std::vector<uint8_t> encrypted;
  encoder.Encode(plain, d, &encrypted);
  EXPECT_TRUE(remote->chunks().Insert(d, encrypted));
  std::vector<uint8_t> encoded, back;
  ChunkDecoder decoder(&key);
  FetchChunk(remote->chunk_reader(), decoder, d, 64 * 1024, &encoded, &back);
  EXPECT_EQ(back, plain);

  auto [pd, pe] = Chunk(5);
  std::string message;
  EXPECT_EQ(KindOf([&] { remote->chunks().Insert(pd, pe); }, &message), ErrorKind::kBadInput);
  EXPECT_NE(message.find("is not encrypted, and the repository is"), std::string::npos) << message;
  std::vector<uint8_t> torn = encrypted;
  torn[torn.size() / 2] ^= 1;
  EXPECT_EQ(KindOf([&] { remote->chunks().Insert(ChunkHasher(&key)(pe), torn); }), ErrorKind::kCorrupt);
  auto plain_repo = RemoteRepository::Connect(Endpoint(*server, "tok-e", "a"));
  EXPECT_EQ(plain_repo->config().key_fingerprint, "");
  EXPECT_EQ(KindOf([&] { plain_repo->chunks().Insert(d, encrypted); }), ErrorKind::kBadInput);
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

TEST_F(RepositoryServiceTest, AServiceGoneForLongerThanTheClientWaitsIsRetryable) {
  auto service = Serve(config_, nullptr);
  RepositoryEndpoint e = Endpoint(*service, "tok-a", "a");
  e.reconnect_interval = std::chrono::milliseconds(100);
  e.reconnect_for = std::chrono::milliseconds(500);
  auto remote = RemoteRepository::Connect(e);
  service.reset();
  auto [d, enc] = Chunk(3);
  std::string message;
  EXPECT_EQ(KindOf([&] { remote->chunks().Insert(d, enc); }, &message), ErrorKind::kRetryable);
  EXPECT_NE(message.find("giving up"), std::string::npos) << message;
}

// A service on the same port again after `delay` (a restart).
std::thread RestartLater(rpc::RepositoryServiceConfig config, std::string address,
                         std::unique_ptr<rpc::RepositoryServer>* slot, std::chrono::milliseconds delay) {
  return std::thread([=] {
    std::this_thread::sleep_for(delay);
    rpc::RepositoryServer::Options o;
    o.listen = address;
    *slot = std::make_unique<rpc::RepositoryServer>(config, o);
  });
}

TEST_F(RepositoryServiceTest, CallsAndUploadsResumeAfterTheServiceRestarts) {
  auto service = Serve(config_, nullptr);
  const std::string address = service->address();
  RepositoryEndpoint e = Endpoint(*service, "tok-a", "a");
  e.reconnect_interval = std::chrono::milliseconds(200);
  e.reconnect_for = std::chrono::milliseconds(20000);
  e.upload_window_bytes = 4 * 64 * 1024;  // four chunks
  auto remote = RemoteRepository::Connect(e);
  auto upload = remote->chunks().StartUpload();
  std::vector<std::pair<Digest, std::vector<uint8_t>>> chunks;
  for (uint8_t i = 0; i < 12; ++i) chunks.push_back(Chunk(static_cast<uint8_t>(10 + i)));
  for (size_t i = 0; i < 4; ++i) upload->Add(chunks[i].first, chunks[i].second);

  service.reset();  // stopped mid-upload
  std::unique_ptr<rpc::RepositoryServer> again;
  std::thread restart = RestartLater(config_, address, &again, std::chrono::milliseconds(1000));
  for (size_t i = 4; i < chunks.size(); ++i) upload->Add(chunks[i].first, chunks[i].second);
  ChunkUploadStats stats = upload->Finish();
  restart.join();
  EXPECT_EQ(stats.stored_chunks + stats.present_chunks, chunks.size());
  uint64_t total = 0;
  for (auto& [d, enc] : chunks) total += enc.size();
  EXPECT_EQ(stats.sent_bytes, total + stats.resent_bytes);
  EXPECT_GT(stats.resent_bytes, 0u) << "chunks sent into the stopped service went again";
  EXPECT_LE(stats.resent_bytes, e.upload_window_bytes) << "no more than the unacknowledged window";
  EXPECT_GE(remote->reconnects(), 1u);
  auto local = Repository::Open((dir_ / "a").string());
  for (auto& [d, enc] : chunks) EXPECT_TRUE(local->chunks().Contains(d)) << d.Hex();
  // A plain call after the restart works on the new connection too.
  std::vector<size_t> missing;
  std::vector<Digest> digests = {chunks[0].first};
  remote->chunks().FindMissing(digests, &missing);
  EXPECT_TRUE(missing.empty());
}

// The point store through the service: stage, write a disk (its index sent
// on Finish), add a file, commit; then list, load, open the index, read the
// file, as a restore does. The committed point is the same as a local one.
TEST_F(RepositoryServiceTest, ThePointStoreOverTheWire) {
  auto server = Serve(config_, nullptr);
  auto remote = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm1", "uuid-1", "qemu"};
  h.chain = "default";
  h.disks = {"vda"};
  h.expires_at = 0;  // held by the lease while the client lives
  auto lease = remote->points().Stage(h);
  EXPECT_EQ(lease->header().id, h.id);
  EXPECT_EQ(remote->points().ListStaged(), std::vector<std::string>{h.id});

  auto [d1, e1] = Chunk(1);
  auto [d2, e2] = Chunk(2);
  ASSERT_TRUE(remote->chunks().Insert(d1, e1));
  ASSERT_TRUE(remote->chunks().Insert(d2, e2));
  auto writer = remote->points().WriteDisk(h.id, "vda");
  std::string message;
  EXPECT_EQ(KindOf([&] { remote->points().WriteDisk(h.id, "vda"); }, &message), ErrorKind::kRetryable)
      << "one writer per disk";
  const uint32_t chunk_size = 64 * 1024;
  FixedIndexWriter index(writer->index_path(), 3 * chunk_size, chunk_size);
  index.Set(0, d1);
  index.Set(1, Digest{});
  index.Set(2, d2);
  DiskRecord record;
  record.size = 3 * chunk_size;
  record.chunk_size = chunk_size;
  record.source_format = "raw";
  record.index_sha256 = index.Finish();
  record.chunks = 3;
  writer->Finish(record);
  writer.reset();
  ConfigFileRecord file = remote->points().AddFile(h.id, "libvirt-domain-xml", "domain.xml", "<domain/>", "/etc/x");
  RestorePointManifest committed = remote->points().Commit(h.id);
  EXPECT_EQ(committed.id, h.id);
  EXPECT_EQ(remote->points().Commit(h.id).id, h.id) << "idempotent";

  EXPECT_EQ(remote->points().List(), std::vector<std::string>{h.id});
  PointListing listing = remote->points().LoadAll();
  ASSERT_EQ(listing.points.size(), 1u);
  EXPECT_TRUE(listing.problems.empty());
  RestorePointManifest m = remote->points().Load(h.id);
  ASSERT_EQ(m.disks.size(), 1u);
  EXPECT_EQ(m.disks[0].index_sha256, record.index_sha256);
  auto read = remote->points().OpenIndex(h.id, m.disks[0]);
  EXPECT_EQ(read->At(0), d1);
  EXPECT_EQ(read->At(1), Digest{});
  EXPECT_EQ(read->At(2), d2);
  EXPECT_EQ(remote->points().ReadFile(h.id, *m.FindConfig("libvirt-domain-xml")), "<domain/>");
  EXPECT_EQ(file.name, m.FindConfig("libvirt-domain-xml")->name);
  // What the local store sees is the same point.
  auto local = Repository::Open((dir_ / "a").string());
  EXPECT_EQ(ManifestToJson(local->points().Load(h.id)), ManifestToJson(m));
  EXPECT_EQ(KindOf([&] { remote->points().Load("nope"); }), ErrorKind::kNotFound);

  // An index whose bytes do not match what the writer recorded is refused.
  StagedPointHeader h2 = h;
  h2.id = NewPointId();
  auto lease2 = remote->points().Stage(h2);
  auto bad = remote->points().WriteDisk(h2.id, "vda");
  FixedIndexWriter index2(bad->index_path(), chunk_size, chunk_size);
  index2.Set(0, d1);
  DiskRecord wrong = record;
  wrong.size = chunk_size;
  wrong.index_sha256 = index2.Finish();
  wrong.index_sha256.bytes[0] ^= 1;
  EXPECT_EQ(KindOf([&] { bad->Finish(wrong); }, &message), ErrorKind::kCorrupt) << message;
  bad.reset();
  remote->points().Discard(h2.id);
  EXPECT_EQ(remote->points().ListStaged(), std::vector<std::string>{});
}

// Leases, locks and removal of committed points through the service: the
// service's lease is held while the client holds it, locks use the service's
// clock, and what the local store sees is the same.
TEST_F(RepositoryServiceTest, RemovalLeasesAndLocksOverTheWire) {
  auto server = Serve(config_, nullptr);
  auto remote = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  auto local = Repository::Open((dir_ / "a").string());
  const std::string a = test::WriteTestPoint(*remote, {"nine"}), b = test::WriteTestPoint(*remote, {"nine"});
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  std::string message;
  {
    auto lease = remote->points().Lease(a);
    EXPECT_EQ(KindOf([&] { local->points().Remove(a, now); }, &message), ErrorKind::kRetryable) << message;
    EXPECT_EQ(KindOf([&] { remote->points().Remove(a, now); }, &message), ErrorKind::kRetryable) << message;
    EXPECT_NE(message.find("in use by a restore, verify or backup"), std::string::npos) << message;
  }
  EXPECT_EQ(KindOf([&] { remote->points().Lease("nope"); }), ErrorKind::kNotFound);

  EXPECT_FALSE(remote->points().ReadLock(b));
  PointLock set = remote->points().SetLock(b, now + 3600, "hold", /*now, ignored by the service=*/now + 7200);
  EXPECT_EQ(set.locked_until, now + 3600);
  EXPECT_EQ(set.reason, "hold");
  auto lock = remote->points().ReadLock(b);
  ASSERT_TRUE(lock);
  EXPECT_EQ(lock->locked_until, now + 3600);
  EXPECT_EQ(local->points().ReadLock(b)->reason, "hold");
  // The client's clock does not count: the service's says the lock holds.
  EXPECT_EQ(KindOf([&] { remote->points().Remove(b, now + 7200); }, &message), ErrorKind::kBadInput) << message;
  EXPECT_NE(message.find("is locked until"), std::string::npos) << message;
  EXPECT_EQ(KindOf([&] { remote->points().SetLock(b, now + 60, "", now); }, &message), ErrorKind::kBadInput);

  remote->points().Remove(a, now);
  EXPECT_EQ(remote->points().List(), std::vector<std::string>{b});
  EXPECT_EQ(KindOf([&] { remote->points().Remove(a, now); }), ErrorKind::kNotFound);
  local->points().Remove(b, now + 3600);  // a fake clock where the lock has expired (clears the immutable flag)
  EXPECT_TRUE(remote->points().List().empty());
}

// Health checks through the service: a verify of the remote repository
// records each point's check in the served repository, loads them back for an
// incremental verify, and a record the service cannot parse is refused.
TEST_F(RepositoryServiceTest, ChecksOverTheWire) {
  auto server = Serve(config_, nullptr);
  auto remote = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  auto local = Repository::Open((dir_ / "a").string());
  const std::string id = test::WriteTestPoint(*remote, {"eleven"});

  const int64_t now = static_cast<int64_t>(::time(nullptr));
  VerifyOptions o(std::nullopt, 1);
  o.now = now;
  o.record = true;
  ASSERT_TRUE(VerifyRepository(*remote, o, nullptr).clean());
  auto checks = local->points().LoadChecks();
  ASSERT_EQ(checks.count(id), 1u);
  EXPECT_TRUE(checks[id].ok);
  EXPECT_EQ(checks[id].checked_at, now);
  EXPECT_EQ(remote->points().LoadChecks().at(id).chunks_read, 1u);
  o.now = now + 60;
  o.skip_verified_within_s = 3600;
  VerifyReport r = VerifyRepository(*remote, o, nullptr);
  EXPECT_EQ(r.chunks_checked, 0u);
  EXPECT_EQ(r.chunks_skipped, 1u);
  PointCheck unknown;
  unknown.point = "no-such-point";
  std::string message;
  EXPECT_EQ(KindOf([&] { remote->points().RecordCheck(unknown); }, &message), ErrorKind::kNotFound) << message;
}

// Every chunk file of a repository `seconds` into the past: only the mark
// can then keep a chunk from a GC with window 0.
void AgeChunks(const std::string& repo_dir, int64_t seconds) {
  struct timespec t[2];
  t[0].tv_sec = t[1].tv_sec = ::time(nullptr) - seconds;
  t[0].tv_nsec = t[1].tv_nsec = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(repo_dir + "/chunks")) {
    if (e.is_regular_file()) {
      ASSERT_EQ(::utimensat(AT_FDCWD, e.path().c_str(), t, 0), 0) << e.path();
    }
  }
}

// GC and space accounting run by the service on its directory: the figures
// are a local MeasureSpace's, a GC removes an old unreferenced chunk and
// keeps the referenced ones, a dry run removes nothing, and a GC while
// another holds the lock is refused as retryable, as locally.
TEST_F(RepositoryServiceTest, GcAndSpaceRunByTheService) {
  auto server = Serve(config_, nullptr);
  const RepositoryEndpoint endpoint = Endpoint(*server, "tok-a", "a");
  auto remote = RemoteRepository::Connect(endpoint);
  const std::string dir = (dir_ / "a").string();
  test::WriteTestPoint(*remote, {"kept-1", "kept-2"});
  auto [garbage, encoded] = Chunk(9);
  ASSERT_TRUE(remote->chunks().Insert(garbage, encoded));
  const std::string garbage_path = dir + "/chunks/" + garbage.Hex().substr(0, 3) + "/" + garbage.Hex();
  AgeChunks(dir, 7200);

  const SpaceReport local = ferry::MeasureSpace(dir, nullptr);
  const SpaceReport over = remote->MeasureSpace();
  EXPECT_EQ(SpaceReportJson(over), SpaceReportJson(local));
  EXPECT_EQ(over.points, 1u);
  EXPECT_EQ(over.referenced_chunks, 2u);
  EXPECT_EQ(over.garbage_chunks, 1u);
  ASSERT_EQ(over.chains.size(), 1u);
  EXPECT_EQ(over.chains[0].chain, "default");
  EXPECT_EQ(over.chains[0].unique_chunks, 2u);
  rpc::RepositoryAccess access;
  access.token = "tok-a";
  const std::string url = rpc::RepositoryUrl(endpoint);
  EXPECT_EQ(SpaceReportJson(rpc::MeasureSpace(url, access)), SpaceReportJson(local));

  GcOptions options;
  options.window = std::chrono::seconds(0);
  options.dry_run = true;
  GcReport dry = remote->CollectGarbage(options);
  EXPECT_TRUE(dry.dry_run);
  EXPECT_EQ(dry.chunks_seen, 3u);
  EXPECT_EQ(dry.chunks_removed, 1u);  // would remove
  EXPECT_TRUE(PathExists(garbage_path));

  options.dry_run = false;
  {
    int fd = ::open((dir + "/gc.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX), 0);
    std::string message;
    EXPECT_EQ(KindOf([&] { rpc::CollectGarbage(url, access, options, nullptr); }, &message), ErrorKind::kRetryable);
    EXPECT_NE(message.find("a GC is running"), std::string::npos) << message;
    ::close(fd);
  }
  EXPECT_TRUE(PathExists(garbage_path));

  GcReport r = rpc::CollectGarbage(url, access, options, nullptr);
  EXPECT_FALSE(r.dry_run);
  EXPECT_EQ(r.points, 1u);
  EXPECT_EQ(r.chunks_referenced, 2u);
  EXPECT_EQ(r.chunks_removed, 1u);
  EXPECT_EQ(r.bytes_removed, local.garbage_bytes);
  EXPECT_FALSE(PathExists(garbage_path));
  EXPECT_TRUE(VerifyRepository(*remote, VerifyOptions(std::nullopt, 1), nullptr).clean());
  EXPECT_EQ(remote->CollectGarbage(options).chunks_removed, 0u);
  EXPECT_EQ(KindOf([&] {
              GcOptions bad;
              bad.threads = 65;
              remote->CollectGarbage(bad);
            }),
            ErrorKind::kBadInput);
}

// A GC runs off the service's event loop: other clients' calls are answered
// while it waits on the file system. (Its mark here waits on a FIFO posing
// as a staged index, until the test writes to it.)
TEST_F(RepositoryServiceTest, AGcDoesNotHoldUpOtherCalls) {
  auto server = Serve(config_, nullptr);
  auto gc_link = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  auto other = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  const std::string dir = (dir_ / "a").string();
  const std::string id = test::WriteTestPoint(*other, {"one"});
  const std::string fifo_dir = dir + "/staging/20261201T000000Z-fifo";
  MakeDirectory(fifo_dir);
  const std::string fifo = fifo_dir + "/disk0.fidx";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);

  std::optional<GcReport> report;
  std::string failure;
  std::thread gc([&] {
    GcOptions o;
    o.dry_run = true;  // a real GC would first sweep the odd staging away
    try {
      report = gc_link->CollectGarbage(o);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  });
  // Until the GC's mark has the FIFO open for reading, opening it to write without blocking fails.
  int writer = -1;
  for (int i = 0; i < 500 && writer < 0; ++i) {
    writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (writer < 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE(writer, 0) << "the GC never read staging";
  EXPECT_EQ(other->points().List(), std::vector<std::string>{id});
  EXPECT_EQ(other->points().LoadAll().points.size(), 1u);  // the point store's threads
  auto [d, e] = Chunk(3);
  EXPECT_TRUE(other->chunks().Insert(d, e));  // the chunk threads
  EXPECT_FALSE(report.has_value());
  ::close(writer);  // end of file: the GC goes on
  gc.join();
  ASSERT_TRUE(report) << failure;
  EXPECT_EQ(report->staged_points, 1u);
  EXPECT_EQ(report->points, 1u);
}

// A client's cancel flag cancels the call (kInterrupted, at once), and the
// cancelled call interrupts the service's GC, which lets go of the lock.
TEST_F(RepositoryServiceTest, ACancelledGcIsInterrupted) {
  auto server = Serve(config_, nullptr);
  auto remote = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  const std::string dir = (dir_ / "a").string();
  test::WriteTestPoint(*remote, {"one"});
  const std::string fifo_dir = dir + "/staging/20261201T000000Z-fifo";
  MakeDirectory(fifo_dir);
  const std::string fifo = fifo_dir + "/disk0.fidx";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);

  std::atomic<bool> cancel{false};
  std::optional<ErrorKind> kind;
  std::string message;
  std::thread gc([&] {
    GcOptions o;
    o.dry_run = true;
    o.cancel = &cancel;
    kind = KindOf([&] { remote->CollectGarbage(o); }, &message);
  });
  int writer = -1;
  for (int i = 0; i < 500 && writer < 0; ++i) {
    writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (writer < 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE(writer, 0) << "the GC never read staging";
  cancel = true;
  gc.join();  // while the service's GC still waits on the FIFO
  EXPECT_EQ(kind, ErrorKind::kInterrupted) << message;
  ::close(writer);
  ASSERT_EQ(::unlink(fifo.c_str()), 0);
  // The service's GC, told to stop, ends and unlocks; then one runs through.
  GcOptions o;
  o.dry_run = true;
  std::optional<GcReport> done;
  for (int i = 0; i < 100 && !done; ++i) {
    try {
      done = remote->CollectGarbage(o);
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::kRetryable) << e.what();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ASSERT_TRUE(done) << "the cancelled GC still holds the lock";
  EXPECT_EQ(done->points, 1u);
}

// A worker sends a disk on the disk task's connection and commits the point
// on the snapshot's: the commit must not depend on when the first
// connection's capabilities are released. The disk's lock goes with the
// reply to finish, and a commit that waits for a lock waits off the service's
// event loop, so the finish it waits for is still answered. (The service used
// to wait on its loop: the commit failed after 2 s with "a disk of it is
// being written", and every connection stalled meanwhile.)
TEST_F(RepositoryServiceTest, ACommitOnAnotherConnectionDoesNotWaitForTheDisksRelease) {
  auto server = Serve(config_, nullptr);
  auto disk_link = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  auto snapshot_link = RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"));
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {"vm1", "uuid-1", "qemu"};
  h.chain = "default";
  h.disks = {"vda"};
  h.expires_at = 0;
  auto lease = snapshot_link->points().Stage(h);
  auto [d1, e1] = Chunk(1);
  ASSERT_TRUE(disk_link->chunks().Insert(d1, e1));
  auto writer = disk_link->points().WriteDisk(h.id, "vda");
  const uint32_t chunk_size = 64 * 1024;
  FixedIndexWriter index(writer->index_path(), chunk_size, chunk_size);
  index.Set(0, d1);
  DiskRecord record;
  record.size = chunk_size;
  record.chunk_size = chunk_size;
  record.source_format = "raw";
  record.index_sha256 = index.Finish();
  record.chunks = 1;

  // The commit starts while the disk is still being written, and waits.
  std::optional<ErrorKind> commit_error;
  std::string commit_message;
  std::thread committer([&] {
    try {
      snapshot_link->points().Commit(h.id);
    } catch (const Error& e) {
      commit_error = e.kind();
      commit_message = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  writer->Finish(record);  // answered although a commit waits; `writer` itself lives on
  committer.join();
  EXPECT_FALSE(commit_error) << commit_message;
  EXPECT_EQ(snapshot_link->points().List(), std::vector<std::string>{h.id});
  writer.reset();
  lease.reset();
}

// Per-worker tokens minted by the coordinator with a key it shares with the
// service: a token opens its repository only, until its expiry, and a
// changed byte or another key is refused.
TEST_F(RepositoryServiceTest, CoordinatorMintedWorkerTokens) {
  rpc::WorkerTokenKey key = rpc::WorkerTokenKey::Random();
  const int64_t now = 1'800'000'000;
  const std::string token = key.Mint(7, "a", now);
  EXPECT_EQ(key.Verify(token, "a", now), 7);
  EXPECT_FALSE(key.Verify(token, "b", now)) << "for repository a only";
  EXPECT_FALSE(key.Verify(token, "a", now + rpc::kWorkerTokenLifetime + 1)) << "expired";
  std::string tampered = token;
  tampered[5] = tampered[5] == '7' ? '8' : '7';  // another worker id
  EXPECT_FALSE(key.Verify(tampered, "a", now));
  EXPECT_FALSE(rpc::WorkerTokenKey::Random().Verify(token, "a", now)) << "another key";
  EXPECT_EQ(rpc::WorkerTokenKey::FromText(key.ToText(), "k").Mint(7, "a", now), token) << "text round trip";
  EXPECT_EQ(KindOf([&] { rpc::WorkerTokenKey::FromText("frk-12", "the key"); }), ErrorKind::kBadInput);

  rpc::RepositoryServiceConfig config = config_;
  config.worker_key = key;
  auto server = Serve(config, nullptr);
  EXPECT_NO_THROW(RemoteRepository::Connect(Endpoint(*server, key.Mint(3, "a"), "a")));
  std::string message;
  EXPECT_EQ(KindOf([&] { RemoteRepository::Connect(Endpoint(*server, key.Mint(3, "a"), "b")); }, &message),
            ErrorKind::kBadInput);
  EXPECT_EQ(KindOf([&] { RemoteRepository::Connect(Endpoint(*server, rpc::WorkerTokenKey::Random().Mint(3, "a"), "a")); }),
            ErrorKind::kBadInput);
  EXPECT_NO_THROW(RemoteRepository::Connect(Endpoint(*server, "tok-a", "a"))) << "the static grants still hold";
}

TEST_F(RepositoryServiceTest, RepositoryUrls) {
  auto e = rpc::ParseRepositoryUrl("ferry+tls://store.example:8720/main");
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->tls);
  EXPECT_EQ(e->address, "store.example:8720");
  EXPECT_EQ(e->repository, "main");
  EXPECT_EQ(rpc::RepositoryUrl(*e), "ferry+tls://store.example:8720/main");
  EXPECT_FALSE(rpc::ParseRepositoryUrl("/srv/ferry/main"));
  EXPECT_FALSE(rpc::ParseRepositoryUrl("ferry://[::1]:1/x")->tls);
  for (const char* bad : {"ferry://host/x", "ferry+tls://host:99999/x", "ferry://host:1/", "ferry://host:1/a/b"}) {
    EXPECT_EQ(KindOf([&] { rpc::ParseRepositoryUrl(bad); }), ErrorKind::kBadInput) << bad;
  }
  std::string message;
  EXPECT_EQ(KindOf([&] { rpc::OpenRepository("ferry://127.0.0.1:1/a", {}); }, &message), ErrorKind::kBadInput);
  EXPECT_NE(message.find("needs a token"), std::string::npos) << message;
}

TEST_F(RepositoryServiceTest, GarbageAndOversizedFramesCloseTheConnection) {
  rpc::RepositoryServer::Options o;
  o.max_connections = 2;
  rpc::RepositoryServer server(config_, o);
  auto port = server.port();
  auto connect = [&] {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  };
  auto closed_by_peer = [](int fd) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[256];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
      if (n < 0) return false;  // timed out: still open
    }
  };
  // A frame header claiming one segment of 2^30 words: refused before its body.
  int big = connect();
  uint32_t header[2] = {0, 1u << 30};
  ASSERT_EQ(::write(big, header, sizeof header), static_cast<ssize_t>(sizeof header));
  EXPECT_TRUE(closed_by_peer(big));
  ::close(big);
  int junk = connect();
  const char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdef0123456789abcdef";
  ASSERT_GT(::write(junk, garbage, sizeof garbage), 0);
  EXPECT_TRUE(closed_by_peer(junk));
  ::close(junk);
  // The cap: two idle connections held, a third is closed at once.
  int one = connect(), two = connect();
  for (int i = 0; i < 50 && server.connections() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(server.connections(), 2u);
  int three = connect();
  EXPECT_TRUE(closed_by_peer(three));
  ::close(three);
  ::close(one);
  ::close(two);
  for (int i = 0; i < 100 && server.connections() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(server.connections(), 0u) << "closed connections give their slots back";
  // And a real client still gets through.
  EXPECT_NO_THROW(RemoteRepository::Connect(Endpoint(server, "tok-a", "a")));
}

// The worker RPC port's limits (rpc/guarded_server.h) hold here too: a
// connection that has not opened a repository by the deadline is closed (in
// silence or half way through a frame), a frame over 256 KiB before open
// closes at once, and one peer address may hold only so many connections
// while a client from another still gets through; an opened connection
// outlives the deadline.
TEST_F(RepositoryServiceTest, UnopenedConnectionsTimeOutAndOneAddressIsCapped) {
  rpc::RepositoryServer::Options o;
  o.handshake_timeout = std::chrono::milliseconds(500);
  o.max_per_address = 2;
  rpc::RepositoryServer server(config_, o);
  auto port = server.port();
  auto connect = [&](const char* source) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    ::inet_pton(AF_INET, source, &from.sin_addr);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  };
  auto closed_within = [](int fd, int ms) {
    timeval tv{ms / 1000, (ms % 1000) * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[256];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
      if (n < 0) return false;
    }
  };
  auto remote = RemoteRepository::Connect(Endpoint(server, "tok-a", "a"));  // opened: not timed out
  const auto started = std::chrono::steady_clock::now();
  int silent = connect("127.0.0.2");
  int partial = connect("127.0.0.2");
  uint32_t header[2] = {0, 16};
  ASSERT_EQ(::write(partial, header, sizeof header), static_cast<ssize_t>(sizeof header));
  int third = connect("127.0.0.2");
  EXPECT_TRUE(closed_within(third, 2000)) << "past the per-address cap";
  ::close(third);
  int big = connect("127.0.0.3");
  uint32_t big_header[2] = {0, (300u << 10) / 8};
  ASSERT_EQ(::write(big, big_header, sizeof big_header), static_cast<ssize_t>(sizeof big_header));
  EXPECT_TRUE(closed_within(big, 400)) << "a 300 KiB frame before open";
  ::close(big);
  EXPECT_TRUE(closed_within(silent, 3000));
  EXPECT_TRUE(closed_within(partial, 3000));
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_GE(took, std::chrono::milliseconds(400)) << "not before the deadline";
  EXPECT_LE(took, std::chrono::milliseconds(2500));
  ::close(silent);
  ::close(partial);
  EXPECT_NO_THROW(remote->MeasureSpace());
  EXPECT_EQ(remote->reconnects(), 0u) << "the opened connection was closed";
}

}  // namespace
}  // namespace ferry::simworker::testing
