// QmpClient: a client for the QEMU Machine Protocol (QMP) monitor of one VM.
//
// Design:
//  - One background thread runs a private boost::asio::io_context. It owns the
//    socket: it connects, runs a continuous async read loop that splits the
//    byte stream into newline-delimited JSON messages (QEMU ends them with
//    "\r\n"), and performs every write. No other thread touches the socket.
//  - Execute() may be called from any number of threads. Each command gets a
//    unique numeric "id"; the caller registers a promise for that id under
//    a mutex, posts the encoded line to the io thread and waits on the future
//    with its timeout. The read loop fulfils the promise whose id the reply
//    echoes, so replies may arrive in any order and events may be interleaved.
//  - Asynchronous events are appended to a bounded queue under the same
//    mutex and signalled through a condition variable. Every event read
//    after the greeting is queued, so one that arrives before WaitEvent() is
//    called is not lost.
//  - When the connection drops, every pending command fails with kRetryable
//    and later calls fail fast. The destructor closes the socket on the io
//    thread and joins it.
//
// Error mapping (ferry::ErrorKind):
//  - cannot connect: no such socket / connection refused => kNotFound (the
//    VM's monitor is not there); other OS errors => kEnvironment; connect
//    timeout => kRetryable. Malformed address => kBadInput.
//  - the peer sends something other than a {"QMP": ...} greeting =>
//    kBadInput "<address> is not a QMP socket: ...".
//  - no greeting in time => kRetryable: a monitor serves one client at a
//    time and greets a second one only when the first has left.
//  - connection closed or no reply within the timeout => kRetryable, naming
//    the command and the address.
//  - an {"error": ...} reply => QmpError (see QmpError::KindForClass).
#pragma once

#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/common/error.h"

namespace ferry::worker {

// The error reply of a QMP command: {"error": {"class": C, "desc": D}}.
// what() is "QMP command '<command>' failed: <desc> (<class>)".
class QmpError : public ferry::Error {
 public:
  QmpError(std::string command, std::string error_class,
           std::string description);

  const std::string& command() const { return command_; }
  // QMP error class, e.g. "GenericError", "CommandNotFound".
  const std::string& error_class() const { return error_class_; }
  const std::string& description() const { return description_; }

  // How a QMP error class maps to an ErrorKind:
  //   DeviceNotFound  => kNotFound     (a named device/node/job is absent)
  //   CommandNotFound => kEnvironment  (this QEMU build lacks the command)
  //   KVMMissingCap   => kEnvironment  (the host lacks a KVM capability)
  //   GenericError, DeviceNotActive and anything unknown => kBadInput (QEMU
  //   rejected the request as given).
  static ErrorKind KindForClass(std::string_view error_class);
  // The kind a QmpError gets: KindForClass, except that a GenericError
  // saying a node or device "is busy" / "is in use" (another block job or
  // export holds it) => kRetryable.
  static ErrorKind KindFor(std::string_view error_class,
                           std::string_view description);

 private:
  std::string command_;
  std::string error_class_;
  std::string description_;
};

// The peer closed the connection before a QMP greeting (kBadInput): not a
// monitor, or, through a forwarder (SSH) that connects on the worker's
// behalf, a monitor busy with another client.
class QmpNoGreeting : public ferry::Error {
 public:
  using ferry::Error::Error;
};

struct QemuVersion {
  int major = 0;
  int minor = 0;
  int micro = 0;
};

struct QmpEvent {
  std::string name;               // e.g. "BLOCK_JOB_COMPLETED"
  boost::json::object data;       // empty when the event carries no data
  std::int64_t timestamp_us = 0;  // QEMU's wall-clock timestamp, microseconds
};

class QmpClient {
 public:
  // `address` is "unix:/path", a bare path containing '/', "tcp:HOST:PORT" or
  // "HOST:PORT" ("[::1]:4444" for IPv6). `timeout` bounds connecting, the
  // greeting and capability negotiation together.
  static std::unique_ptr<QmpClient> Connect(
      const std::string& address,
      std::chrono::milliseconds timeout = std::chrono::seconds(10));

  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;
  ~QmpClient();

  // The QEMU version announced in the greeting.
  const QemuVersion& version() const;
  const std::string& address() const;
  // The QEMU process on the other end of a unix socket (SO_PEERCRED); -1
  // over TCP.
  int peer_pid() const;

  // Sends {"execute": command, "arguments": arguments, "id": N} and returns
  // the reply's "return" value. Throws QmpError on an error reply and
  // ferry::Error(kRetryable) if the connection closes or no reply arrives
  // within `timeout` (a late reply is then discarded).
  boost::json::value Execute(
      std::string_view command, boost::json::object arguments = {},
      std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // Waits for an event called `name` for which `match(data)` is true (an
  // empty `match` accepts any), removes it from the queue and returns it.
  // Queued events are searched first, oldest first. Returns nullopt on
  // timeout. Throws ferry::Error(kRetryable) if the connection closes and no
  // queued event matches. `match` runs with the event queue locked, so it
  // must not call back into this client.
  std::optional<QmpEvent> WaitEvent(
      std::string_view name,
      std::function<bool(const boost::json::object& data)> match,
      std::chrono::milliseconds timeout);

  // Removes and returns all queued events, oldest first.
  std::vector<QmpEvent> TakeEvents();
  // Returns a copy of the queued events without removing them.
  std::vector<QmpEvent> PeekEvents() const;

  // Runs an HMP command through "human-monitor-command"; returns its output.
  std::string HumanMonitorCommand(const std::string& command_line);

  // At most this many events are queued; beyond it the oldest are dropped so
  // an unattended client cannot grow without bound.
  static constexpr std::size_t kMaxQueuedEvents = 4096;

 private:
  class Impl;
  explicit QmpClient(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::worker
