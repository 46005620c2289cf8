#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/http/client.h"
#include "ferry/http/server.h"

namespace ferry::http {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

ServerOptions Local() {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  return options;
}

std::unique_ptr<Server> StartServer(Handler handler, ServerOptions options = Local()) {
  auto server = std::make_unique<Server>(std::move(options), std::move(handler));
  server->Start();
  return server;
}

std::string Url(const Server& server, const std::string& scheme = "http") {
  return scheme + "://127.0.0.1:" + std::to_string(server.port());
}

Response Text(std::string body) {
  Response response;
  response.body = std::move(body);
  response.content_type = "text/plain";
  return response;
}

std::string Header(const Response& response, const std::string& name) {
  for (const auto& [key, value] : response.headers) {
    if (strcasecmp(key.c_str(), name.c_str()) == 0) return value;
  }
  return "<missing>";
}

// The {"error": {...}} body the server produces itself.
std::pair<std::string, std::string> ErrorOf(const Response& response) {
  boost::json::value json = boost::json::parse(response.body);
  const boost::json::object& error = json.at("error").as_object();
  return {std::string(error.at("kind").as_string()), std::string(error.at("message").as_string())};
}

template <class F>
ErrorKind KindOf(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no ferry::Error thrown";
  return ErrorKind::kInternal;
}

template <class F>
std::string MessageOf(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ferry::Error thrown";
  return "";
}

// A raw TCP connection for sending bytes no well-behaved client would send.
class RawSocket {
 public:
  explicit RawSocket(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    timeval timeout{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  }
  ~RawSocket() { ::close(fd_); }

  void Send(const std::string& bytes) {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  // Reads until `stop` appears (or, when empty, until the server closes).
  std::string Receive(const std::string& stop = "") {
    std::string received;
    char chunk[4096];
    while (stop.empty() || received.find(stop) == std::string::npos) {
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) break;
      received.append(chunk, n);
    }
    return received;
  }

 private:
  int fd_;
};

// --- Request decoding and responses ---------------------------------------

TEST(HttpServer, DecodesMethodPathQueryAndHeaders) {
  std::mutex mutex;
  Request seen;
  auto server = StartServer([&](const Request& request) {
    std::lock_guard lock(mutex);
    seen = request;
    Response response = Text("created");
    response.status = 201;
    response.headers = {{"X-Ferry-Job", "3"}, {"Content-Length", "999"}};
    return response;
  });
  Client client(Url(*server));
  Response response =
      client.Send("PUT", "/api/v1/jobs%2F3/run%20now?name=a+b&dir=%2Fvar%2Flib&flag&x=1&x=2",
                  "payload", {{"Authorization", "Bearer s3cret"}, {"Content-Type", "text/x"}});

  EXPECT_EQ(response.status, 201);
  EXPECT_EQ(response.body, "created");
  EXPECT_EQ(response.content_type, "text/plain");
  EXPECT_EQ(Header(response, "X-Ferry-Job"), "3");
  EXPECT_EQ(Header(response, "Server"), "ferry");
  EXPECT_EQ(Header(response, "Content-Length"), "7");  // the handler's bogus value is ignored

  std::lock_guard lock(mutex);
  EXPECT_EQ(seen.method, "PUT");
  EXPECT_EQ(seen.path, "/api/v1/jobs/3/run now");
  EXPECT_EQ(seen.query, (std::map<std::string, std::string>{
                            {"name", "a b"}, {"dir", "/var/lib"}, {"flag", ""}, {"x", "2"}}));
  EXPECT_EQ(seen.body, "payload");
  EXPECT_EQ(seen.content_type, "text/x");
  EXPECT_EQ(seen.authorization, "Bearer s3cret");
  EXPECT_EQ(seen.remote.rfind("127.0.0.1:", 0), 0u) << seen.remote;
}

TEST(HttpServer, EchoesBinaryBody) {
  auto server = StartServer([](const Request& request) { return Text(request.body); });
  std::string body;
  for (int i = 0; i < 300 * 1024; ++i) body.push_back(static_cast<char>(i * 7 % 256));
  Client client(Url(*server));
  Response response =
      client.Send("POST", "/echo", body, {{"Content-Type", "application/octet-stream"}});
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body.size(), body.size());
  EXPECT_TRUE(response.body == body);
}

TEST(HttpServer, DefaultsContentTypeToJsonAndAllowsEmpty204) {
  std::string content_type;
  auto server = StartServer([&](const Request& request) {
    content_type = request.content_type;
    Response response;
    response.status = 204;
    return response;
  });
  Client client(Url(*server));
  Response response = client.Send("POST", "/x", "{}");
  EXPECT_EQ(response.status, 204);
  EXPECT_EQ(response.body, "");
  EXPECT_EQ(content_type, "application/json");
}

TEST(HttpServer, DefaultHeadersGoOnEveryResponseAndTheHandlersWin) {
  ServerOptions options = Local();
  options.body_limit = 16;
  options.default_headers = {{"X-Policy", "strict"}, {"X-Other", "1"}};
  std::mutex mutex;
  std::string if_none_match;
  auto server = StartServer(
      [&](const Request& request) {
        std::lock_guard lock(mutex);
        if_none_match = request.if_none_match;
        Response response = Text("ok");
        if (request.path == "/relaxed") response.headers = {{"X-Policy", "relaxed"}};
        return response;
      },
      options);
  Client client(Url(*server));
  Response plain = client.Send("GET", "/", "", {{"If-None-Match", "W/\"abc\""}});
  EXPECT_EQ(Header(plain, "X-Policy"), "strict");
  EXPECT_EQ(Header(plain, "X-Other"), "1");
  {
    std::lock_guard lock(mutex);
    EXPECT_EQ(if_none_match, "W/\"abc\"");
  }
  Response relaxed = client.Send("GET", "/relaxed");
  EXPECT_EQ(Header(relaxed, "X-Policy"), "relaxed");
  EXPECT_EQ(Header(relaxed, "X-Other"), "1");
  int policies = 0;
  for (const auto& [name, value] : relaxed.headers) policies += strcasecmp(name.c_str(), "X-Policy") == 0;
  EXPECT_EQ(policies, 1) << "the handler's header replaces the default, it is not sent twice";
  // The server's own errors carry them too.
  Response too_large = client.Send("POST", "/", std::string(64, 'a'));
  EXPECT_EQ(too_large.status, 413);
  EXPECT_EQ(Header(too_large, "X-Policy"), "strict");
  RawSocket raw(server->port());
  raw.Send("GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string reply = raw.Receive("}}");
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
  EXPECT_NE(reply.find("X-Policy: strict"), std::string::npos) << reply;
}

