// ParseStrictJson (json_reader.h): a validating pass with Boost.JSON's
// basic_parser for what json::parse lets through (duplicate keys, the last
// one winning; NUL characters in strings), then json::parse.
#include <boost/json/basic_parser_impl.hpp>
#include <unordered_set>

#include "ferry/common/error.h"
#include "ferry/common/json_reader.h"

namespace json = boost::json;

namespace ferry {

namespace {

class StrictHandler {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  // The first problem found: its member's path and what is wrong.
  std::string field, message;

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    BeginValue();
    frames_.push_back({true, 0, {}, {}, {}});
    return true;
  }
  bool on_object_end(std::size_t, json::error_code&) {
    frames_.pop_back();
    return true;
  }
  bool on_array_begin(json::error_code&) {
    BeginValue();
    frames_.push_back({false, 0, {}, {}, {}});
    return true;
  }
  bool on_array_end(std::size_t, json::error_code&) {
    frames_.pop_back();
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    frames_.back().pending_key.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code&) {
    Frame& f = frames_.back();
    f.pending_key.append(s.data(), s.size());
    f.key = std::move(f.pending_key);
    f.pending_key.clear();
    if (f.key.find('\0') != std::string::npos) {
      f.key.clear();
      return Fail("a member name holds a NUL character (\\u0000)", /*in_object=*/true);
    }
    if (!f.keys.insert(f.key).second) return Fail("appears twice in the same object");
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    if (!in_string_) BeginValue();
    in_string_ = true;
    return CheckString(s);
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    if (!in_string_) BeginValue();
    in_string_ = false;
    return CheckString(s);
  }
  bool on_number_part(json::string_view, json::error_code&) {
    if (!in_number_) BeginValue();
    in_number_ = true;
    return true;
  }
  bool on_int64(int64_t, json::string_view, json::error_code&) { return EndNumber(); }
  bool on_uint64(uint64_t, json::string_view, json::error_code&) { return EndNumber(); }
  bool on_double(double, json::string_view, json::error_code&) { return EndNumber(); }
  bool on_bool(bool, json::error_code&) {
    BeginValue();
    return true;
  }
  bool on_null(json::error_code&) {
    BeginValue();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  struct Frame {
    bool object;
    size_t index;             // arrays: the element under way
    std::string key;          // objects: the member under way
    std::string pending_key;  // a key arriving in parts
    std::unordered_set<std::string> keys;
  };
  void BeginValue() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().index;
  }
  bool EndNumber() {
    if (!in_number_) BeginValue();
    in_number_ = false;
    return true;
  }
  bool CheckString(json::string_view s) {
    if (std::string_view(s.data(), s.size()).find('\0') == std::string_view::npos) return true;
    return Fail("holds a NUL character (\\u0000)");
  }
  // `in_object`: the path of the innermost object itself, not of its member.
  std::string Path(bool in_object = false) const {
    std::string path;
    for (size_t i = 0; i < frames_.size(); ++i) {
      const Frame& f = frames_[i];
      if (in_object && i + 1 == frames_.size()) break;
      if (f.object) {
        path += (path.empty() ? "" : ".") + f.key;
      } else {
        path += "[" + std::to_string(f.index - 1) + "]";
      }
    }
    return path;
  }
  bool Fail(const std::string& what, bool in_object = false) {
    if (message.empty()) {
      field = Path(in_object);
      message = what;
    }
    return false;  // stops the parser
  }

  std::vector<Frame> frames_;
  bool in_string_ = false;
  bool in_number_ = false;
};

}  // namespace

json::value ParseStrictJson(std::string_view text, const std::string& document, const JsonFail& fail,
                            unsigned max_depth) {
  json::parse_options options;
  options.max_depth = max_depth;
  json::error_code ec;
  json::value value = json::parse(json::string_view(text.data(), text.size()), ec, json::storage_ptr(), options);
  if (ec) fail(document, "malformed JSON: " + ec.message());
  json::basic_parser<StrictHandler> parser(options);
  parser.write_some(false, text.data(), text.size(), ec);
  const StrictHandler& h = parser.handler();
  if (!h.message.empty()) fail(h.field.empty() ? document : h.field, h.message);
  if (ec) fail(document, "malformed JSON: " + ec.message());
  return value;
}

}  // namespace ferry
