#include "ferry/common/service_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace ferry {

std::string NotifyServiceManager(std::string_view state) {
  const char* env = std::getenv("NOTIFY_SOCKET");
  if (env == nullptr || *env == '\0') return "";
  const std::string name = env;
  if (name[0] != '/' && name[0] != '@') {
    return "NOTIFY_SOCKET '" + name + "' is neither a path nor an abstract name ('@...')";
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (name.size() > sizeof address.sun_path - (name[0] == '/' ? 1 : 0)) {
    return "NOTIFY_SOCKET '" + name + "' is longer than a unix socket address";
  }
  std::memcpy(address.sun_path, name.data(), name.size());
  if (name[0] == '@') address.sun_path[0] = '\0';
  // An abstract name's length is the address's length: no terminating NUL.
  const socklen_t length =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] == '/' ? 1 : 0));
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("notifying the service manager: socket: ") + std::strerror(errno);
  const ssize_t sent =
      ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&address), length);
  const int err = errno;
  ::close(fd);
  if (sent < 0) {
    return "notifying the service manager (" + std::string(state) + ") at " + name + ": " + std::strerror(err);
  }
  return "";
}

}  // namespace ferry
