// A job's repository lifecycle settings (docs/api.md, "Jobs"): its retention
// policy, the lock of every new point, its scheduled health check. One
// reading of them (API bodies), one form in the database, one in responses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <boost/json.hpp>

#include "ferry/common/gc.h"
#include "ferry/common/retention.h"
#include "ferry/coordinator/database.h"
#include "ferry/coordinator/json_input.h"

namespace ferry::coordinator {

struct JobLifecycle {
  std::optional<RetentionPolicy> retention;  // nullopt: every point is kept
  int64_t lock_days = 0;                     // 0: new points are not locked
  std::optional<boost::json::value> check_schedule;  // canonical (schedule.h); nullopt: no health check
  int64_t check_skip_verified_s = 0;
};

// The members a create or patch body may carry. Each is nullopt when absent;
// an inner nullopt is an explicit null (turned off).
struct JobLifecycleFields {
  std::optional<std::optional<RetentionPolicy>> retention;
  std::optional<int64_t> lock_days;
  std::optional<std::optional<boost::json::value>> check_schedule;  // "health_check"
  std::optional<int64_t> check_skip_verified_s;
};
// Reads "retention" ({"keep_last", "keep_within_days", "keep_daily",
// "keep_weekly", "keep_monthly", "keep_yearly"} or null), "lock_days" and
// "health_check" ({"schedule", "skip_verified_within_days"} or null) from a
// job body. FieldError naming the member ("retention.keep_daily").
JobLifecycleFields ReadJobLifecycleFields(FieldReader& body);

// The database columns: retention, lock_days, check_schedule,
// check_skip_verified_s, from `first` on.
JobLifecycle JobLifecycleFromRow(const Statement& row, int first);
std::optional<std::string> RetentionColumn(const std::optional<RetentionPolicy>& policy);

// What responses show: "retention", "retention_description", "lock_days",
// "health_check" (with "next_run_at": `next_check_at_ms`).
void AddJobLifecycleJson(boost::json::object& job, const JobLifecycle& lifecycle,
                         std::optional<int64_t> next_check_at_ms);

// When a job's next health check is due after `after_ms`: nullopt without a schedule.
std::optional<int64_t> NextCheckAt(const std::optional<std::string>& check_schedule, int64_t after_ms);

// What a repository's row keeps of a space measurement (repositories.space).
boost::json::object SpaceSummaryJson(const SpaceReport& space, int64_t measured_at_ms);

}  // namespace ferry::coordinator
