#include "ferry/coordinator/json_input.h"

#include "ferry/coordinator/field_error.h"

namespace json = boost::json;

namespace ferry::coordinator {

json::object ParseRequestObject(const std::string& body) {
  json::error_code ec;
  json::parse_options options;
  options.max_depth = 16;
  json::value value = json::parse(body, ec, json::storage_ptr(), options);
  if (ec) throw FieldError("body", "malformed JSON: " + ec.message());
  if (!value.is_object()) throw FieldError("body", "must be a JSON object");
  return std::move(value.as_object());
}

void ThrowFieldError(const std::string& field, const std::string& message) { throw FieldError(field, message); }

}  // namespace ferry::coordinator
