#include "ferry/common/ids.h"

#include <ctime>
#include <random>

namespace ferry {

std::string RandomHex(size_t digits) {
  static const char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string out;
  out.reserve(digits);
  for (size_t i = 0; i < digits; ++i) out += kHex[rd() & 15];
  return out;
}

std::string FormatUtcNow(const char* strftime_format) {
  std::time_t t = std::time(nullptr);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, strftime_format, &tm);
  return std::string(buf, n);
}

}  // namespace ferry
