#include "ferry/coordinator/json_input.h"

#include "ferry/coordinator/field_error.h"

namespace json = boost::json;

namespace ferry::coordinator {

json::object ParseRequestObject(const std::string& body) {
  json::value value = ParseStrictJson(body, "body", ThrowFieldError, 16);
  if (!value.is_object()) throw FieldError("body", "must be a JSON object");
  return std::move(value.as_object());
}

void ThrowFieldError(const std::string& field, const std::string& message) { throw FieldError(field, message); }

}  // namespace ferry::coordinator
