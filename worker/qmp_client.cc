// QMP client; the design (one io thread, per-id promises, an event queue) is
// described in ferry/worker/qmp_client.h.
#include "ferry/worker/qmp_client.h"

#include <sys/socket.h>

#include <sys/un.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

namespace ferry::worker {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

// A greeting is ~200 bytes; a peer that sends more without a newline is not
// QEMU, and stopping early keeps the error prompt.
constexpr std::size_t kMaxGreetingBytes = 64 * 1024;
// Replies such as query-named-block-nodes reach hundreds of KiB on VMs with
// many disks; this only guards against a runaway peer.
constexpr std::size_t kMaxMessageBytes = 64 * 1024 * 1024;
// Boost.JSON's default depth limit (32) is too small for nested backing
// chains in block-node queries.
constexpr std::size_t kMaxJsonDepth = 4096;

struct ParsedAddress {
  bool is_unix = false;
  std::string path;  // unix
  std::string host;  // tcp
  std::string port;  // tcp
};

ParsedAddress ParseAddress(const std::string& address) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput,
                 "invalid QMP address '" + address + "': " + why +
                     " (expected unix:/path, /path, tcp:HOST:PORT or "
                     "HOST:PORT)");
  };
  ParsedAddress parsed;
  std::string_view rest = address;
  if (rest.starts_with("unix:")) {
    parsed.is_unix = true;
    parsed.path = std::string(rest.substr(5));
  } else if (rest.starts_with("tcp:")) {
    rest.remove_prefix(4);
  } else if (rest.find('/') != std::string_view::npos) {
    parsed.is_unix = true;
    parsed.path = address;
  }
  if (parsed.is_unix) {
    if (parsed.path.empty()) throw bad("empty socket path");
    if (parsed.path.size() >= sizeof(sockaddr_un::sun_path)) {
      throw bad("socket path longer than " +
                std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
    }
    return parsed;
  }
  const std::size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) throw bad("no port");
  std::string_view host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // [::1]:4444
  }
  parsed.host = std::string(host);
  parsed.port = std::string(rest.substr(colon + 1));
  if (parsed.host.empty()) throw bad("no host");
  if (parsed.port.empty()) throw bad("no port");
  return parsed;
}

// A short printable rendering of untrusted bytes for error messages.
std::string Excerpt(std::string_view bytes) {
  constexpr std::size_t kMaxShown = 80;
  std::string shown;
  for (std::size_t i = 0; i < bytes.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f) {
      shown += static_cast<char>(c);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", c);
      shown += escaped;
    }
  }
  if (bytes.size() > kMaxShown) shown += "...";
  return shown;
}

std::string_view TrimWhitespace(std::string_view text) {
  constexpr std::string_view kWhitespace = " \t\r\n";
  const std::size_t first = text.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) return {};
  const std::size_t last = text.find_last_not_of(kWhitespace);
  return text.substr(first, last - first + 1);
}

// Returns object[key] as a number, or 0 if it is absent or not a number; the
// greeting and timestamps are informational, so a missing field is not fatal.
template <typename Number>
Number NumberField(const json::object& object, std::string_view key) {
  const json::value* field = object.if_contains(key);
  if (field == nullptr) return 0;
  boost::system::error_code ec;
  const Number number = field->to_number<Number>(ec);
  return ec ? 0 : number;
}

Error ConnectError(const std::string& address,
                   const boost::system::error_code& ec) {
  const std::string detail = address + ": " + ec.message();
  if (ec == boost::system::errc::no_such_file_or_directory ||
      ec == asio::error::connection_refused ||
      ec == asio::error::host_not_found ||
      ec == asio::error::host_not_found_try_again) {
    // Usually the VM is not running (stale or absent socket).
    return Error(ErrorKind::kNotFound, "no QMP socket listening at " + detail);
  }
  if (ec == asio::error::timed_out || ec == asio::error::host_unreachable ||
      ec == asio::error::network_unreachable) {
    return Error(ErrorKind::kRetryable,
                 "cannot connect to QMP socket " + detail);
  }
  return Error(ErrorKind::kEnvironment,
               "cannot connect to QMP socket " + detail);
}

}  // namespace

