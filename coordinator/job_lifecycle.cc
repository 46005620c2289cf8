#include "ferry/coordinator/job_lifecycle.h"

#include "ferry/coordinator/field_error.h"
#include "ferry/coordinator/schedule.h"

namespace json = boost::json;

namespace ferry::coordinator {

namespace {

// The policy's members, as the API spells them, and where each goes.
struct RuleMember {
  const char* key;
  int64_t RetentionPolicy::*field;
};
constexpr RuleMember kRuleMembers[] = {
    {"keep_last", &RetentionPolicy::keep_last},       {"keep_within_days", &RetentionPolicy::keep_within_days},
    {"keep_daily", &RetentionPolicy::keep_daily},     {"keep_weekly", &RetentionPolicy::keep_weekly},
    {"keep_monthly", &RetentionPolicy::keep_monthly}, {"keep_yearly", &RetentionPolicy::keep_yearly},
};

json::object PolicyJson(const RetentionPolicy& p) {
  json::object o;
  for (const auto& m : kRuleMembers)
    if (p.*m.field > 0) o[m.key] = p.*m.field;
  return o;
}

RetentionPolicy ReadPolicy(const json::value& v) {
  if (!v.is_object())
    throw FieldError("retention", "must be an object {keep_last, keep_within_days, keep_daily, keep_weekly, "
                                  "keep_monthly, keep_yearly}, or null to keep every point");
  FieldReader r(v.as_object(), "retention");
  RetentionPolicy p;
  for (const auto& m : kRuleMembers) {
    if (auto n = r.Int(m.key, false, 1, 100000)) p.*m.field = *n;
  }
  r.Finish();
  try {
    ValidateRetentionPolicy(p);
  } catch (const Error& e) {
    throw FieldError("retention", e.what());
  }
  return p;
}

}  // namespace

JobLifecycleFields ReadJobLifecycleFields(FieldReader& f) {
  JobLifecycleFields out;
  if (const json::value* v = f.Member("retention", false, true)) {
    out.retention = v->is_null() ? std::optional<RetentionPolicy>() : std::optional<RetentionPolicy>(ReadPolicy(*v));
  }
  out.lock_days = f.Int("lock_days", false, 0, 36500);
  if (const json::value* v = f.Member("health_check", false, true)) {
    if (v->is_null()) {
      out.check_schedule = std::optional<json::value>();
      out.check_skip_verified_s = 0;
    } else {
      if (!v->is_object()) throw FieldError("health_check", "must be an object {schedule, skip_verified_within_days}, or null");
      FieldReader h(v->as_object(), "health_check");
      const json::value* schedule = h.Member("schedule", true);
      out.check_schedule = std::optional<json::value>(ScheduleToJson(ParseSchedule(*schedule, "health_check.schedule")));
      out.check_skip_verified_s = h.Int("skip_verified_within_days", false, 0, 3650).value_or(0) * 86400;
      h.Finish();
    }
  }
  return out;
}

std::optional<std::string> RetentionColumn(const std::optional<RetentionPolicy>& policy) {
  if (!policy) return std::nullopt;
  return json::serialize(PolicyJson(*policy));
}

JobLifecycle JobLifecycleFromRow(const Statement& row, int first) {
  JobLifecycle l;
  if (!row.IsNull(first)) l.retention = ReadPolicy(json::parse(row.Text(first)));
  l.lock_days = row.Int(first + 1);
  if (!row.IsNull(first + 2)) l.check_schedule = json::parse(row.Text(first + 2));
  l.check_skip_verified_s = row.Int(first + 3);
  return l;
}

void AddJobLifecycleJson(json::object& job, const JobLifecycle& l, std::optional<int64_t> next_check_at_ms) {
  job["retention"] = l.retention ? json::value(PolicyJson(*l.retention)) : json::value(nullptr);
  job["retention_description"] = l.retention ? DescribeRetentionPolicy(*l.retention) : "keep every point";
  job["lock_days"] = l.lock_days;
  if (!l.check_schedule) {
    job["health_check"] = nullptr;
    return;
  }
  json::value next = nullptr;
  if (next_check_at_ms) next = FormatRfc3339(*next_check_at_ms / 1000);
  job["health_check"] = json::object{{"schedule", *l.check_schedule},
                                     {"schedule_description", DescribeSchedule(ParseSchedule(*l.check_schedule))},
                                     {"skip_verified_within_days", l.check_skip_verified_s / 86400},
                                     {"next_run_at", next}};
}

std::optional<int64_t> NextCheckAt(const std::optional<std::string>& check_schedule, int64_t after_ms) {
  if (!check_schedule) return std::nullopt;
  std::optional<int64_t> s = NextRun(ParseSchedule(json::parse(*check_schedule)), after_ms / 1000);
  if (!s) return std::nullopt;
  return *s * 1000;
}

json::object SpaceSummaryJson(const SpaceReport& s, int64_t measured_at_ms) {
  // The one JSON form of a space report (`ferry space --json`), without the
  // per-point list (each point's figures go into its row).
  SpaceReport summary = s;
  summary.points_space.clear();
  json::object o = json::parse(SpaceReportJson(summary)).as_object();
  o.erase("points");
  o["measured_at"] = FormatRfc3339(measured_at_ms / 1000);
  return o;
}

}  // namespace ferry::coordinator
