// Retention: which restore points a policy keeps (docs/retention.md).
//
// A policy is a set of rules, evaluated per group (one VM, by uuid or else
// name, and one chain), each rule on its own over all the group's points,
// newest first; a point kept by any rule stays, and a locked point stays
// whatever the rules say:
//
//   keep-last N        the N newest points
//   keep-within N      every point started at or after now - N days
//   keep-daily N       the newest point of each of the N newest UTC days
//                      that have points (likewise weekly: ISO 8601 weeks,
//                      monthly, yearly)
//
// Evaluate is a pure function of the points and a clock value, so tests run
// it over generated histories; Prune applies it to a PointStore.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/manifest.h"
#include "ferry/common/point_store.h"

namespace ferry {

struct RetentionPolicy {
  int64_t keep_last = 0;
  int64_t keep_within_days = 0;
  int64_t keep_daily = 0;
  int64_t keep_weekly = 0;
  int64_t keep_monthly = 0;
  int64_t keep_yearly = 0;
};

// The rules' option names, as the CLI (--keep-last ...) and job policies
// spell them: keep-last, keep-within, keep-daily, keep-weekly, keep-monthly,
// keep-yearly.
const std::vector<std::string>& RetentionRuleNames();
// Sets one rule from its name and text: a count of 1 to 100000 ("7"), or for
// keep-within a number of days with a "d" ("30d"). kBadInput naming the rule
// and the value.
void SetRetentionRule(RetentionPolicy* policy, const std::string& rule, const std::string& value);
// A policy with no rule would remove every unlocked point: kBadInput. Also
// checks every count's range (for policies built in code or read from JSON).
void ValidateRetentionPolicy(const RetentionPolicy& policy);
// "keep-last 3, keep-daily 7", for logs and reports.
std::string DescribeRetentionPolicy(const RetentionPolicy& policy);

// What Evaluate needs of a point.
struct RetentionPoint {
  std::string id;
  VmIdentity vm;
  std::string chain;
  std::string started_at;    // RFC 3339 (the manifest's)
  int64_t locked_until = 0;  // Unix seconds; 0: not locked
};

RetentionPoint RetentionPointOf(const RestorePointManifest& manifest, int64_t locked_until);

struct RetentionDecision {
  std::string id;
  std::string group;  // "<vm uuid or name> chain <chain>"
  bool keep = false;
  // Why it is kept, in rule order: "last 1", "within 30d", "daily 2026-11-30",
  // "weekly 2026-W48", "monthly 2026-11", "yearly 2026",
  // "locked until 2026-12-31T00:00:00Z", "started_at unreadable: ..."
  std::vector<std::string> reasons;
};

// One decision per point, in the order of `points`. `now` is Unix seconds.
// Validates the policy (ValidateRetentionPolicy). A point whose started_at
// cannot be read is kept, with the reason.
std::vector<RetentionDecision> Evaluate(const RetentionPolicy& policy, const std::vector<RetentionPoint>& points,
                                        int64_t now);

// Seconds since the epoch of an RFC 3339 time ("2026-11-30T23:59:59Z",
// fractions and +hh:mm offsets accepted). kBadInput naming the text.
int64_t ParseRfc3339(const std::string& text);
// "2026-11-30T23:59:59Z".
std::string FormatRfc3339(int64_t unix_seconds);

struct PruneOptions {
  RetentionPolicy policy;
  std::optional<std::string> vm;     // only groups of this VM (name or uuid)
  std::optional<std::string> chain;  // only groups of this chain (a coordinator job's)
  bool dry_run = false;
  int64_t now = 0;  // Unix seconds
};

struct PruneEntry {
  RetentionDecision decision;
  std::string started_at;
  // For a point to remove: "removed", "dry run", or why it stayed
  // ("skipped: in use by a restore, verify or backup").
  std::string outcome;
  bool removed = false;
};

struct PruneReport {
  std::vector<PruneEntry> entries;        // every point considered, oldest first
  std::vector<PointProblem> problems;     // unreadable entries of points/: never removed
  size_t kept = 0, removed = 0, skipped = 0;
  // The first removal failure that is not "in use", "locked" or "gone"
  // (the OS refused, say): the prune went on, and its exit code says so.
  std::optional<Error> failure;
};

// Evaluates the policy over the store's points (those of `vm` only, when
// given) and, unless a dry run, removes what it does not keep. A point that
// fails to be removed is skipped and reported (in use, locked meanwhile, or
// `failure` below); the prune goes on. Throws kBadInput for a bad policy
// before anything is removed.
PruneReport Prune(PointStore& store, const PruneOptions& options);

}  // namespace ferry
