#include "ferry/rpc/repository_service.h"

#include <capnp/rpc-twoparty.h>
#include <capnp/schema.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <openssl/crypto.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <unordered_set>

#include "ferry/common/chunk.h"
#include "ferry/common/checksum.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/manifest.h"
#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"
#include "ferry/rpc/guarded_server.h"
#include "ferry/rpc/protocol.h"
#include "ferry/rpc/repository_protocol.capnp.h"
#include "ferry/rpc/tls.h"
#include "ferry/rpc/worker_client.h"
#include "ferry/s3/object_repository.h"
#include "ferry/s3/object_gc.h"

namespace ferry::rpc {

namespace {

constexpr size_t kMaxDigestsPerCall = 4096;
// A chunk is at most 16 MiB plain (repository-format.md); its encoding adds
// a header, and a chunk zstd cannot shrink is stored plain.
constexpr size_t kMaxEncodedChunk = (size_t{16} << 20) + 4096;
// Pieces of index files and the like.
constexpr uint32_t kMaxPiece = 4u << 20;
// Threads for the point store's calls. They mostly wait (fsync, a lock held
// by a disk's writer for up to 2 s), so more than the cores: a few commits
// waiting must not hold back the finish that ends their wait.
constexpr unsigned kStoreThreads = 8;
// Threads for upkeep (GC, space accounting): a few, so that a second GC is
// refused at once by the GC's lock rather than queued behind the first.
constexpr unsigned kUpkeepThreads = 4;
// How often a client waiting for an upkeep call looks at its cancel flag.
constexpr auto kCancelPoll = 200 * kj::MILLISECONDS;

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

// --- wire forms of the point store's records ---

void ToWire(const ferry::DiskRecord& d, rpc::DiskRecord::Builder b) {
  b.setName(d.name);
  b.setSize(d.size);
  b.setChunkSize(d.chunk_size);
  b.setSourceFormat(d.source_format);
  b.setChunks(d.chunks);
  b.setZeroChunks(d.zero_chunks);
  b.setNewChunks(d.new_chunks);
  b.setReusedChunks(d.reused_chunks);
  b.setReadBytes(d.read_bytes);
  b.setStoredBytes(d.stored_bytes);
  b.setUnchangedChunks(d.unchanged_chunks);
  b.setHealedChunks(d.healed_chunks);
  b.setCbtMode(d.cbt.mode);
  b.setCbtReason(d.cbt.reason);
  b.setCbtBitmap(d.cbt.bitmap);
  b.setCbtGeneration(d.cbt.generation);
  b.setCbtDiskIdentity(d.cbt.disk_identity);
  b.setIndexHmac(d.index_hmac);
}

ferry::DiskRecord FromWire(rpc::DiskRecord::Reader r) {
  ferry::DiskRecord d;
  d.name = r.getName();
  d.size = r.getSize();
  d.chunk_size = r.getChunkSize();
  d.source_format = r.getSourceFormat();
  d.chunks = r.getChunks();
  d.zero_chunks = r.getZeroChunks();
  d.new_chunks = r.getNewChunks();
  d.reused_chunks = r.getReusedChunks();
  d.read_bytes = r.getReadBytes();
  d.stored_bytes = r.getStoredBytes();
  d.unchanged_chunks = r.getUnchangedChunks();
  d.healed_chunks = r.getHealedChunks();
  d.cbt.mode = r.getCbtMode();
  d.cbt.reason = r.getCbtReason();
  d.cbt.bitmap = r.getCbtBitmap();
  d.cbt.generation = r.getCbtGeneration();
  d.cbt.disk_identity = r.getCbtDiskIdentity();
  d.index_hmac = r.getIndexHmac();
  return d;
}

void ToWire(const StagedPointHeader& h, rpc::StagedPoint::Builder b) {
  b.setId(h.id);
  b.setVmName(h.vm.name);
  b.setVmUuid(h.vm.uuid);
  b.setVmHypervisor(h.vm.hypervisor);
  b.setChain(h.chain);
  b.setStartedAt(h.started_at);
  auto disks = b.initDisks(static_cast<unsigned>(h.disks.size()));
  for (size_t i = 0; i < h.disks.size(); ++i) disks.set(static_cast<unsigned>(i), h.disks[i]);
  b.setExpiresAt(h.expires_at);
}

StagedPointHeader FromWire(rpc::StagedPoint::Reader r) {
  StagedPointHeader h;
  h.id = r.getId();
  h.vm.name = r.getVmName();
  h.vm.uuid = r.getVmUuid();
  h.vm.hypervisor = r.getVmHypervisor();
  h.chain = r.getChain();
  h.started_at = r.getStartedAt();
  for (auto d : r.getDisks()) h.disks.emplace_back(d);
  h.expires_at = r.getExpiresAt();
  return h;
}

void ToWire(const ConfigFileRecord& f, rpc::ConfigFile::Builder b) {
  b.setKind(f.kind);
  b.setName(f.name);
  b.setOrigin(f.origin);
  b.setSha256(capnp::Data::Reader(f.sha256.bytes.data(), 32));
}

ConfigFileRecord FromWire(rpc::ConfigFile::Reader r) {
  ConfigFileRecord f;
  f.kind = r.getKind();
  f.name = r.getName();
  f.origin = r.getOrigin();
  f.sha256 = DigestOf(r.getSha256());
  return f;
}

capnp::Data::Reader AsData(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
std::string AsString(capnp::Data::Reader d) { return std::string(reinterpret_cast<const char*>(d.begin()), d.size()); }

// Runs `f`, turning a thrown error into the call's failure ("kind: message").
template <typename F>
kj::Promise<void> Guard(F&& f) {
  try {
    f();
    return kj::READY_NOW;
  } catch (const std::exception& e) {
    return ToKj(e);
  }
}

// The same for a call that goes on asynchronously: `f` returns its promise.
template <typename F>
kj::Promise<void> GuardAsync(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return ToKj(e);
  }
}

// --- server ---

class IndexReaderImpl final : public rpc::IndexReader::Server {
 public:
  explicit IndexReaderImpl(std::unique_ptr<FixedIndexReader> index) : index_(std::move(index)) {}
  kj::Promise<void> read(ReadContext context) override {
    return Guard([&] {
      const auto bytes = index_->bytes();
      const uint64_t offset = context.getParams().getOffset();
      const uint32_t length = std::min<uint32_t>(context.getParams().getLength(), kMaxPiece);
      if (offset > bytes.size()) throw Error(ErrorKind::kBadInput, "index read past its end");
      const size_t n = std::min<uint64_t>(length, bytes.size() - offset);
      context.getResults().setData(capnp::Data::Reader(bytes.data() + offset, n));
    });
  }

 private:
  std::unique_ptr<FixedIndexReader> index_;
};

// Threads for the calls that must not run on the event loop, whose every
// connection it serves. Results go back to the loop through cross-thread
// fulfillers. The service has two:
// - chunk threads, one per core: checking and storing a chunk (decode +
//   SHA-256 + write) and reading one, so that chunks are checked on every core;
// - store threads: the point store's calls, which fsync and wait for file
//   locks (a commit waits up to 2 s for a disk's writer to let go). On the
//   loop, such a wait would also hold back the very message (a capability's
//   release on another connection) that ends it; on the chunk threads, it
//   would queue behind a window of inserts.
// findMissing stays on the loop: it is answered at once.
class CallThreads {
 public:
  explicit CallThreads(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~CallThreads() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs `work` on a pool thread; the promise (on the calling loop) resolves
  // once it has run, or rejects with its error as "kind: message".
  kj::Promise<void> Run(std::function<void()> work) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto fulfiller = std::make_shared<kj::Own<kj::CrossThreadPromiseFulfiller<void>>>(kj::mv(paf.fulfiller));
    Post([work = std::move(work), fulfiller]() {
      try {
        work();
        (*fulfiller)->fulfill();
      } catch (const std::exception& e) {
        (*fulfiller)->reject(ToKj(e));
      }
    });
    return kj::mv(paf.promise);
  }
  // The same for work with a result, which `reply` gets on the loop. (The
  // result waits beside the promise rather than in it: GCC 12 misreads
  // kj's ExceptionOr of a class type as used uninitialized.)
  template <typename T, typename Reply>
  kj::Promise<void> Run(std::function<T()> work, Reply reply) {
    auto result = std::make_shared<std::optional<T>>();
    return Run([work = std::move(work), result] { result->emplace(work()); })
        .then([result, reply = std::move(reply)]() mutable { reply(std::move(**result)); });
  }

 private:
  void Post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  void Loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Upkeep (a GC takes minutes on a big repository) on threads of its own, so
// that it holds up neither the loop nor the point store's calls. Each job
// gets a cancel flag, which turns true when its call is cancelled (its
// promise dropped: the client cancelled or its connection is gone) or the
// service ends; a GC then stops, saving its progress for the next to resume.
class UpkeepThreads {
 public:
  ~UpkeepThreads() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& weak : flags_) {
      if (auto flag = weak.lock()) *flag = true;
    }
    // threads_ (declared last) joins next.
  }
  template <typename T, typename Reply>
  kj::Promise<void> Run(std::function<T(const std::atomic<bool>* cancel)> work, Reply reply) {
    auto cancel = std::make_shared<std::atomic<bool>>(false);
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::erase_if(flags_, [](const std::weak_ptr<std::atomic<bool>>& w) { return w.expired(); });
      flags_.push_back(cancel);
    }
    return threads_.Run<T>(std::function<T()>([work = std::move(work), cancel] { return work(cancel.get()); }),
                           std::move(reply))
        .attach(kj::defer([cancel] { *cancel = true; }));
  }

 private:
  std::mutex mu_;
  std::vector<std::weak_ptr<std::atomic<bool>>> flags_;
  CallThreads threads_{kUpkeepThreads};
};

struct ServiceThreads {
  std::shared_ptr<CallThreads> chunks;    // insert, read
  std::shared_ptr<CallThreads> store;     // the point store's calls, sync
  std::shared_ptr<UpkeepThreads> upkeep;  // collectGarbage, measureSpace
};

// One disk being written: holds the point store's DiskWriter (the disk's
// lock) and receives the index the client wrote. The lock goes with the
// reply to finish, not with the client's release of this capability: that
// release travels on its own schedule, and the commit that needs the lock may
// arrive first, on another connection.
class IndexUploadImpl final : public rpc::IndexUpload::Server {
 public:
  IndexUploadImpl(std::unique_ptr<DiskWriter> writer, std::shared_ptr<CallThreads> store_threads)
      : state_(std::make_shared<State>(std::move(writer))), store_threads_(std::move(store_threads)) {}

