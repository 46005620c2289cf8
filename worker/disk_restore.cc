#include "ferry/worker/disk_restore.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <libnbd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ferry/common/checksum.h"
#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/subprocess.h"

namespace ferry::worker {

namespace {

// Zero runs shorter than this are written, not skipped: the raw file's
// block size, and qcow2's default cluster size (a partly written cluster is
// allocated whole, so finer skipping only splits requests).
constexpr size_t kRawZeroBlock = 4096;
constexpr size_t kQcow2ZeroBlock = 64 * 1024;
// O_DIRECT needs buffer, offset and length aligned; 4 KiB satisfies every
// block device we meet (512-byte and 4Kn).
constexpr size_t kDirectAlign = 4096;

// Where restored bytes go. Each worker thread has its own number (from 0)
// and rotates through buffers() buffers: a buffer passed to Write() must stay
// unchanged until the worker calls Reuse() on it (asynchronous writers read
// it later).
class ImageWriter {
 public:
  virtual ~ImageWriter() = default;
  virtual unsigned buffers() const { return 1; }
  virtual size_t zero_block() const = 0;
  // Waits until the writes from `buffer` are done with it.
  virtual void Reuse(unsigned /*worker*/, unsigned /*buffer*/) {}
  virtual void Write(unsigned worker, unsigned buffer, const uint8_t* data, size_t length,
                     uint64_t offset) = 0;
  // Called before the workers start, for each range that will get data.
  virtual void Reserve(uint64_t /*offset*/, uint64_t /*length*/) {}
  // A zero block inside such a range: it must read as zeros, and stay a hole.
  virtual void Skip(unsigned /*worker*/, uint64_t /*offset*/, size_t /*length*/) {}
  // Reads back `length` bytes at `offset` whose writes are done (Reuse()d).
  virtual void ReadBack(unsigned worker, uint8_t* data, size_t length, uint64_t offset) = 0;
  // Makes everything written durable.
  virtual void Finish() = 0;
};

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t, FreeDeleter>;

bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kDirectAlign == 0; }

AlignedBuffer AllocateAligned(size_t size) {
  void* p =
      std::aligned_alloc(kDirectAlign, (size + kDirectAlign - 1) / kDirectAlign * kDirectAlign);
  if (!p) throw Error(ErrorKind::kEnvironment, "out of memory for a restore buffer");
  return AlignedBuffer(static_cast<uint8_t*>(p));
}

// Raw image. Data goes with O_DIRECT when the file system takes it: written
// through the page cache, a restore on these machines spends most of its time
// copying into fresh page-cache pages and in the final fsync's writeback,
// while O_DIRECT writes move the data once, straight from our buffer, and are
// on the device when pwrite returns (the final fsync then only commits
// metadata). RestoreDisk decodes into aligned buffers; data that is not
// aligned is copied into the worker's aligned buffer first (and see
// Reserve). Pieces that cannot go direct (an unaligned tail, a file system
// without O_DIRECT) are written through the page cache, with writeback
// started at once (sync_file_range) so the final fsync stays short.
class RawImageWriter : public ImageWriter {
 public:
  RawImageWriter(const std::string& path, uint64_t size, unsigned workers, size_t chunk_size)
      : path_(path) {
    fd_ = OpenOrThrow(path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
      throw ErrnoError("sizing " + path, errno);
    }
    int direct = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    if (direct >= 0) {
      direct_fd_ = UniqueFd(direct);
      for (unsigned i = 0; i < workers; ++i) bounce_.push_back(AllocateAligned(chunk_size));
      skipped_.resize(workers);
    }
  }
  size_t zero_block() const override { return kRawZeroBlock; }

