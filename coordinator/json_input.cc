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

FieldReader::FieldReader(const json::object& object, std::string prefix)
    : object_(object), prefix_(std::move(prefix)) {}

std::string FieldReader::Path(const char* key) const {
  return prefix_.empty() ? key : prefix_ + "." + key;
}

const json::value* FieldReader::Member(const char* key, bool required, bool allow_null) {
  known_.insert(key);
  auto it = object_.find(key);
  if (it == object_.end() || (it->value().is_null() && !allow_null)) {
    if (required) throw FieldError(Path(key), "is required");
    return nullptr;
  }
  return &it->value();
}

std::optional<std::string> FieldReader::String(const char* key, bool required, size_t max_length) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw FieldError(Path(key), "must be a string");
  std::string s(v->as_string());
  if (s.size() > max_length) throw FieldError(Path(key), "longer than " + std::to_string(max_length) + " characters");
  return s;
}

void CheckName(const std::string& field, const std::string& value) {
  if (value.empty() || value.size() > 128) throw FieldError(field, "must be 1 to 128 characters");
  for (char c : value) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-' || c == ' ';
    if (!ok) throw FieldError(field, "may hold only letters, digits, space and . _ - (got '" + value + "')");
  }
}

std::optional<std::string> FieldReader::Name(const char* key, bool required) {
  std::optional<std::string> s = String(key, required, 128);
  if (s) CheckName(Path(key), *s);
  return s;
}

std::optional<int64_t> FieldReader::Int(const char* key, bool required, int64_t min, int64_t max) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  int64_t n;
  if (v->is_int64()) n = v->as_int64();
  else if (v->is_uint64() && v->as_uint64() <= static_cast<uint64_t>(INT64_MAX)) n = static_cast<int64_t>(v->as_uint64());
  else throw FieldError(Path(key), "must be an integer");
  if (n < min || n > max)
    throw FieldError(Path(key), "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return n;
}

std::optional<bool> FieldReader::Bool(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_bool()) throw FieldError(Path(key), "must be true or false");
  return v->as_bool();
}

std::optional<std::vector<std::string>> FieldReader::NameList(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_array()) throw FieldError(Path(key), "must be an array of names");
  const json::array& a = v->as_array();
  if (a.size() > 10000) throw FieldError(Path(key), "more than 10000 entries");
  std::vector<std::string> out;
  for (size_t i = 0; i < a.size(); ++i) {
    std::string field = Path(key) + "[" + std::to_string(i) + "]";
    if (!a[i].is_string()) throw FieldError(field, "must be a string");
    out.emplace_back(a[i].as_string());
    CheckName(field, out.back());
  }
  return out;
}

void FieldReader::Finish() const {
  for (const auto& member : object_)
    if (!known_.count(std::string(member.key())))
      throw FieldError(Path(std::string(member.key()).c_str()), "unknown field");
}

}  // namespace ferry::coordinator