  kj::Promise<void> write(WriteContext context) override {
    return Guard([&] {
      auto data = context.getParams().getData();
      if (finished_) throw Error(ErrorKind::kBadInput, "index upload already finished");
      if (context.getParams().getOffset() != written_) {
        throw Error(ErrorKind::kBadInput, "index upload out of order (offset " +
                                              std::to_string(context.getParams().getOffset()) + ", expected " +
                                              std::to_string(written_) + ")");
      }
      if (data.size() > kMaxPiece) throw Error(ErrorKind::kBadInput, "index upload piece larger than 4 MiB");
      PwriteAll(state_->fd.get(), data.begin(), data.size(), written_, state_->writer->index_path());
      sha_.Update(data.begin(), data.size());
      written_ += data.size();
    });
  }

  kj::Promise<void> finish(FinishContext context) override {
    return GuardAsync([&] {
      if (finished_) throw Error(ErrorKind::kBadInput, "index upload already finished");
      finished_ = true;
      ferry::DiskRecord record = FromWire(context.getParams().getRecord());
      const Digest claimed = DigestOf(context.getParams().getIndexSha256());
      if (sha_.Finish() != claimed) {
        throw Error(ErrorKind::kCorrupt, "the index of disk " + record.name +
                                             " arrived damaged (its SHA-256 is not the one its writer recorded)");
      }
      // What the manifest will hold is checked when the point is committed
      // (its header against its size, every chunk it names present).
      record.index_sha256 = claimed;
      return store_threads_->Run([state = state_, record = std::move(record)]() mutable {
        FsyncOrThrow(state->fd.get(), state->writer->index_path());
        state->writer->Finish(std::move(record));
        state->fd = UniqueFd();
        state->writer.reset();  // the disk's lock
      });
    });
  }

 private:
  struct State {  // shared with the store thread that finishes the disk
    explicit State(std::unique_ptr<DiskWriter> w)
        : writer(std::move(w)), fd(OpenOrThrow(writer->index_path(), O_WRONLY | O_CREAT | O_TRUNC)) {}
    std::unique_ptr<DiskWriter> writer;
    UniqueFd fd;
  };
  std::shared_ptr<State> state_;
  std::shared_ptr<CallThreads> store_threads_;
  Sha256Stream sha_;
  uint64_t written_ = 0;
  bool finished_ = false;
};

class StagingLeaseImpl final : public rpc::StagingLease::Server {
 public:
  explicit StagingLeaseImpl(std::unique_ptr<ferry::StagingLease> lease) : lease_(std::move(lease)) {}

 private:
  std::unique_ptr<ferry::StagingLease> lease_;
};

class PointLeaseImpl final : public rpc::PointLease::Server {
 public:
  explicit PointLeaseImpl(std::unique_ptr<ferry::PointLease> lease) : lease_(std::move(lease)) {}

 private:
  std::unique_ptr<ferry::PointLease> lease_;
};

void ToWire(const ferry::PointLock& l, rpc::PointLock::Builder b) {
  b.setLockedUntil(l.locked_until);
  b.setSetAt(l.set_at);
  b.setReason(l.reason);
}

ferry::PointLock FromWire(rpc::PointLock::Reader r) {
  return {r.getLockedUntil(), r.getSetAt(), std::string(r.getReason())};
}

int64_t ServiceNow() { return static_cast<int64_t>(::time(nullptr)); }

// A call's promise that counts its failure (by kind) in `stats` on the way.
kj::Promise<void> CountingFailures(kj::Promise<void> call, std::shared_ptr<RepositoryServiceStats> stats) {
  return kj::mv(call).catch_([stats = std::move(stats)](kj::Exception&& e) -> kj::Promise<void> {
    stats->CountError(e);
    return kj::mv(e);
  });
}

class RepositoryImpl final : public rpc::Repository::Server {
 public:
  RepositoryImpl(std::shared_ptr<ferry::Repository> repo, std::string name, ServiceThreads threads,
                 std::shared_ptr<RepositoryServiceStats> stats)
      : repo_(std::move(repo)), name_(std::move(name)), threads_(std::move(threads)), stats_(std::move(stats)),
        counters_(stats_->ForRepository(name_)) {}