  void Write(unsigned worker, unsigned, const uint8_t* data, size_t length,
             uint64_t offset) override {
    size_t direct = length / kDirectAlign * kDirectAlign;
    if (direct_fd_.valid() && direct > 0 && offset % kDirectAlign == 0 && !direct_failed_) {
      const uint8_t* from = data;
      if (!IsAligned(data)) {
        std::memcpy(bounce_[worker].get(), data, direct);
        from = bounce_[worker].get();
      }
      ssize_t n = ::pwrite(direct_fd_.get(), from, direct, static_cast<off_t>(offset));
      if (n == static_cast<ssize_t>(direct)) {
        data += direct;
        length -= direct;
        offset += direct;
      } else if (n < 0 && errno == EINVAL) {
        // The file system refused this alignment after all: page cache from now on.
        direct_failed_ = true;
      } else if (n < 0) {
        throw ErrnoError("writing " + path_ + " at offset " + std::to_string(offset), errno);
      } else {
        // A short direct write (device full?): finish it through the page cache.
        data += n;
        length -= static_cast<size_t>(n);
        offset += static_cast<size_t>(n);
      }
    }
    if (length == 0) return;
    PwriteAll(fd_.get(), data, length, offset, path_);
    ::sync_file_range(fd_.get(), static_cast<off_t>(offset), static_cast<off_t>(length),
                      SYNC_FILE_RANGE_WRITE);
  }
  // A direct write into a hole allocates, and ext4 then holds the inode lock
  // exclusively until the write completes, so the workers' writes queue up
  // one by one; into a preallocated (unwritten) range they run side by side.
  // Allocating per write does not help (fallocate waits for all direct I/O
  // in flight), so the ranges of all non-zero chunks are reserved up front
  // and the zero blocks skipped inside them are punched out again at the end:
  // the image stays as thin as without preallocation.
  void Reserve(uint64_t offset, uint64_t length) override {
    if (!direct_fd_.valid() || !preallocate_) return;
    if (::fallocate(fd_.get(), 0, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
      if (errno != EOPNOTSUPP) {
        throw ErrnoError("allocating " + path_ + " at offset " + std::to_string(offset), errno);
      }
      preallocate_ = false;
    }
  }
  void Skip(unsigned worker, uint64_t offset, size_t length) override {
    if (!direct_fd_.valid() || !preallocate_) return;
    std::vector<std::pair<uint64_t, uint64_t>>& skipped = skipped_[worker];
    if (!skipped.empty() && skipped.back().first + skipped.back().second == offset) {
      skipped.back().second += length;
    } else {
      skipped.emplace_back(offset, length);
    }
  }

  void ReadBack(unsigned worker, uint8_t* data, size_t length, uint64_t offset) override {
    if (direct_fd_.valid() && !direct_failed_ && length % kDirectAlign == 0 &&
        offset % kDirectAlign == 0) {
      if (IsAligned(data)) {
        PreadAll(direct_fd_.get(), data, length, offset, path_);
      } else {
        PreadAll(direct_fd_.get(), bounce_[worker].get(), length, offset, path_);
        std::memcpy(data, bounce_[worker].get(), length);
      }
    } else {
      PreadAll(fd_.get(), data, length, offset, path_);
    }
  }
  void Finish() override {
    for (const auto& skipped : skipped_) {
      for (auto [offset, length] : skipped) {
        if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
          throw ErrnoError(
              "punching the zero range at offset " + std::to_string(offset) + " out of " + path_,
              errno);
        }
      }
    }
    FsyncOrThrow(fd_.get(), path_);
  }

 private:
  std::string path_;
  UniqueFd fd_;         // buffered; ftruncate, unaligned pieces, fsync
  UniqueFd direct_fd_;  // O_DIRECT, when the file system has it
  std::vector<AlignedBuffer> bounce_;
  std::atomic<bool> direct_failed_{false};
  bool preallocate_ = true;  // Reserve() runs before the workers start
  // [worker]: zero ranges inside reserved ones, merged when adjacent.
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> skipped_;
};

// qcow2 through a private qemu-nbd: creating and allocating clusters is
// qemu's business, so the image is exactly what qemu-img would make. Each
// worker has its own connection (a libnbd handle serialises its callers) and
// keeps about kInFlight bytes of writes in flight (asynchronous requests), so
// decoding the next chunk overlaps qemu's writing of the last. qemu-nbd
// writes with O_DIRECT (--cache=none) when the file system has it, for the
// same reason as RawImageWriter.
class Qcow2ImageWriter : public ImageWriter {
 public:
  // Bytes each worker keeps in flight: enough to cover qemu's write latency.
  static constexpr size_t kInFlight = 4u << 20;

