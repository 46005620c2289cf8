#include "ferry/coordinator/schedule.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "ferry/coordinator/field_error.h"

namespace ferry::coordinator {
namespace {

namespace json = boost::json;

Schedule Parse(std::string_view text, const std::string& prefix = "schedule") {
  return ParseSchedule(json::parse(text), prefix);
}

// "2026-01-09 22:00" (or with ":SS") as UTC.
int64_t Utc(const char* text) {
  tm t{};
  int seconds = 0;
  const int fields = std::sscanf(text, "%d-%d-%d %d:%d:%d", &t.tm_year, &t.tm_mon, &t.tm_mday,
                                 &t.tm_hour, &t.tm_min, &seconds);
  EXPECT_GE(fields, 5) << text;
  t.tm_year -= 1900;
  t.tm_mon -= 1;
  t.tm_sec = seconds;
  return timegm(&t);
}

// Local time, with weekday and zone so DST tests show which side they are on.
std::string Show(std::optional<int64_t> instant) {
  if (!instant) return "none";
  const time_t t = static_cast<time_t>(*instant);
  tm local{};
  localtime_r(&t, &local);
  char text[64];
  std::strftime(text, sizeof text, "%Y-%m-%d %a %H:%M %Z", &local);
  return text;
}

// The next `count` runs after `after`, each shown in local time.
std::vector<std::string> Runs(const Schedule& s, int64_t after, int count) {
  std::vector<std::string> runs;
  std::optional<int64_t> run = after;
  for (int i = 0; i < count && run; ++i) {
    run = NextRun(s, *run);
    runs.push_back(Show(run));
  }
  return runs;
}

// Every test runs in a zone it chooses; the process's TZ comes back after.
class ScheduleTest : public ::testing::Test {
 protected:
  ScheduleTest() {
    if (const char* tz = std::getenv("TZ")) saved_tz_ = tz;
    UseZone("UTC0");
  }
  ~ScheduleTest() override {
    if (saved_tz_) {
      setenv("TZ", saved_tz_->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }

  static void UseZone(const char* tz) {
    setenv("TZ", tz, 1);
    tzset();
  }

  // glibc silently falls back to UTC for a zone it cannot find.
  static bool ZoneInstalled(const char* zone) {
    const char* dir = std::getenv("TZDIR");
    return std::filesystem::exists(std::filesystem::path(dir ? dir : "/usr/share/zoneinfo") / zone);
  }

 private:
  std::optional<std::string> saved_tz_;
};

// ---------------------------------------------------------------------------
// daily

TEST_F(ScheduleTest, DailyRunsLaterTodayOrElseTomorrow) {
  const Schedule s = Parse(R"({"kind": "daily", "at": "22:00"})");
  EXPECT_EQ(Show(NextRun(s, Utc("2026-01-09 10:00"))), "2026-01-09 Fri 22:00 UTC");
  EXPECT_EQ(Show(NextRun(s, Utc("2026-01-09 21:59:59"))), "2026-01-09 Fri 22:00 UTC");
  // Strictly after: a run at `after` itself is the one that just happened.
  EXPECT_EQ(Show(NextRun(s, Utc("2026-01-09 22:00"))), "2026-01-10 Sat 22:00 UTC");
  EXPECT_EQ(Show(NextRun(s, Utc("2026-01-09 22:00:30"))), "2026-01-10 Sat 22:00 UTC");
  EXPECT_EQ(NextRun(s, Utc("2026-01-09 10:00")), Utc("2026-01-09 22:00"));
}

TEST_F(ScheduleTest, DailyCrossesMonthYearAndLeapDay) {
  const Schedule s = Parse(R"({"kind": "daily", "at": "23:30"})");
  EXPECT_EQ(Runs(s, Utc("2026-12-31 23:45"), 2),
            (std::vector<std::string>{"2027-01-01 Fri 23:30 UTC", "2027-01-02 Sat 23:30 UTC"}));
  EXPECT_EQ(Runs(s, Utc("2028-02-28 23:31"), 2),
            (std::vector<std::string>{"2028-02-29 Tue 23:30 UTC", "2028-03-01 Wed 23:30 UTC"}));
  EXPECT_EQ(Show(NextRun(s, Utc("2027-02-28 23:31"))), "2027-03-01 Mon 23:30 UTC");
}

TEST_F(ScheduleTest, DailyRunsOnlyOnListedDays) {
  const Schedule weekdays = Parse(R"({"kind": "daily", "at": "07:00", "days": ["mon", "wed", "fri"]})");
  EXPECT_EQ(Runs(weekdays, Utc("2026-01-09 08:00"), 4),
            (std::vector<std::string>{"2026-01-12 Mon 07:00 UTC", "2026-01-14 Wed 07:00 UTC",
                                      "2026-01-16 Fri 07:00 UTC", "2026-01-19 Mon 07:00 UTC"}));
  const Schedule weekend = Parse(R"({"kind": "daily", "at": "07:00", "days": ["SUN", "Sat"]})");
  EXPECT_EQ(Runs(weekend, Utc("2026-01-30 12:00"), 3),
            (std::vector<std::string>{"2026-01-31 Sat 07:00 UTC", "2026-02-01 Sun 07:00 UTC",
                                      "2026-02-07 Sat 07:00 UTC"}));
}

// ---------------------------------------------------------------------------
// every N hours

TEST_F(ScheduleTest, EveryNHoursRestartsFromEachMidnight) {
  // 01, 06, 11, 16, 21, then 01 again: not 02 (21 + 5) the next day.
  const Schedule s = Parse(R"({"kind": "every", "hours": 5, "from": "01:00"})");
  EXPECT_EQ(Runs(s, Utc("2026-01-09 20:00"), 7),
            (std::vector<std::string>{"2026-01-09 Fri 21:00 UTC", "2026-01-10 Sat 01:00 UTC",
                                      "2026-01-10 Sat 06:00 UTC", "2026-01-10 Sat 11:00 UTC",
                                      "2026-01-10 Sat 16:00 UTC", "2026-01-10 Sat 21:00 UTC",
                                      "2026-01-11 Sun 01:00 UTC"}));
}

TEST_F(ScheduleTest, EveryNHoursDefaultsFromMidnightAndKeepsTheMinute) {
  const Schedule eight = Parse(R"({"kind": "every", "hours": 8})");
  EXPECT_EQ(Runs(eight, Utc("2026-01-31 23:00"), 4),
            (std::vector<std::string>{"2026-02-01 Sun 00:00 UTC", "2026-02-01 Sun 08:00 UTC",
                                      "2026-02-01 Sun 16:00 UTC", "2026-02-02 Mon 00:00 UTC"}));
  const Schedule hourly = Parse(R"({"kind": "every", "hours": 1, "from": "22:15"})");
  EXPECT_EQ(Runs(hourly, Utc("2026-01-09 12:00"), 3),
            (std::vector<std::string>{"2026-01-09 Fri 22:15 UTC", "2026-01-09 Fri 23:15 UTC",
                                      "2026-01-10 Sat 22:15 UTC"}));
  const Schedule daily = Parse(R"({"kind": "every", "hours": 24, "from": "06:45"})");
  EXPECT_EQ(Runs(daily, Utc("2026-01-09 07:00"), 2),
            (std::vector<std::string>{"2026-01-10 Sat 06:45 UTC", "2026-01-11 Sun 06:45 UTC"}));
}

// ---------------------------------------------------------------------------
// cron

TEST_F(ScheduleTest, CronListsRangesAndSteps) {
  const Schedule list_and_range = Parse(R"({"kind": "cron", "expr": "5,35 9-11 * * *"})");
  EXPECT_EQ(Runs(list_and_range, Utc("2026-01-09 09:10"), 6),
            (std::vector<std::string>{"2026-01-09 Fri 09:35 UTC", "2026-01-09 Fri 10:05 UTC",
                                      "2026-01-09 Fri 10:35 UTC", "2026-01-09 Fri 11:05 UTC",
                                      "2026-01-09 Fri 11:35 UTC", "2026-01-10 Sat 09:05 UTC"}));
  const Schedule range_step = Parse(R"({"kind": "cron", "expr": "0 8-18/4 * * *"})");
  EXPECT_EQ(Runs(range_step, Utc("2026-01-09 09:00"), 4),
            (std::vector<std::string>{"2026-01-09 Fri 12:00 UTC", "2026-01-09 Fri 16:00 UTC",
                                      "2026-01-10 Sat 08:00 UTC", "2026-01-10 Sat 12:00 UTC"}));
  const Schedule star_step = Parse(R"({"kind": "cron", "expr": "*/20 23 * * *"})");
  EXPECT_EQ(Runs(star_step, Utc("2026-12-31 23:30"), 3),
            (std::vector<std::string>{"2026-12-31 Thu 23:40 UTC", "2027-01-01 Fri 23:00 UTC",
                                      "2027-01-01 Fri 23:20 UTC"}));
}

TEST_F(ScheduleTest, CronNamesAreCaseInsensitive) {
  // January has no Monday-Wednesday left after the 30th; February to June
  // are not listed; 2026-07-01 is a Wednesday.
  const Schedule s = Parse(R"({"kind": "cron", "expr": "30 6 * JAN,jul Mon-WED"})");
  EXPECT_EQ(Runs(s, Utc("2026-01-30 00:00"), 3),
            (std::vector<std::string>{"2026-07-01 Wed 06:30 UTC", "2026-07-06 Mon 06:30 UTC",
                                      "2026-07-07 Tue 06:30 UTC"}));
}

TEST_F(ScheduleTest, CronDayOfWeekSevenIsSunday) {
  const Schedule seven = Parse(R"({"kind": "cron", "expr": "0 12 * * 7"})");
  const Schedule zero = Parse(R"({"kind": "cron", "expr": "0 12 * * 0"})");
  EXPECT_EQ(Show(NextRun(seven, Utc("2026-01-09 00:00"))), "2026-01-11 Sun 12:00 UTC");
  EXPECT_EQ(seven.days_of_week, zero.days_of_week);
  const Schedule friday_to_sunday = Parse(R"({"kind": "cron", "expr": "0 12 * * 5-7"})");
  EXPECT_EQ(Runs(friday_to_sunday, Utc("2026-01-08 00:00"), 4),
            (std::vector<std::string>{"2026-01-09 Fri 12:00 UTC", "2026-01-10 Sat 12:00 UTC",
                                      "2026-01-11 Sun 12:00 UTC", "2026-01-16 Fri 12:00 UTC"}));
}

TEST_F(ScheduleTest, CronRunsOnEitherDayFieldWhenBothRestrict) {
  // Vixie cron: the 13th of each month and every Friday.
  const Schedule either = Parse(R"({"kind": "cron", "expr": "0 0 13 * fri"})");
  EXPECT_EQ(Runs(either, Utc("2026-01-01 00:00"), 4),
            (std::vector<std::string>{"2026-01-02 Fri 00:00 UTC", "2026-01-09 Fri 00:00 UTC",
                                      "2026-01-13 Tue 00:00 UTC", "2026-01-16 Fri 00:00 UTC"}));
  // A field starting with "*" does not restrict, even with a step: then both
  // must match (Fridays that fall on the 1st, 11th, 21st or 31st).
  const Schedule both = Parse(R"({"kind": "cron", "expr": "0 0 */10 * fri"})");
  EXPECT_EQ(Runs(both, Utc("2026-01-01 00:00"), 4),
            (std::vector<std::string>{"2026-05-01 Fri 00:00 UTC", "2026-07-31 Fri 00:00 UTC",
                                      "2026-08-21 Fri 00:00 UTC", "2026-09-11 Fri 00:00 UTC"}));
}

TEST_F(ScheduleTest, CronDayOfMonthSkipsShortMonths) {
  const Schedule s = Parse(R"({"kind": "cron", "expr": "0 0 31 * *"})");
  EXPECT_EQ(Runs(s, Utc("2026-01-31 01:00"), 3),
            (std::vector<std::string>{"2026-03-31 Tue 00:00 UTC", "2026-05-31 Sun 00:00 UTC",
                                      "2026-07-31 Fri 00:00 UTC"}));
}

TEST_F(ScheduleTest, CronFebruary29FindsTheNextLeapYear) {
  const Schedule s = Parse(R"({"kind": "cron", "expr": "0 0 29 2 *"})");
  EXPECT_EQ(Show(NextRun(s, Utc("2025-03-01 00:00"))), "2028-02-29 Tue 00:00 UTC");
  EXPECT_EQ(Show(NextRun(s, Utc("2028-02-29 00:00"))), "2032-02-29 Sun 00:00 UTC");
  // 2100 is not a leap year: eight years from 2096 to the next.
  EXPECT_EQ(Show(NextRun(s, Utc("2096-02-29 00:00"))), "2104-02-29 Fri 00:00 UTC");
}

// ---------------------------------------------------------------------------
// permitted hours

TEST_F(ScheduleTest, PermittedHoursSkipRunsOutsideTheWindow) {
  const Schedule hourly =
      Parse(R"({"kind": "every", "hours": 1, "permitted_hours": "0-1,22-23"})");
  EXPECT_EQ(Runs(hourly, Utc("2026-01-09 01:30"), 5),
            (std::vector<std::string>{"2026-01-09 Fri 22:00 UTC", "2026-01-09 Fri 23:00 UTC",
                                      "2026-01-10 Sat 00:00 UTC", "2026-01-10 Sat 01:00 UTC",
                                      "2026-01-10 Sat 22:00 UTC"}));
  const Schedule half_hourly =
      Parse(R"({"kind": "cron", "expr": "*/30 * * * *", "permitted_hours": "9"})");
  EXPECT_EQ(Runs(half_hourly, Utc("2026-01-09 10:00"), 3),
            (std::vector<std::string>{"2026-01-10 Sat 09:00 UTC", "2026-01-10 Sat 09:30 UTC",
                                      "2026-01-11 Sun 09:00 UTC"}));
  const Schedule inside =
      Parse(R"({"kind": "daily", "at": "22:00", "permitted_hours": "20-23"})");
  EXPECT_EQ(Show(NextRun(inside, Utc("2026-01-09 10:00"))), "2026-01-09 Fri 22:00 UTC");
}

// ---------------------------------------------------------------------------
// DST: Europe/Berlin skips 02:00-02:59 on 2026-03-29 and repeats it on
// 2026-10-25 (first CEST, UTC+2, then CET, UTC+1).

TEST_F(ScheduleTest, DstGapSkipsTheMissingTime) {
  if (!ZoneInstalled("Europe/Berlin")) GTEST_SKIP() << "no Europe/Berlin in the zoneinfo database";
  UseZone("Europe/Berlin");
  const Schedule daily = Parse(R"({"kind": "daily", "at": "02:30"})");
  EXPECT_EQ(Runs(daily, Utc("2026-03-27 12:00"), 2),
            (std::vector<std::string>{"2026-03-28 Sat 02:30 CET", "2026-03-30 Mon 02:30 CEST"}));
  EXPECT_EQ(NextRun(daily, Utc("2026-03-28 12:00")), Utc("2026-03-30 00:30"));

  const Schedule hourly = Parse(R"({"kind": "every", "hours": 1})");
  EXPECT_EQ(Runs(hourly, Utc("2026-03-28 23:30"), 3),  // 00:30 CET
            (std::vector<std::string>{"2026-03-29 Sun 01:00 CET", "2026-03-29 Sun 03:00 CEST",
                                      "2026-03-29 Sun 04:00 CEST"}));
  // Every N hours keeps to the wall clock: 5 hours pass between 00:00 and
  // 06:00 that day, not 6.
  const Schedule six = Parse(R"({"kind": "every", "hours": 6})");
  EXPECT_EQ(Runs(six, Utc("2026-03-28 22:00"), 3),
            (std::vector<std::string>{"2026-03-29 Sun 00:00 CET", "2026-03-29 Sun 06:00 CEST",
                                      "2026-03-29 Sun 12:00 CEST"}));
}

TEST_F(ScheduleTest, DstRepeatedTimeRunsOnceAtItsFirstOccurrence) {
  if (!ZoneInstalled("Europe/Berlin")) GTEST_SKIP() << "no Europe/Berlin in the zoneinfo database";
  UseZone("Europe/Berlin");
  const Schedule daily = Parse(R"({"kind": "daily", "at": "02:30"})");
  EXPECT_EQ(NextRun(daily, Utc("2026-10-24 10:00")), Utc("2026-10-25 00:30"));  // 02:30 CEST
  // Not again at 02:30 CET, an hour later: from the first occurrence and
  // from inside the repeated hour, the next run is the next day.
  EXPECT_EQ(Show(NextRun(daily, Utc("2026-10-25 00:30"))), "2026-10-26 Mon 02:30 CET");
  EXPECT_EQ(Show(NextRun(daily, Utc("2026-10-25 01:10"))), "2026-10-26 Mon 02:30 CET");
  EXPECT_EQ(NextRun(daily, Utc("2026-10-25 00:30")), Utc("2026-10-26 01:30"));

  const Schedule half_hourly = Parse(R"({"kind": "cron", "expr": "*/30 * * * *"})");
  EXPECT_EQ(Runs(half_hourly, Utc("2026-10-24 23:45"), 4),  // 01:45 CEST
            (std::vector<std::string>{"2026-10-25 Sun 02:00 CEST", "2026-10-25 Sun 02:30 CEST",
                                      "2026-10-25 Sun 03:00 CET", "2026-10-25 Sun 03:30 CET"}));
}

// ---------------------------------------------------------------------------
// canonical JSON, round trip, description

TEST_F(ScheduleTest, ToJsonIsCanonicalAndParsesBackToTheSameSchedule) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"permitted_hours": "20-23", "days": ["fri", "MON", "tue", "wed", "thu"], "at": "22:00", "kind": "daily"})",
       R"({"kind":"daily","at":"22:00","days":["mon","tue","wed","thu","fri"],"permitted_hours":"20-23"})"},
      {R"({"kind": "daily", "at": "07:05", "days": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]})",
       R"({"kind":"daily","at":"07:05"})"},
      {R"({"kind": "every", "hours": 6, "from": "00:00"})", R"({"kind":"every","hours":6})"},
      {R"({"kind": "every", "hours": 4, "from": "01:30", "permitted_hours": "0-23"})",
       R"({"kind":"every","hours":4,"from":"01:30"})"},
      {R"({"kind": "cron", "expr": "  0  22 * *\tMON-FRI ", "permitted_hours": "22, 0-6, 23"})",
       R"({"kind":"cron","expr":"0 22 * * mon-fri","permitted_hours":"0-6,22-23"})"},
  };
  for (const auto& [input, canonical] : cases) {
    SCOPED_TRACE(input);
    const Schedule s = Parse(input);
    const json::value written = ScheduleToJson(s);
    EXPECT_EQ(json::serialize(written), canonical);
    EXPECT_EQ(ParseSchedule(written), s);
    EXPECT_EQ(NextRun(ParseSchedule(written), Utc("2026-01-09 12:34")),
              NextRun(s, Utc("2026-01-09 12:34")));
  }
}