TEST(HttpServer, RejectsBadPercentEncodingWithoutCallingHandler) {
  std::atomic<int> calls{0};
  auto server = StartServer([&](const Request&) {
    ++calls;
    return Text("ok");
  });
  Client client(Url(*server));
  for (const char* target : {"/jobs/%zz", "/jobs?name=%4", "/jobs/%00"}) {
    Response response = client.Send("GET", target);
    EXPECT_EQ(response.status, 400) << target;
    EXPECT_EQ(ErrorOf(response).first, "bad_input") << target;
  }
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(client.Send("GET", "/jobs").status, 200);
}

// --- Connections ----------------------------------------------------------

TEST(HttpServer, KeepAliveReusesOneConnectionAndHonoursConnectionClose) {
  auto server = StartServer([](const Request& request) { return Text(request.remote); });
  Client client(Url(*server));
  std::set<std::string> remotes;
  for (int i = 0; i < 20; ++i) remotes.insert(client.Send("GET", "/whoami").body);
  ASSERT_EQ(remotes.size(), 1u);

  Response closing = client.Send("GET", "/whoami", "", {{"Connection", "close"}});
  EXPECT_EQ(closing.body, *remotes.begin());
  EXPECT_EQ(Header(closing, "Connection"), "close");
  // The client saw the server close, so the next request needs a new connection.
  EXPECT_NE(client.Send("GET", "/whoami").body, *remotes.begin());
}

TEST(HttpServer, ClientReconnectsAfterIdleTimeout) {
  ServerOptions options = Local();
  options.idle_timeout = 1s;
  auto server = StartServer([](const Request& request) { return Text(request.remote); }, options);
  Client client(Url(*server));
  std::string first = client.Send("GET", "/").body;
  std::this_thread::sleep_for(1500ms);
  Response second = client.Send("POST", "/", "{}");
  EXPECT_EQ(second.status, 200);
  EXPECT_NE(second.body, first);
}