  Qcow2ImageWriter(const std::string& path, uint64_t size, unsigned connections, size_t chunk_size)
      : path_(path), buffers_(static_cast<unsigned>(std::max<size_t>(2, kInFlight / chunk_size))) {
    RunProgram({"qemu-img", "create", "-q", "-f", "qcow2", path, std::to_string(size)});
    socket_ = path + ".nbd";
    log_ = path + ".log";
    // qemu-nbd allocates a buffer per request; with glibc's default
    // thresholds each 64 KiB-1 MiB buffer is fresh memory (mmap, or heap
    // grown and trimmed again), and faulting in and clearing those pages cost
    // a third of a restore's CPU here. Keep freed memory for reuse instead.
    std::vector<std::string> argv = {"env",
                                     "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:"
                                     "glibc.malloc.trim_threshold=268435456",
                                     "qemu-nbd", "--socket=" + socket_,
                                     "--shared=" + std::to_string(connections)};
    int probe = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (probe >= 0) {
      ::close(probe);
      argv.insert(argv.end(), {"--cache=none", "--aio=threads"});
    } else {
      argv.push_back("--cache=writeback");
    }
    // The preallocate filter (QEMU 6.0+) grows the file in large fallocated
    // steps ahead of qcow2's cluster allocation and cuts it back to the data
    // on close: O_DIRECT writes then land inside the file instead of
    // extending it, which ext4 serialises on the inode lock.
    std::string escaped;  // ',' is doubled in option values
    for (char c : path) {
      escaped += c;
      if (c == ',') escaped += ',';
    }
    argv.insert(argv.end(), {"--image-opts",
                             "driver=qcow2,file.driver=preallocate,file.file.driver=file,"
                             "file.file.filename=" +
                                 escaped});
    server_ = ChildProcess::Spawn(argv, log_);
    for (unsigned i = 0; i < connections; ++i) {
      handles_.push_back(Connect());
      cookies_.emplace_back(buffers_);
    }
  }
  ~Qcow2ImageWriter() override {
    for (nbd_handle* h : handles_) nbd_close(h);
    server_.Terminate();
    ::unlink(socket_.c_str());
    ::unlink(log_.c_str());
  }

  unsigned buffers() const override { return buffers_; }
  size_t zero_block() const override { return kQcow2ZeroBlock; }

  void Reuse(unsigned worker, unsigned buffer) override {
    nbd_handle* h = handles_[worker];
    for (const Pending& p : cookies_[worker][buffer]) {
      int done;
      while ((done = nbd_aio_command_completed(h, p.cookie)) == 0) {
        if (nbd_poll(h, -1) == -1) Fail("waiting for a write", p.offset);
      }
      if (done == -1) Fail("writing", p.offset);
    }
    cookies_[worker][buffer].clear();
  }

  void Write(unsigned worker, unsigned buffer, const uint8_t* data, size_t length,
             uint64_t offset) override {
    int64_t cookie = nbd_aio_pwrite(handles_[worker], data, length, offset, NBD_NULL_COMPLETION, 0);
    if (cookie == -1) Fail("writing", offset);
    cookies_[worker][buffer].push_back({static_cast<uint64_t>(cookie), offset});
  }

  void ReadBack(unsigned worker, uint8_t* data, size_t length, uint64_t offset) override {
    if (nbd_pread(handles_[worker], data, length, offset, 0) == -1) Fail("reading back", offset);
  }