  DispatchCallResult dispatchCall(uint64_t interface_id, uint16_t method_id,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    if (interface_id == capnp::typeId<rpc::Repository>()) stats_->CountCall(false, method_id);
    DispatchCallResult r = rpc::Repository::Server::dispatchCall(interface_id, method_id, context);
    r.promise = CountingFailures(kj::mv(r.promise), stats_);
    return r;
  }

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
      counters_->chunks_queried.fetch_add(digests.size(), std::memory_order_relaxed);
      counters_->chunks_missing.fetch_add(missing.size(), std::memory_order_relaxed);
      auto out = context.getResults().initMissing(static_cast<unsigned>(missing.size()));
      for (size_t i = 0; i < missing.size(); ++i) out.set(static_cast<unsigned>(i), static_cast<uint32_t>(missing[i]));
    });
  }

  kj::Promise<void> insert(InsertContext context) override {
    Digest digest;
    try {
      digest = DigestOf(context.getParams().getDigest());
      if (context.getParams().getEncoded().size() > kMaxEncodedChunk) {
        throw Error(ErrorKind::kBadInput, "insert: a chunk larger than 16 MiB");
      }
    } catch (const std::exception& e) {
      return ToKj(e);
    }
    // A copy: the call (and its params) may be cancelled while a pool thread works.
    auto encoded = context.getParams().getEncoded();
    auto bytes = std::make_shared<std::vector<uint8_t>>(encoded.begin(), encoded.end());
    counters_->chunks_received.fetch_add(1, std::memory_order_relaxed);
    counters_->bytes_received.fetch_add(bytes->size(), std::memory_order_relaxed);
    auto repo = repo_;
    std::string what = "chunk " + digest.Hex() + " sent to repository " + name_;
    return threads_.chunks
        ->Run<bool>([repo, digest, bytes, what]() {
          // What is stored under a digest must be that digest's data. An
          // encrypted repository's chunks arrive encrypted, and the key never
          // reaches the service: it checks their framing and CRC only.
          if (repo->config().encrypted()) {
            if (!CheckChunkFraming(*bytes, what).encrypted()) {
              throw Error(ErrorKind::kBadInput, what + " is not encrypted, and the repository is");
            }
          } else {
            thread_local ChunkDecoder decoder;
            thread_local std::vector<uint8_t> plain;
            Digest d = digest;
            decoder.Decode(*bytes, &d, what, &plain);
          }
          return repo->chunks().Insert(digest, *bytes);
        },
        [context, counters = counters_, size = bytes->size()](bool stored) mutable {
          if (stored) {
            counters->chunks_stored.fetch_add(1, std::memory_order_relaxed);
            counters->bytes_stored.fetch_add(size, std::memory_order_relaxed);
          }
          context.getResults().setStored(stored);
        });
  }

  kj::Promise<void> sync(SyncContext) override {
    return threads_.store->Run([repo = repo_] { repo->chunks().Sync(); });
  }

  kj::Promise<void> read(ReadContext context) override {
    Digest digest;
    try {
      digest = DigestOf(context.getParams().getDigest());
    } catch (const std::exception& e) {
      return ToKj(e);
    }
    auto repo = repo_;
    auto encoded = std::make_shared<std::vector<uint8_t>>();
    return threads_.chunks
        ->Run<bool>([repo, digest, encoded]() {
          repo->chunk_reader().Read(digest, encoded.get());
          return true;
        },
        [context, encoded](bool) mutable {
          context.getResults().setEncoded(capnp::Data::Reader(encoded->data(), encoded->size()));
        });
  }

  kj::Promise<void> quarantine(QuarantineContext context) override {
    return Guard([&] {
      Digest digest = DigestOf(context.getParams().getDigest());
      std::string reason = context.getParams().getReason();
      context.getResults().setWhere(repo_->chunk_reader().Quarantine(digest, reason.substr(0, 1000)));
    });
  }

  kj::Promise<void> listPoints(ListPointsContext context) override {
    return Guard([&] { SetIds(repo_->points().List(), context.getResults()); });
  }

  kj::Promise<void> loadPoints(LoadPointsContext context) override {
    return threads_.store->Run<PointListing>([repo = repo_] { return repo->points().LoadAll(); },
        [context](PointListing listing) mutable {
      auto results = context.getResults();
      auto manifests = results.initManifests(static_cast<unsigned>(listing.points.size()));
      for (size_t i = 0; i < listing.points.size(); ++i) {
        manifests.set(static_cast<unsigned>(i), AsData(ManifestToJson(listing.points[i])));
      }
      auto problems = results.initProblems(static_cast<unsigned>(listing.problems.size()));
      for (size_t i = 0; i < listing.problems.size(); ++i) {
        problems[static_cast<unsigned>(i)].setEntry(listing.problems[i].entry);
        problems[static_cast<unsigned>(i)].setMessage(listing.problems[i].message);
      }
    });
  }

  kj::Promise<void> loadPoint(LoadPointContext context) override {
    return Guard([&] {
      context.getResults().setManifest(AsData(ManifestToJson(repo_->points().Load(context.getParams().getId()))));
    });
  }

  kj::Promise<void> openIndex(OpenIndexContext context) override {
    const std::string id = context.getParams().getId(), disk = context.getParams().getDisk();
    return threads_.store
        ->Run<std::unique_ptr<FixedIndexReader>>([repo = repo_, id, disk] {
          RestorePointManifest m = repo->points().Load(id);
          const ferry::DiskRecord* record = m.FindDisk(disk);
          if (!record) throw Error(ErrorKind::kNotFound, "restore point " + id + " has no disk " + disk.substr(0, 200));
          return repo->points().OpenIndex(id, *record);
        },
        [context](std::unique_ptr<FixedIndexReader> index) mutable {
          const uint64_t size = index->bytes().size();
          context.getResults().setIndex(kj::heap<IndexReaderImpl>(std::move(index)));
          context.getResults().setSize(size);
        });
  }

  kj::Promise<void> readFile(ReadFileContext context) override {
    const std::string id = context.getParams().getId(), name = context.getParams().getName();
    return threads_.store
        ->Run<std::string>([repo = repo_, id, name] {
          RestorePointManifest m = repo->points().Load(id);
          for (const ConfigFileRecord& f : m.config_files) {
            if (f.name != name) continue;
            std::string content = repo->points().ReadFile(id, f);
            if (content.size() > kMaxEncodedChunk) throw Error(ErrorKind::kBadInput, "file " + name + " is larger than 16 MiB");
            return content;
          }
          throw Error(ErrorKind::kNotFound, "restore point " + id + " has no file " + name.substr(0, 200));
        },
        [context](std::string content) mutable { context.getResults().setContent(AsData(content)); });
  }

  kj::Promise<void> stage(StageContext context) override {
    return GuardAsync([&] {
      StagedPointHeader header = FromWire(context.getParams().getHeader());
      return threads_.store
          ->Run<std::unique_ptr<ferry::StagingLease>>([repo = repo_, header] { return repo->points().Stage(header); },
          [context](std::unique_ptr<ferry::StagingLease> lease) mutable {
            ToWire(lease->header(), context.getResults().initHeader());
            context.getResults().setLease(kj::heap<StagingLeaseImpl>(std::move(lease)));
          });
    });
  }

  kj::Promise<void> writeDisk(WriteDiskContext context) override {
    const std::string id = context.getParams().getId(), disk = context.getParams().getDisk();
    return threads_.store
        ->Run<std::unique_ptr<DiskWriter>>([repo = repo_, id, disk] { return repo->points().WriteDisk(id, disk); },
        [context, store = threads_.store](std::unique_ptr<DiskWriter> writer) mutable {
          context.getResults().setIndexFile(writer->index_file());
          context.getResults().setUpload(kj::heap<IndexUploadImpl>(std::move(writer), store));
        });
  }

  kj::Promise<void> addFile(AddFileContext context) override {
    return GuardAsync([&] {
      auto p = context.getParams();
      if (p.getContent().size() > kMaxEncodedChunk) throw Error(ErrorKind::kBadInput, "addFile: larger than 16 MiB");
      return threads_.store
          ->Run<ConfigFileRecord>([repo = repo_, id = std::string(p.getId()), kind = std::string(p.getKind()),
                                   name = std::string(p.getName()), content = AsString(p.getContent()),
                                   origin = std::string(p.getOrigin())] {
            return repo->points().AddFile(id, kind, name, content, origin);
          },
          [context](ConfigFileRecord r) mutable { ToWire(r, context.getResults().initRecord()); });
    });
  }

  kj::Promise<void> commit(CommitContext context) override {
    return threads_.store
        ->Run<std::string>([repo = repo_, id = std::string(context.getParams().getId())] {
          return ManifestToJson(repo->points().Commit(id));
        },
        [context, counters = counters_](std::string manifest) mutable {
          counters->points_committed.fetch_add(1, std::memory_order_relaxed);
          context.getResults().setManifest(AsData(manifest));
        });
  }

  kj::Promise<void> discard(DiscardContext context) override {
    return threads_.store->Run([repo = repo_, id = std::string(context.getParams().getId())] { repo->points().Discard(id); });
  }

  kj::Promise<void> removeExpired(RemoveExpiredContext context) override {
    return threads_.store->Run<std::vector<std::string>>([repo = repo_] { return repo->points().RemoveExpired(); },
        [context](std::vector<std::string> ids) mutable { SetIds(ids, context.getResults()); });
  }

  kj::Promise<void> listStaged(ListStagedContext context) override {
    return Guard([&] { SetIds(repo_->points().ListStaged(), context.getResults()); });
  }

  kj::Promise<void> removePoint(RemovePointContext context) override {
    return threads_.store->Run([repo = repo_, id = std::string(context.getParams().getId())] {
      repo->points().Remove(id, ServiceNow());
    });
  }

  kj::Promise<void> loadChecks(LoadChecksContext context) override {
    return threads_.store->Run<std::vector<std::string>>(
        [repo = repo_] {
          std::vector<std::string> out;
          for (const auto& [id, check] : repo->points().LoadChecks()) out.push_back(PointCheckToJson(check));
          return out;
        },
        [context](std::vector<std::string> records) mutable {
          auto list = context.getResults().initChecks(static_cast<unsigned>(records.size()));
          for (unsigned i = 0; i < records.size(); ++i) {
            list.set(i, kj::arrayPtr(reinterpret_cast<const kj::byte*>(records[i].data()), records[i].size()));
          }
        });
  }

  kj::Promise<void> recordCheck(RecordCheckContext context) override {
    auto data = context.getParams().getCheck();
    std::string text(reinterpret_cast<const char*>(data.begin()), data.size());
    return threads_.store->Run([repo = repo_, text = std::move(text)] {
      repo->points().RecordCheck(PointCheckFromJson(text, "from the client"));
    });
  }

  // Upkeep, on the repository's directory (the service's repositories are
  // local ones: their location is their directory).
  kj::Promise<void> collectGarbage(CollectGarbageContext context) override {
    auto p = context.getParams();
    GcOptions options;
    try {
      if (p.getWindowS() < 0) throw Error(ErrorKind::kBadInput, "collectGarbage: a negative window");
      if (p.getThreads() > 64) throw Error(ErrorKind::kBadInput, "collectGarbage: more than 64 threads");
      options.window = std::chrono::seconds(p.getWindowS());
      options.dry_run = p.getDryRun();
      if (p.getThreads() > 0) options.threads = p.getThreads();
    } catch (const std::exception& e) {
      return ToKj(e);
    }
    LogInfo("repository " + name_ + ": a client runs a " + (options.dry_run ? "dry-run " : "") + "GC");
    counters_->gc_runs.fetch_add(1, std::memory_order_relaxed);
    return threads_.upkeep->Run<std::string>(
        [repo = repo_, options](const std::atomic<bool>* cancel) {
          GcOptions o = options;
          o.cancel = cancel;
          return GcReportJson(ferry::CollectGarbage(repo->location(), o, nullptr));
        },
        [context](std::string report) mutable { context.getResults().setReport(AsData(report)); });
  }

  kj::Promise<void> measureSpace(MeasureSpaceContext context) override {
    return threads_.upkeep->Run<std::string>(
        [repo = repo_](const std::atomic<bool>*) { return SpaceReportJson(ferry::MeasureSpace(repo->location(), nullptr)); },
        [context](std::string report) mutable { context.getResults().setReport(AsData(report)); });
  }

  kj::Promise<void> readLock(ReadLockContext context) override {
    return threads_.store->Run<std::optional<ferry::PointLock>>(
        [repo = repo_, id = std::string(context.getParams().getId())] { return repo->points().ReadLock(id); },
        [context](std::optional<ferry::PointLock> lock) mutable {
          context.getResults().setPresent(lock.has_value());
          if (lock) ToWire(*lock, context.getResults().initLock());
        });
  }

  kj::Promise<void> setLock(SetLockContext context) override {
    auto p = context.getParams();
    return threads_.store->Run<ferry::PointLock>(
        [repo = repo_, id = std::string(p.getId()), until = p.getLockedUntil(), reason = std::string(p.getReason())] {
          return repo->points().SetLock(id, until, reason, ServiceNow());
        },
        [context](ferry::PointLock lock) mutable { ToWire(lock, context.getResults().initLock()); });
  }

  kj::Promise<void> leasePoint(LeasePointContext context) override {
    return threads_.store->Run<std::unique_ptr<ferry::PointLease>>(
        [repo = repo_, id = std::string(context.getParams().getId())] { return repo->points().Lease(id); },
        [context](std::unique_ptr<ferry::PointLease> lease) mutable {
          context.getResults().setLease(kj::heap<PointLeaseImpl>(std::move(lease)));
        });
  }

 private:
  template <typename Results>
  static void SetIds(const std::vector<std::string>& texts, Results results) {
    auto out = results.initIds(static_cast<unsigned>(texts.size()));
    for (size_t i = 0; i < texts.size(); ++i) out.set(static_cast<unsigned>(i), texts[i]);
  }

  std::shared_ptr<ferry::Repository> repo_;
  std::string name_;
  ServiceThreads threads_;
  std::shared_ptr<RepositoryServiceStats> stats_;
  std::shared_ptr<RepositoryServiceStats::Repository> counters_;
};

// What the service serves: a local directory, or a bucket (s3://...) the
// service's host reaches for its clients.
std::unique_ptr<ferry::Repository> OpenServedRepository(const std::string& location) {
  if (s3::IsObjectLocation(location)) return s3::OpenObjectRepository(location);
  return ferry::Repository::Open(location);
}

class ServiceImpl final : public RepositoryService::Server {
 public:
  explicit ServiceImpl(RepositoryServiceConfig config)
      : catalog_(std::move(config.catalog)),
        stats_(config.stats ? std::move(config.stats) : std::make_shared<RepositoryServiceStats>()),
        threads_{std::make_shared<CallThreads>(std::max(2u, std::thread::hardware_concurrency())),
                 std::make_shared<CallThreads>(kStoreThreads), std::make_shared<UpkeepThreads>()} {
    for (const auto& [name, dir] : config.repositories) {
      std::shared_ptr<ferry::Repository> repo = OpenServedRepository(dir);
      repo->PrepareForWriting();
      repositories_[name] = std::move(repo);
      stats_->ForRepository(name);  // counted (at zero) from the start
    }
    grants_ = std::move(config.grants);
    worker_key_ = std::move(config.worker_key);
  }

  // A catalog's repository, opened once per directory.
  std::shared_ptr<ferry::Repository> OpenThroughCatalog(const std::string& token, const std::string& name) {
    std::optional<std::string> dir = catalog_->Resolve(token, name);
    if (!dir) throw Error(ErrorKind::kBadInput, "repository '" + name.substr(0, 200) + "' is not open to this token");
    auto& slot = by_directory_[*dir];
    if (!slot) {
      std::shared_ptr<ferry::Repository> repo = OpenServedRepository(*dir);
      repo->PrepareForWriting();
      slot = std::move(repo);
    }
    return slot;
  }

  DispatchCallResult dispatchCall(uint64_t interface_id, uint16_t method_id,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    if (interface_id == capnp::typeId<RepositoryService>()) stats_->CountCall(true, method_id);
    DispatchCallResult r = RepositoryService::Server::dispatchCall(interface_id, method_id, context);
    r.promise = CountingFailures(kj::mv(r.promise), stats_);
    return r;
  }

