// Ferry's one error type. See docs/error-policy.md.
//
// Every failure that crosses a component boundary is a ferry::Error carrying a
// Kind (what the caller can do about it) and a message that names the object it
// is about (VM, disk, offset, chunk, file). Callers add context on the way up
// with Error::WithContext rather than inventing new types.
#pragma once

#include <stdexcept>
#include <string>

namespace ferry {

enum class ErrorKind {
  kBadInput,     // the user's input is wrong: fix the command, config or request
  kNotFound,     // a named object (VM, disk, restore point, file) does not exist
  kCorrupt,      // stored data failed a check (magic, checksum, digest)
  kEnvironment,  // the OS refused: permission, disk full, missing program
  kRetryable,    // transient: connection lost, peer busy; a retry may succeed
  kInterrupted,  // stopped by a signal or a cancel request
  kInternal,     // a bug in Ferry: an invariant did not hold
};

const char* ErrorKindName(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}

  ErrorKind kind() const { return kind_; }

  // Returns a copy whose message is "<context>: <message>".
  Error WithContext(const std::string& context) const {
    return Error(kind_, context + ": " + what());
  }

 private:
  ErrorKind kind_;
};

// Builds an error from errno: ENOSPC, EACCES, EROFS, EDQUOT and friends become
// kEnvironment, ENOENT becomes kNotFound. `what` names the operation and the
// file, e.g. "writing chunk /repo/chunks/ab1/ab1f..."
Error ErrnoError(const std::string& what, int errnum);

// Process exit code for an error kind (documented in docs/error-policy.md).
int ExitCodeFor(ErrorKind kind);

}  // namespace ferry