TEST_F(ScheduleTest, DescribeIsOneLineForPeople) {
  EXPECT_EQ(DescribeSchedule(Parse(
                R"({"kind": "daily", "at": "22:00", "days": ["mon","tue","wed","thu","fri"], "permitted_hours": "20-23"})")),
            "daily at 22:00 on mon-fri, permitted hours 20-23");
  EXPECT_EQ(DescribeSchedule(Parse(R"({"kind": "daily", "at": "07:05"})")), "daily at 07:05");
  EXPECT_EQ(DescribeSchedule(Parse(R"({"kind": "daily", "at": "07:05", "days": ["sun", "wed", "sat"]})")),
            "daily at 07:05 on wed,sat-sun");
  EXPECT_EQ(DescribeSchedule(Parse(R"({"kind": "every", "hours": 1})")), "every hour from 00:00 each day");
  EXPECT_EQ(DescribeSchedule(Parse(
                R"({"kind": "every", "hours": 6, "from": "01:00", "permitted_hours": "0-6,22-23"})")),
            "every 6 hours from 01:00 each day, permitted hours 0-6,22-23");
  EXPECT_EQ(DescribeSchedule(Parse(R"({"kind": "cron", "expr": "0 22 * * MON-FRI"})")),
            "cron \"0 22 * * mon-fri\"");
}

