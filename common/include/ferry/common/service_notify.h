// The service manager's readiness protocol (systemd's sd_notify, Type=notify
// units; docs/packaging.md): one datagram with "KEY=VALUE" lines, sent to the
// unix socket named by $NOTIFY_SOCKET. A name starting with '@' is in the
// abstract namespace (its '@' stands for the leading NUL byte).
//
// The daemons send "READY=1" once they serve (their sockets listen) and
// "STOPPING=1" when they begin to stop. Without $NOTIFY_SOCKET (not run by a
// service manager, or a unit that is not Type=notify) nothing is sent.
#pragma once

#include <string>
#include <string_view>

namespace ferry {

// Sends `state` (e.g. "READY=1") to $NOTIFY_SOCKET. Returns "" when it was
// sent or there is no $NOTIFY_SOCKET, else why it was not (the caller logs
// it: a service manager that hears nothing times the start out, and the log
// should say why).
std::string NotifyServiceManager(std::string_view state);

}  // namespace ferry
