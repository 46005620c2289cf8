#include "ferry/coordinator/security_headers.h"

namespace ferry::coordinator {

const char kContentSecurityPolicy[] =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const char kApiDocsContentSecurityPolicy[] =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'";

std::vector<std::pair<std::string, std::string>> SecurityHeaders(bool https) {
  std::vector<std::pair<std::string, std::string>> h = {{"Content-Security-Policy", kContentSecurityPolicy},
                                                        {"X-Content-Type-Options", "nosniff"},
                                                        {"X-Frame-Options", "DENY"},
                                                        {"Referrer-Policy", "no-referrer"}};
  // A year; not includeSubDomains: the coordinator cannot speak for other
  // hosts of its domain.
  if (https) h.emplace_back("Strict-Transport-Security", "max-age=31536000");
  return h;
}

}  // namespace ferry::coordinator
