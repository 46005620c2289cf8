#include "ferry/rpc/repository_service.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <openssl/crypto.h>

#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/rpc/protocol.h"
#include "ferry/rpc/repository_protocol.capnp.h"
#include "ferry/rpc/tls.h"
#include "ferry/rpc/worker_client.h"

namespace ferry::rpc {

namespace {

constexpr size_t kMaxDigestsPerCall = 4096;
// A chunk is at most 16 MiB plain (repository-format.md); its encoding adds
// a header, and a chunk zstd cannot shrink is stored plain.
constexpr size_t kMaxEncodedChunk = (size_t{16} << 20) + 4096;

// "kind: message" on the wire, as the worker protocol does.
kj::Exception ToKj(const std::exception& e) {
  std::string message = e.what();
  if (const auto* error = dynamic_cast<const Error*>(&e)) message = std::string(WireErrorKind(error->kind())) + ": " + message;
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::heapString(message.c_str()));
}

// The inverse, on the client: the kind the service named, else retryable for
// a lost connection, internal otherwise.
Error FromKj(const kj::Exception& e, const std::string& context) {
  std::string description = e.getDescription().cStr();
  constexpr std::string_view kRemote = "remote exception: ";
  if (description.starts_with(kRemote)) description.erase(0, kRemote.size());
  if (auto colon = description.find(": "); colon != std::string::npos) {
    if (auto kind = ParseWireErrorKind(description.substr(0, colon))) {
      return Error(*kind, context + ": " + description.substr(colon + 2));
    }
  }
  return ErrorFromKj(e, context);
}

Digest DigestOf(capnp::Data::Reader data) {
  if (data.size() != 32) throw Error(ErrorKind::kBadInput, "a digest has 32 bytes, not " + std::to_string(data.size()));
  Digest d;
  std::memcpy(d.bytes.data(), data.begin(), 32);
  return d;
}

Digest TokenHash(const std::string& token) { return Sha256(token.data(), token.size()); }

class RepositoryImpl final : public rpc::Repository::Server {
 public:
  RepositoryImpl(std::shared_ptr<ferry::Repository> repo, std::string name)
      : repo_(std::move(repo)), name_(std::move(name)) {}

  kj::Promise<void> findMissing(FindMissingContext context) override {
    return Guard([&] {
      auto list = context.getParams().getDigests();
      if (list.size() > kMaxDigestsPerCall) {
        throw Error(ErrorKind::kBadInput, "findMissing: at most " + std::to_string(kMaxDigestsPerCall) + " digests a call");
      }
      std::vector<Digest> digests;
      digests.reserve(list.size());
      for (auto d : list) digests.push_back(DigestOf(d));
      std::vector<size_t> missing;
      repo_->chunks().FindMissing(digests, &missing);
      auto out = context.getResults().initMissing(static_cast<unsigned>(missing.size()));
      for (size_t i = 0; i < missing.size(); ++i) out.set(static_cast<unsigned>(i), static_cast<uint32_t>(missing[i]));
    });
  }

  kj::Promise<void> insert(InsertContext context) override {
    return Guard([&] {
      auto params = context.getParams();
      Digest digest = DigestOf(params.getDigest());
      auto encoded = params.getEncoded();
      if (encoded.size() > kMaxEncodedChunk) throw Error(ErrorKind::kBadInput, "insert: a chunk larger than 16 MiB");
      std::span<const uint8_t> bytes(encoded.begin(), encoded.size());
      // What is stored under a digest must be that digest's data.
      decoder_.Decode(bytes, &digest, "chunk " + digest.Hex() + " sent to repository " + name_, &plain_);
      context.getResults().setStored(repo_->chunks().Insert(digest, bytes));
    });
  }

  kj::Promise<void> sync(SyncContext) override {
    return Guard([&] { repo_->chunks().Sync(); });
  }

  kj::Promise<void> read(ReadContext context) override {
    return Guard([&] {
      Digest digest = DigestOf(context.getParams().getDigest());
      std::vector<uint8_t> encoded;
      repo_->chunk_reader().Read(digest, &encoded);
      context.getResults().setEncoded(capnp::Data::Reader(encoded.data(), encoded.size()));
    });
  }

  kj::Promise<void> quarantine(QuarantineContext context) override {
    return Guard([&] {
      Digest digest = DigestOf(context.getParams().getDigest());
      std::string reason = context.getParams().getReason();
      context.getResults().setWhere(repo_->chunk_reader().Quarantine(digest, reason.substr(0, 1000)));
    });
  }