  kj::Promise<void> open(OpenContext context) override {
    return Guard([&] {
      auto params = context.getParams();
      if (params.getProtocolVersion() != REPOSITORY_PROTOCOL_VERSION) {
        throw Error(ErrorKind::kBadInput, "repository protocol version " + std::to_string(params.getProtocolVersion()) +
                                              " is not supported (this service speaks " +
                                              std::to_string(REPOSITORY_PROTOCOL_VERSION) + ")");
      }
      if (catalog_) {
        const std::string name = params.getRepository();
        std::shared_ptr<ferry::Repository> repo = OpenThroughCatalog(params.getToken(), name);
        SetResults(context.getResults(), repo, name);
        return;
      }
      if (worker_key_ && repositories_.count(params.getRepository()) &&
          worker_key_->Verify(params.getToken(), params.getRepository())) {
        const std::string name = params.getRepository();
        SetResults(context.getResults(), repositories_[name], name);
        return;
      }
      const Digest presented = TokenHash(params.getToken());
      const RepositoryGrant* grant = nullptr;
      for (const RepositoryGrant& g : grants_) {
        if (CRYPTO_memcmp(g.token_sha256.bytes.data(), presented.bytes.data(), 32) == 0) grant = &g;
      }
      if (grant == nullptr) throw Error(ErrorKind::kBadInput, "repository token refused");
      std::string name = params.getRepository();
      auto it = repositories_.find(name);
      // The same answer whether it does not exist or is not this token's:
      // a token does not learn the names of others' repositories.
      if (it == repositories_.end() || !grant->repositories.count(name)) {
        throw Error(ErrorKind::kBadInput, "repository '" + name.substr(0, 200) + "' is not open to this token");
      }
      SetResults(context.getResults(), it->second, name);
    });
  }

 private:
  void SetResults(RepositoryService::OpenResults::Builder results, const std::shared_ptr<ferry::Repository>& repo,
                  const std::string& name) {
    results.setRepository(kj::heap<RepositoryImpl>(repo, name, threads_, stats_));
    auto info = results.initInfo();
    const RepositoryConfig& config = repo->config();
    info.setName(name);
    info.setChunkSize(config.chunk_size);
    info.setFormat(config.encrypted() ? "ferry-repository-v3" : "ferry-repository-v2");
    info.setId(config.id);
    info.setZstdLevel(config.zstd_level);
    info.setKeyFingerprint(config.key_fingerprint);
  }

  std::shared_ptr<const RepositoryCatalog> catalog_;
  std::shared_ptr<RepositoryServiceStats> stats_;
  std::optional<WorkerTokenKey> worker_key_;
  ServiceThreads threads_;
  std::map<std::string, std::shared_ptr<ferry::Repository>> by_directory_;
  std::map<std::string, std::shared_ptr<ferry::Repository>> repositories_;
  std::vector<RepositoryGrant> grants_;
};

// --- client ---

class IgnoreTaskErrors final : public kj::TaskSet::ErrorHandler {
 public:
  void taskFailed(kj::Exception&&) override {}  // every task handles its own failure
};


// Reads [offset, size) of a remote index into `fd`, a piece at a time.
kj::Promise<void> ReadIndexPieces(rpc::IndexReader::Client reader, uint64_t offset, uint64_t size, int fd,
                                  std::string path) {
  if (offset >= size) return kj::READY_NOW;
  auto req = reader.readRequest();
  req.setOffset(offset);
  req.setLength(kMaxPiece);
  return req.send().then([reader, offset, size, fd, path](capnp::Response<rpc::IndexReader::ReadResults>&& r) mutable {
    auto data = r.getData();
    if (data.size() == 0) return kj::Promise<void>(KJ_EXCEPTION(FAILED, "corrupt: the index ended early"));
    PwriteAll(fd, data.begin(), data.size(), offset, path);
    return ReadIndexPieces(kj::mv(reader), offset + data.size(), size, fd, kj::mv(path));
  });
}

// Sends [offset, size) of `fd` to a remote index upload, a piece at a time.
kj::Promise<void> WriteIndexPieces(rpc::IndexUpload::Client upload, uint64_t offset, uint64_t size, int fd,
                                   std::string path) {
  if (offset >= size) return kj::READY_NOW;
  const size_t n = std::min<uint64_t>(kMaxPiece, size - offset);
  auto req = upload.writeRequest();
  req.setOffset(offset);
  auto data = req.initData(static_cast<unsigned>(n));
  PreadAll(fd, data.begin(), n, offset, path);
  return req.send().then([upload, offset, n, size, fd, path](auto&&) mutable {
    return WriteIndexPieces(kj::mv(upload), offset + n, size, fd, kj::mv(path));
  });
}

