// Strict reading of JSON request bodies: every member is checked for type
// and range, unknown members are refused, and every failure is a FieldError
// naming the member ("retries.count", "selection.tags[1]").
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/json.hpp>

namespace ferry::coordinator {

// Parses a request body that must be one JSON object; FieldError("body") if not.
boost::json::object ParseRequestObject(const std::string& body);

class FieldReader {
 public:
  FieldReader(const boost::json::object& object, std::string prefix);

  std::optional<std::string> String(const char* key, bool required, size_t max_length = 256);
  // A name: 1-128 characters of letters, digits, and . _ - (and space).
  std::optional<std::string> Name(const char* key, bool required);
  std::optional<int64_t> Int(const char* key, bool required, int64_t min, int64_t max);
  std::optional<bool> Bool(const char* key, bool required);
  std::optional<std::vector<std::string>> NameList(const char* key, bool required);
  // The raw member (for nested readers); nullptr if absent (or JSON null when
  // allow_null). The member counts as known.
  const boost::json::value* Member(const char* key, bool required, bool allow_null = false);
  // The field name for a member: prefix + key.
  std::string Path(const char* key) const;
  // Refuses members nobody asked for.
  void Finish() const;

 private:
  const boost::json::object& object_;
  std::string prefix_;
  std::set<std::string> known_;
};

// A checked name; throws FieldError(field) if not a valid name.
void CheckName(const std::string& field, const std::string& value);

}  // namespace ferry::coordinator