 private:
  template <typename F>
  kj::Promise<void> Guard(F&& f) {
    try {
      f();
      return kj::READY_NOW;
    } catch (const std::exception& e) {
      return ToKj(e);
    }
  }

  std::shared_ptr<ferry::Repository> repo_;
  std::string name_;
  ChunkDecoder decoder_;
  std::vector<uint8_t> plain_;
};

class ServiceImpl final : public RepositoryService::Server {
 public:
  explicit ServiceImpl(RepositoryServiceConfig config) {
    for (const auto& [name, dir] : config.repositories) {
      std::shared_ptr<ferry::Repository> repo = ferry::Repository::Open(dir);
      repo->PrepareForWriting();
      repositories_[name] = std::move(repo);
    }
    for (const auto& g : config.grants) grants_.push_back({TokenHash(g.token), g.repositories});
  }

  kj::Promise<void> open(OpenContext context) override {
    try {
      auto params = context.getParams();
      if (params.getProtocolVersion() != REPOSITORY_PROTOCOL_VERSION) {
        throw Error(ErrorKind::kBadInput, "repository protocol version " + std::to_string(params.getProtocolVersion()) +
                                              " is not supported (this service speaks " +
                                              std::to_string(REPOSITORY_PROTOCOL_VERSION) + ")");
      }
      const Digest presented = TokenHash(params.getToken());
      const Grant* grant = nullptr;
      for (const Grant& g : grants_) {
        if (CRYPTO_memcmp(g.token_hash.bytes.data(), presented.bytes.data(), 32) == 0) grant = &g;
      }
      if (grant == nullptr) throw Error(ErrorKind::kBadInput, "repository token refused");
      std::string name = params.getRepository();
      auto it = repositories_.find(name);
      // The same answer whether it does not exist or is not this token's:
      // a token does not learn the names of others' repositories.
      if (it == repositories_.end() || !grant->repositories.count(name)) {
        throw Error(ErrorKind::kBadInput, "repository '" + name.substr(0, 200) + "' is not open to this token");
      }
      auto results = context.getResults();
      results.setRepository(kj::heap<RepositoryImpl>(it->second, name));
      auto info = results.initInfo();
      info.setName(name);
      info.setChunkSize(it->second->config().chunk_size);
      info.setFormat("ferry-repository-v2");
      return kj::READY_NOW;
    } catch (const std::exception& e) {
      return ToKj(e);
    }
  }

 private:
  struct Grant {
    Digest token_hash;
    std::set<std::string> repositories;
  };
  std::map<std::string, std::shared_ptr<ferry::Repository>> repositories_;
  std::vector<Grant> grants_;
};

// --- client ---

// The connection's event loop runs on a thread of its own; every call is
// executed there (kj::Executor::executeSync) while the caller waits.
class RemoteRepositoryImpl final : public RemoteRepository, public ChunkStore, public ChunkReader {
 public:
  explicit RemoteRepositoryImpl(RepositoryEndpoint endpoint) : endpoint_(std::move(endpoint)) {
    std::mutex mu;
    std::condition_variable ready;
    bool started = false;
    std::optional<Error> failure;
    thread_ = std::thread([&] {
      try {
        Run(
            [&](const kj::Executor& executor) {
              std::lock_guard<std::mutex> lock(mu);
              loop_->executor = executor.addRef();
              started = true;
              ready.notify_all();
            },
            [&](Error e) {
              std::lock_guard<std::mutex> lock(mu);
              failure = std::move(e);
              started = true;
              ready.notify_all();
            });
      } catch (...) {
      }
    });
    std::unique_lock<std::mutex> lock(mu);
    ready.wait(lock, [&] { return started; });
    if (failure) {
      lock.unlock();
      thread_.join();
      throw *failure;
    }
  }

  ~RemoteRepositoryImpl() override {
    if (loop_->executor) {
      try {
        loop_->executor->executeSync([this] {
          KJ_IF_MAYBE(f, loop_->stop) { (*f)->fulfill(); }
        });
      } catch (...) {
      }
    }
    if (thread_.joinable()) thread_.join();
  }

  const RemoteRepositoryInfo& info() const override { return info_; }
  ChunkStore& chunks() override { return *this; }
  ChunkReader& chunk_reader() override { return *this; }

