// libnbd-backed BlockReader. One handle, asynchronous reads: the pipeline
// keeps several requests in flight on it (QEMU's NBD server answers them
// out of order), and completions run on the thread that calls Poll.
#include <libnbd.h>

#include <cerrno>

#include "ferry/common/error.h"
#include "ferry/worker/block_reader.h"

namespace ferry::worker {

namespace {

// base:allocation flag (NBD protocol): the range reads as zeros.
constexpr uint32_t kNbdStateZero = 2;
// Block status requests are 32-bit; ask in large windows to keep the number
// of round trips on huge disks small.
constexpr uint64_t kMaxStatusWindow = 1ull << 31;

std::string LibnbdError() {
  const char* e = nbd_get_error();
  return e ? e : "unknown libnbd error";
}

class NbdReader : public BlockReader {
 public:
  explicit NbdReader(const NbdSource& source) : source_(source) {
    handle_ = nbd_create();
    if (!handle_) throw Error(ErrorKind::kEnvironment, "libnbd: " + LibnbdError());
    description_ = "nbd+unix:///" + source.export_name + "?socket=" + source.unix_socket;
    dirty_context_ = source.dirty_bitmap.empty() ? "" : "qemu:dirty-bitmap:" + source.dirty_bitmap;
    if ((!dirty_context_.empty() && nbd_add_meta_context(handle_, dirty_context_.c_str()) == -1) ||
        nbd_add_meta_context(handle_, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
        nbd_set_export_name(handle_, source.export_name.c_str()) == -1 ||
        nbd_connect_unix(handle_, source.unix_socket.c_str()) == -1) {
      std::string msg = "connecting to " + description_ + ": " + LibnbdError();
      int err = nbd_get_errno();
      nbd_close(handle_);
      throw Error(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kRetryable, msg);
    }
    int64_t size = nbd_get_size(handle_);
    if (size < 0) Fail("asking the export size");
    size_ = static_cast<uint64_t>(size);
    has_allocation_ = nbd_can_meta_context(handle_, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    if (!dirty_context_.empty() && nbd_can_meta_context(handle_, dirty_context_.c_str()) != 1) {
      std::string msg = description_ + " does not publish dirty bitmap '" + source.dirty_bitmap + "'";
      nbd_close(handle_);
      throw Error(ErrorKind::kRetryable, msg);
    }
  }

  ~NbdReader() override {
    // Drain what is in flight so no callback outlives its buffer's owner.
    while (nbd_aio_in_flight(handle_) > 0 && nbd_poll(handle_, 1000) >= 0) {
    }
    nbd_shutdown(handle_, 0);
    nbd_close(handle_);
  }

  uint64_t size() const override { return size_; }
  std::string description() const override { return description_; }

  std::vector<Extent> MapAllocation(uint64_t offset, uint64_t length) override {
    if (!has_allocation_) return {{offset, std::min(length, size_ - offset), true}};
    // QEMU reports a hole that reads as zeros as HOLE|ZERO; a hole without
    // ZERO (possible on some backends) must still be read.
    return BlockStatus(LIBNBD_CONTEXT_BASE_ALLOCATION, offset, length,
                       [](uint32_t flags) { return (flags & kNbdStateZero) == 0; });
  }

  bool has_dirty_map() const override { return !dirty_context_.empty(); }

  std::vector<Extent> MapDirty(uint64_t offset, uint64_t length) override {
    if (dirty_context_.empty()) return BlockReader::MapDirty(offset, length);
    return BlockStatus(dirty_context_, offset, length, [](uint32_t flags) { return (flags & 1) != 0; });
  }

  // Extents of one metadata context from `offset`; `is_set(flags)` decides an
  // extent's `data`.
  std::vector<Extent> BlockStatus(const std::string& context, uint64_t offset, uint64_t length,
                                  bool (*is_set)(uint32_t flags)) {
    std::vector<Extent> out;
    if (length == 0) return out;
    length = std::min({length, kMaxStatusWindow, size_ - offset});
    struct Context {
      std::vector<Extent>* out;
      uint64_t end;
      const std::string* context;
      bool (*is_set)(uint32_t);
    } ctx{&out, offset + length, &context, is_set};
    auto callback = [](void* user, const char* metacontext, uint64_t off, uint32_t* entries,
                       size_t nr_entries, int* error) -> int {
      auto* c = static_cast<Context*>(user);
      if (*c->context != metacontext) return 0;
      for (size_t i = 0; i + 1 < nr_entries && off < c->end; i += 2) {
        uint64_t len = std::min<uint64_t>(entries[i], c->end - off);
        bool data = c->is_set(entries[i + 1]);
        if (!c->out->empty() && c->out->back().data == data &&
            c->out->back().offset + c->out->back().length == off) {
          c->out->back().length += len;
        } else {
          c->out->push_back({off, len, data});
        }
        off += len;
      }
      return 0;
    };
    if (nbd_block_status(handle_, length, offset,
                         (nbd_extent_callback){.callback = callback, .user_data = &ctx, .free = nullptr},
                         0) == -1) {
      Fail("asking block status at offset " + std::to_string(offset));
    }
    if (out.empty() || out.front().offset != offset) {
      throw Error(ErrorKind::kRetryable, description_ + ": block status (" + context +
                                             ") at offset " + std::to_string(offset) +
                                             " returned no extent for that offset");
    }
    return out;
  }

  void SubmitRead(void* buffer, uint64_t offset, uint32_t length,
                  std::function<void(int)> done) override {
    auto* pending = new std::function<void(int)>(std::move(done));
    auto completion = [](void* user, int* error) -> int {
      auto* fn = static_cast<std::function<void(int)>*>(user);
      (*fn)(*error);
      return 1;  // retire the command
    };
    auto free_fn = [](void* user) { delete static_cast<std::function<void(int)>*>(user); };
    if (nbd_aio_pread(handle_, buffer, length, offset,
                      (nbd_completion_callback){.callback = completion, .user_data = pending,
                                                .free = free_fn},
                      0) == -1) {
      Fail("reading " + std::to_string(length) + " bytes at offset " + std::to_string(offset));
    }
  }

  size_t in_flight() const override {
    int n = nbd_aio_in_flight(handle_);
    return n < 0 ? 0 : static_cast<size_t>(n);
  }

  void Poll(int timeout_ms) override {
    if (nbd_poll(handle_, timeout_ms) == -1) Fail("waiting for replies");
  }

 private:
  [[noreturn]] void Fail(const std::string& what) {
    throw Error(ErrorKind::kRetryable, description_ + ": " + what + ": " + LibnbdError());
  }

  NbdSource source_;
  std::string description_;
  nbd_handle* handle_ = nullptr;
  uint64_t size_ = 0;
  bool has_allocation_ = false;
  std::string dirty_context_;
};

}  // namespace

std::unique_ptr<BlockReader> OpenNbdReader(const NbdSource& source) {
  return std::make_unique<NbdReader>(source);
}

}  // namespace ferry::worker