// A KJ event loop on a thread of its own, from construction to destruction:
// the client's connection and the server each run on one. `start(io)` runs
// first on that thread: it sets up what lives on the loop and returns what
// the loop then runs until destroyed (a ferry::Error it throws comes out of
// the constructor). `finish()` runs there last, to drop loop-owned objects
// before the loop goes. Any thread runs work on it through executor().
class LoopThread {
 public:
  LoopThread(std::function<kj::Promise<void>(kj::AsyncIoContext&)> start, std::function<void()> finish,
             std::string what)
      : state_(std::make_unique<State>()) {
    std::mutex mu;
    std::condition_variable ready;
    bool started = false;
    std::optional<Error> failure;
    thread_ = std::thread([&, state = state_.get(), start = std::move(start), finish = std::move(finish), what] {
      bool reported = false;  // after that, the constructor's locals are gone
      auto report = [&](std::optional<Error> e) {
        std::lock_guard<std::mutex> lock(mu);
        failure = std::move(e);
        started = true;
        reported = true;
        ready.notify_all();
      };
      try {
        auto io = kj::setupAsyncIo();
        kj::Promise<void> body = start(io);
        auto paf = kj::newPromiseAndFulfiller<void>();
        state->stop = kj::mv(paf.fulfiller);
        state->executor = kj::getCurrentThreadExecutor().addRef();
        report(std::nullopt);
        try {
          body.exclusiveJoin(kj::mv(paf.promise)).wait(io.waitScope);
        } catch (const kj::Exception& e) {
          LogError(what + ": stopped: " + e.getDescription().cStr());
        }
        finish();
        state->stop = nullptr;
      } catch (const Error& e) {
        if (!reported) report(e);
      } catch (const kj::Exception& e) {
        if (!reported) report(Error(ErrorKind::kEnvironment, what + ": " + e.getDescription().cStr()));
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

  ~LoopThread() {
    if (state_->executor) {
      try {
        state_->executor->executeSync([this] {
          if (state_->stop) state_->stop->fulfill();
        });
      } catch (...) {
      }
    }
    if (thread_.joinable()) thread_.join();
  }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  const kj::Executor& executor() const { return *state_->executor; }

 private:
  struct State {  // behind a pointer: kj's destructors may throw
    kj::Own<const kj::Executor> executor;
    kj::Own<kj::PromiseFulfiller<void>> stop;  // the loop's thread only
  };
  std::unique_ptr<State> state_;
  std::thread thread_;
};

class RemoteRepositoryImpl;

// A capability held by an object used from other threads: created, used and
// dropped on the connection's thread only. (Behind a pointer because kj's
// destructors may throw, and the holders' may not.)
template <typename Client>
struct CapSlot {
  kj::Maybe<Client> cap;
};

// The chunks of one disk backup in flight to the service (ChunkUpload).
struct UploadEntry {
  uint64_t seq = 0;
  Digest digest;
  std::vector<uint8_t> bytes;
  uint64_t generation = 0;  // of the connection it was last sent on
  bool lost = false;        // that connection failed before the reply
};

struct UploadState {
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, std::shared_ptr<UploadEntry>> pending;  // sent, not acknowledged; by seq
  std::unordered_set<Digest, DigestHash> digests;            // of pending
  size_t bytes = 0;                                          // of pending
  uint64_t next_seq = 0;
  bool resending = false;
  std::optional<Error> failure;
  ChunkUploadStats stats;
};

class RemoteUpload final : public ChunkUpload {
 public:
  RemoteUpload(RemoteRepositoryImpl& repo, size_t window) : repo_(repo), window_(window) {}
  void Add(const Digest& digest, std::span<const uint8_t> encoded) override;
  ChunkUploadStats Finish() override;

 private:
  void Service(std::unique_lock<std::mutex>& lock);

  RemoteRepositoryImpl& repo_;
  const size_t window_;
  std::shared_ptr<UploadState> st_ = std::make_shared<UploadState>();
};

class RemoteLease;
class RemoteDiskWriter;

class RemoteRepositoryImpl final : public RemoteRepository, public ChunkStore, public ChunkReader, public PointStore {
 public:
  explicit RemoteRepositoryImpl(RepositoryEndpoint endpoint)
      : endpoint_(std::move(endpoint)), location_(RepositoryUrl(endpoint_)), context_("repository " + location_) {
    SplitHostPort(endpoint_.address);  // a malformed address fails here, not on the loop
    loop_thread_ = std::make_unique<LoopThread>(
        [this](kj::AsyncIoContext& io) -> kj::Promise<void> {
          loop_->io = &io;
          if (endpoint_.tls) loop_->tls = MakeClientTlsContext(endpoint_.ca_file);
          loop_->tasks = kj::heap<kj::TaskSet>(ignore_task_errors_);
          return kj::NEVER_DONE;
        },
        [this] {
          loop_->repo = nullptr;
          loop_->conn = nullptr;
          loop_->tasks = nullptr;
          loop_->tls = nullptr;
          loop_->io = nullptr;
        },
        context_);
    try {
      ConnectOnce();
    } catch (...) {
      loop_thread_.reset();
      throw;
    }
  }

  ~RemoteRepositoryImpl() override { loop_thread_.reset(); }

  // --- Repository ---
  const std::string& location() const override { return location_; }
  const RepositoryConfig& config() const override { return config_; }
  ChunkStore& chunks() override { return *this; }
  ChunkReader& chunk_reader() override { return *this; }
  PointStore& points() override { return *this; }
  const PointStore& points() const override { return *this; }
  // The service checked its repositories are writable when it started.
  void PrepareForWriting() override {}
  const RemoteRepositoryInfo& info() const override { return info_; }
  uint64_t reconnects() const override { return reconnects_; }

  // --- ChunkStore / ChunkReader ---
  void FindMissing(std::span<const Digest> digests, std::vector<size_t>* missing) override {
    for (size_t start = 0; start < digests.size(); start += kMaxDigestsPerCall) {
      const size_t n = std::min(kMaxDigestsPerCall, digests.size() - start);
      std::vector<size_t> found;
      Call("findMissing", [&](rpc::Repository::Client& repo) {
        found.clear();
        auto req = repo.findMissingRequest();
        auto list = req.initDigests(static_cast<unsigned>(n));
        for (size_t i = 0; i < n; ++i) {
          list.set(static_cast<unsigned>(i), capnp::Data::Reader(digests[start + i].bytes.data(), 32));
        }
        return req.send().then([&, start](capnp::Response<rpc::Repository::FindMissingResults>&& r) {
          for (uint32_t i : r.getMissing()) {
            if (i >= n) throw Error(ErrorKind::kInternal, "findMissing answered a position it was not asked");
            found.push_back(start + i);
          }
        });
      });
      missing->insert(missing->end(), found.begin(), found.end());
    }
  }

  bool Insert(const Digest& digest, std::span<const uint8_t> encoded) override {
    bool stored = false;
    Call("insert of chunk " + digest.Hex(), [&](rpc::Repository::Client& repo) {
      auto req = repo.insertRequest();
      req.setDigest(capnp::Data::Reader(digest.bytes.data(), 32));
      req.setEncoded(capnp::Data::Reader(encoded.data(), encoded.size()));
      return req.send().then([&](capnp::Response<rpc::Repository::InsertResults>&& r) { stored = r.getStored(); });
    });
    return stored;
  }

  std::unique_ptr<ChunkUpload> StartUpload() override {
    return std::make_unique<RemoteUpload>(*this, endpoint_.upload_window_bytes);
  }

  void Sync() override {
    Call("sync", [&](rpc::Repository::Client& repo) { return repo.syncRequest().send().ignoreResult(); });
  }

  void Read(const Digest& digest, std::vector<uint8_t>* encoded) override {
    Call("read of chunk " + digest.Hex(), [&](rpc::Repository::Client& repo) {
      auto req = repo.readRequest();
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
      Call("quarantine of chunk " + digest.Hex(), [&](rpc::Repository::Client& repo) {
        auto req = repo.quarantineRequest();
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

  std::string Describe(const Digest& digest) const override { return "chunk " + digest.Hex() + " of " + context_; }
  bool remote() const override { return true; }  // waits on it are network time (stage_busy.h)

  // --- PointStore ---
  std::vector<std::string> List() const override {
    std::vector<std::string> ids;
    Call("listing restore points", [&](rpc::Repository::Client& repo) {
      return repo.listPointsRequest().send().then([&](capnp::Response<rpc::Repository::ListPointsResults>&& r) {
        ids = Texts(r.getIds());
      });
    });
    return ids;
  }

  PointListing LoadAll() const override {
    PointListing listing;
    Call("loading restore points", [&](rpc::Repository::Client& repo) {
      return repo.loadPointsRequest().send().then([&](capnp::Response<rpc::Repository::LoadPointsResults>&& r) {
        listing = {};
        for (auto m : r.getManifests()) {
          try {
            listing.points.push_back(ManifestFromJson(AsString(m), context_ + ", a manifest"));
          } catch (const Error& e) {
            listing.problems.push_back({"(manifest from the service)", e.what()});
          }
        }
        for (auto p : r.getProblems()) listing.problems.push_back({p.getEntry(), p.getMessage()});
      });
    });
    return listing;
  }

  RestorePointManifest Load(const std::string& id) const override {
    std::string json;
    Call("loading restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.loadPointRequest();
      req.setId(id);
      return req.send().then(
          [&](capnp::Response<rpc::Repository::LoadPointResults>&& r) { json = AsString(r.getManifest()); });
    });
    return CheckedManifest(json, id);
  }

  std::unique_ptr<FixedIndexReader> OpenIndex(const std::string& id, const ferry::DiskRecord& disk) const override {
    TempFile file;
    Call("reading the index of disk " + disk.name + " of restore point " + id, [&](rpc::Repository::Client& repo) {
      if (::ftruncate(file.fd(), 0) != 0) throw ErrnoError("truncating " + file.path(), errno);
      auto req = repo.openIndexRequest();
      req.setId(id);
      req.setDisk(disk.name);
      return req.send().then([&](capnp::Response<rpc::Repository::OpenIndexResults>&& r) {
        return ReadIndexPieces(r.getIndex(), 0, r.getSize(), file.fd(), file.path());
      });
    });
    // Checked against the manifest this client loaded (and checked) itself.
    return std::make_unique<FixedIndexReader>(file.path(), &disk.index_sha256);
  }

  std::string ReadFile(const std::string& id, const ConfigFileRecord& file) const override {
    std::string content;
    Call("reading file " + file.name + " of restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.readFileRequest();
      req.setId(id);
      req.setName(file.name);
      return req.send().then(
          [&](capnp::Response<rpc::Repository::ReadFileResults>&& r) { content = AsString(r.getContent()); });
    });
    if (Sha256(content.data(), content.size()) != file.sha256) {
      throw Error(ErrorKind::kCorrupt, "file " + file.name + " of restore point " + id + " in " + context_ +
                                           " does not match its SHA-256 in the manifest");
    }
    return content;
  }

  std::unique_ptr<ferry::StagingLease> Stage(StagedPointHeader header) override;
  std::unique_ptr<DiskWriter> WriteDisk(const std::string& id, const std::string& disk) override;

  ConfigFileRecord AddFile(const std::string& id, const std::string& kind, const std::string& name,
                           const std::string& content, const std::string& origin) override {
    ConfigFileRecord record;
    Call("adding file " + name + " to restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.addFileRequest();
      req.setId(id);
      req.setKind(kind);
      req.setName(name);
      req.setContent(AsData(content));
      req.setOrigin(origin);
      return req.send().then(
          [&](capnp::Response<rpc::Repository::AddFileResults>&& r) { record = FromWire(r.getRecord()); });
    });
    return record;
  }

  RestorePointManifest Commit(const std::string& id) override {
    std::string json;
    Call("committing restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.commitRequest();
      req.setId(id);
      return req.send().then(
          [&](capnp::Response<rpc::Repository::CommitResults>&& r) { json = AsString(r.getManifest()); });
    });
    return CheckedManifest(json, id);
  }

  void Discard(const std::string& id) override {
    Call("discarding restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.discardRequest();
      req.setId(id);
      return req.send().ignoreResult();
    });
  }

  std::vector<std::string> RemoveExpired() override {
    std::vector<std::string> ids;
    Call("removing expired staging", [&](rpc::Repository::Client& repo) {
      return repo.removeExpiredRequest().send().then(
          [&](capnp::Response<rpc::Repository::RemoveExpiredResults>&& r) { ids = Texts(r.getIds()); });
    });
    return ids;
  }

  std::vector<std::string> ListStaged() const override {
    std::vector<std::string> ids;
    Call("listing staged points", [&](rpc::Repository::Client& repo) {
      return repo.listStagedRequest().send().then(
          [&](capnp::Response<rpc::Repository::ListStagedResults>&& r) { ids = Texts(r.getIds()); });
    });
    return ids;
  }

  // Committed points' lifecycle. The service checks locks with its own
  // clock: `now` is not sent. A lease lasts while this connection does (it
  // is not taken again after a reconnect: the restore or verify holding it
  // goes on, and a prune on the service may then remove the point, whose
  // chunks stay until garbage collection). A service older than these calls
  // answers "unimplemented": a lease is then nothing (restores and verifies
  // through it work as before), and the rest is refused, saying so.
  std::unique_ptr<ferry::PointLease> Lease(const std::string& id) const override;

  // Health checks. A service older than these calls: no records (every
  // check is then a full one) and recording is skipped, with a warning.
  std::map<std::string, PointCheck> LoadChecks() const override {
    std::map<std::string, PointCheck> out;
    bool unimplemented = false;
    Call("loading the points' last checks", [&](rpc::Repository::Client& repo) {
      return OrUnimplemented(repo.loadChecksRequest().send().then(
                                 [&](capnp::Response<rpc::Repository::LoadChecksResults>&& r) {
                                   for (auto data : r.getChecks()) {
                                     std::string text(reinterpret_cast<const char*>(data.begin()), data.size());
                                     try {
                                       PointCheck c = PointCheckFromJson(text, "from " + location_);
                                       out.emplace(c.point, std::move(c));
                                     } catch (const Error& e) {
                                       LogWarning(std::string(e.what()) + "; the point counts as never checked");
                                     }
                                   }
                                 }),
                             &unimplemented);
    });
    return out;
  }

  void RecordCheck(const PointCheck& check) override {
    bool unimplemented = false;
    Call("recording the check of restore point " + check.point, [&](rpc::Repository::Client& repo) {
      auto req = repo.recordCheckRequest();
      std::string text = PointCheckToJson(check);
      req.setCheck(kj::arrayPtr(reinterpret_cast<const kj::byte*>(text.data()), text.size()));
      return OrUnimplemented(req.send().ignoreResult(), &unimplemented);
    });
    if (unimplemented) LogWarning("the repository service at " + location_ + " does not keep check records (upgrade it)");
  }

  std::optional<ferry::PointLock> ReadLock(const std::string& id) const override {
    std::optional<ferry::PointLock> lock;
    bool unimplemented = false;
    Call("reading the lock of restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.readLockRequest();
      req.setId(id);
      return OrUnimplemented(req.send().then([&](capnp::Response<rpc::Repository::ReadLockResults>&& r) {
        if (r.getPresent()) lock = FromWire(r.getLock());
      }), &unimplemented);
    });
    if (unimplemented) throw TooOld("readLock");
    return lock;
  }

  ferry::PointLock SetLock(const std::string& id, int64_t locked_until, const std::string& reason, int64_t) override {
    ferry::PointLock lock;
    bool unimplemented = false;
    Call("locking restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.setLockRequest();
      req.setId(id);
      req.setLockedUntil(locked_until);
      req.setReason(reason);
      return OrUnimplemented(req.send().then([&](capnp::Response<rpc::Repository::SetLockResults>&& r) {
        lock = FromWire(r.getLock());
      }), &unimplemented);
    });
    if (unimplemented) throw TooOld("setLock");
    return lock;
  }

  void Remove(const std::string& id, int64_t) override {
    bool unimplemented = false;
    Call("removing restore point " + id, [&](rpc::Repository::Client& repo) {
      auto req = repo.removePointRequest();
      req.setId(id);
      return OrUnimplemented(req.send().ignoreResult(), &unimplemented);
    });
    if (unimplemented) throw TooOld("removePoint");
  }

  // --- upkeep, run by the service ---

  GcReport CollectGarbage(const GcOptions& options) override {
    std::string report;
    bool unimplemented = false;
    Call("garbage collection", [&](rpc::Repository::Client& repo) {
      auto req = repo.collectGarbageRequest();
      req.setWindowS(options.window.count());
      req.setDryRun(options.dry_run);
      req.setThreads(options.threads);
      return OrUnimplemented(req.send().then([&](capnp::Response<rpc::Repository::CollectGarbageResults>&& r) {
        report = AsString(r.getReport());
      }), &unimplemented)
          .exclusiveJoin(CancelledBy(options.cancel, "garbage collection"));
    });
    if (unimplemented) throw UpkeepTooOld("collectGarbage");
    try {
      return GcReportFromJson(report);
    } catch (const Error& e) {
      throw e.WithContext(context_ + " answered a GC");
    }
  }

  SpaceReport MeasureSpace() override {
    std::string report;
    bool unimplemented = false;
    Call("space accounting", [&](rpc::Repository::Client& repo) {
      return OrUnimplemented(repo.measureSpaceRequest().send().then(
                                 [&](capnp::Response<rpc::Repository::MeasureSpaceResults>&& r) {
                                   report = AsString(r.getReport());
                                 }),
                             &unimplemented);
    });
    if (unimplemented) throw UpkeepTooOld("measureSpace");
    try {
      return SpaceReportFromJson(report);
    } catch (const Error& e) {
      throw e.WithContext(context_ + " answered a space report");
    }
  }

  // Never resolves; fails kInterrupted once *cancel is true (looked at every
  // kCancelPoll), which cancels the call it is joined with. On the loop.
  kj::Promise<void> CancelledBy(const std::atomic<bool>* cancel, std::string what) const {
    if (cancel == nullptr) return kj::NEVER_DONE;
    return loop_->io->provider->getTimer().afterDelay(kCancelPoll).then(
        [this, cancel, what = std::move(what)]() mutable -> kj::Promise<void> {
          if (cancel->load()) return ToKj(Error(ErrorKind::kInterrupted, what + " interrupted"));
          return CancelledBy(cancel, std::move(what));
        });
  }

  Error UpkeepTooOld(const std::string& call) const {
    return Error(ErrorKind::kBadInput, context_ + ": the repository service is older than GC and space accounting "
                                                  "through the service (it lacks " + call + "); upgrade "
                                                  "ferry-repository, or run ferry gc / ferry space on its machine");
  }

  // A call the service does not know sets `*unimplemented`; other failures pass.
  static kj::Promise<void> OrUnimplemented(kj::Promise<void> promise, bool* unimplemented) {
    return promise.catch_([unimplemented](kj::Exception&& e) {
      if (e.getType() != kj::Exception::Type::UNIMPLEMENTED) kj::throwFatalException(kj::mv(e));
      *unimplemented = true;
    });
  }

  Error TooOld(const std::string& call) const {
    return Error(ErrorKind::kBadInput, context_ + ": the repository service is older than the restore point "
                                                  "lifecycle calls (it lacks " + call + "); upgrade ferry-repository");
  }

  // --- for the upload, the disk writer and the lease ---

  uint64_t generation() const { return generation_.load(); }
  const std::string& context() const { return context_; }

  // Runs `make(repository)` (which sends requests and returns the promise of
  // their handling) on the connection's thread and waits for it. A lost
  // connection is made again and `make` run again, so every call here must
  // be safe to repeat (they all are: see docs/repository-service.md). Other
  // failures become ferry::Error naming `what`.
  template <typename Make>
  void Call(const std::string& what, Make&& make) const {
    for (;;) {
      const uint64_t generation = generation_.load();
      try {
        loop_thread_->executor().executeSync([&]() -> kj::Promise<void> { return make(Repo()); });
        return;
      } catch (const kj::Exception& e) {
        if (!IsDisconnected(e)) throw FromKj(e, context_ + ": " + what);
        Reconnect(generation, what);
      }
    }
  }

  // Makes the connection again unless another thread already did since
  // `failed` was current; throws kRetryable once reconnect_for has passed.
  void Reconnect(uint64_t failed, const std::string& what) const {
    std::lock_guard<std::mutex> lock(reconnect_mu_);
    if (generation_.load() != failed) return;
    const auto deadline = std::chrono::steady_clock::now() + endpoint_.reconnect_for;
    LogWarning(context_ + ": connection lost (" + what + "); connecting again every " +
               FormatDuration(endpoint_.reconnect_interval) + " for up to " + FormatDuration(endpoint_.reconnect_for));
    for (unsigned attempt = 1;; ++attempt) {
      try {
        ConnectOnce();
        ++reconnects_;
        LogInfo(context_ + ": connected again (attempt " + std::to_string(attempt) + ")");
        return;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kRetryable) throw;
        if (std::chrono::steady_clock::now() + endpoint_.reconnect_interval > deadline) {
          throw Error(ErrorKind::kRetryable, context_ + ": no connection for " + FormatDuration(endpoint_.reconnect_for) +
                                                 ", giving up (" + e.what() + ")");
        }
        std::this_thread::sleep_for(endpoint_.reconnect_interval);
      }
    }
  }

  // Sends one chunk of an upload on the current connection; its reply (or
  // failure) updates the upload's state on the connection's thread.
  void SendInsert(const std::shared_ptr<UploadState>& st, const std::shared_ptr<UploadEntry>& e) {
    try {
      loop_thread_->executor().executeSync([&] {
        const uint64_t generation = loop_->generation;
        {
          std::lock_guard<std::mutex> lock(st->mu);
          e->generation = generation;
          e->lost = false;
        }
        auto req = Repo().insertRequest();
        req.setDigest(capnp::Data::Reader(e->digest.bytes.data(), 32));
        req.setEncoded(capnp::Data::Reader(e->bytes.data(), e->bytes.size()));
        std::string what = context_ + ": insert of chunk " + e->digest.Hex();
        loop_->tasks->add(req.send().then(
            [st, e, generation](capnp::Response<rpc::Repository::InsertResults>&& r) {
              std::lock_guard<std::mutex> lock(st->mu);
              if (e->generation != generation || !st->pending.erase(e->seq)) return;
              st->bytes -= e->bytes.size();
              st->digests.erase(e->digest);
              if (r.getStored()) {
                ++st->stats.stored_chunks;
                st->stats.stored_bytes += e->bytes.size();
              } else {
                ++st->stats.present_chunks;
              }
              e->bytes = {};
              st->cv.notify_all();
            },
            [st, e, generation, what](kj::Exception&& ex) {
              std::lock_guard<std::mutex> lock(st->mu);
              if (e->generation != generation) return;
              if (IsDisconnected(ex)) {
                e->lost = true;
              } else if (!st->failure) {
                st->failure = FromKj(ex, what);
              }
              st->cv.notify_all();
            }));
      });
    } catch (const kj::Exception&) {  // not connected: send it again after the reconnect
      std::lock_guard<std::mutex> lock(st->mu);
      e->lost = true;
      st->cv.notify_all();
    }
  }

  // Runs `f` on the connection's thread (to create or drop capabilities).
  template <typename F>
  void OnLoop(F&& f) const {
    loop_thread_->executor().executeSync(std::forward<F>(f));
  }
  uint64_t LoopGeneration() const { return loop_->generation; }  // on the loop only

  void AddLease(RemoteLease* lease) {
    std::lock_guard<std::mutex> lock(leases_mu_);
    leases_.insert(lease);
  }
  void RemoveLease(RemoteLease* lease) {
    std::lock_guard<std::mutex> lock(leases_mu_);
    leases_.erase(lease);
  }

  rpc::Repository::Client& Repo() const {
    KJ_IF_MAYBE(r, loop_->repo) { return *r; }
    kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "not connected"));
  }

 private:
  static std::vector<std::string> Texts(capnp::List<capnp::Text>::Reader list) {
    std::vector<std::string> out;
    for (auto t : list) out.emplace_back(t);
    return out;
  }

  RestorePointManifest CheckedManifest(const std::string& json, const std::string& id) const {
    RestorePointManifest m = ManifestFromJson(json, "manifest of restore point " + id + " in " + context_);
    if (m.id != id) {
      throw Error(ErrorKind::kCorrupt, context_ + " answered for restore point " + id + " with point " + m.id);
    }
    return m;
  }

  static std::string FormatDuration(std::chrono::milliseconds d) {
    if (d.count() % 60000 == 0) return std::to_string(d.count() / 60000) + " min";
    if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
    return std::to_string(d.count()) + " ms";
  }

  // Connects, opens the repository and stages again the points this client
  // holds leases on. kRetryable when the service cannot be reached.
  void ConnectOnce() const;

  struct Loop {  // the connection's thread only
    kj::AsyncIoContext* io = nullptr;
    kj::Own<kj::TlsContext> tls;
    kj::Own<CoordinatorConnection> conn;
    kj::Maybe<rpc::Repository::Client> repo;
    uint64_t generation = 0;  // connections made
    kj::Own<kj::TaskSet> tasks;
  };

  const RepositoryEndpoint endpoint_;
  const std::string location_, context_;
  mutable RepositoryConfig config_;   // set by the first ConnectOnce
  mutable RemoteRepositoryInfo info_;
  std::unique_ptr<Loop> loop_ = std::make_unique<Loop>();
  IgnoreTaskErrors ignore_task_errors_;
  std::unique_ptr<LoopThread> loop_thread_;  // last: stopped (and loop_ emptied) first
  mutable std::mutex reconnect_mu_;
  mutable std::atomic<uint64_t> generation_{0};
  mutable std::atomic<uint64_t> reconnects_{0};
  mutable std::mutex leases_mu_;
  std::set<RemoteLease*> leases_;
  friend class RemoteLease;
};