  void FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) override {
    for (size_t start = 0; start < digests.size(); start += kMaxDigestsPerCall) {
      size_t n = std::min(kMaxDigestsPerCall, digests.size() - start);
      Call("findMissing", [&] {
        auto req = repo().findMissingRequest();
        auto list = req.initDigests(static_cast<unsigned>(n));
        for (size_t i = 0; i < n; ++i) {
          list.set(static_cast<unsigned>(i), capnp::Data::Reader(digests[start + i].bytes.data(), 32));
        }
        return req.send().then([&, start](capnp::Response<rpc::Repository::FindMissingResults>&& r) {
          for (uint32_t i : r.getMissing()) missing->push_back(start + i);
        });
      });
    }
  }

  bool Insert(const Digest& digest, std::span<const uint8_t> encoded) override {
    bool stored = false;
    Call("insert of chunk " + digest.Hex(), [&] {
      auto req = repo().insertRequest();
      req.setDigest(capnp::Data::Reader(digest.bytes.data(), 32));
      req.setEncoded(capnp::Data::Reader(encoded.data(), encoded.size()));
      return req.send().then([&](capnp::Response<rpc::Repository::InsertResults>&& r) { stored = r.getStored(); });
    });
    return stored;
  }

  void Sync() override {
    Call("sync", [&] { return repo().syncRequest().send().ignoreResult(); });
  }

  void Read(const Digest& digest, std::vector<uint8_t>* encoded) override {
    Call("read of chunk " + digest.Hex(), [&] {
      auto req = repo().readRequest();
      req.setDigest(capnp::Data::Reader(digest.bytes.data(), 32));
      return req.send().then([&](capnp::Response<rpc::Repository::ReadResults>&& r) {
        auto data = r.getEncoded();
        encoded->assign(data.begin(), data.end());
      });
    });
  }

  std::string Quarantine(const Digest& digest, const std::string& reason) override {
    std::string where;
    try {
      Call("quarantine of chunk " + digest.Hex(), [&] {
        auto req = repo().quarantineRequest();
        req.setDigest(capnp::Data::Reader(digest.bytes.data(), 32));
        req.setReason(reason);
        return req.send().then([&](capnp::Response<rpc::Repository::QuarantineResults>&& r) {
          where = r.getWhere();
        });
      });
    } catch (const std::exception& e) {
      LogWarning("quarantining chunk " + digest.Hex() + ": " + e.what());
    }
    return where;
  }

  std::string Describe(const Digest& digest) const override {
    return "chunk " + digest.Hex() + " of repository " + endpoint_.repository + " at " + endpoint_.address;
  }

 private:
  void Run(const std::function<void(const kj::Executor&)>& on_ready, const std::function<void(Error)>& on_failure) {
    auto io = kj::setupAsyncIo();
    kj::Own<kj::TlsContext> tls;
    try {
      if (endpoint_.tls) tls = MakeClientTlsContext(endpoint_.ca_file);
    } catch (const Error& e) {
      on_failure(e);
      return;
    }
    CoordinatorEndpoint where{endpoint_.address, endpoint_.tls, endpoint_.ca_file, endpoint_.server_name};
    ConnectOptions options;
    options.peer_kind = "repository service";
    const std::string context = "repository " + endpoint_.repository + " at " + endpoint_.address;
    try {
      loop_->conn = CoordinatorConnection::Connect(io, tls.get(), where, options).wait(io.waitScope);
      auto req = loop_->conn->bootstrap().castAs<RepositoryService>().openRequest();
      req.setProtocolVersion(REPOSITORY_PROTOCOL_VERSION);
      req.setToken(endpoint_.token);
      req.setRepository(endpoint_.repository);
      auto resp = req.send().wait(io.waitScope);
      loop_->repo = resp.getRepository();
      info_.name = resp.getInfo().getName();
      info_.chunk_size = resp.getInfo().getChunkSize();
      info_.format = resp.getInfo().getFormat();
    } catch (const kj::Exception& e) {
      loop_->repo = nullptr;
      loop_->conn = nullptr;
      on_failure(FromKj(e, context));
      return;
    } catch (const Error& e) {
      loop_->repo = nullptr;
      loop_->conn = nullptr;
      on_failure(e);
      return;
    }
    auto paf = kj::newPromiseAndFulfiller<void>();
    loop_->stop = kj::mv(paf.fulfiller);
    on_ready(kj::getCurrentThreadExecutor());
    paf.promise.wait(io.waitScope);
    loop_->repo = nullptr;
    loop_->conn = nullptr;
    loop_->stop = nullptr;
  }

