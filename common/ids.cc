#include "ferry/common/ids.h"

#include <ctime>
#include <openssl/rand.h>

#include <vector>

#include "ferry/common/error.h"

namespace ferry {

std::string RandomHex(size_t digits) {
  // OpenSSL's DRBG: no system call per digit (std::random_device read the
  // kernel's generator once per digit; the coordinator draws 10,000 point
  // ids when a big session starts).
  static const char kHex[] = "0123456789abcdef";
  std::vector<unsigned char> bytes((digits + 1) / 2);
  if (!bytes.empty() && RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
    throw Error(ErrorKind::kEnvironment, "no randomness available (RAND_bytes failed)");
  std::string out;
  out.reserve(digits);
  for (size_t i = 0; i < digits; ++i) out += kHex[(bytes[i / 2] >> (i % 2 ? 0 : 4)) & 15];
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