  void Finish() override {
    for (unsigned w = 0; w < handles_.size(); ++w) {
      for (unsigned b = 0; b < buffers_; ++b) Reuse(w, b);
    }
    if (nbd_flush(handles_[0], 0) == -1) {
      throw Error(ErrorKind::kEnvironment, "flushing " + path_ + ": " + nbd_get_error());
    }
    for (nbd_handle* h : handles_) {
      nbd_shutdown(h, 0);
      nbd_close(h);
    }
    handles_.clear();
    int status = server_.Terminate();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM)) {
        throw Error(ErrorKind::kEnvironment, "qemu-nbd serving " + path_ + " exited abnormally");
      }
    }
    // qemu-nbd trims the preallocated tail when it closes the image, after
    // the last flush: make that size change durable too.
    UniqueFd fd = OpenOrThrow(path_, O_RDONLY);
    FsyncOrThrow(fd.get(), path_);
  }

 private:
  struct Pending {
    uint64_t cookie;
    uint64_t offset;
  };

  [[noreturn]] void Fail(const std::string& what, uint64_t offset) {
    const char* err = nbd_get_error();
    throw Error(ErrorKind::kEnvironment, what + " " + path_ + " at offset " +
                                             std::to_string(offset) + ": " + (err ? err : "?"));
  }

  nbd_handle* Connect() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      nbd_handle* h = nbd_create();
      if (!h) throw Error(ErrorKind::kEnvironment, "libnbd: out of memory");
      if (nbd_connect_unix(h, socket_.c_str()) == 0) return h;
      std::string err = nbd_get_error() ? nbd_get_error() : "";
      nbd_close(h);
      if (!server_.running() || std::chrono::steady_clock::now() > deadline) {
        std::string log;
        try {
          log = ReadWholeFile(log_);
        } catch (const Error&) {
        }
        throw Error(ErrorKind::kEnvironment,
                    "qemu-nbd for " + path_ + " did not start: " + (log.empty() ? err : log));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::string path_;
  unsigned buffers_;
  std::string socket_;
  std::string log_;
  ChildProcess server_;
  std::vector<nbd_handle*> handles_;
  // [worker][buffer]: requests in flight that read that buffer.
  std::vector<std::vector<std::vector<Pending>>> cookies_;
};

// Writes the non-zero runs of a chunk, one request per run; zero blocks of
// out.zero_block() bytes are skipped and stay holes.
void WriteSparse(ImageWriter& out, unsigned worker, unsigned buffer, const uint8_t* data,
                 size_t length, uint64_t offset, uint64_t* written) {
  const size_t zero_block = out.zero_block();
  size_t i = 0;
  while (i < length) {
    size_t block = std::min(zero_block, length - i);
    if (IsAllZero(data + i, block)) {
      out.Skip(worker, offset + i, block);
      i += block;
      continue;
    }
    size_t run_end = i + block;
    while (run_end < length) {
      size_t b = std::min(zero_block, length - run_end);
      if (IsAllZero(data + run_end, b)) break;
      run_end += b;
    }
    out.Write(worker, buffer, data + i, run_end - i, offset + i);
    *written += run_end - i;
    i = run_end;
  }
}

// Chunks that occur more than once in a disk. The first worker to claim one
// fetches and verifies it as usual; once its writes are done, later copies
// are read back from the image being restored instead of being fetched,
// decompressed and hashed again. Integrity: those bytes are the ones whose
// SHA-256 matched in this run, and the read-back is checked against the
// CRC-32C taken of them when they were verified, so damage between write and
// read-back fails the restore instead of spreading.
class DuplicateChunks {
 public:
  struct Entry {
    std::atomic<int> state{kFree};
    uint64_t offset = 0;  // of the verified copy in the image
    uint32_t crc = 0;     // CRC-32C of its plain bytes
  };
  static constexpr int kFree = 0, kClaimed = 1, kWritten = 2;
  // Larger indexes (over 2 TiB at 1 MiB chunks) skip the table: building it
  // holds 32 bytes per chunk for a moment (64 MiB at this limit).
  static constexpr uint64_t kMaxChunks = uint64_t{2} << 20;

  explicit DuplicateChunks(const FixedIndexReader& index) {
    if (index.chunk_count() > kMaxChunks) return;
    std::vector<Digest> all;
    all.reserve(index.chunk_count());
    for (uint64_t i = 0; i < index.chunk_count(); ++i) {
      Digest d = index.At(i);
      if (!d.IsZeroMarker()) all.push_back(d);
    }
    auto less = [](const Digest& a, const Digest& b) {
      return std::memcmp(&a, &b, sizeof(Digest)) < 0;
    };
    std::sort(all.begin(), all.end(), less);
    for (size_t i = 1; i < all.size(); ++i) {
      if (all[i] == all[i - 1]) entries_.try_emplace(all[i]);
    }
  }
  // nullptr for a chunk that occurs once.
  Entry* Find(const Digest& d) {
    if (entries_.empty()) return nullptr;
    auto it = entries_.find(d);
    return it == entries_.end() ? nullptr : &it->second;
  }

 private:
  std::unordered_map<Digest, Entry, DigestHash> entries_;
};

}  // namespace

