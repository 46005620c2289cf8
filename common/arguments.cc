#include "ferry/common/arguments.h"

#include <algorithm>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"

namespace ferry {

namespace {

Error Bad(const std::string& message) { return Error(ErrorKind::kBadInput, message); }

std::string_view Trim(std::string_view s) {
  const char* kSpace = " \t\r\n\f\v";
  size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

// Optimal string alignment distance: insertions, deletions, substitutions
// and swaps of neighbours, each one edit.
size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

}  // namespace

std::string DidYouMean(const std::string& typed, const std::vector<std::string>& known) {
  const std::string* best = nullptr;
  size_t best_distance = 3;
  for (const auto& k : known) {
    size_t d = EditDistance(typed, k);
    if (d < best_distance && d < std::max<size_t>(k.size(), 2)) best = &k, best_distance = d;
  }
  return best ? " (did you mean '" + *best + "'?)" : "";
}

Arguments::Arguments(const std::vector<std::string>& args, const std::set<std::string>& valued,
                     const std::set<std::string>& flags) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (!a.starts_with("--")) {
      throw Bad("unexpected argument '" + a + "'");
    }
    std::string name = a.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (flags.count(name)) {
      if (inline_value) throw Bad("option --" + name + " takes no value");
      values_.emplace(name, Value{});
    } else if (valued.count(name)) {
      if (inline_value) {
        values_.emplace(name, Value{*inline_value});
      } else {
        if (i + 1 >= args.size()) throw Bad("option --" + name + " needs a value");
        values_.emplace(name, Value{args[++i]});
      }
    } else {
      std::vector<std::string> known(valued.begin(), valued.end());
      known.insert(known.end(), flags.begin(), flags.end());
      for (auto& k : known) k = "--" + k;
      throw Bad("unknown option --" + name + DidYouMean("--" + name, known));
    }
  }
}

Arguments Arguments::ParseConfig(std::string_view text, const std::string& path,
                                 const std::set<std::string>& valued, const std::set<std::string>& flags) {
  Arguments out;
  out.config_path_ = path;
  int line_number = 0;
  while (!text.empty()) {
    ++line_number;
    size_t end = text.find('\n');
    std::string_view line = Trim(text.substr(0, end));
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    if (line.empty() || line.front() == '#') continue;

    std::string where = path + " line " + std::to_string(line_number) + ": ";
    size_t eq = line.find('=');
    std::string name(Trim(line.substr(0, eq)));
    std::optional<std::string> value;
    if (eq != std::string_view::npos) value = std::string(Trim(line.substr(eq + 1)));
    if (name.empty()) throw Bad(where + "expected 'name = value', or a flag's name");
    if (name.starts_with("--") && (valued.count(name.substr(2)) || flags.count(name.substr(2)))) {
      throw Bad(where + "write '" + name.substr(2) + "', without '--'");
    }
    if (flags.count(name)) {
      if (value) throw Bad(where + "option '" + name + "' takes no value (a flag: write its name alone)");
      out.values_.emplace(name, Value{"", line_number});
    } else if (valued.count(name)) {
      if (!value || value->empty()) throw Bad(where + "option '" + name + "' needs a value");
      out.values_.emplace(name, Value{*value, line_number});
    } else {
      throw Bad(where + "unknown option '" + name + "'");
    }
  }
  return out;
}

Arguments Arguments::ReadConfigFile(const std::string& path, const std::set<std::string>& valued,
                                    const std::set<std::string>& flags) {
  std::string text;
  try {
    text = ReadWholeFile(path);
  } catch (const Error& e) {
    throw e.WithContext("reading configuration file " + path);
  }
  return ParseConfig(text, path, valued, flags);
}

Arguments Arguments::Layered(Arguments file, const Arguments& command_line) {
  for (auto it = command_line.values_.begin(); it != command_line.values_.end();
       it = command_line.values_.upper_bound(it->first)) {
    file.values_.erase(it->first);
  }
  file.values_.insert(command_line.values_.begin(), command_line.values_.end());
  return file;
}

Arguments Arguments::FromFileAndCommandLine(const std::string& config_path, const std::vector<std::string>& args,
                                            const std::set<std::string>& valued,
                                            const std::set<std::string>& flags) {
  Arguments command_line(args, valued, flags);  // its errors first: they are the quickest to fix
  return Layered(ReadConfigFile(config_path, valued, flags), command_line);
}