QmpError::QmpError(std::string command, std::string error_class,
                   std::string description)
    : Error(KindFor(error_class, description), "QMP command '" + command +
                                           "' failed: " + description + " (" +
                                           error_class + ")"),
      command_(std::move(command)),
      error_class_(std::move(error_class)),
      description_(std::move(description)) {}

ErrorKind QmpError::KindForClass(std::string_view error_class) {
  if (error_class == "DeviceNotFound") return ErrorKind::kNotFound;
  if (error_class == "CommandNotFound" || error_class == "KVMMissingCap") {
    return ErrorKind::kEnvironment;
  }
  return ErrorKind::kBadInput;
}

ErrorKind QmpError::KindFor(std::string_view error_class,
                            std::string_view description) {
  // QEMU reports a conflict with another user of a node (a block job of
  // another backup, a mirror, an NBD export) as a GenericError; it is a
  // conflict of the moment, not a bad request.
  if (error_class == "GenericError" &&
      (description.find("is busy") != std::string_view::npos ||
       description.find("is in use") != std::string_view::npos ||
       description.find("in use by") != std::string_view::npos)) {
    return ErrorKind::kRetryable;
  }
  return KindForClass(error_class);
}

class QmpClient::Impl {
 public:
  explicit Impl(std::string address)
      : address_(std::move(address)),
        work_guard_(asio::make_work_guard(io_)),
        socket_(io_),
        resolver_(io_) {
    io_thread_ = std::thread([this] { io_.run(); });
  }

  ~Impl() {
    // Everything touching the socket runs on the io thread, so closing does
    // too; stop() then ends run() even if a resolve is still in flight.
    asio::post(io_, [this] {
      Disconnect("the client was closed");
      resolver_.cancel();
      io_.stop();
    });
    io_thread_.join();
  }

  const std::string& address() const { return address_; }

