#include "ferry/worker/disk_restore.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <libnbd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/subprocess.h"

namespace ferry::worker {

namespace {

constexpr size_t kZeroBlock = 4096;

// Where restored bytes go. Write() is called from several threads.
class ImageWriter {
 public:
  virtual ~ImageWriter() = default;
  // `worker` is the calling thread's number, from 0.
  virtual void Write(unsigned worker, const uint8_t* data, size_t length, uint64_t offset) = 0;
  // Makes everything written durable.
  virtual void Finish() = 0;
};

class RawImageWriter : public ImageWriter {
 public:
  RawImageWriter(const std::string& path, uint64_t size) : path_(path) {
    fd_ = OpenOrThrow(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
      throw ErrnoError("sizing " + path, errno);
    }
  }
  void Write(unsigned, const uint8_t* data, size_t length, uint64_t offset) override {
    PwriteAll(fd_.get(), data, length, offset, path_);
  }
  void Finish() override { FsyncOrThrow(fd_.get(), path_); }

 private:
  std::string path_;
  UniqueFd fd_;
};

// qcow2 through a private qemu-nbd: creating and allocating clusters is
// qemu's business, so the image is exactly what qemu-img would make.
class Qcow2ImageWriter : public ImageWriter {
 public:
  Qcow2ImageWriter(const std::string& path, uint64_t size, unsigned connections) : path_(path) {
    RunProgram({"qemu-img", "create", "-q", "-f", "qcow2", path, std::to_string(size)});
    socket_ = path + ".nbd";
    log_ = path + ".log";
    server_ = ChildProcess::Spawn({"qemu-nbd", "--format=qcow2", "--socket=" + socket_,
                                   "--shared=" + std::to_string(connections), "--cache=writeback",
                                   path},
                                  log_);
    for (unsigned i = 0; i < connections; ++i) handles_.push_back(Connect());
  }
  ~Qcow2ImageWriter() override {
    for (nbd_handle* h : handles_) nbd_close(h);
    server_.Terminate();
    ::unlink(socket_.c_str());
    ::unlink(log_.c_str());
  }

  void Write(unsigned worker, const uint8_t* data, size_t length, uint64_t offset) override {
    // One connection per thread: a libnbd handle serialises its callers.
    nbd_handle* h = handles_[worker % handles_.size()];
    if (nbd_pwrite(h, data, length, offset, 0) == -1) {
      throw Error(ErrorKind::kEnvironment, "writing " + path_ + " at offset " +
                                               std::to_string(offset) + ": " + nbd_get_error());
    }
  }

  void Finish() override {
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
  }

 private:
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
  std::string socket_;
  std::string log_;
  ChildProcess server_;
  std::vector<nbd_handle*> handles_;
};

// Writes the non-zero 4 KiB runs of a chunk.
void WriteSparse(ImageWriter& out, unsigned worker, const uint8_t* data, size_t length, uint64_t offset,
                 uint64_t* written) {
  size_t i = 0;
  while (i < length) {
    size_t block = std::min(kZeroBlock, length - i);
    if (IsAllZero(data + i, block)) {
      i += block;
      continue;
    }
    size_t run_end = i + block;
    while (run_end < length) {
      size_t b = std::min(kZeroBlock, length - run_end);
      if (IsAllZero(data + run_end, b)) break;
      run_end += b;
    }
    out.Write(worker, data + i, run_end - i, offset + i);
    *written += run_end - i;
    i = run_end;
  }
}

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
  RestorePointManifest manifest = repo.points().Load(point_id);
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

  const unsigned threads =
      options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  // Absolute: qemu-nbd wants an absolute socket path, derived from this one.
  const std::string partial =
      std::filesystem::absolute(target).string() + ".ferry-partial-" + std::to_string(::getpid());
  DiskRestoreResult result;
  result.size = disk->size;
  if (progress) progress->bytes_total = disk->size;
  try {
    std::unique_ptr<ImageWriter> out;
    if (format == ImageFormat::kRaw) {
      out = std::make_unique<RawImageWriter>(partial, disk->size);
    } else {
      out = std::make_unique<Qcow2ImageWriter>(partial, disk->size, threads);
    }
    std::atomic<uint64_t> next{0}, written{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mu;
    auto work = [&](unsigned worker) {
      ChunkDecoder decoder;
      std::vector<uint8_t> encoded, plain;
      uint64_t my_written = 0;
      try {
        for (uint64_t i; !failed && (i = next++) < index.chunk_count();) {
          if (options.cancel && options.cancel->load()) {
            throw Error(ErrorKind::kInterrupted, "restore of " + disk_name + " interrupted");
          }
          Digest d = index.At(i);
          uint32_t length = index.ChunkLength(i);
          if (!d.IsZeroMarker()) {
            try {
              // A damaged chunk is quarantined: the next backup stores it again.
              FetchChunk(repo.chunk_reader(), decoder, d, length, &encoded, &plain);
            } catch (const Error& e) {
              throw e.WithContext("restore point " + point_id + " disk " + disk_name + " chunk " +
                                  std::to_string(i) + " (offset " + std::to_string(i * index.chunk_size()) + ")");
            }
            WriteSparse(*out, worker, plain.data(), plain.size(), i * index.chunk_size(), &my_written);
          }
          if (progress) progress->bytes_done += length;
        }
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