std::string Arguments::Describe(const std::string& name, const Value& value) const {
  if (value.line == 0) return "option --" + name;
  return config_path_ + " line " + std::to_string(value.line) + ": option '" + name + "'";
}

bool Arguments::Has(const std::string& name) const { return values_.count(name) > 0; }

const Arguments::Value* Arguments::GetValue(const std::string& name) const {
  auto range = values_.equal_range(name);
  if (range.first == range.second) return nullptr;
  if (auto second = std::next(range.first); second != range.second) {
    if (second->second.line == 0) throw Bad("option --" + name + " given more than once");
    throw Bad(Describe(name, second->second) + " given more than once (also on line " +
              std::to_string(range.first->second.line) + ")");
  }
  return &range.first->second;
}

std::optional<std::string> Arguments::Get(const std::string& name) const {
  const Value* v = GetValue(name);
  if (v == nullptr) return std::nullopt;
  return v->text;
}

std::string Arguments::Require(const std::string& name) const {
  auto v = Get(name);
  if (!v || v->empty()) {
    std::string message = "missing required option --" + name;
    if (!config_path_.empty()) message += " (or '" + name + " = ...' in " + config_path_ + ")";
    throw Bad(message);
  }
  return *v;
}

std::vector<std::string> Arguments::GetAll(const std::string& name) const {
  std::vector<std::string> out;
  auto range = values_.equal_range(name);
  for (auto it = range.first; it != range.second; ++it) out.push_back(it->second.text);
  return out;
}

std::optional<uint64_t> Arguments::GetSize(const std::string& name) const {
  const Value* value = GetValue(name);
  if (value == nullptr) return std::nullopt;
  const std::string& v = value->text;
  auto bad = [&] {
    return Bad(Describe(name, *value) + ": '" + v + "' is not a size (e.g. 4M, 512K, 1048576)");
  };
  if (v.empty()) throw bad();
  size_t pos = 0;
  uint64_t n;
  try {
    if (v[0] == '-') throw bad();
    n = std::stoull(v, &pos);
  } catch (const std::exception&) {
    throw bad();
  }
  std::string suffix = v.substr(pos);
  uint64_t mult = 1;
  if (suffix == "K" || suffix == "KiB" || suffix == "k") mult = 1ull << 10;
  else if (suffix == "M" || suffix == "MiB") mult = 1ull << 20;
  else if (suffix == "G" || suffix == "GiB") mult = 1ull << 30;
  else if (!suffix.empty()) throw bad();
  if (n > UINT64_MAX / mult) throw bad();
  return n * mult;
}

std::optional<int64_t> Arguments::GetInt(const std::string& name, int64_t min, int64_t max) const {
  const Value* value = GetValue(name);
  if (value == nullptr) return std::nullopt;
  const std::string& v = value->text;
  size_t pos = 0;
  int64_t n = 0;
  try {
    n = std::stoll(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0 || pos != v.size() || n < min || n > max) {
    throw Bad(Describe(name, *value) + ": '" + v + "' is not an integer from " + std::to_string(min) + " to " +
              std::to_string(max));
  }
  return n;
}

std::optional<std::chrono::milliseconds> Arguments::GetDuration(const std::string& name) const {
  const Value* value = GetValue(name);
  if (value == nullptr) return std::nullopt;
  const std::string& v = value->text;
  size_t used = 0;
  int64_t n = -1;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = v.substr(used);
  const int64_t ms_per = unit.empty() || unit == "s" ? 1000
                         : unit == "ms"              ? 1
                         : unit == "m"               ? 60'000
                         : unit == "h"               ? 3'600'000
                         : unit == "d"               ? 86'400'000
                                                     : 0;
  if (used == 0 || n <= 0 || ms_per == 0 || n > (int64_t{1} << 50) / ms_per) {
    throw Bad(Describe(name, *value) + ": '" + v + "' is not a duration (e.g. 500ms, 90s, 30m, 24h, 7d)");
  }
  return std::chrono::milliseconds(n * ms_per);
}

}  // namespace ferry
