// Ferry's one strict JSON reader, for API request bodies and for the JSON
// files Ferry stores (manifests, the repository config, staged points, read
// plans): every member is checked for type and range, and every failure
// names the member as a path ("disks[0].size", "retries.count").
//
// What a failure becomes is the caller's: a request's FieldError (HTTP 400
// naming the field), or a stored file's kCorrupt naming the file. The reader
// calls `fail(field, message)`, which must throw.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json.hpp>

namespace ferry {

using JsonFail = std::function<void(const std::string& field, const std::string& message)>;

class JsonReader {
 public:
  JsonReader(const boost::json::object& object, std::string prefix, JsonFail fail);

  std::optional<std::string> String(const char* key, bool required, size_t max_length = 256);
  // A name: 1-128 characters of letters, digits, and . _ - (and space).
  std::optional<std::string> Name(const char* key, bool required);
  std::optional<int64_t> Int(const char* key, bool required, int64_t min, int64_t max);
  // Sizes and counts of stored data: 0 to 2^64 - 1.
  std::optional<uint64_t> Unsigned(const char* key, bool required);
  std::optional<bool> Bool(const char* key, bool required);
  // Any finite number (an integer reads as its value).
  std::optional<double> Double(const char* key, bool required);
  std::optional<std::vector<std::string>> NameList(const char* key, bool required);
  // Strings of up to `max_length` characters each, any content.
  std::optional<std::vector<std::string>> StringList(const char* key, bool required, size_t max_length = 256);
  // A nested object's reader (same error policy, path prefixed), or nullopt.
  std::optional<JsonReader> Object(const char* key, bool required);
  // The members of an array that must hold objects, each with its reader
  // ("disks[0]", "disks[1]", ...); nullopt when absent and not required.
  std::optional<std::vector<JsonReader>> ObjectList(const char* key, bool required);
  // The raw member (for nested readers); nullptr if absent (or JSON null when
  // allow_null). The member counts as known.
  const boost::json::value* Member(const char* key, bool required, bool allow_null = false);
  // The field name for a member: prefix + key.
  std::string Path(const char* key) const;
  // Reports a problem with member `key` (through `fail`; never returns).
  [[noreturn]] void Fail(const char* key, const std::string& message) const;
  // Refuses members nobody asked for.
  void Finish() const;

 private:
  const boost::json::object* object_;
  std::string prefix_;
  JsonFail fail_;
  std::set<std::string> known_;
};

// Parses `text` strictly: at most `max_depth` levels of nesting, no key twice
// in one object (json::parse lets the last win), no NUL character in a key or
// a string (a decoded \u0000 truncates a value wherever it reaches a C API).
// A problem goes to `fail` naming the member ("selection.vms[1]"), or
// `document` for the text as a whole (malformed JSON).
boost::json::value ParseStrictJson(std::string_view text, const std::string& document, const JsonFail& fail,
                                   unsigned max_depth = 32);

// A checked name; `fail(field, ...)` if not a valid name.
void CheckJsonName(const std::string& field, const std::string& value, const JsonFail& fail);

// A JsonFail for stored files: kCorrupt "<what>: member '<field>' <message>".
JsonFail CorruptFileFail(std::string what);

}  // namespace ferry
