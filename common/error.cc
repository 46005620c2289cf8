#include "ferry/common/error.h"

#include <cerrno>
#include <cstring>

namespace ferry {

const char* ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadInput: return "bad input";
    case ErrorKind::kNotFound: return "not found";
    case ErrorKind::kCorrupt: return "corrupt data";
    case ErrorKind::kEnvironment: return "environment";
    case ErrorKind::kRetryable: return "retryable";
    case ErrorKind::kInterrupted: return "interrupted";
    case ErrorKind::kInternal: return "internal error";
  }
  return "unknown";
}

Error ErrnoError(const std::string& what, int errnum) {
  ErrorKind kind = ErrorKind::kEnvironment;
  if (errnum == ENOENT) kind = ErrorKind::kNotFound;
  if (errnum == EINTR) kind = ErrorKind::kInterrupted;
  std::string reason = std::strerror(errnum);
  if (errnum == ENOSPC || errnum == EDQUOT) reason += " (the file system is full)";
  return Error(kind, what + ": " + reason);
}

int ExitCodeFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadInput: return 2;
    case ErrorKind::kNotFound: return 3;
    case ErrorKind::kCorrupt: return 4;
    case ErrorKind::kEnvironment: return 5;
    case ErrorKind::kRetryable: return 6;
    case ErrorKind::kInterrupted: return 130;
    case ErrorKind::kInternal: return 70;
  }
  return 1;
}

}  // namespace ferry