  int PeerPid() {
    struct ucred cred {};
    socklen_t len = sizeof cred;
    if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0) {
      return -1;  // TCP, or not known
    }
    return cred.pid;
  }
  const QemuVersion& version() const { return version_; }

  // Connects, reads the greeting and negotiates capabilities, all before
  // `deadline`.
  void Start(steady_clock::time_point deadline, milliseconds total_timeout) {
    const ParsedAddress parsed = ParseAddress(address_);

    auto connected =
        std::make_shared<std::promise<boost::system::error_code>>();
    std::future<boost::system::error_code> connect_result =
        connected->get_future();
    asio::post(io_,
               [this, parsed, connected] { StartConnect(parsed, connected); });
    if (connect_result.wait_until(deadline) != std::future_status::ready) {
      throw Error(ErrorKind::kRetryable,
                  "connecting to QMP socket " + address_ + " timed out after " +
                      std::to_string(total_timeout.count()) + " ms" +
                      (busy_connects_ > 0
                           ? ": the monitor is busy (it serves one client and "
                             "queues one; another ferry backup?)"
                           : ""));
    }
    if (const boost::system::error_code ec = connect_result.get()) {
      throw ConnectError(address_, ec);
    }

    std::future<void> greeted = greeting_promise_.get_future();
    if (greeted.wait_until(deadline) != std::future_status::ready) {
      // A QMP monitor serves one client at a time: a second client is
      // accepted by the kernel but greeted only once the first leaves. That
      // is far likelier than a silent non-QMP socket, and worth a retry.
      throw Error(ErrorKind::kRetryable,
                  "no QMP greeting from " + address_ + " within " +
                      std::to_string(total_timeout.count()) +
                      " ms: the monitor is busy with another client (it "
                      "serves one at a time; another ferry backup?), or it "
                      "is not a QMP socket");
    }
    greeted.get();  // rethrows a kBadInput from HandleGreeting

    const auto remaining = std::chrono::duration_cast<milliseconds>(
        deadline - steady_clock::now());
    Execute("qmp_capabilities", {}, std::max(remaining, milliseconds(1)));
  }

  json::value Execute(std::string_view command, json::object arguments,
                      milliseconds timeout) {
    const std::uint64_t id = next_id_++;
    json::object request;
    request["execute"] = command;
    if (!arguments.empty()) request["arguments"] = std::move(arguments);
    request["id"] = id;
    std::string line = json::serialize(request);
    line += '\n';

    std::future<json::object> reply_future;
    {
      std::lock_guard lock(mutex_);
      if (closed_reason_) throw ConnectionClosed(command, *closed_reason_);
      PendingCommand& pending = pending_[id];
      pending.command = std::string(command);
      reply_future = pending.reply.get_future();
    }
    asio::post(io_, [this, line = std::move(line)]() mutable {
      QueueWrite(std::move(line));
    });

    if (reply_future.wait_for(timeout) != std::future_status::ready) {
      std::lock_guard lock(mutex_);
      // If the entry is gone the reader took it and is about to fulfil the
      // promise, so fall through to get(); otherwise give up on this id.
      if (pending_.erase(id) == 1) {
        throw Error(ErrorKind::kRetryable,
                    "QMP command '" + std::string(command) +
                        "' got no reply from " + address_ + " within " +
                        std::to_string(timeout.count()) + " ms");
      }
    }
    json::object reply = reply_future.get();  // may rethrow ConnectionClosed

    if (json::value* result = reply.if_contains("return")) {
      return std::move(*result);
    }
    std::string error_class = "GenericError";
    std::string description =
        "malformed error reply " + Excerpt(json::serialize(reply));
    if (const json::value* error = reply.if_contains("error");
        error != nullptr && error->is_object()) {
      const json::object& error_object = error->get_object();
      if (const json::value* c = error_object.if_contains("class");
          c != nullptr && c->is_string()) {
        error_class = std::string(c->get_string());
      }
      if (const json::value* d = error_object.if_contains("desc");
          d != nullptr && d->is_string()) {
        description = std::string(d->get_string());
      }
    }
    throw QmpError(std::string(command), std::move(error_class),
                   std::move(description));
  }

  std::optional<QmpEvent> WaitEvent(
      std::string_view name,
      const std::function<bool(const json::object&)>& match,
      milliseconds timeout) {
    const steady_clock::time_point deadline = steady_clock::now() + timeout;
    std::unique_lock lock(mutex_);
    for (;;) {
      for (auto it = events_.begin(); it != events_.end(); ++it) {
        if (it->name == name && (!match || match(it->data))) {
          QmpEvent event = std::move(*it);
          events_.erase(it);
          return event;
        }
      }
      if (closed_reason_) {
        throw Error(ErrorKind::kRetryable,
                    "waiting for QMP event '" + std::string(name) + "' on " +
                        address_ + ": connection closed (" + *closed_reason_ +
                        ")");
      }
      if (steady_clock::now() >= deadline) return std::nullopt;
      events_changed_.wait_until(lock, deadline);
    }
  }

  std::vector<QmpEvent> TakeEvents() {
    std::lock_guard lock(mutex_);
    std::vector<QmpEvent> taken(std::make_move_iterator(events_.begin()),
                                std::make_move_iterator(events_.end()));
    events_.clear();
    return taken;
  }

  std::vector<QmpEvent> PeekEvents() const {
    std::lock_guard lock(mutex_);
    return {events_.begin(), events_.end()};
  }

 private:
  struct PendingCommand {
    std::string command;
    std::promise<json::object> reply;
  };

  Error ConnectionClosed(std::string_view command,
                         const std::string& reason) const {
    return Error(ErrorKind::kRetryable,
                 "QMP command '" + std::string(command) + "' failed: " +
                     "connection to " + address_ + " closed (" + reason + ")");
  }

  // --- Everything below runs on the io thread only. ---

  void StartConnect(
      const ParsedAddress& parsed,
      std::shared_ptr<std::promise<boost::system::error_code>> connected) {
    auto on_connected = [this, connected](boost::system::error_code ec) {
      if (!ec) ReadMore();
      connected->set_value(ec);
    };
    if (parsed.is_unix) {
      ConnectUnix(parsed.path, on_connected);
      return;
    }
    resolver_.async_resolve(
        parsed.host, parsed.port,
        [this, on_connected](boost::system::error_code ec,
                             asio::ip::tcp::resolver::results_type results) {
          if (ec) {
            on_connected(ec);
            return;
          }
          auto endpoints = std::make_shared<
              std::vector<asio::generic::stream_protocol::endpoint>>();
          for (const auto& entry : results)
            endpoints->emplace_back(entry.endpoint());
          asio::async_connect(
              socket_, *endpoints,
              [endpoints, on_connected](boost::system::error_code ec,
                                        const auto& /*endpoint*/) {
                on_connected(ec);
              });
        });
  }

  // A QMP monitor listens with a backlog of one: while it serves a client and
  // another waits, the kernel refuses a third connection (EAGAIN), which asio
  // reports as connected (the socket is writable, SO_ERROR 0) and whose first
  // read then fails with EINVAL. So a unix connection counts only once it has
  // a peer; until then the monitor is busy and the connection is tried again
  // every 50 ms, within Start's deadline (then kRetryable, as a busy monitor).
  void ConnectUnix(const std::string& path, std::function<void(boost::system::error_code)> done) {
    socket_.async_connect(
        asio::local::stream_protocol::endpoint(path), [this, path, done](boost::system::error_code ec) {
          if (ec || HasPeer()) {
            done(ec);
            return;
          }
          boost::system::error_code ignored;
          socket_.close(ignored);
          ++busy_connects_;
          retry_timer_.expires_after(std::chrono::milliseconds(50));
          retry_timer_.async_wait([this, path, done](boost::system::error_code timer_ec) {
            if (timer_ec || disconnected_) {
              done(timer_ec ? timer_ec : asio::error::operation_aborted);
              return;
            }
            ConnectUnix(path, done);
          });
        });
  }

  bool HasPeer() {
    sockaddr_un peer{};
    socklen_t size = sizeof peer;
    return ::getpeername(socket_.native_handle(), reinterpret_cast<sockaddr*>(&peer), &size) == 0;
  }

  void ReadMore() {
    socket_.async_read_some(asio::buffer(read_chunk_),
                            [this](boost::system::error_code ec,
                                   std::size_t bytes) { OnRead(ec, bytes); });
  }

  void OnRead(boost::system::error_code ec, std::size_t bytes) {
    if (ec) {
      Disconnect(ec == asio::error::eof ? "the peer closed the connection"
                                        : ec.message());
      return;
    }
    // Only the new bytes can hold the next newline; rescanning the whole
    // buffer would be quadratic for multi-megabyte replies.
    std::size_t scan_from = read_buffer_.size();
    read_buffer_.append(read_chunk_.data(), bytes);
    std::size_t line_start = 0;
    for (;;) {
      const std::size_t newline = read_buffer_.find('\n', scan_from);
      if (newline == std::string::npos) break;
      HandleLine(std::string_view(read_buffer_)
                     .substr(line_start, newline - line_start));
      if (disconnected_) return;
      line_start = scan_from = newline + 1;
    }
    read_buffer_.erase(0, line_start);

    if (!greeted_ && read_buffer_.size() > kMaxGreetingBytes) {
      FailGreeting("no greeting in the first " +
                   std::to_string(kMaxGreetingBytes) + " bytes, got '" +
                   Excerpt(read_buffer_) + "'");
      return;
    }
    if (read_buffer_.size() > kMaxMessageBytes) {
      Disconnect("protocol error: a message exceeds " +
                 std::to_string(kMaxMessageBytes) + " bytes");
      return;
    }
    ReadMore();
  }

  void HandleLine(std::string_view raw_line) {
    const std::string_view line = TrimWhitespace(raw_line);
    if (line.empty()) return;

    json::parse_options options;
    options.max_depth = kMaxJsonDepth;
    boost::system::error_code parse_error;
    json::value message = json::parse(line, parse_error, {}, options);
    if (parse_error || !message.is_object()) {
      if (!greeted_) {
        FailGreeting("expected a {\"QMP\": ...} greeting, got '" +
                     Excerpt(line) + "'");
      } else {
        Disconnect("protocol error: not a JSON object: '" + Excerpt(line) +
                   "'");
      }
      return;
    }
    json::object& object = message.get_object();
    if (!greeted_) {
      HandleGreeting(object, line);
    } else if (object.contains("event")) {
      HandleEvent(object);
    } else if (object.contains("return") || object.contains("error")) {
      HandleReply(std::move(object));
    }
    // Anything else is unknown to this protocol version; ignore it.
  }

  void HandleGreeting(const json::object& greeting, std::string_view line) {
    const json::value* qmp = greeting.if_contains("QMP");
    if (qmp == nullptr || !qmp->is_object()) {
      FailGreeting("expected a {\"QMP\": ...} greeting, got '" + Excerpt(line) +
                   "'");
      return;
    }
    if (const json::value* version = qmp->get_object().if_contains("version");
        version != nullptr && version->is_object()) {
      if (const json::value* qemu = version->get_object().if_contains("qemu");
          qemu != nullptr && qemu->is_object()) {
        version_.major = NumberField<int>(qemu->get_object(), "major");
        version_.minor = NumberField<int>(qemu->get_object(), "minor");
        version_.micro = NumberField<int>(qemu->get_object(), "micro");
      }
    }
    greeted_ = true;
    greeting_settled_ = true;
    greeting_promise_.set_value();
  }

  void FailGreeting(const std::string& why) {
    if (!greeting_settled_) {
      greeting_settled_ = true;
      greeting_promise_.set_exception(std::make_exception_ptr(Error(
          ErrorKind::kBadInput, address_ + " is not a QMP socket: " + why)));
    }
    Disconnect("not a QMP socket: " + why);
  }

  void HandleEvent(const json::object& message) {
    QmpEvent event;
    if (const json::value* name = message.if_contains("event");
        name != nullptr && name->is_string()) {
      event.name = std::string(name->get_string());
    }
    if (const json::value* data = message.if_contains("data");
        data != nullptr && data->is_object()) {
      event.data = data->get_object();
    }
    event.timestamp_us = 0;
    if (const json::value* timestamp = message.if_contains("timestamp");
        timestamp != nullptr && timestamp->is_object()) {
      const json::object& seconds_and_micros = timestamp->get_object();
      event.timestamp_us =
          NumberField<std::int64_t>(seconds_and_micros, "seconds") * 1'000'000 +
          NumberField<std::int64_t>(seconds_and_micros, "microseconds");
    }
    {
      std::lock_guard lock(mutex_);
      if (events_.size() >= kMaxQueuedEvents) events_.pop_front();
      events_.push_back(std::move(event));
    }
    events_changed_.notify_all();
  }

  void HandleReply(json::object reply) {
    std::optional<PendingCommand> waiter;
    {
      std::lock_guard lock(mutex_);
      auto it = pending_.end();
      if (const json::value* id = reply.if_contains("id")) {
        boost::system::error_code ec;
        const auto number = id->to_number<std::uint64_t>(ec);
        if (!ec) it = pending_.find(number);
      } else if (!pending_.empty()) {
        // QEMU omits the id only when it could not parse the request; the
        // oldest command is the best guess and beats a silent timeout.
        it = pending_.begin();
      }
      if (it == pending_.end()) return;  // its caller already timed out
      waiter.emplace(std::move(it->second));
      pending_.erase(it);
    }
    waiter->reply.set_value(std::move(reply));
  }

  void QueueWrite(std::string line) {
    if (disconnected_) return;  // the caller is failed by Disconnect()
    write_queue_.push_back(std::move(line));
    if (write_queue_.size() == 1) WriteNext();
  }

  void WriteNext() {
    asio::async_write(socket_, asio::buffer(write_queue_.front()),
                      [this](boost::system::error_code ec, std::size_t) {
                        if (ec) {
                          Disconnect("write failed: " + ec.message());
                          return;
                        }
                        write_queue_.pop_front();
                        if (!write_queue_.empty()) WriteNext();
                      });
  }

  // Closes the socket and fails everything waiting on it. Idempotent.
  void Disconnect(const std::string& reason) {
    if (disconnected_) return;
    disconnected_ = true;
    boost::system::error_code ignored;
    socket_.close(ignored);
    write_queue_.clear();
    if (!greeting_settled_) {
      greeting_settled_ = true;
      greeting_promise_.set_exception(std::make_exception_ptr(
          QmpNoGreeting(ErrorKind::kBadInput, address_ +
                                          " is not a QMP socket: the peer "
                                          "closed the connection before a "
                                          "QMP greeting (" +
                                          reason + ")")));
    }

    std::map<std::uint64_t, PendingCommand> failed;
    {
      std::lock_guard lock(mutex_);
      closed_reason_ = reason;
      failed.swap(pending_);
    }
    events_changed_.notify_all();
    for (auto& [id, pending] : failed) {
      pending.reply.set_exception(
          std::make_exception_ptr(ConnectionClosed(pending.command, reason)));
    }
  }

  const std::string address_;
  QemuVersion version_;  // written on the io thread before Start() returns

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_guard_;
  asio::generic::stream_protocol::socket socket_;
  asio::ip::tcp::resolver resolver_;
  asio::steady_timer retry_timer_{io_};
  std::atomic<int> busy_connects_{0};  // connections the monitor's full backlog refused
  std::thread io_thread_;

  // Io-thread state.
  std::array<char, 64 * 1024> read_chunk_;
  std::string read_buffer_;              // bytes after the last complete line
  std::deque<std::string> write_queue_;  // front() is being written
  bool greeted_ = false;
  bool greeting_settled_ = false;
  bool disconnected_ = false;
  std::promise<void> greeting_promise_;

  std::atomic<std::uint64_t> next_id_{1};

  // Shared between callers and the io thread.
  mutable std::mutex mutex_;
  std::condition_variable events_changed_;
  std::map<std::uint64_t, PendingCommand> pending_;  // by id, oldest first
  std::deque<QmpEvent> events_;
  std::optional<std::string> closed_reason_;  // set once disconnected
};