// A point staged through the service: holds the service's lease (so a point
// staged with expiry 0 stays while this lives) and takes it again after a
// reconnect.
class RemoteLease final : public ferry::StagingLease {
 public:
  RemoteLease(RemoteRepositoryImpl& repo, StagedPointHeader header) : repo_(repo), header_(std::move(header)) {}
  ~RemoteLease() override {
    repo_.RemoveLease(this);
    try {
      repo_.OnLoop([this] { slot_->cap = nullptr; });
    } catch (...) {
    }
  }
  const StagedPointHeader& header() const override { return header_; }
  // On the connection's thread.
  void Set(rpc::StagingLease::Client cap) { slot_->cap = kj::mv(cap); }

 private:
  RemoteRepositoryImpl& repo_;
  StagedPointHeader header_;
  std::unique_ptr<CapSlot<rpc::StagingLease::Client>> slot_ = std::make_unique<CapSlot<rpc::StagingLease::Client>>();
};

// A read lease of a committed point held by the service for this client.
class RemotePointLease final : public ferry::PointLease {
 public:
  explicit RemotePointLease(const RemoteRepositoryImpl& repo) : repo_(repo) {}
  ~RemotePointLease() override {
    try {
      repo_.OnLoop([this] { slot_->cap = nullptr; });
    } catch (...) {
    }
  }
  void Set(rpc::PointLease::Client cap) { slot_->cap = kj::mv(cap); }  // on the connection's thread