TEST(HttpServer, HeaderTimeoutClosesSlowSender) {
  ServerOptions options = Local();
  options.header_timeout = 1s;
  auto server = StartServer([](const Request&) { return Text("ok"); }, options);
  RawSocket raw(server->port());
  raw.Send("GET / HTTP/1.1\r\nHost: x\r\n");  // never finishes the header
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(raw.Receive(), "");  // closed without a response
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);
}

TEST(HttpServer, BodyOverLimitIs413AndHandlerNotCalled) {
  std::atomic<int> calls{0};
  ServerOptions options = Local();
  options.body_limit = 1024;
  auto server = StartServer(
      [&](const Request& request) {
        ++calls;
        return Text(std::to_string(request.body.size()));
      },
      options);
  Client client(Url(*server));
  EXPECT_EQ(client.Send("POST", "/", std::string(1024, 'a')).body, "1024");

  // Large enough that the server must read past the limit for the client to
  // see the response.
  Response response = client.Send("POST", "/", std::string(4 << 20, 'a'));
  EXPECT_EQ(response.status, 413);
  EXPECT_EQ(ErrorOf(response).first, "too_large");
  EXPECT_NE(ErrorOf(response).second.find("1024"), std::string::npos);
  EXPECT_EQ(calls, 1);

  // A chunked body has no Content-Length; the limit applies while reading.
  RawSocket raw(server->port());
  raw.Send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 3; ++i) raw.Send("200\r\n" + std::string(512, 'b') + "\r\n");
  std::string reply = raw.Receive("}}");
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
  EXPECT_EQ(calls, 1);

  EXPECT_EQ(client.Send("POST", "/", "small").body, "5");
}

TEST(HttpServer, AKeepAliveConnectionMayIdleLongerThanTheHeaderTimeout) {
  ServerOptions options = Local();
  options.header_timeout = 1s;
  options.idle_timeout = 10s;
  auto server = StartServer([](const Request&) { return Text("ok"); }, options);
  RawSocket raw(server->port());
  raw.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(raw.Receive("ok").find("200 OK"), std::string::npos);
  std::this_thread::sleep_for(1500ms);
  raw.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(raw.Receive("ok").find("200 OK"), std::string::npos);
}

