// Strict reading of JSON request bodies: the common JsonReader
// (ferry/common/json_reader.h) with the API's error policy, every failure a
// FieldError naming the member ("retries.count", "selection.tags[1]"), and
// unknown members refused (Finish).
#pragma once

#include <string>

#include <boost/json.hpp>

#include "ferry/common/json_reader.h"

namespace ferry::coordinator {

// Parses a request body that must be one JSON object; FieldError("body") if not.
boost::json::object ParseRequestObject(const std::string& body);

// Throws FieldError(field, message).
void ThrowFieldError(const std::string& field, const std::string& message);

class FieldReader : public JsonReader {
 public:
  FieldReader(const boost::json::object& object, std::string prefix)
      : JsonReader(object, std::move(prefix), ThrowFieldError) {}
};

// A checked name; throws FieldError(field) if not a valid name.
inline void CheckName(const std::string& field, const std::string& value) {
  CheckJsonName(field, value, ThrowFieldError);
}

}  // namespace ferry::coordinator
