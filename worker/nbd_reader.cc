// libnbd-backed BlockReader. One handle, asynchronous reads: the pipeline
// keeps several requests in flight on it (QEMU's NBD server answers them
// out of order), and completions run on the thread that calls Poll.
//
// Over TCP the connection is TLS-PSK, required: libnbd takes the key only
// as a file, so the key goes into a 0600 file in a private 0700 directory
// for as long as the connection is being made (the handshake reads it), and
// is removed before the reader is handed out. The key appears in no message:
// descriptions name the identity, never the key.
#include <fcntl.h>
#include <libnbd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
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

// A keys file ("identity:hexkey") for libnbd's PSK API, private to this
// process and removed when this goes out of scope.
class TemporaryPskFile {
 public:
  TemporaryPskFile(const std::string& identity, const std::string& hex_key) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/ferry-psk-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw ErrnoError("creating a directory like " + pattern, errno);
    dir_ = pattern;  // mkdtemp makes it 0700
    path_ = dir_ + "/keys.psk";
    UniqueFd fd(::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) {
      int err = errno;
      ::rmdir(dir_.c_str());
      throw ErrnoError("creating " + path_, err);
    }
    std::string line = identity + ":" + hex_key + "\n";
    if (::fchmod(fd.get(), 0600) != 0 ||
        ::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      int err = errno;
      Remove();
      throw ErrnoError("writing " + path_, err);
    }
  }
  ~TemporaryPskFile() { Remove(); }
  TemporaryPskFile(const TemporaryPskFile&) = delete;
  TemporaryPskFile& operator=(const TemporaryPskFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  void Remove() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string dir_, path_;
};

class NbdReader : public BlockReader {
 public:
  explicit NbdReader(const NbdSource& source) : source_(source) {
    const bool tcp = !source.tcp_address.empty();
    const bool tls = !source.tls_psk_key.empty();
    const bool x509 = !source.tls_x509_dir.empty();
    if (tcp && x509) {
      description_ = "nbds://" + source.tcp_address + "/" + source.export_name;
    } else if (tcp && source.plaintext) {
      description_ = "nbd://" + source.tcp_address + "/" + source.export_name;
    } else if (tcp) {
      description_ = "nbds://" + source.tls_identity + "@" + source.tcp_address + "/" + source.export_name;
    } else {
      description_ = std::string(tls ? "nbds" : "nbd") + "+unix:///" + source.export_name + "?socket=" + source.unix_socket;
    }
    if (tcp && !source.unix_socket.empty()) {
      throw Error(ErrorKind::kBadInput, "NBD source " + description_ + " names both a TCP address and a unix socket");
    }
    if (static_cast<int>(tls) + static_cast<int>(x509) + static_cast<int>(source.plaintext) > 1) {
      throw Error(ErrorKind::kBadInput, "NBD source " + description_ +
                                            " names more than one of a TLS-PSK key, an x509 directory and plaintext");
    }
    if (!tcp && (x509 || source.plaintext)) {
      throw Error(ErrorKind::kBadInput, "NBD source " + description_ + ": x509 and plaintext are for TCP exports only");
    }
    if (tcp && !x509 && !source.plaintext && (!tls || source.tls_identity.empty())) {
      throw Error(ErrorKind::kBadInput, "refusing to read " + source.export_name + " at " + source.tcp_address +
                                            " over TCP without TLS credentials (tls_identity, tls_psk_key, or "
                                            "tls_x509_dir) or an explicit plaintext");
    }
    if (tls) CheckTlsPsk(source.tls_identity, source.tls_psk_key);
    std::pair<std::string, std::string> host_port;
    if (tcp) host_port = SplitNbdTcpAddress(source.tcp_address);

    handle_ = nbd_create();
    if (!handle_) throw Error(ErrorKind::kEnvironment, "libnbd: " + LibnbdError());
    dirty_context_ = source.dirty_bitmap.empty() ? "" : "qemu:dirty-bitmap:" + source.dirty_bitmap;
    bool failed = (!dirty_context_.empty() && nbd_add_meta_context(handle_, dirty_context_.c_str()) == -1) ||
                  nbd_add_meta_context(handle_, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
                  nbd_set_export_name(handle_, source.export_name.c_str()) == -1;
    if (!failed && tls) {
      std::unique_ptr<TemporaryPskFile> psk;
      try {
        psk = std::make_unique<TemporaryPskFile>(source.tls_identity, source.tls_psk_key);
      } catch (...) {
        nbd_close(handle_);
        throw;
      }
      // Required, not "allow": a server without TLS (or a man in the
      // middle offering none) must not get the reads.
      failed = nbd_set_tls(handle_, LIBNBD_TLS_REQUIRE) == -1 ||
               nbd_set_tls_username(handle_, source.tls_identity.c_str()) == -1 ||
               nbd_set_tls_psk_file(handle_, psk->path().c_str()) == -1 || Connect(host_port);
    } else if (!failed && x509) {
      // The host's certificate is checked against its name (libnbd verifies
      // the peer by default); required, as for PSK.
      failed = nbd_set_tls(handle_, LIBNBD_TLS_REQUIRE) == -1 ||
               nbd_set_tls_certificates(handle_, source.tls_x509_dir.c_str()) == -1 || Connect(host_port);
    } else if (!failed) {
      failed = Connect(host_port);
    }
    if (failed) {
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

  // True if connecting failed (libnbd's error is set).
  bool Connect(const std::pair<std::string, std::string>& host_port) {
    if (!source_.tcp_address.empty()) {
      return nbd_connect_tcp(handle_, host_port.first.c_str(), host_port.second.c_str()) == -1;
    }
    return nbd_connect_unix(handle_, source_.unix_socket.c_str()) == -1;
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

std::pair<std::string, std::string> SplitNbdTcpAddress(const std::string& address) {
  auto bad = [&](const std::string& why) -> std::pair<std::string, std::string> {
    throw Error(ErrorKind::kBadInput, "NBD address '" + address + "': " + why);
  };
  std::string host, port;
  if (address.starts_with("[")) {
    size_t close = address.find(']');
    if (close == std::string::npos || address.compare(close + 1, 1, ":") != 0) {
      return bad("expected [IPv6 address]:port");
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) return bad("expected host:port");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.find(':') != std::string::npos) return bad("an IPv6 address needs brackets: [address]:port");
  }
  if (host.empty()) return bad("no host");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) < 1 || std::stoi(port) > 65535) {
    return bad("the port must be a number from 1 to 65535");
  }
  return {host, port};
}

std::string JoinNbdTcpAddress(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

void CheckTlsPsk(const std::string& identity, const std::string& hex_key) {
  if (identity.empty() || identity.size() > 128) {
    throw Error(ErrorKind::kBadInput, "TLS-PSK identity must have 1 to 128 characters");
  }
  for (unsigned char c : identity) {
    if (c == ':' || c < 0x20 || c == 0x7f) {
      throw Error(ErrorKind::kBadInput, "TLS-PSK identity '" + identity + "' holds ':' or a control character");
    }
  }
  // The key is never quoted: a bad one is described, not shown.
  if (hex_key.empty() || hex_key.size() % 2 != 0 || hex_key.size() > 256 ||
      hex_key.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
    throw Error(ErrorKind::kBadInput, "TLS-PSK key of identity '" + identity +
                                          "' is not an even number (2 to 256) of hex digits");
  }
}

}  // namespace ferry::worker
