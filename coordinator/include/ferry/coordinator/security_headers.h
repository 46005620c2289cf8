// The headers every coordinator HTTP response carries (docs/api.md,
// "Security headers"): given to the HTTP server as its default headers, so
// that the API, the console's files and the server's own errors all have
// them.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ferry::coordinator {

// Only 'self': the console loads no script, style, font or image from
// elsewhere and runs no inline script or style; no one may frame it.
extern const char kContentSecurityPolicy[];
// The API reference page (console api.html, Redoc) only: Redoc sets styles
// inline and runs its search in a blob: worker.
extern const char kApiDocsContentSecurityPolicy[];

// Content-Security-Policy, X-Content-Type-Options, X-Frame-Options,
// Referrer-Policy; with `https`, Strict-Transport-Security too.
std::vector<std::pair<std::string, std::string>> SecurityHeaders(bool https);

}  // namespace ferry::coordinator
