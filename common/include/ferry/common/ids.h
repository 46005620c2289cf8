// Identifiers and timestamps shared by every component.
#pragma once

#include <cstddef>
#include <string>

namespace ferry {

// `digits` random lowercase hex digits (from std::random_device).
std::string RandomHex(size_t digits);

// The current UTC time through strftime(3), e.g. "%Y-%m-%dT%H:%M:%SZ".
std::string FormatUtcNow(const char* strftime_format);

}  // namespace ferry