// ---------------------------------------------------------------------------
// rejections

struct Rejection {
  const char* input;
  const char* field;
  const char* detail_part;  // a piece of the message that says what is wrong
};

void ExpectRejected(const Rejection& r, const std::string& prefix = "schedule") {
  SCOPED_TRACE(r.input);
  try {
    Parse(r.input, prefix);
    ADD_FAILURE() << "accepted";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), r.field) << e.what();
    EXPECT_NE(e.detail().find(r.detail_part), std::string::npos)
        << "message \"" << e.detail() << "\" lacks \"" << r.detail_part << "\"";
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
  }
}

TEST_F(ScheduleTest, RejectsWrongShapeKindAndUnknownMembers) {
  for (const Rejection& r : std::vector<Rejection>{
           {R"([])", "schedule", "must be an object, not an array"},
           {R"("daily")", "schedule", "must be an object, not a string"},
           {R"({})", "schedule.kind", "is required"},
           {R"({"kind": 1})", "schedule.kind", "must be a string, not a number"},
           {R"({"kind": "weekly"})", "schedule.kind", "\"weekly\" is not a kind"},
           {R"({"kind": "daily", "at": "22:00", "foo": 1})", "schedule.foo", "unknown member"},
           {R"({"kind": "daily", "at": "22:00", "enabled": true})", "schedule.enabled", "unknown member"},
           {R"({"kind": "daily", "at": "22:00", "hours": 2})", "schedule.hours",
            "a \"daily\" schedule has kind, at, days, permitted_hours"},
           {R"({"kind": "cron", "expr": "* * * * *", "from": "01:00"})", "schedule.from", "unknown member"},
       }) {
    ExpectRejected(r);
  }
}

