#include "ferry/common/format.h"

#include <cstring>

#include "ferry/common/error.h"

namespace ferry {

namespace {
bool AllDigits(std::string_view s) {
  if (s.empty() || s.size() > 4) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

Error Newer(const std::string& what, std::string_view got, std::string_view newest) {
  return Error(ErrorKind::kBadInput, what + " was written by a newer Ferry (format " + std::string(got) +
                                         "; this Ferry reads up to " + std::string(newest) +
                                         "): upgrade Ferry to read it");
}
}  // namespace

std::string Magic(std::string_view family, int version) {
  std::string m(family);
  m += static_cast<char>('0' + version / 10);
  m += static_cast<char>('0' + version % 10);
  return m;
}

int CheckMagic(const unsigned char* got, std::string_view family, int newest, const std::string& what) {
  std::string_view g(reinterpret_cast<const char*>(got), 8);
  if (g.substr(0, 6) == family && AllDigits(g.substr(6))) {
    int version = (g[6] - '0') * 10 + (g[7] - '0');
    if (version >= 1 && version <= newest) return version;
    if (version > newest) throw Newer(what, g, Magic(family, newest));
  }
  throw Error(ErrorKind::kCorrupt, what + ": bad magic");
}

int CheckFormatName(const std::string& got, std::string_view family, int newest, const std::string& what) {
  std::string prefix = std::string(family) + "-v";
  if (got.rfind(prefix, 0) == 0 && AllDigits(std::string_view(got).substr(prefix.size()))) {
    int version = std::stoi(got.substr(prefix.size()));
    if (version >= 1 && version <= newest) return version;
    if (version > newest) throw Newer(what, got, prefix + std::to_string(newest));
  }
  throw Error(ErrorKind::kCorrupt, what + " has format '" + got + "', not " + prefix + "N");
}

}  // namespace ferry