ImageFormat ParseImageFormat(const std::string& name) {
  if (name == "raw") return ImageFormat::kRaw;
  if (name == "qcow2") return ImageFormat::kQcow2;
  throw Error(ErrorKind::kBadInput, "unknown image format '" + name + "' (use raw or qcow2)");
}

DiskRestoreResult RestoreDisk(Repository& repo, const std::string& point_id,
                              const std::string& disk_name, const std::string& target,
                              ImageFormat format, const DiskRestoreOptions& options,
                              DiskRestoreProgress* progress) {
  CheckKeyFits(repo.config(), options.key, repo.location());
  RestorePointManifest manifest = repo.points().Load(point_id);
  if (options.key) options.key->CheckManifest(manifest);
  // Held to the end: no prune removes the point while it is restored.
  std::unique_ptr<PointLease> lease = repo.points().Lease(point_id);
  const DiskRecord* disk = manifest.FindDisk(disk_name);
  if (!disk) {
    std::string names;
    for (const auto& d : manifest.disks) names += (names.empty() ? "" : ", ") + d.name;
    throw Error(ErrorKind::kNotFound, "restore point " + point_id + " has no disk '" + disk_name +
                                          "' (it has: " + names + ")");
  }
  if (PathExists(target)) {
    throw Error(ErrorKind::kBadInput, "restore target " + target + " already exists");
  }
  std::unique_ptr<FixedIndexReader> index_reader = repo.points().OpenIndex(point_id, *disk);
  const FixedIndexReader& index = *index_reader;
  if (index.disk_size() != disk->size) {
    throw Error(ErrorKind::kCorrupt, "index of disk " + disk_name + " in point " + point_id +
                                         " does not match the manifest's disk size");
  }

  // Four workers per core: with O_DIRECT (raw) or qemu-nbd's queue (qcow2)
  // a worker waits for the device about a third of its time; measured on the
  // reference disk, 4 per core beat 2 and 3 (bench/restore.sh). At most 16,
  // and fewer with large chunks, so that the workers' buffers (1-2 chunks
  // each, at least 4 MiB for qcow2) stay around 64-128 MiB.
  unsigned threads = options.threads;
  if (threads == 0) {
    const uint64_t cores = std::max(1u, std::thread::hardware_concurrency());
    const uint64_t by_memory = std::max<uint64_t>(2, (uint64_t{64} << 20) / index.chunk_size());
    threads = static_cast<unsigned>(std::min<uint64_t>({4 * cores, 16, by_memory}));
  }
  // Absolute: qemu-nbd wants an absolute socket path, derived from this one.
  // Unique per call, not only per process: the worker daemon runs several
  // restores at once, and two into one target must not share a partial file.
  static std::atomic<uint64_t> restores_started{0};
  const std::string partial = std::filesystem::absolute(target).string() + ".ferry-partial-" +
                              std::to_string(::getpid()) + "-" + std::to_string(++restores_started);
  DiskRestoreResult result;
  result.size = disk->size;
  if (progress) progress->bytes_total += disk->size;
  try {
    // Decoded chunks, [worker][buffer]. Declared before the writer: a writer
    // torn down on an error may still hold requests that point into them.
    // Chunk-sized and aligned, so a raw writer can write them with O_DIRECT.
    std::vector<std::vector<AlignedBuffer>> plain_buffers(threads);
    std::unique_ptr<ImageWriter> out;
    if (format == ImageFormat::kRaw) {
      out = std::make_unique<RawImageWriter>(partial, disk->size, threads, index.chunk_size());
    } else {
      out = std::make_unique<Qcow2ImageWriter>(partial, disk->size, threads, index.chunk_size());
    }
    for (uint64_t i = 0; i < index.chunk_count();) {
      if (index.At(i).IsZeroMarker()) {
        ++i;
        continue;
      }
      uint64_t end = i + 1;
      while (end < index.chunk_count() && !index.At(end).IsZeroMarker()) ++end;
      uint64_t offset = i * index.chunk_size();
      out->Reserve(offset, std::min<uint64_t>(end * index.chunk_size(), disk->size) - offset);
      i = end;
    }
    DuplicateChunks duplicates(index);
    std::atomic<uint64_t> next{0}, written{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mu;
    auto work = [&](unsigned worker) {
      ChunkDecoder decoder(options.key);
      std::vector<uint8_t> encoded;
      // Fetches chunk `i` (digest `d`, `length` bytes) into `plain`: the
      // stored bytes, their framing and CRC, decompression, the SHA-256
      // against the digest and the length against the index. The one place
      // restore reads the repository.
      // A damaged chunk is quarantined there: the next backup stores it again.
      auto fetch_chunk = [&](uint64_t i, const Digest& d, uint32_t length, uint8_t* plain) {
        try {
          FetchChunkInto(repo.chunk_reader(), decoder, d, length, &encoded, {plain, index.chunk_size()});
        } catch (const Error& e) {
          throw e.WithContext("restore point " + point_id + " disk " + disk_name + " chunk " + std::to_string(i) +
                              " (offset " + std::to_string(i * index.chunk_size()) + ")");
        }
      };
      std::vector<AlignedBuffer>& plain = plain_buffers[worker];
      for (unsigned b = 0; b < out->buffers(); ++b) {
        plain.push_back(AllocateAligned(index.chunk_size()));
      }
      // Per buffer: the duplicate chunk verified into it, published once its
      // writes are done.
      std::vector<DuplicateChunks::Entry*> claimed(out->buffers(), nullptr);
      auto reuse = [&](unsigned b) {
        out->Reuse(worker, b);
        if (claimed[b]) {
          claimed[b]->state.store(DuplicateChunks::kWritten, std::memory_order_release);
          claimed[b] = nullptr;
        }
      };
      unsigned buffer = 0;
      uint64_t my_written = 0;
      try {
        for (uint64_t i; !failed && (i = next++) < index.chunk_count();) {
          if (options.cancel && options.cancel->load()) {
            throw Error(ErrorKind::kInterrupted, "restore of " + disk_name + " interrupted");
          }
          Digest d = index.At(i);
          uint32_t length = index.ChunkLength(i);
          const uint64_t offset = i * index.chunk_size();
          if (!d.IsZeroMarker()) {
            buffer = (buffer + 1) % out->buffers();
            reuse(buffer);
            uint8_t* data = plain[buffer].get();
            DuplicateChunks::Entry* dup = duplicates.Find(d);
            int state = DuplicateChunks::kFree;
            if (dup &&
                (state = dup->state.load(std::memory_order_acquire)) == DuplicateChunks::kWritten) {
              out->ReadBack(worker, data, length, dup->offset);
              if (Crc32c(data, length) != dup->crc) {
                throw Error(ErrorKind::kEnvironment,
                            "restoring disk " + disk_name + ": chunk " + std::to_string(i) +
                                " read back from " + partial + " at offset " +
                                std::to_string(dup->offset) + " differs from what was written");
              }
            } else {
              fetch_chunk(i, d, length, data);
              if (dup && state == DuplicateChunks::kFree &&
                  dup->state.compare_exchange_strong(state, DuplicateChunks::kClaimed)) {
                dup->offset = offset;
                dup->crc = Crc32c(data, length);
                claimed[buffer] = dup;
              }
            }
            WriteSparse(*out, worker, buffer, data, length, offset, &my_written);
          }
          if (progress) progress->bytes_done += length;
        }
        for (unsigned b = 0; b < out->buffers(); ++b) reuse(b);
      } catch (...) {
        std::lock_guard lock(error_mu);
        if (!error) error = std::current_exception();
        failed = true;
      }
      written += my_written;
    };
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work, t);
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
    out->Finish();
    result.bytes_written = written;
    if (progress) progress->bytes_written += written;
  } catch (...) {
    ::unlink(partial.c_str());
    throw;
  }
  // link(2) rather than rename(2): it refuses to replace a target that
  // appeared while we were restoring.
  if (::link(partial.c_str(), target.c_str()) != 0) {
    int err = errno;
    ::unlink(partial.c_str());
    if (err == EEXIST) throw Error(ErrorKind::kBadInput, "restore target " + target + " already exists");
    throw ErrnoError("moving the restored disk into " + target, err);
  }
  ::unlink(partial.c_str());
  FsyncDirectory(std::filesystem::absolute(target).parent_path().string());
  return result;
}

}  // namespace ferry::worker
