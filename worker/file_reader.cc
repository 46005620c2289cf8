// BlockReader over a local file or block device. Reads are synchronous
// (pread) and complete at once; Poll runs the callbacks. This is the read
// path for sources that are local devices, not NBD exports.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <deque>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/worker/block_reader.h"

namespace ferry::worker {

namespace {

class FileReader : public BlockReader {
 public:
  explicit FileReader(const std::string& path) : path_(path) {
    fd_ = OpenOrThrow(path, O_RDONLY);
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) throw ErrnoError("stat of " + path, errno);
    if (S_ISBLK(st.st_mode)) {
      if (::ioctl(fd_.get(), BLKGETSIZE64, &size_) != 0) throw ErrnoError("size of " + path, errno);
    } else {
      size_ = static_cast<uint64_t>(st.st_size);
    }
  }

  uint64_t size() const override { return size_; }
  std::string description() const override { return path_; }

  std::vector<Extent> MapAllocation(uint64_t offset, uint64_t length) override {
    length = std::min(length, size_ - offset);
    uint64_t end = offset + length;
    off_t data = ::lseek(fd_.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0 && errno != ENXIO) return {{offset, length, true}};  // no hole support
    uint64_t data_start = data < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(data), end);
    if (data_start > offset) return {{offset, data_start - offset, false}};
    off_t hole = ::lseek(fd_.get(), static_cast<off_t>(offset), SEEK_HOLE);
    uint64_t hole_start = hole < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    return {{offset, hole_start - offset, true}};
  }

  void SubmitRead(void* buffer, uint64_t offset, uint32_t length,
                  std::function<void(int)> done) override {
    int error = 0;
    try {
      PreadAll(fd_.get(), buffer, length, offset, path_);
    } catch (const Error&) {
      error = errno ? errno : EIO;
    }
    completed_.push_back([done = std::move(done), error] { done(error); });
  }

  size_t in_flight() const override { return completed_.size(); }

  void Poll(int) override {
    while (!completed_.empty()) {
      auto fn = std::move(completed_.front());
      completed_.pop_front();
      fn();
    }
  }

 private:
  std::string path_;
  UniqueFd fd_;
  uint64_t size_ = 0;
  std::deque<std::function<void()>> completed_;
};

}  // namespace

std::unique_ptr<BlockReader> OpenFileReader(const std::string& path) {
  return std::make_unique<FileReader>(path);
}

}  // namespace ferry::worker
