// FieldError: bad input that names the field it is about.
//
// Every validation failure of an API request, a job definition or a schedule
// is a FieldError; the HTTP layer turns it into 400 with
// {"error": {"kind": "bad_input", "field": "<field>", "message": "..."}}.
// Field names are JSON paths as the client wrote them: "schedule.at",
// "selection.tags[2]", "retries.count".
#pragma once

#include <string>

#include "ferry/common/error.h"

namespace ferry::coordinator {

class FieldError : public Error {
 public:
  FieldError(std::string field, const std::string& message)
      : Error(ErrorKind::kBadInput, field + ": " + message),
        field_(std::move(field)),
        detail_(message) {}

  const std::string& field() const { return field_; }
  // The message without the field prefix.
  const std::string& detail() const { return detail_; }

 private:
  std::string field_;
  std::string detail_;
};

}  // namespace ferry::coordinator

namespace ferry::coordinator {

// The request is well-formed but collides with the current state (a name
// already taken, a job already running): HTTP 409.
class ConflictError : public Error {
 public:
  explicit ConflictError(const std::string& message) : Error(ErrorKind::kBadInput, message) {}
};

}  // namespace ferry::coordinator