TEST_F(ScheduleTest, RejectsBadDailyMembers) {
  for (const Rejection& r : std::vector<Rejection>{
           {R"({"kind": "daily"})", "schedule.at", "is required"},
           {R"({"kind": "daily", "at": 2200})", "schedule.at", "must be a string, not a number"},
           {R"({"kind": "daily", "at": "25:00"})", "schedule.at", "hour 25 is outside 00-23"},
           {R"({"kind": "daily", "at": "12:60"})", "schedule.at", "minute 60 is outside 00-59"},
           {R"({"kind": "daily", "at": "7:30"})", "schedule.at", "is not a time"},
           {R"({"kind": "daily", "at": "12:3x"})", "schedule.at", "is not a time"},
           {R"({"kind": "daily", "at": "12-30"})", "schedule.at", "is not a time"},
           {R"({"kind": "daily", "at": "12:30:00"})", "schedule.at", "is not a time"},
           {R"({"kind": "daily", "at": "+1:30"})", "schedule.at", "is not a time"},
           {R"({"kind": "daily", "at": ""})", "schedule.at", "is not a time"},
           {R"({"kind": "daily", "at": "22:00", "days": "mon"})", "schedule.days", "must be an array"},
           {R"({"kind": "daily", "at": "22:00", "days": []})", "schedule.days", "at least one day"},
           {R"({"kind": "daily", "at": "22:00", "days": ["mon", "funday"]})", "schedule.days[1]",
            "\"funday\" is not a day"},
           {R"({"kind": "daily", "at": "22:00", "days": ["mon", 3]})", "schedule.days[1]",
            "must be a string, not a number"},
           {R"({"kind": "daily", "at": "22:00", "days": ["mon", "tue", "Mon"]})", "schedule.days[2]",
            "listed twice"},
       }) {
    ExpectRejected(r);
  }
}