// Request smuggling (RFC 9112 6.1): any transfer coding but chunked is 400
// and the connection closes; what follows is never read as a request.
TEST(HttpServer, TransferEncodingOtherThanChunkedIs400AndCloses) {
  std::atomic<int> calls{0};
  auto server = StartServer([&](const Request&) {
    ++calls;
    return Text("ok");
  });
  for (const std::string& framing : {std::string("Transfer-Encoding: gzip\r\n"),
                                     std::string("Transfer-Encoding: chunked, gzip\r\n"),
                                     std::string("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
                                     std::string("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")}) {
    RawSocket raw(server->port());
    raw.Send("POST / HTTP/1.1\r\nHost: x\r\n" + framing + "\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    std::string reply = raw.Receive();  // answered, then closed
    EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << framing << reply;
    EXPECT_EQ(reply.find("HTTP/1.1", 5), std::string::npos) << "a second response: " << reply;
  }
  EXPECT_EQ(calls, 0);
  // Chunked alone is fine.
  RawSocket raw(server->port());
  raw.Send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
  EXPECT_NE(raw.Receive("ok").find("200 OK"), std::string::npos);
  EXPECT_EQ(calls, 1);
}

TEST(HttpServer, AdmitRefusesBeforeTheBodyIsRead) {
  std::atomic<int> calls{0};
  ServerOptions options = Local();
  options.admit = [](const Request& head) -> std::optional<Response> {
    if (head.authorization == "Bearer good") return std::nullopt;
    Response r = Text("no");
    r.status = 401;
    return r;
  };
  auto server = StartServer(
      [&](const Request&) {
        ++calls;
        return Text("ok");
      },
      options);
  // A header announcing a mebibyte, and none of it sent: the refusal comes at once.
  RawSocket raw(server->port());
  auto start = std::chrono::steady_clock::now();
  raw.Send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n");
  std::string reply = raw.Receive("no");
  EXPECT_EQ(reply.rfind("HTTP/1.1 401", 0), 0u) << reply;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_EQ(calls, 0);
  Client client(Url(*server));
  EXPECT_EQ(client.Send("POST", "/x", "body", {{"Authorization", "Bearer good"}}).body, "ok");
  EXPECT_EQ(calls, 1);
}

TEST(HttpServer, ConnectionsOverTheCapsAreClosed) {
  ServerOptions options = Local();
  options.max_connections_per_address = 3;
  auto server = StartServer([](const Request&) { return Text("ok"); }, options);
  std::vector<std::unique_ptr<RawSocket>> held;
  for (int i = 0; i < 3; ++i) held.push_back(std::make_unique<RawSocket>(server->port()));
  std::this_thread::sleep_for(200ms);  // accepted and registered
  {
    RawSocket extra(server->port());
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(extra.Receive(), "");  // closed at once, unanswered
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  }
  held.pop_back();
  std::this_thread::sleep_for(200ms);
  Client client(Url(*server));
  EXPECT_EQ(client.Send("GET", "/").body, "ok");
}

TEST(HttpServer, OversizedHeaderIs431) {
  auto server = StartServer([](const Request&) { return Text("ok"); });
  Client client(Url(*server));
  Response response = client.Send("GET", "/", "", {{"X-Big", std::string(20000, 'h')}});
  EXPECT_EQ(response.status, 431);
  EXPECT_EQ(ErrorOf(response).first, "too_large");
  EXPECT_EQ(client.Send("GET", "/").status, 200);
}

TEST(HttpServer, MalformedRequestIs400AndServerKeepsServing) {
  std::atomic<int> calls{0};
  auto server = StartServer([&](const Request&) {
    ++calls;
    return Text("ok");
  });
  for (const char* garbage :
       {"THIS IS NOT HTTP\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n"}) {
    RawSocket raw(server->port());
    raw.Send(garbage);
    std::string reply = raw.Receive();  // the server answers and closes
    EXPECT_EQ(reply.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << reply;
    EXPECT_NE(reply.find("\"kind\":\"bad_input\""), std::string::npos) << reply;
    EXPECT_NE(reply.find("Server: ferry"), std::string::npos) << reply;
  }
  {
    RawSocket raw(server->port());
    raw.Send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort");  // and hangs up
  }
  EXPECT_EQ(calls, 0);
  Client client(Url(*server));
  EXPECT_EQ(client.Send("GET", "/").body, "ok");
}

TEST(HttpServer, AnswersExpectContinue) {
  auto server = StartServer([](const Request& request) { return Text(request.body); });
  RawSocket raw(server->port());
  raw.Send("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
  EXPECT_EQ(raw.Receive("\r\n\r\n"), "HTTP/1.1 100 Continue\r\n\r\n");
  raw.Send("hello");
  std::string reply = raw.Receive("hello");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << reply;
}

TEST(HttpServer, Http10ClosesAfterResponse) {
  auto server = StartServer([](const Request&) { return Text("old"); });
  RawSocket raw(server->port());
  raw.Send("GET / HTTP/1.0\r\n\r\n");
  std::string reply = raw.Receive();  // returns because the server closes
  EXPECT_EQ(reply.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << reply;
  EXPECT_NE(reply.find("Content-Length: 3\r\n"), std::string::npos) << reply;
  EXPECT_EQ(reply.substr(reply.size() - 3), "old");
}

// --- Handler failures -----------------------------------------------------

TEST(HttpServer, HandlerFailuresAre500WithoutDetail) {
  auto server = StartServer([](const Request& request) -> Response {
    if (request.path == "/throw") throw std::runtime_error("db password is hunter2");
    if (request.path == "/throw-int") throw 42;
    Response response = Text("fine");
    if (request.path == "/bad-status") response.status = 42;
    if (request.path == "/bad-header") response.headers = {{"X-Split", "a\r\nInjected: yes"}};
    return response;
  });
  Client client(Url(*server));
  for (const char* path : {"/throw", "/throw-int", "/bad-status", "/bad-header"}) {
    Response response = client.Send("GET", path);
    EXPECT_EQ(response.status, 500) << path;
    EXPECT_EQ(ErrorOf(response),
              (std::pair<std::string, std::string>{"internal", "internal server error"}))
        << path;
    EXPECT_EQ(response.body.find("hunter2"), std::string::npos);
    EXPECT_EQ(Header(response, "Injected"), "<missing>");
  }
  EXPECT_EQ(client.Send("GET", "/ok").body, "fine");
}

// --- Load -----------------------------------------------------------------

TEST(HttpServer, ConcurrentClients) {
  std::mutex mutex;
  std::set<std::string> remotes;
  ServerOptions options = Local();
  options.threads = 4;
  auto server = StartServer(
      [&](const Request& request) {
        {
          std::lock_guard lock(mutex);
          remotes.insert(request.remote);
        }
        return Text(request.path + "|" + request.query.at("i") + "|" + request.body);
      },
      options);
  constexpr int kThreads = 8;
  constexpr int kRequests = 200;
  std::atomic<int> correct{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Client client(Url(*server));
      for (int i = 0; i < kRequests; ++i) {
        std::string path = "/t" + std::to_string(t);
        std::string body = std::string(i % 50, 'x') + std::to_string(i);
        Response response = client.Send("POST", path + "?i=" + std::to_string(i), body);
        if (response.status == 200 && response.body == path + "|" + std::to_string(i) + "|" + body)
          ++correct;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(correct, kThreads * kRequests);
  std::lock_guard lock(mutex);
  EXPECT_EQ(remotes.size(), static_cast<size_t>(kThreads));  // one keep-alive connection per client
}

TEST(HttpServer, ManyOpenConnections) {
  ServerOptions options = Local();
  options.max_connections_per_address = 400;
  auto server = StartServer([](const Request&) { return Text("ok"); }, options);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 300; ++i) {
    clients.push_back(std::make_unique<Client>(Url(*server)));
    ASSERT_EQ(clients.back()->Send("GET", "/").body, "ok");
  }
  for (auto& client : clients) EXPECT_EQ(client->Send("GET", "/").body, "ok");
}

// --- Lifecycle and configuration -------------------------------------------

TEST(HttpServer, StopClosesConnectionsPromptlyAndIsIdempotent) {
  auto server = StartServer([](const Request&) { return Text("ok"); });  // 60 s idle timeout
  Client client(Url(*server));
  EXPECT_EQ(client.Send("GET", "/").body, "ok");
  RawSocket idle(server->port());  // connected, never sends
  auto start = std::chrono::steady_clock::now();
  server->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  server->Stop();
  EXPECT_EQ(idle.Receive(), "");
  EXPECT_EQ(KindOf([&] { client.Send("GET", "/"); }), ErrorKind::kRetryable);
  server.reset();
}

TEST(HttpServer, StopWaitsForRunningHandler) {
  std::atomic<bool> entered{false};
  std::atomic<bool> finished{false};
  auto server = StartServer([&](const Request&) {
    entered = true;
    std::this_thread::sleep_for(300ms);
    finished = true;
    return Text("late");
  });
  std::thread caller([&] {
    Client client(Url(*server));
    EXPECT_THROW(client.Send("GET", "/"), Error);  // the connection is shut down under it
  });
  while (!entered) std::this_thread::sleep_for(5ms);
  server->Stop();
  EXPECT_TRUE(finished);
  caller.join();
}

TEST(HttpServer, ListensOnIpv6) {
  ServerOptions options;
  options.listen = "[::1]:0";
  std::unique_ptr<Server> server;
  try {
    server = StartServer([](const Request& request) { return Text(request.remote); }, options);
  } catch (const Error& e) {
    GTEST_SKIP() << "no IPv6 loopback: " << e.what();
  }
  Client client("http://[::1]:" + std::to_string(server->port()) + "/");
  EXPECT_EQ(client.Send("GET", "/").body.rfind("[::1]:", 0), 0u);
}

TEST(HttpServer, BadListenAddressIsBadInput) {
  for (const char* listen :
       {"nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http", "1.2.3.4.5:80",
        "example.com:80", "::1:80", "[::1:80"}) {
    ServerOptions options;
    options.listen = listen;
    auto make = [&] { Server server(options, [](const Request&) { return Response{}; }); };
    std::string message = MessageOf(make);
    EXPECT_NE(message.find(listen), std::string::npos) << message;
    EXPECT_EQ(KindOf(make), ErrorKind::kBadInput) << listen;
  }
}

TEST(HttpServer, PortInUseIsEnvironment) {
  auto first = StartServer([](const Request&) { return Response{}; });
  ServerOptions options;
  options.listen = "127.0.0.1:" + std::to_string(first->port());
  Server second(options, [](const Request&) { return Response{}; });
  std::string message = MessageOf([&] { second.Start(); });
  EXPECT_NE(message.find(options.listen), std::string::npos) << message;
  Server third(options, [](const Request&) { return Response{}; });
  EXPECT_EQ(KindOf([&] { third.Start(); }), ErrorKind::kEnvironment);
}

// --- TLS ------------------------------------------------------------------

class HttpTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/ferry-http-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    MakeCert("server", "DNS:localhost,IP:127.0.0.1,IP:::1");
    MakeCert("other", "DNS:example.com");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static void MakeCert(const std::string& name, const std::string& san) {
    std::string command =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -subj /CN=" +
        name + " -addext subjectAltName=" + san + " -days 1 -keyout " + Path(name + ".key") +
        " -out " + Path(name + ".pem") + " 2>/dev/null";
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  static std::string Path(const std::string& file) { return (dir_ / file).string(); }

  static std::unique_ptr<Server> StartTls(Handler handler, const std::string& name = "server") {
    ServerOptions options = Local();
    options.tls = TlsFiles{Path(name + ".pem"), Path(name + ".key")};
    return StartServer(std::move(handler), options);
  }
  static Response Remote(const Request& request) {
    return Text(request.remote + " " + request.body);
  }

  static inline fs::path dir_;
};

TEST_F(HttpTls, HttpsWithCaFile) {
  auto server = StartTls(Remote);
  ClientOptions options;
  options.ca_file = Path("server.pem");
  Client client(Url(*server, "https"), options);
  std::string first = client.Send("POST", "/", "one").body;
  EXPECT_EQ(first.rfind("127.0.0.1:", 0), 0u) << first;
  EXPECT_EQ(first.substr(first.size() - 4), " one");
  std::string second = client.Send("POST", "/", "two").body;
  EXPECT_EQ(second.substr(0, second.size() - 4),
            first.substr(0, first.size() - 4));  // same connection

  Client by_name("https://localhost:" + std::to_string(server->port()), options);
  EXPECT_EQ(by_name.Send("GET", "/").status, 200);
}

TEST_F(HttpTls, UntrustedCertificateIsEnvironment) {
  auto server = StartTls(Remote);
  Client client(Url(*server, "https"));  // system store only
  std::string message = MessageOf([&] { client.Send("GET", "/"); });
  EXPECT_NE(message.find("certificate"), std::string::npos) << message;
  EXPECT_EQ(KindOf([&] { client.Send("GET", "/"); }), ErrorKind::kEnvironment);

  ClientOptions insecure;
  insecure.verify_tls = false;
  EXPECT_EQ(Client(Url(*server, "https"), insecure).Send("GET", "/").status, 200);
}

TEST_F(HttpTls, NameMismatchIsEnvironment) {
  auto server = StartTls(Remote, "other");  // trusted, but issued for example.com
  ClientOptions options;
  options.ca_file = Path("other.pem");
  Client client(Url(*server, "https"), options);
  std::string message = MessageOf([&] { client.Send("GET", "/"); });
  EXPECT_NE(message.find("mismatch"), std::string::npos) << message;
  EXPECT_EQ(KindOf([&] { client.Send("GET", "/"); }), ErrorKind::kEnvironment);
}

TEST_F(HttpTls, PlainHttpToTlsPortFailsCleanly) {
  auto server = StartTls(Remote);
  Response response = Client(Url(*server, "http")).Send("GET", "/");
  EXPECT_EQ(response.status, 400);
  EXPECT_EQ(ErrorOf(response).first, "bad_input");
  {
    RawSocket raw(server->port());
    // A TLS record holding a ClientHello that is not one.
    raw.Send(std::string("\x16\x03\x01\x00\x40\x01\x00\x00\x3c", 9) + std::string(60, '\xff'));
    EXPECT_EQ(raw.Receive().find("HTTP"), std::string::npos);
  }
  ClientOptions options;
  options.ca_file = Path("server.pem");
  EXPECT_EQ(Client(Url(*server, "https"), options).Send("GET", "/").status, 200);
}

TEST_F(HttpTls, HttpsToPlainServerIsEnvironment) {
  auto server = StartServer(Remote);
  ClientOptions options;
  options.ca_file = Path("server.pem");
  EXPECT_EQ(KindOf([&] { Client(Url(*server, "https"), options).Send("GET", "/"); }),
            ErrorKind::kEnvironment);
}

TEST_F(HttpTls, BadTlsFilesAreBadInputNamingTheFile) {
  auto make = [](const std::string& cert, const std::string& key) {
    ServerOptions options = Local();
    options.tls = TlsFiles{cert, key};
    Server server(options, Remote);
  };
  std::string missing = Path("missing.pem");
  std::string message = MessageOf([&] { make(missing, Path("server.key")); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  EXPECT_EQ(KindOf([&] { make(missing, Path("server.key")); }), ErrorKind::kBadInput);

  message = MessageOf([&] { make(Path("server.pem"), Path("other.key")); });  // key of another cert
  EXPECT_NE(message.find(Path("other.key")), std::string::npos) << message;
  EXPECT_EQ(KindOf([&] { make(Path("server.pem"), Path("other.key")); }), ErrorKind::kBadInput);

  std::ofstream(Path("junk.pem")) << "not a certificate\n";
  message = MessageOf([&] { make(Path("junk.pem"), Path("server.key")); });
  EXPECT_NE(message.find(Path("junk.pem")), std::string::npos) << message;
}

// --- Client ---------------------------------------------------------------

TEST(HttpClient, MalformedUrlIsBadInput) {
  for (const char* url :
       {"", "127.0.0.1:8080", "ftp://host", "http://", "http://host:99999", "http://host:0",
        "http://user:pw@host", "http://host/api", "http://host?x=1", "not a url"}) {
    EXPECT_EQ(KindOf([&] { Client client(url); }), ErrorKind::kBadInput) << url;
  }
  ClientOptions options;
  options.ca_file = "/nonexistent/ca.pem";
  std::string message = MessageOf([&] { Client client("https://localhost:1", options); });
  EXPECT_NE(message.find("/nonexistent/ca.pem"), std::string::npos) << message;
}

TEST(HttpClient, BadTargetOrHeaderIsBadInput) {
  Client client("http://127.0.0.1:1");  // never reached: requests are checked first
  EXPECT_EQ(KindOf([&] { client.Send("GET", "no-slash"); }), ErrorKind::kBadInput);
  EXPECT_EQ(KindOf([&] { client.Send("GET", "/a b"); }), ErrorKind::kBadInput);
  EXPECT_EQ(KindOf([&] { client.Send("GE T", "/"); }), ErrorKind::kBadInput);
  std::string message = MessageOf([&] {
    client.Send("GET", "/", "", {{"Authorization", "top\r\nsecret"}});
  });
  EXPECT_EQ(message.find("secret"), std::string::npos) << message;
}

TEST(HttpClient, ConnectionRefusedIsRetryableNamingUrl) {
  uint16_t port;
  {
    auto server = StartServer([](const Request&) { return Response{}; });
    port = server->port();
  }
  std::string url = "http://127.0.0.1:" + std::to_string(port);
  Client client(url);
  std::string message = MessageOf([&] { client.Send("GET", "/jobs?token=abc"); });
  EXPECT_NE(message.find(url + "/jobs"), std::string::npos) << message;
  EXPECT_EQ(message.find("abc"), std::string::npos) << message;
  EXPECT_EQ(KindOf([&] { client.Send("GET", "/"); }), ErrorKind::kRetryable);
}

TEST(HttpClient, SlowServerTimesOutAsRetryable) {
  auto server = StartServer([](const Request&) {
    std::this_thread::sleep_for(2s);
    return Text("late");
  });
  ClientOptions options;
  options.timeout = 1s;
  Client client(Url(*server), options);
  auto start = std::chrono::steady_clock::now();
  std::string message = MessageOf([&] { client.Send("GET", "/slow"); });
  EXPECT_NE(message.find("1s"), std::string::npos) << message;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1900ms);
  EXPECT_EQ(KindOf([&] { client.Send("GET", "/slow"); }), ErrorKind::kRetryable);
}

}  // namespace
}  // namespace ferry::http