 private:
  const RemoteRepositoryImpl& repo_;
  std::unique_ptr<CapSlot<rpc::PointLease::Client>> slot_ = std::make_unique<CapSlot<rpc::PointLease::Client>>();
};

std::unique_ptr<ferry::PointLease> RemoteRepositoryImpl::Lease(const std::string& id) const {
  auto lease = std::make_unique<RemotePointLease>(*this);
  bool unimplemented = false;
  Call("leasing restore point " + id, [&](rpc::Repository::Client& repo) {
    auto req = repo.leasePointRequest();
    req.setId(id);
    return OrUnimplemented(
        req.send().then([&](capnp::Response<rpc::Repository::LeasePointResults>&& r) { lease->Set(r.getLease()); }),
        &unimplemented);
  });
  if (unimplemented) LogDebug(context_ + ": the service has no leases (older than leasePoint); reading without one");
  return lease;
}

void RemoteRepositoryImpl::ConnectOnce() const {
  const CoordinatorEndpoint where{endpoint_.address, endpoint_.tls, endpoint_.ca_file, endpoint_.server_name};
  try {
    loop_thread_->executor().executeSync([&]() -> kj::Promise<void> {
      loop_->repo = nullptr;
      loop_->conn = nullptr;
      ConnectOptions options;
      options.peer_kind = "repository service";
      return CoordinatorConnection::Connect(*loop_->io, loop_->tls.get(), where, options)
          .then([this](kj::Own<CoordinatorConnection> conn) {
            auto req = conn->bootstrap().castAs<RepositoryService>().openRequest();
            req.setProtocolVersion(REPOSITORY_PROTOCOL_VERSION);
            req.setToken(endpoint_.token);
            req.setRepository(endpoint_.repository);
            loop_->conn = kj::mv(conn);
            return req.send();
          })
          .then([this](capnp::Response<RepositoryService::OpenResults>&& r) {
            loop_->repo = r.getRepository();
            ++loop_->generation;
            if (loop_->generation == 1) {  // the service may not change them under a client
              auto info = r.getInfo();
              info_.name = info.getName();
              info_.chunk_size = info.getChunkSize();
              info_.format = info.getFormat();
              config_.id = info.getId();
              config_.chunk_size = info.getChunkSize();
              config_.zstd_level = info.getZstdLevel();
              config_.key_fingerprint = info.getKeyFingerprint();
            }
          });
    });
  } catch (const kj::Exception& e) {
    throw FromKj(e, context_);
  }
  // Points staged through the old connection keep their leases.
  std::lock_guard<std::mutex> lock(leases_mu_);
  for (RemoteLease* lease : leases_) {
    try {
      loop_thread_->executor().executeSync([&]() -> kj::Promise<void> {
        auto req = Repo().stageRequest();
        ToWire(lease->header(), req.initHeader());
        return req.send().then([lease](capnp::Response<rpc::Repository::StageResults>&& r) { lease->Set(r.getLease()); });
      });
    } catch (const kj::Exception& e) {
      throw FromKj(e, context_ + ": staging restore point " + lease->header().id + " again");
    }
  }
  generation_.store(loop_->generation);
}

std::unique_ptr<ferry::StagingLease> RemoteRepositoryImpl::Stage(StagedPointHeader header) {
  std::unique_ptr<RemoteLease> lease;
  Call("staging restore point " + header.id, [&](rpc::Repository::Client& repo) {
    auto req = repo.stageRequest();
    ToWire(header, req.initHeader());
    return req.send().then([&](capnp::Response<rpc::Repository::StageResults>&& r) {
      lease = std::make_unique<RemoteLease>(*this, FromWire(r.getHeader()));
      lease->Set(r.getLease());
    });
  });
  AddLease(lease.get());
  return lease;
}

// One disk of a staged point: the pipeline writes the index into a local
// file; Finish sends it and records the disk. Holds the disk's lock on the
// service from creation (so a second writer is refused at once), and takes
// it again after a reconnect.
class RemoteDiskWriter final : public DiskWriter {
 public:
  RemoteDiskWriter(RemoteRepositoryImpl& repo, std::string id, std::string disk)
      : repo_(repo), id_(std::move(id)), disk_(std::move(disk)) {
    repo_.Call("writing disk " + disk_ + " of restore point " + id_,
               [&](rpc::Repository::Client& r) { return Open(r); });
  }
  ~RemoteDiskWriter() override {
    try {
      repo_.OnLoop([this] { upload_->cap = nullptr; });
    } catch (...) {
    }
  }
  const std::string& index_path() const override { return file_.path(); }
  const std::string& index_file() const override { return index_file_; }

  void Finish(ferry::DiskRecord record) override {
    UniqueFd fd = OpenOrThrow(file_.path(), O_RDONLY);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) throw ErrnoError("stat of " + file_.path(), errno);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    repo_.Call("sending the index of disk " + disk_ + " of restore point " + id_, [&](rpc::Repository::Client& r) {
      kj::Promise<void> opened = (upload_->cap != nullptr && upload_generation_ == repo_.LoopGeneration())
                                     ? kj::Promise<void>(kj::READY_NOW)
                                     : Open(r);
      return opened
          .then([this, size, &fd] { return WriteIndexPieces(KJ_ASSERT_NONNULL(upload_->cap), 0, size, fd.get(), file_.path()); })
          .then([this, &record] {
            auto req = KJ_ASSERT_NONNULL(upload_->cap).finishRequest();
            ToWire(record, req.initRecord());
            // The service checks the bytes it received against what the
            // pipeline recorded: damage on the way or on this disk is caught.
            req.setIndexSha256(capnp::Data::Reader(record.index_sha256.bytes.data(), 32));
            return req.send().ignoreResult();
          });
    });
  }

 private:
  // On the connection's thread: takes the disk's lock on the service.
  kj::Promise<void> Open(rpc::Repository::Client& r) {
    auto req = r.writeDiskRequest();
    req.setId(id_);
    req.setDisk(disk_);
    const uint64_t generation = repo_.LoopGeneration();
    return req.send().then([this, generation](capnp::Response<rpc::Repository::WriteDiskResults>&& resp) {
      upload_->cap = resp.getUpload();
      upload_generation_ = generation;
      index_file_ = resp.getIndexFile();
    });
  }

  RemoteRepositoryImpl& repo_;
  const std::string id_, disk_;
  TempFile file_;
  std::string index_file_;
  std::unique_ptr<CapSlot<rpc::IndexUpload::Client>> upload_ = std::make_unique<CapSlot<rpc::IndexUpload::Client>>();
  uint64_t upload_generation_ = 0;
};

std::unique_ptr<DiskWriter> RemoteRepositoryImpl::WriteDisk(const std::string& id, const std::string& disk) {
  return std::make_unique<RemoteDiskWriter>(*this, id, disk);
}

void RemoteUpload::Add(const Digest& digest, std::span<const uint8_t> encoded) {
  std::unique_lock<std::mutex> lock(st_->mu);
  Service(lock);
  if (st_->digests.count(digest)) {  // the same data, already on its way
    ++st_->stats.present_chunks;
    return;
  }
  while (st_->bytes > 0 && st_->bytes + encoded.size() > window_) {
    st_->cv.wait_for(lock, std::chrono::milliseconds(100));
    Service(lock);
  }
  auto e = std::make_shared<UploadEntry>();
  e->seq = st_->next_seq++;
  e->digest = digest;
  e->bytes.assign(encoded.begin(), encoded.end());
  e->generation = repo_.generation();
  st_->pending[e->seq] = e;
  st_->digests.insert(digest);
  st_->bytes += encoded.size();
  st_->stats.sent_bytes += encoded.size();
  lock.unlock();
  repo_.SendInsert(st_, e);
}

ChunkUploadStats RemoteUpload::Finish() {
  std::unique_lock<std::mutex> lock(st_->mu);
  for (;;) {
    Service(lock);
    if (st_->pending.empty()) return st_->stats;
    st_->cv.wait_for(lock, std::chrono::milliseconds(100));
  }
}

// With the state locked: throws the upload's failure, else sends again every
// chunk whose connection was lost (reconnecting first if nobody has).
void RemoteUpload::Service(std::unique_lock<std::mutex>& lock) {
  if (st_->failure) throw *st_->failure;
  if (st_->resending) return;
  const uint64_t current = repo_.generation();
  std::vector<std::shared_ptr<UploadEntry>> again;
  std::optional<uint64_t> lost_on_current;
  for (auto& [seq, e] : st_->pending) {
    if (e->lost || e->generation < current) again.push_back(e);
    if (e->lost && e->generation == current) lost_on_current = current;
  }
  if (again.empty()) return;
  st_->resending = true;
  lock.unlock();
  try {
    if (lost_on_current) repo_.Reconnect(*lost_on_current, "sending chunks");
    for (auto& e : again) {
      {
        std::lock_guard<std::mutex> g(st_->mu);
        if (!st_->pending.count(e->seq)) continue;
        st_->stats.sent_bytes += e->bytes.size();
        st_->stats.resent_bytes += e->bytes.size();
      }
      repo_.SendInsert(st_, e);
    }
  } catch (const Error& error) {
    lock.lock();
    st_->resending = false;
    if (!st_->failure) st_->failure = error;
    throw;
  }
  lock.lock();
  st_->resending = false;
}

}  // namespace

// --- URLs ---

std::optional<RepositoryEndpoint> ParseRepositoryUrl(const std::string& location) {
  RepositoryEndpoint e;
  std::string rest;
  if (location.starts_with("ferry://")) {
    rest = location.substr(8);
  } else if (location.starts_with("ferry+tls://")) {
    rest = location.substr(12);
    e.tls = true;
  } else {
    return std::nullopt;
  }
  const auto slash = rest.find('/');
  const auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput, "repository address '" + location.substr(0, 300) + "': " + why +
                                           " (expected ferry://HOST:PORT/NAME or ferry+tls://HOST:PORT/NAME)");
  };
  if (slash == std::string::npos || slash + 1 == rest.size()) throw bad("no repository name");
  e.address = rest.substr(0, slash);
  e.repository = rest.substr(slash + 1);
  if (e.repository.find('/') != std::string::npos) throw bad("a repository name has no '/'");
  try {
    SplitHostPort(e.address);
  } catch (const Error& error) {
    throw bad(error.what());
  }
  return e;
}

