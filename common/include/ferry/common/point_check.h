// The last health check of a restore point (docs/repository-format.md,
// "Checks"): what `ferry verify` (and a job's scheduled health check) found,
// kept beside the points so that the next check can skip chunks verified
// recently (incremental verify) and the CLI and API can show each point's
// state. A record is advice, never a reason to restore: a missing or
// unreadable record means "never checked", so the next check reads the
// point's chunks again. Checksummed like a manifest (check_sha256), so damage
// to a record is told apart from a record.
#pragma once

#include <cstdint>
#include <string>

namespace ferry {

inline constexpr char kPointCheckFamily[] = "ferry-point-check";
inline constexpr int kPointCheckVersion = 1;

struct PointCheck {
  std::string point;
  int64_t checked_at = 0;  // Unix seconds (UTC) when the check ran
  // Since when every chunk of the point is known good: checked_at for a check
  // that read them all; earlier when it skipped chunks a check within the
  // skip window had read (the oldest of those checks).
  int64_t verified_since = 0;
  bool ok = true;
  uint64_t problems = 0;      // problems found in this point
  std::string first_problem;  // the first of them, for listings
  uint64_t chunks_read = 0;     // distinct chunks of the point read by this check
  uint64_t chunks_skipped = 0;  // known good from a recent check, not read again
};

std::string PointCheckToJson(const PointCheck& check);
// Throws kCorrupt naming `source`, kBadInput for a newer format.
PointCheck PointCheckFromJson(const std::string& json, const std::string& source);

}  // namespace ferry
