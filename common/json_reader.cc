#include "ferry/common/json_reader.h"

#include <cmath>

#include "ferry/common/error.h"

namespace json = boost::json;

namespace ferry {

JsonReader::JsonReader(const json::object& object, std::string prefix, JsonFail fail)
    : object_(&object), prefix_(std::move(prefix)), fail_(std::move(fail)) {}

std::string JsonReader::Path(const char* key) const { return prefix_.empty() ? key : prefix_ + "." + key; }

void JsonReader::Fail(const char* key, const std::string& message) const {
  fail_(Path(key), message);
  throw Error(ErrorKind::kInternal, "JSON reader: the failure handler for " + Path(key) + " returned");
}

const json::value* JsonReader::Member(const char* key, bool required, bool allow_null) {
  known_.insert(key);
  auto it = object_->find(key);
  if (it == object_->end() || (it->value().is_null() && !allow_null)) {
    if (required) Fail(key, "is required");
    return nullptr;
  }
  return &it->value();
}

std::optional<std::string> JsonReader::String(const char* key, bool required, size_t max_length) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_string()) Fail(key, "must be a string");
  std::string s(v->as_string());
  if (s.size() > max_length) Fail(key, "longer than " + std::to_string(max_length) + " characters");
  return s;
}

void CheckJsonName(const std::string& field, const std::string& value, const JsonFail& fail) {
  if (value.empty() || value.size() > 128) fail(field, "must be 1 to 128 characters");
  for (char c : value) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-' || c == ' ';
    if (!ok) fail(field, "may hold only letters, digits, space and . _ - (got '" + value + "')");
  }
}

std::optional<std::string> JsonReader::Name(const char* key, bool required) {
  std::optional<std::string> s = String(key, required, 128);
  if (s) CheckJsonName(Path(key), *s, fail_);
  return s;
}

std::optional<int64_t> JsonReader::Int(const char* key, bool required, int64_t min, int64_t max) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  int64_t n = 0;
  if (v->is_int64()) {
    n = v->as_int64();
  } else if (v->is_uint64() && v->as_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    n = static_cast<int64_t>(v->as_uint64());
  } else {
    Fail(key, "must be an integer");
  }
  if (n < min || n > max) Fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return n;
}

std::optional<uint64_t> JsonReader::Unsigned(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (v->is_uint64()) return v->as_uint64();
  if (v->is_int64() && v->as_int64() >= 0) return static_cast<uint64_t>(v->as_int64());
  Fail(key, "must be a non-negative integer");
}

std::optional<bool> JsonReader::Bool(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_bool()) Fail(key, "must be true or false");
  return v->as_bool();
}

std::optional<double> JsonReader::Double(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_number()) Fail(key, "must be a number");
  const double d = v->to_number<double>();
  if (!std::isfinite(d)) Fail(key, "must be a finite number");
  return d;
}

std::optional<std::vector<std::string>> JsonReader::StringList(const char* key, bool required, size_t max_length) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_array()) Fail(key, "must be an array of strings");
  const json::array& a = v->as_array();
  if (a.size() > 10000) Fail(key, "more than 10000 entries");
  std::vector<std::string> out;
  for (size_t i = 0; i < a.size(); ++i) {
    std::string field = Path(key) + "[" + std::to_string(i) + "]";
    if (!a[i].is_string()) fail_(field, "must be a string");
    if (a[i].as_string().size() > max_length) fail_(field, "longer than " + std::to_string(max_length) + " characters");
    out.emplace_back(a[i].as_string());
  }
  return out;
}

std::optional<std::vector<std::string>> JsonReader::NameList(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (v && !v->is_array()) Fail(key, "must be an array of names");
  std::optional<std::vector<std::string>> out = StringList(key, required, 128);
  if (out) {
    for (size_t i = 0; i < out->size(); ++i) CheckJsonName(Path(key) + "[" + std::to_string(i) + "]", (*out)[i], fail_);
  }
  return out;
}

std::optional<JsonReader> JsonReader::Object(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_object()) Fail(key, "must be an object");
  return JsonReader(v->as_object(), Path(key), fail_);
}

std::optional<std::vector<JsonReader>> JsonReader::ObjectList(const char* key, bool required) {
  const json::value* v = Member(key, required);
  if (!v) return std::nullopt;
  if (!v->is_array()) Fail(key, "must be an array");
  std::vector<JsonReader> out;
  const json::array& a = v->as_array();
  for (size_t i = 0; i < a.size(); ++i) {
    std::string field = Path(key) + "[" + std::to_string(i) + "]";
    if (!a[i].is_object()) fail_(field, "must be an object");
    out.emplace_back(a[i].as_object(), field, fail_);
  }
  return out;
}

void JsonReader::Finish() const {
  for (const auto& member : *object_) {
    if (!known_.count(std::string(member.key()))) Fail(std::string(member.key()).c_str(), "unknown field");
  }
}

JsonFail CorruptFileFail(std::string what) {
  return [what = std::move(what)](const std::string& field, const std::string& message) {
    throw Error(ErrorKind::kCorrupt, what + ": member '" + field + "' " + message);
  };
}

}  // namespace ferry
