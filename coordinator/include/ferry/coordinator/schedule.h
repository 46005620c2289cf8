// Backup job schedules: "daily", "every N hours" and cron, each with optional
// permitted hours (docs/schedules.md). Pure: no I/O, no clock except the one
// "does it ever run" check in ParseSchedule.
//
// Times are wall-clock in the process's local time zone (TZ). Call tzset()
// after changing TZ: NextRun uses localtime_r, which need not re-read it.
#pragma once

#include <bitset>
#include <cstdint>
#include <optional>
#include <string>

#include <boost/json/value.hpp>

namespace ferry::coordinator {

enum class ScheduleKind { kDaily, kEvery, kCron };

// Build with ParseSchedule. Every kind compiles to the same calendar sets, so
// NextRun has one algorithm; the other members are what the user wrote, for
// ScheduleToJson and DescribeSchedule.
struct Schedule {
  ScheduleKind kind = ScheduleKind::kDaily;
  int minute_of_day = 0;            // daily: "at"; every: "from"
  int every_hours = 0;              // every: "hours"
  std::string cron_expr;            // cron: "expr", lower case, single spaces
  std::bitset<24> permitted_hours;  // all set when "permitted_hours" is absent

  // A run is at each of `minutes` past each of `hours` on every matching day.
  std::bitset<60> minutes;
  std::bitset<24> hours;           // already limited to permitted_hours
  std::bitset<32> days_of_month;   // bits 1..31
  std::bitset<13> months;          // bits 1..12
  std::bitset<7> days_of_week;     // bit 0 = Sunday; daily: its "days"
  bool day_of_month_or_week = false;  // cron restricting both: either matches

  bool operator==(const Schedule&) const = default;
};

// Throws FieldError naming the member at fault with `prefix` prepended
// ("schedule.at", "schedule.days[1]"), or `prefix` itself when the value is
// not an object or the schedule never runs.
Schedule ParseSchedule(const boost::json::value& v, const std::string& prefix = "schedule");

// Canonical form: members in a fixed order, defaults omitted, cron expression
// normalized. ParseSchedule(ScheduleToJson(s)) == s.
boost::json::value ScheduleToJson(const Schedule& s);

// One line for people, e.g. "daily at 22:00 on mon-fri, permitted hours 20-23".
std::string DescribeSchedule(const Schedule& s);

// The first run strictly after `after_unix` (seconds since the epoch), or
// nullopt if there is none within eight years (enough to reach any Feb 29).
std::optional<int64_t> NextRun(const Schedule& s, int64_t after_unix);

}  // namespace ferry::coordinator