std::string RepositoryUrl(const RepositoryEndpoint& e) {
  return std::string(e.tls ? "ferry+tls://" : "ferry://") + e.address + "/" + e.repository;
}

std::unique_ptr<RemoteRepository> RemoteRepository::Connect(const RepositoryEndpoint& endpoint) {
  return std::make_unique<RemoteRepositoryImpl>(endpoint);
}

namespace {

// The endpoint of a service URL with `access` filled in; nullopt for a directory.
std::optional<RepositoryEndpoint> EndpointFor(const std::string& location, const RepositoryAccess& access) {
  auto endpoint = ParseRepositoryUrl(location);
  if (!endpoint) return std::nullopt;
  endpoint->token = access.token;
  if (endpoint->token.empty()) {
    if (const char* t = std::getenv("FERRY_REPOSITORY_TOKEN")) endpoint->token = t;
  }
  if (endpoint->token.empty()) {
    throw Error(ErrorKind::kBadInput, "repository " + location + " needs a token (--repo-token-file FILE, or "
                                      "FERRY_REPOSITORY_TOKEN in the environment)");
  }
  endpoint->ca_file = access.ca_file;
  endpoint->server_name = access.server_name;
  endpoint->reconnect_interval = access.reconnect_interval;
  endpoint->reconnect_for = access.reconnect_for;
  return endpoint;
}

}  // namespace

void InitRepository(const std::string& location, const ferry::RepositoryConfig& config) {
  if (s3::IsObjectLocation(location)) return s3::InitObjectRepository(location, config);
  if (ParseRepositoryUrl(location)) {
    throw Error(ErrorKind::kBadInput, "a repository service's repositories are created on its host (ferry init there, "
                                      "then ferry-repository grant), not through " + location);
  }
  ferry::Repository::Init(location, config);
}

std::unique_ptr<ferry::Repository> OpenRepository(const std::string& location, const RepositoryAccess& access) {
  if (s3::IsObjectLocation(location)) return s3::OpenObjectRepository(location);
  auto endpoint = EndpointFor(location, access);
  if (!endpoint) return ferry::Repository::Open(location);
  return RemoteRepository::Connect(*endpoint);
}

GcReport CollectGarbage(const std::string& location, const RepositoryAccess& access, const GcOptions& options,
                        GcProgress* progress) {
  // A bucket: writer leases and a GC record (docs/object-storage.md, "Garbage collection").
  if (s3::IsObjectLocation(location)) return s3::CollectObjectGarbage(location, options, progress);
  auto endpoint = EndpointFor(location, access);
  if (!endpoint) return ferry::CollectGarbage(location, options, progress);
  return RemoteRepository::Connect(*endpoint)->CollectGarbage(options);
}

SpaceReport MeasureSpace(const std::string& location, const RepositoryAccess& access, GcProgress* progress) {
  if (s3::IsObjectLocation(location)) return s3::MeasureObjectSpace(location, progress);
  auto endpoint = EndpointFor(location, access);
  if (!endpoint) return ferry::MeasureSpace(location, progress);
  return RemoteRepository::Connect(*endpoint)->MeasureSpace();
}

RepositoryGrant RepositoryGrant::ForToken(const std::string& token, std::set<std::string> repositories) {
  return {TokenHash(token), std::move(repositories)};
}

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

// Per connection: no message larger than a chunk plus headroom (a larger
// frame fails the connection before its body is buffered), and at most this
// many words of calls in flight before the service stops reading from it.
constexpr uint64_t kMaxMessageWords = (kMaxEncodedChunk + (size_t{1} << 20)) / sizeof(capnp::word);
constexpr size_t kFlowLimitWords = (size_t{64} << 20) / sizeof(capnp::word);

// The bootstrap of one connection: the shared service's, telling the
// connection's gate once an open succeeded (the token was good), which lifts
// the authentication deadline and the small frame limit.
class GatedRepositoryService final : public RepositoryService::Server {
 public:
  GatedRepositoryService(RepositoryService::Client service, kj::Own<ConnectionGate> gate)
      : service_(kj::mv(service)), gate_(kj::mv(gate)) {}

  kj::Promise<void> open(OpenContext context) override {
    auto params = context.getParams();
    auto req = service_.openRequest(params.totalSize());
    req.setProtocolVersion(params.getProtocolVersion());
    req.setToken(params.getToken());
    req.setRepository(params.getRepository());
    return req.send().then([this, context](capnp::Response<RepositoryService::OpenResults>&& r) mutable {
      gate_->Authenticated();
      auto results = context.getResults();
      results.setRepository(r.getRepository());
      results.setInfo(r.getInfo());
    });
  }

 private:
  RepositoryService::Client service_;
  kj::Own<ConnectionGate> gate_;
};

ConnectionLimits RepositoryLimits(const RepositoryServer::Options& options) {
  ConnectionLimits l;
  l.what = "repository service";
  l.auth_step = "open";
  l.max_connections = options.max_connections;
  l.max_per_address = options.max_per_address;
  l.max_message_words = kMaxMessageWords;
  l.flow_limit_words = kFlowLimitWords;
  l.auth_timeout = options.handshake_timeout;
  l.idle_timeout = options.idle_timeout;
  return l;
}

}  // namespace

struct RepositoryServer::Loop {
  std::atomic<GuardedAcceptor*> acceptor{nullptr};
  std::unique_ptr<LoopThread> thread;
};

RepositoryServer::RepositoryServer(RepositoryServiceConfig config, Options options)
    : host_(ListenAddress(options.listen).host), loop_(std::make_unique<Loop>()) {
  const uint16_t want_port = ListenAddress(options.listen).port;
  auto service_config = std::make_shared<RepositoryServiceConfig>(std::move(config));
  loop_->thread = std::make_unique<LoopThread>(
      [this, want_port, options, service_config](kj::AsyncIoContext& io) -> kj::Promise<void> {
        kj::Own<kj::TlsContext> tls;
        if (!options.tls_cert.empty() || !options.tls_key.empty()) {
          tls = MakeServerTlsContext(options.tls_cert, options.tls_key);
        }
        // (A capnp Client copies only from a non-const one: std::function holds it by pointer.)
        auto service = std::make_shared<RepositoryService::Client>(
            MakeRepositoryService(std::move(*service_config)).castAs<RepositoryService>());
        auto address =
            io.provider->getNetwork().parseAddress(kj::StringPtr(host_.c_str()), want_port).wait(io.waitScope);
        kj::Own<kj::ConnectionReceiver> receiver = address->listen();
        port_ = static_cast<uint16_t>(receiver->getPort());
        auto acceptor = kj::heap<GuardedAcceptor>(
            *receiver, io.provider->getTimer(), tls.get(),
            [service](kj::Own<ConnectionGate> gate) -> capnp::Capability::Client {
              return kj::heap<GatedRepositoryService>(*service, kj::mv(gate));
            },
            RepositoryLimits(options));
        loop_->acceptor = acceptor.get();
        // Dropped innermost first: the acceptor (its connections), then what it uses.
        return acceptor->Run().attach(kj::mv(acceptor)).attach(kj::mv(receiver)).attach(kj::mv(tls));
      },
      [this] { loop_->acceptor = nullptr; }, "repository service on " + options.listen);
}

RepositoryServer::~RepositoryServer() { loop_->thread.reset(); }

std::string RepositoryServer::address() const {
  return (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
}

// --- RepositoryServiceStats ---

std::shared_ptr<RepositoryServiceStats::Repository> RepositoryServiceStats::ForRepository(const std::string& name) {
  std::lock_guard lock(mu_);
  auto& slot = repositories_[name];
  if (!slot) slot = std::make_shared<Repository>();
  return slot;
}

std::vector<std::pair<std::string, std::shared_ptr<const RepositoryServiceStats::Repository>>>
RepositoryServiceStats::Repositories() const {
  std::lock_guard lock(mu_);
  return {repositories_.begin(), repositories_.end()};
}

void RepositoryServiceStats::CountCall(bool bootstrap, uint16_t method) {
  // Ordinals from the schema: Repository has 25 methods (@0..@24), room for
  // 64; Calls() lists the methods it has a slot for.
  auto& calls = bootstrap ? bootstrap_calls_ : calls_;
  if (method < calls.size()) calls[method].fetch_add(1, std::memory_order_relaxed);
}

void RepositoryServiceStats::CountError(const kj::Exception& e) {
  // The service's failures are "kind: message" (ToKj); anything else (a
  // capnp failure of its own) is "other", the last slot.
  std::string_view description = e.getDescription().cStr();
  size_t slot = kKinds - 1;
  if (auto colon = description.find(": "); colon != std::string_view::npos) {
    if (auto kind = ParseWireErrorKind(description.substr(0, colon))) slot = static_cast<size_t>(*kind);
  }
  errors_[std::min(slot, kKinds - 1)].fetch_add(1, std::memory_order_relaxed);
}

std::vector<std::pair<std::string, uint64_t>> RepositoryServiceStats::Calls() const {
  std::vector<std::pair<std::string, uint64_t>> out;
  const auto add = [&](capnp::InterfaceSchema schema, const std::array<std::atomic<uint64_t>, kMaxMethods>& calls) {
    auto methods = schema.getMethods();
    for (unsigned i = 0; i < methods.size() && i < calls.size(); ++i) {
      out.emplace_back(methods[i].getProto().getName().cStr(), calls[i].load(std::memory_order_relaxed));
    }
  };
  add(capnp::Schema::from<RepositoryService>(), bootstrap_calls_);
  add(capnp::Schema::from<rpc::Repository>(), calls_);
  return out;
}

std::vector<std::pair<std::string, uint64_t>> RepositoryServiceStats::Errors() const {
  std::vector<std::pair<std::string, uint64_t>> out;
  for (ErrorKind k : {ErrorKind::kBadInput, ErrorKind::kNotFound, ErrorKind::kCorrupt, ErrorKind::kEnvironment,
                      ErrorKind::kRetryable, ErrorKind::kInterrupted, ErrorKind::kInternal}) {
    out.emplace_back(WireErrorKind(k), errors_[static_cast<size_t>(k)].load(std::memory_order_relaxed));
  }
  out.emplace_back("other", errors_[kKinds - 1].load(std::memory_order_relaxed));
  return out;
}

unsigned RepositoryServer::connections() const {
  GuardedAcceptor* acceptor = loop_->acceptor.load();
  return acceptor ? acceptor->connections() : 0;
}

}  // namespace ferry::rpc