TEST_F(ScheduleTest, RejectsBadEveryMembers) {
  for (const Rejection& r : std::vector<Rejection>{
           {R"({"kind": "every"})", "schedule.hours", "is required"},
           {R"({"kind": "every", "hours": 0})", "schedule.hours", "from 1 to 24, not 0"},
           {R"({"kind": "every", "hours": 25})", "schedule.hours", "from 1 to 24, not 25"},
           {R"({"kind": "every", "hours": -1})", "schedule.hours", "from 1 to 24, not -1"},
           {R"({"kind": "every", "hours": 18446744073709551615})", "schedule.hours", "from 1 to 24, not 1.8"},
           {R"({"kind": "every", "hours": true})", "schedule.hours", "from 1 to 24, not a boolean"},
           {R"({"kind": "every", "hours": 6.5})", "schedule.hours", "from 1 to 24, not 6.5"},
           {R"({"kind": "every", "hours": "6"})", "schedule.hours", "from 1 to 24, not a string"},
           {R"({"kind": "every", "hours": 6, "from": "24:00"})", "schedule.from", "hour 24 is outside"},
           {R"({"kind": "every", "hours": 6, "from": null})", "schedule.from", "must be a string, not null"},
       }) {
    ExpectRejected(r);
  }
}

TEST_F(ScheduleTest, RejectsBadCronExpressions) {
  for (const Rejection& r : std::vector<Rejection>{
           {R"({"kind": "cron"})", "schedule.expr", "is required"},
           {R"({"kind": "cron", "expr": 5})", "schedule.expr", "must be a string"},
           {R"({"kind": "cron", "expr": "* * * *"})", "schedule.expr", "has 4 fields; cron needs 5"},
           {R"({"kind": "cron", "expr": "0 0 * * * *"})", "schedule.expr", "has 6 fields"},
           {R"({"kind": "cron", "expr": "@daily"})", "schedule.expr", "has 1 field;"},
           {R"({"kind": "cron", "expr": "60 * * * *"})", "schedule.expr", "minute \"60\": 60 is outside 0-59"},
           {R"({"kind": "cron", "expr": "* 24 * * *"})", "schedule.expr", "hour \"24\": 24 is outside 0-23"},
           {R"({"kind": "cron", "expr": "* * 0 * *"})", "schedule.expr", "day-of-month \"0\": 0 is outside 1-31"},
           {R"({"kind": "cron", "expr": "* * 1,32 * *"})", "schedule.expr", "32 is outside 1-31"},
           {R"({"kind": "cron", "expr": "* * * 13 *"})", "schedule.expr", "month \"13\": 13 is outside 1-12"},
           {R"({"kind": "cron", "expr": "* * * * 8"})", "schedule.expr", "day-of-week \"8\": 8 is outside 0-7"},
           {R"({"kind": "cron", "expr": "*/0 * * * *"})", "schedule.expr", "step must be at least 1"},
           {R"({"kind": "cron", "expr": "5-2 * * * *"})", "schedule.expr", "range 5-2 is inverted"},
           {R"({"kind": "cron", "expr": "* * * * fri-mon"})", "schedule.expr", "range fri-mon is inverted"},
           {R"({"kind": "cron", "expr": "abc * * * *"})", "schedule.expr", "\"abc\" is not a number"},
           {R"({"kind": "cron", "expr": "* * * * funday"})", "schedule.expr", "\"funday\" is not a number or a name"},
           {R"({"kind": "cron", "expr": "* * * mon *"})", "schedule.expr", "month \"mon\": \"mon\" is not a number or a name"},
           {R"({"kind": "cron", "expr": "* * jan * *"})", "schedule.expr", "\"jan\" is not a number"},
           {R"({"kind": "cron", "expr": "1- * * * *"})", "schedule.expr", "a range needs both ends"},
           {R"({"kind": "cron", "expr": "1-2-3 * * * *"})", "schedule.expr", "\"2-3\" is not a number"},
           {R"({"kind": "cron", "expr": "*/ * * * *"})", "schedule.expr", "\"\" is not a step"},
           {R"({"kind": "cron", "expr": "*/x * * * *"})", "schedule.expr", "\"x\" is not a step"},
           {R"({"kind": "cron", "expr": "1,,2 * * * *"})", "schedule.expr", "empty list item"},
           {R"({"kind": "cron", "expr": "5/10 * * * *"})", "schedule.expr", "a step needs a range: write */10 or 5-59/10"},
       }) {
    ExpectRejected(r);
  }
}

