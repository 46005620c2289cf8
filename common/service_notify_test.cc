// NotifyServiceManager against real datagram sockets, a path and an abstract
// name, standing in for the service manager.
#include "ferry/common/service_notify.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace ferry {
namespace {

// A bound datagram socket; `abstract`: in the abstract namespace.
class Listener {
 public:
  explicit Listener(bool abstract) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string id = "ferry-notify-test-" + std::to_string(::getpid());
    if (abstract) {
      name_ = "@" + id;
      std::memcpy(a.sun_path + 1, id.data(), id.size());
      length_ = offsetof(sockaddr_un, sun_path) + 1 + id.size();
    } else {
      name_ = (std::filesystem::temp_directory_path() / id).string();
      ::unlink(name_.c_str());
      std::memcpy(a.sun_path, name_.data(), name_.size());
      length_ = offsetof(sockaddr_un, sun_path) + name_.size() + 1;
    }
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), length_), 0) << std::strerror(errno);
  }
  ~Listener() {
    ::close(fd_);
    if (name_[0] == '/') ::unlink(name_.c_str());
  }
  const std::string& name() const { return name_; }
  std::string Receive() {
    char buf[256];
    ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    return n < 0 ? "<nothing>" : std::string(buf, static_cast<size_t>(n));
  }

 private:
  int fd_ = -1;
  std::string name_;
  socklen_t length_ = 0;
};

class ServiceNotifyTest : public ::testing::Test {
 protected:
  void TearDown() override { ::unsetenv("NOTIFY_SOCKET"); }
};

TEST_F(ServiceNotifyTest, NoSocketSendsNothing) {
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_EQ(NotifyServiceManager("READY=1"), "");
}

TEST_F(ServiceNotifyTest, PathSocket) {
  Listener l(false);
  ::setenv("NOTIFY_SOCKET", l.name().c_str(), 1);
  EXPECT_EQ(NotifyServiceManager("READY=1"), "");
  EXPECT_EQ(l.Receive(), "READY=1");
}

TEST_F(ServiceNotifyTest, AbstractSocket) {
  Listener l(true);
  ::setenv("NOTIFY_SOCKET", l.name().c_str(), 1);
  EXPECT_EQ(NotifyServiceManager("STOPPING=1"), "");
  EXPECT_EQ(l.Receive(), "STOPPING=1");
}

TEST_F(ServiceNotifyTest, FailuresSayWhy) {
  ::setenv("NOTIFY_SOCKET", "relative/name", 1);
  EXPECT_NE(NotifyServiceManager("READY=1").find("neither a path nor an abstract name"), std::string::npos);
  const std::string missing = (std::filesystem::temp_directory_path() / "ferry-notify-no-such-socket").string();
  ::setenv("NOTIFY_SOCKET", missing.c_str(), 1);
  std::string why = NotifyServiceManager("READY=1");
  EXPECT_NE(why.find(missing), std::string::npos) << why;
  EXPECT_NE(why.find("No such file"), std::string::npos) << why;
}

}  // namespace
}  // namespace ferry
