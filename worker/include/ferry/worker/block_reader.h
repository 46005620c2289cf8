// The source side of a backup: a disk image to read, with its allocation map.
//
// Two kinds of source exist (docs/architecture.md): an NBD export of a
// point-in-time view (QEMU fleecing, libvirt pull-mode backup) and a local
// block device or file (e.g. a disk attached to the worker from a Nutanix
// recovery point). Both give the pipeline the same three things: size,
// which ranges hold data, and asynchronous reads.
#pragma once

#include <cstdint>
#include <functional>
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ferry::worker {

struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool data = true;  // false: a hole or known zeros; reads as zeros
};

class BlockReader {
 public:
  virtual ~BlockReader() = default;

  virtual uint64_t size() const = 0;
  // A human-readable name for messages ("nbd+unix:///virtio0?socket=...").
  virtual std::string description() const = 0;

  // Extents starting at `offset`, covering at least the first byte and at
  // most `length` bytes, in order and without gaps. Sources that cannot tell
  // return one data extent.
  virtual std::vector<Extent> MapAllocation(uint64_t offset, uint64_t length) = 0;

  // Whether MapDirty answers from real change tracking.
  virtual bool has_dirty_map() const { return false; }
  // Changed-block map, like MapAllocation: `data` true means changed since
  // the tracking began. Without tracking: one changed extent.
  virtual std::vector<Extent> MapDirty(uint64_t offset, uint64_t length) {
    return {{offset, std::min(length, size() - offset), true}};
  }

  // Starts reading `length` bytes at `offset` into `buffer`; `done` runs (on
  // the thread calling Poll) when the read ends, with 0 or an errno value.
  virtual void SubmitRead(void* buffer, uint64_t offset, uint32_t length,
                          std::function<void(int error)> done) = 0;
  // Reads not yet completed.
  virtual size_t in_flight() const = 0;
  // Waits until at least one read completes (or up to `timeout_ms`) and runs
  // the callbacks of completed reads.
  virtual void Poll(int timeout_ms) = 0;
};

// Where an NBD export is and how to get in. Either a unix socket (the
// snapshot's own host) or a TCP address (any host), the second always with
// TLS-PSK: a session's exports are served under one identity and a fresh
// random key, so only a holder of that session's read plan can read them
// (docs/worker-protocol.md, "Read plans").
struct NbdSource {
  std::string unix_socket;  // the server's socket; "" when tcp_address is set
  std::string export_name;
  // A dirty bitmap the export publishes (qemu:dirty-bitmap:<name>); empty
  // for none. Opening fails if the export does not offer it.
  std::string dirty_bitmap;
  // Members below have initializers so that the unix form can still be
  // written {socket, export, bitmap}.
  // "host:port" ("[v6 literal]:port" for IPv6); "" for a unix socket.
  std::string tcp_address{};
  // TLS-PSK credentials: the PSK identity ("ferry-<session>") and the key in
  // hex. A secret: never put tls_psk_key into a message or a log.
  std::string tls_identity{};
  std::string tls_psk_key{};
  // TCP without a session key: libvirt's pull-mode exports of a host this
  // worker reaches remotely (docs/worker.md, "Remote libvirt"), whose TLS is
  // the host's x509 setup (qemu.conf backup_tls_x509_cert_dir). Exactly one
  // of: the PSK above, tls_x509_dir (this worker's ca-cert.pem, and
  // client-cert.pem / client-key.pem when the host verifies clients: QEMU's
  // and libnbd's layout; the server's certificate must name the host), or
  // plaintext (no TLS: only when the operator chose it, on a trusted network).
  std::string tls_x509_dir{};
  bool plaintext{false};
};

// libnbd client asking base:allocation. A TCP source must carry TLS-PSK
// credentials or an x509 directory, or say plaintext (kBadInput otherwise);
// with TLS it is required: a server that does not offer it, or refuses the
// key or certificate, fails the connection. Throws
// kNotFound / kRetryable / kBadInput; messages never hold the key.
std::unique_ptr<BlockReader> OpenNbdReader(const NbdSource& source);

// "host:port", "[v6]:port" -> {host, port}; kBadInput if malformed (no
// port, port not 1-65535). The host comes back without brackets.
std::pair<std::string, std::string> SplitNbdTcpAddress(const std::string& address);
// host, port -> "host:port", bracketing an IPv6 literal.
std::string JoinNbdTcpAddress(const std::string& host, uint16_t port);

// A PSK identity and key fit for a keys file ("identity:hexkey" lines, the
// format of GnuTLS, QEMU's tls-creds-psk and libnbd): identity 1-128
// characters without ':' or control characters, key an even number (2-256)
// of hex digits. kBadInput naming what is wrong, never the key.
void CheckTlsPsk(const std::string& identity, const std::string& hex_key);

// A local file or block device; holes from SEEK_DATA/SEEK_HOLE.
std::unique_ptr<BlockReader> OpenFileReader(const std::string& path);

}  // namespace ferry::worker