TEST_F(ScheduleTest, RejectsBadPermittedHours) {
  for (const Rejection& r : std::vector<Rejection>{
           {R"({"kind": "every", "hours": 1, "permitted_hours": 5})", "schedule.permitted_hours", "must be a string"},
           {R"({"kind": "every", "hours": 1, "permitted_hours": "24"})", "schedule.permitted_hours", "hours are 0-23"},
           {R"({"kind": "every", "hours": 1, "permitted_hours": "22-6"})", "schedule.permitted_hours",
            "inverted; to span midnight write \"22-23,0-6\""},
           {R"({"kind": "every", "hours": 1, "permitted_hours": ""})", "schedule.permitted_hours", "is not an hour"},
           {R"({"kind": "every", "hours": 1, "permitted_hours": "night"})", "schedule.permitted_hours", "is not an hour"},
           {R"({"kind": "every", "hours": 1, "permitted_hours": "1,,2"})", "schedule.permitted_hours", "is not an hour"},
       }) {
    ExpectRejected(r);
  }
}

TEST_F(ScheduleTest, RejectsSchedulesThatNeverRun) {
  for (const Rejection& r : std::vector<Rejection>{
           {R"({"kind": "cron", "expr": "0 0 31 2 *"})", "schedule", "never runs: no day in 8 years"},
           {R"({"kind": "cron", "expr": "0 0 30 feb *"})", "schedule", "never runs"},
           {R"({"kind": "cron", "expr": "0 0 31 4,6,9,11 *"})", "schedule", "never runs"},
           {R"({"kind": "daily", "at": "22:00", "permitted_hours": "0-6"})", "schedule",
            "never runs: its start hours (22) are all outside permitted_hours (0-6)"},
           {R"({"kind": "every", "hours": 6, "from": "01:00", "permitted_hours": "3-4"})", "schedule",
            "its start hours (1,7,13,19) are all outside permitted_hours (3-4)"},
           {R"({"kind": "cron", "expr": "0 9-17 * * *", "permitted_hours": "0-6,18-23"})", "schedule",
            "its start hours (9-17)"},
       }) {
    ExpectRejected(r);
  }
}