  rpc::Repository::Client& repo() { return KJ_ASSERT_NONNULL(loop_->repo); }

  // Runs `make` (which sends a request and returns the promise of its
  // handling) on the connection's thread and waits for it; errors become
  // ferry::Error naming `what`.
  template <typename Make>
  void Call(const std::string& what, Make&& make) {
    try {
      loop_->executor->executeSync([&]() { return make(); });
    } catch (const kj::Exception& e) {
      throw FromKj(e, "repository " + endpoint_.repository + " at " + endpoint_.address + ": " + what);
    }
  }

  // The kj objects (their destructors may throw, so they live behind a
  // unique_ptr): the executor is used from any thread, the rest on the
  // connection's thread only.
  struct Loop {
    kj::Own<const kj::Executor> executor;
    kj::Own<CoordinatorConnection> conn;
    kj::Maybe<rpc::Repository::Client> repo;
    kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> stop;
  };

  RepositoryEndpoint endpoint_;
  RemoteRepositoryInfo info_;
  std::unique_ptr<Loop> loop_ = std::make_unique<Loop>();
  std::thread thread_;
};

}  // namespace

capnp::Capability::Client MakeRepositoryService(RepositoryServiceConfig config) {
  return kj::heap<ServiceImpl>(std::move(config));
}

namespace {
// SplitHostPort, but port 0 (pick one) is allowed: a listening address.
HostPort ListenAddress(const std::string& listen) {
  if (!listen.ends_with(":0")) return SplitHostPort(listen);
  HostPort hp = SplitHostPort(listen.substr(0, listen.size() - 2) + ":1");
  hp.port = 0;
  return hp;
}
}  // namespace

struct RepositoryServer::Loop {
  kj::Own<const kj::Executor> executor;
  kj::Own<kj::PromiseFulfiller<void>> stop;  // on the server's thread only
};

RepositoryServer::RepositoryServer(RepositoryServiceConfig config, Options options)
    : host_(ListenAddress(options.listen).host), loop_(std::make_unique<Loop>()) {
  const uint16_t want_port = ListenAddress(options.listen).port;
  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  std::optional<Error> failure;
  thread_ = std::thread([&, config = std::move(config)]() mutable {
    auto fail = [&](Error e) {
      std::lock_guard<std::mutex> lock(mu);
      failure = std::move(e);
      started = true;
      cv.notify_all();
    };
    try {
      auto io = kj::setupAsyncIo();
      kj::Own<kj::TlsContext> tls;
      if (!options.tls_cert.empty() || !options.tls_key.empty()) tls = MakeServerTlsContext(options.tls_cert, options.tls_key);
      capnp::TwoPartyServer server(MakeRepositoryService(std::move(config)));
      auto address = io.provider->getNetwork().parseAddress(kj::StringPtr(host_.c_str()), want_port).wait(io.waitScope);
      kj::Own<kj::ConnectionReceiver> receiver = address->listen();
      const uint16_t port = static_cast<uint16_t>(receiver->getPort());
      if (tls) receiver = tls->wrapPort(kj::mv(receiver));
      auto paf = kj::newPromiseAndFulfiller<void>();
      loop_->stop = kj::mv(paf.fulfiller);
      {
        std::lock_guard<std::mutex> lock(mu);
        port_ = port;
        loop_->executor = kj::getCurrentThreadExecutor().addRef();
        started = true;
      }
      cv.notify_all();
      server.listen(*receiver).exclusiveJoin(kj::mv(paf.promise)).wait(io.waitScope);
      loop_->stop = nullptr;
    } catch (const Error& e) {
      fail(e);
    } catch (const kj::Exception& e) {
      fail(Error(ErrorKind::kEnvironment, "repository service on " + options.listen + ": " + e.getDescription().cStr()));
    }
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return started; });
  if (failure) {
    lock.unlock();
    thread_.join();
    throw *failure;
  }
}

RepositoryServer::~RepositoryServer() {
  if (loop_->executor) {
    try {
      loop_->executor->executeSync([this] {
        if (loop_->stop) loop_->stop->fulfill();
      });
    } catch (...) {
    }
  }
  if (thread_.joinable()) thread_.join();
}

std::string RepositoryServer::address() const {
  return (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
}

std::unique_ptr<RemoteRepository> RemoteRepository::Connect(const RepositoryEndpoint& endpoint) {
  return std::make_unique<RemoteRepositoryImpl>(endpoint);
}

}  // namespace ferry::rpc