std::unique_ptr<QmpClient> QmpClient::Connect(const std::string& address,
                                              milliseconds timeout) {
  auto impl = std::make_unique<Impl>(address);
  impl->Start(steady_clock::now() + timeout, timeout);
  return std::unique_ptr<QmpClient>(new QmpClient(std::move(impl)));
}

QmpClient::QmpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

QmpClient::~QmpClient() = default;

const QemuVersion& QmpClient::version() const { return impl_->version(); }

const std::string& QmpClient::address() const { return impl_->address(); }

int QmpClient::peer_pid() const { return impl_->PeerPid(); }

json::value QmpClient::Execute(std::string_view command, json::object arguments,
                               milliseconds timeout) {
  return impl_->Execute(command, std::move(arguments), timeout);
}

std::optional<QmpEvent> QmpClient::WaitEvent(
    std::string_view name, std::function<bool(const json::object&)> match,
    milliseconds timeout) {
  return impl_->WaitEvent(name, match, timeout);
}

std::vector<QmpEvent> QmpClient::TakeEvents() { return impl_->TakeEvents(); }

std::vector<QmpEvent> QmpClient::PeekEvents() const {
  return impl_->PeekEvents();
}

std::string QmpClient::HumanMonitorCommand(const std::string& command_line) {
  json::value output =
      Execute("human-monitor-command", {{"command-line", command_line}});
  if (!output.is_string()) {
    throw Error(ErrorKind::kInternal, "human-monitor-command on " + address() +
                                          " returned a non-string: " +
                                          Excerpt(json::serialize(output)));
  }
  return std::string(output.get_string());
}

}  // namespace ferry::worker