TEST_F(ScheduleTest, AcceptsRareButPossibleSchedules) {
  EXPECT_NO_THROW(Parse(R"({"kind": "cron", "expr": "0 0 29 2 *"})"));
  // Either day field: every Monday in February, whatever the 31st does.
  EXPECT_NO_THROW(Parse(R"({"kind": "cron", "expr": "0 0 31 2 mon"})"));
  EXPECT_NO_THROW(Parse(R"({"kind": "every", "hours": 6, "from": "01:00", "permitted_hours": "19"})"));
}

TEST_F(ScheduleTest, FieldNamesCarryTheCallersPrefix) {
  const std::string prefix = "jobs[3].schedule";
  ExpectRejected({R"({"kind": "daily", "at": "9"})", "jobs[3].schedule.at", "is not a time"}, prefix);
  ExpectRejected({R"({"kind": "daily", "at": "09:00", "days": ["x"]})", "jobs[3].schedule.days[0]", "not a day"},
                 prefix);
  ExpectRejected({R"(42)", "jobs[3].schedule", "must be an object"}, prefix);
  ExpectRejected({R"({"kind": "cron", "expr": "0 0 31 2 *"})", "jobs[3].schedule", "never runs"}, prefix);
}

// ---------------------------------------------------------------------------

TEST_F(ScheduleTest, TenThousandNextRunsAllFindARun) {
  const std::vector<Schedule> schedules = {
      Parse(R"({"kind": "daily", "at": "22:00", "days": ["mon", "fri"]})"),
      Parse(R"({"kind": "every", "hours": 3, "from": "00:15", "permitted_hours": "0-6,20-23"})"),
      Parse(R"({"kind": "cron", "expr": "*/5 9-17 * * mon-fri"})"),
      Parse(R"({"kind": "cron", "expr": "0 0 29 2 *"})"),
  };
  int64_t after = Utc("2026-01-09 12:34");
  int found = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 10000; ++i) {
    const auto run = NextRun(schedules[i % schedules.size()], after + i * 7919);
    if (run && *run > after + i * 7919) ++found;
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(found, 10000);
  std::cout << "10000 NextRun calls: "
            << std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count() << " us\n";
}

}  // namespace
}  // namespace ferry::coordinator
