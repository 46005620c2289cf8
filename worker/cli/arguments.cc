#include "arguments.h"

#include "ferry/common/error.h"

namespace ferry::cli {

Arguments::Arguments(const std::vector<std::string>& args, const std::set<std::string>& valued,
                     const std::set<std::string>& flags) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (!a.starts_with("--")) {
      throw Error(ErrorKind::kBadInput, "unexpected argument '" + a + "'");
    }
    std::string name = a.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (flags.count(name)) {
      if (inline_value) throw Error(ErrorKind::kBadInput, "option --" + name + " takes no value");
      values_.emplace(name, "");
    } else if (valued.count(name)) {
      if (inline_value) {
        values_.emplace(name, *inline_value);
      } else {
        if (i + 1 >= args.size()) throw Error(ErrorKind::kBadInput, "option --" + name + " needs a value");
        values_.emplace(name, args[++i]);
      }
    } else {
      throw Error(ErrorKind::kBadInput, "unknown option --" + name);
    }
  }
}

bool Arguments::Has(const std::string& name) const { return values_.count(name) > 0; }

std::optional<std::string> Arguments::Get(const std::string& name) const {
  auto range = values_.equal_range(name);
  if (range.first == range.second) return std::nullopt;
  if (std::next(range.first) != range.second) {
    throw Error(ErrorKind::kBadInput, "option --" + name + " given more than once");
  }
  return range.first->second;
}

std::string Arguments::Require(const std::string& name) const {
  auto v = Get(name);
  if (!v || v->empty()) throw Error(ErrorKind::kBadInput, "missing required option --" + name);
  return *v;
}

std::vector<std::string> Arguments::GetAll(const std::string& name) const {
  std::vector<std::string> out;
  auto range = values_.equal_range(name);
  for (auto it = range.first; it != range.second; ++it) out.push_back(it->second);
  return out;
}

std::optional<uint64_t> Arguments::GetSize(const std::string& name) const {
  auto v = Get(name);
  if (!v) return std::nullopt;
  auto bad = [&] {
    return Error(ErrorKind::kBadInput,
                 "option --" + name + ": '" + *v + "' is not a size (e.g. 4M, 512K, 1048576)");
  };
  if (v->empty()) throw bad();
  size_t pos = 0;
  uint64_t n;
  try {
    if ((*v)[0] == '-') throw bad();
    n = std::stoull(*v, &pos);
  } catch (const std::exception&) {
    throw bad();
  }
  std::string suffix = v->substr(pos);
  uint64_t mult = 1;
  if (suffix == "K" || suffix == "KiB" || suffix == "k") mult = 1ull << 10;
  else if (suffix == "M" || suffix == "MiB") mult = 1ull << 20;
  else if (suffix == "G" || suffix == "GiB") mult = 1ull << 30;
  else if (!suffix.empty()) throw bad();
  if (n > UINT64_MAX / mult) throw bad();
  return n * mult;
}

std::optional<int64_t> Arguments::GetInt(const std::string& name, int64_t min, int64_t max) const {
  auto v = Get(name);
  if (!v) return std::nullopt;
  size_t pos = 0;
  int64_t n = 0;
  try {
    n = std::stoll(*v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0 || pos != v->size() || n < min || n > max) {
    throw Error(ErrorKind::kBadInput, "option --" + name + ": '" + *v + "' is not an integer from " +
                                          std::to_string(min) + " to " + std::to_string(max));
  }
  return n;
}

}  // namespace ferry::cli
