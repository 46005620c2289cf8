#include "ferry/coordinator/schedule.h"

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <span>
#include <sstream>
#include <string_view>
#include <vector>

#include "ferry/coordinator/field_error.h"

namespace ferry::coordinator {
namespace {

namespace json = boost::json;

constexpr std::array<std::string_view, 7> kDayNames = {"sun", "mon", "tue", "wed",
                                                       "thu", "fri", "sat"};
constexpr std::array<std::string_view, 12> kMonthNames = {
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"};
// People read weeks Monday first: "mon-fri", "sat-sun".
constexpr std::array<int, 7> kWeekOrder = {1, 2, 3, 4, 5, 6, 0};

// Long enough to reach the next Feb 29 from any date (2096 to 2104 has none
// in between), short enough that a schedule that never runs is found fast.
constexpr int64_t kHorizonDays = 8 * 366;
constexpr int64_t kSecondsPerDay = 86400;

// ---------------------------------------------------------------------------
// Calendar arithmetic on days since 1970-01-01, without the C library, so the
// day loop in NextRun costs a few integer operations per day. Algorithms from
// Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms".

struct CivilDate {
  int64_t year;
  int month;  // 1..12
  int day;    // 1..31
};

int64_t DaysFromCivil(int64_t year, int month, int day) {
  year -= month <= 2 ? 1 : 0;
  const int64_t era = (year >= 0 ? year : year - 399) / 400;
  const int64_t year_of_era = year - era * 400;
  const int64_t day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
  const int64_t day_of_era =
      year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + day_of_era - 719468;
}

CivilDate CivilFromDays(int64_t days) {
  days += 719468;
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const int64_t day_of_era = days - era * 146097;
  const int64_t year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  const int64_t day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const int64_t shifted_month = (5 * day_of_year + 2) / 153;  // March = 0
  const int day = static_cast<int>(day_of_year - (153 * shifted_month + 2) / 5 + 1);
  const int month = static_cast<int>(shifted_month < 10 ? shifted_month + 3 : shifted_month - 9);
  return {year_of_era + era * 400 + (month <= 2 ? 1 : 0), month, day};
}

// 0 = Sunday; 1970-01-01 was a Thursday.
int WeekdayFromDays(int64_t days) {
  const int64_t weekday = (days + 4) % 7;
  return static_cast<int>(weekday < 0 ? weekday + 7 : weekday);
}

std::optional<int64_t> UtcOffsetAt(int64_t instant) {
  const time_t t = static_cast<time_t>(instant);
  tm local{};
  if (localtime_r(&t, &local) == nullptr) return std::nullopt;
  return local.tm_gmtoff;
}

// The earliest instant whose local time is `wall` (seconds since 1970-01-01
// 00:00 local), or nullopt if the clocks skip it (spring forward). Rather
// than mktime's guess in a repeated hour, take the offsets in force a day
// before and a day after: with at most one transition in between, the wall
// time exists under one or both of them, and under the earlier offset first.
std::optional<int64_t> FirstInstantOfWallTime(int64_t wall) {
  const auto offset_before = UtcOffsetAt(wall - kSecondsPerDay);
  const auto offset_after = UtcOffsetAt(wall + kSecondsPerDay);
  if (!offset_before || !offset_after) return std::nullopt;
  for (int64_t offset : {*offset_before, *offset_after}) {
    const int64_t instant = wall - offset;
    if (UtcOffsetAt(instant) == offset) return instant;
  }
  return std::nullopt;
}

bool DayMatches(const Schedule& s, const CivilDate& date, int weekday) {
  const bool day_of_month = s.days_of_month[date.day];
  const bool day_of_week = s.days_of_week[weekday];
  return s.day_of_month_or_week ? day_of_month || day_of_week : day_of_month && day_of_week;
}

// ---------------------------------------------------------------------------
// Formatting.

std::string FormatClock(int minute_of_day) {
  char text[16];
  std::snprintf(text, sizeof text, "%02d:%02d", minute_of_day / 60, minute_of_day % 60);
  return text;
}

// Members of a set as "0-6,22-23": runs of two or more, consecutive in
// `order`, become ranges.
template <typename IsMember, typename Name>
std::string FormatRuns(std::span<const int> order, IsMember is_member, Name name) {
  std::string text;
  for (size_t i = 0; i < order.size();) {
    if (!is_member(order[i])) {
      ++i;
      continue;
    }
    size_t end = i + 1;
    while (end < order.size() && is_member(order[end])) ++end;
    if (!text.empty()) text += ',';
    text += name(order[i]);
    if (end - i > 1) text += "-" + name(order[end - 1]);
    i = end;
  }
  return text;
}

std::string FormatHours(const std::bitset<24>& hours) {
  static constexpr auto kAllHours = [] {
    std::array<int, 24> all{};
    for (int h = 0; h < 24; ++h) all[h] = h;
    return all;
  }();
  return FormatRuns(
      kAllHours, [&](int h) { return hours[h]; }, [](int h) { return std::to_string(h); });
}

std::string FormatDays(const std::bitset<7>& days) {
  return FormatRuns(
      kWeekOrder, [&](int d) { return days[d]; },
      [](int d) { return std::string(kDayNames[d]); });
}

const char* KindName(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kDaily: return "daily";
    case ScheduleKind::kEvery: return "every";
    case ScheduleKind::kCron: return "cron";
  }
  return "?";
}

const char* JsonTypeName(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_: return "a number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// Parsing pieces shared by the kinds.

std::string Quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

std::string Lower(std::string_view text) {
  std::string lower(text);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower;
}

// Decimal digits only: no sign, no spaces, no "0x"; at most 9, so it fits.
std::optional<int> ParseNumber(std::string_view text) {
  if (text.empty() || text.size() > 9) return std::nullopt;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  int value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  return value;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  return text;
}

std::vector<std::string_view> Split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    const size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

std::string_view RequireString(const json::value& v, const std::string& field) {
  if (!v.is_string()) throw FieldError(field, std::string("must be a string, not ") + JsonTypeName(v));
  return v.get_string();
}

// "HH:MM", 24-hour, two digits each, as minutes since midnight.
int ParseClock(const json::value& v, const std::string& field) {
  const std::string_view text = RequireString(v, field);
  const auto hour = text.size() == 5 && text[2] == ':' ? ParseNumber(text.substr(0, 2)) : std::nullopt;
  const auto minute = hour ? ParseNumber(text.substr(3, 2)) : std::nullopt;
  if (!hour || !minute) {
    throw FieldError(field, Quoted(text) + " is not a time; expected \"HH:MM\", 24-hour, e.g. \"07:30\"");
  }
  if (*hour > 23) throw FieldError(field, Quoted(text) + ": hour " + std::to_string(*hour) + " is outside 00-23");
  if (*minute > 59) {
    throw FieldError(field, Quoted(text) + ": minute " + std::to_string(*minute) + " is outside 00-59");
  }
  return *hour * 60 + *minute;
}

// "0-6,22-23": hours and ranges of hours, 0-23.
std::bitset<24> ParsePermittedHours(const json::value& v, const std::string& field) {
  const std::string_view text = RequireString(v, field);
  std::bitset<24> hours;
  for (std::string_view item : Split(text, ',')) {
    item = Trim(item);
    const size_t dash = item.find('-');
    const auto first = ParseNumber(item.substr(0, dash));
    const auto last = dash == std::string_view::npos ? first : ParseNumber(item.substr(dash + 1));
    if (!first || !last) {
      throw FieldError(field, Quoted(item) + " is not an hour or a range of hours; expected e.g. \"0-6,22-23\"");
    }
    if (*first > 23 || *last > 23) throw FieldError(field, Quoted(item) + ": hours are 0-23");
    if (*first > *last) {
      throw FieldError(field, Quoted(item) + " is inverted; to span midnight write \"" +
                                  std::to_string(*first) + "-23,0-" + std::to_string(*last) + "\"");
    }
    for (int h = *first; h <= *last; ++h) hours.set(h);
  }
  return hours;
}

// "days": ["mon", "fri"], case-insensitive, each at most once.
std::bitset<7> ParseDays(const json::value& v, const std::string& field) {
  if (!v.is_array()) throw FieldError(field, std::string("must be an array of day names, not ") + JsonTypeName(v));
  const json::array& names = v.get_array();
  if (names.empty()) throw FieldError(field, "must name at least one day");
  std::bitset<7> days;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string element = field + "[" + std::to_string(i) + "]";
    const std::string name = Lower(RequireString(names[i], element));
    size_t day = 0;
    while (day < kDayNames.size() && kDayNames[day] != name) ++day;
    if (day == kDayNames.size()) {
      throw FieldError(element, Quoted(name) + " is not a day; expected mon, tue, wed, thu, fri, sat or sun");
    }
    if (days[day]) throw FieldError(element, Quoted(name) + " is listed twice");
    days.set(day);
  }
  return days;
}

int ParseEveryHours(const json::value& v, const std::string& field) {
  if (v.is_int64() && v.get_int64() >= 1 && v.get_int64() <= 24) return static_cast<int>(v.get_int64());
  std::string given = JsonTypeName(v);
  if (v.is_number()) {
    // Not json::serialize: it writes 6.5 as "6.5E0".
    std::ostringstream number;
    number << v.to_number<double>();
    given = number.str();
  }
  throw FieldError(field, "must be a whole number of hours from 1 to 24, not " + given);
}

// ---------------------------------------------------------------------------
// Cron.

struct CronField {
  const char* name;  // for messages
  int min;
  int max;
  std::span<const std::string_view> names;  // names[i] is the value names_from + i
  int names_from;
};

constexpr CronField kCronMinute{"minute", 0, 59, {}, 0};
constexpr CronField kCronHour{"hour", 0, 23, {}, 0};
constexpr CronField kCronDayOfMonth{"day-of-month", 1, 31, {}, 0};
constexpr CronField kCronMonth{"month", 1, 12, kMonthNames, 1};
constexpr CronField kCronDayOfWeek{"day-of-week", 0, 7, kDayNames, 0};  // 7 is Sunday too

class CronFieldParser {
 public:
  CronFieldParser(const CronField& spec, std::string_view token, const std::string& field)
      : spec_(spec), token_(token), field_(field) {}

  // Bit v set for each value v the field matches.
  uint64_t Parse() const {
    uint64_t bits = 0;
    for (std::string_view item : Split(token_, ',')) bits |= ParseItem(item);
    return bits;
  }

 private:
  [[noreturn]] void Fail(const std::string& problem) const {
    throw FieldError(field_, std::string(spec_.name) + " " + Quoted(token_) + ": " + problem);
  }

  // "*", "a", "a-b", "*/n" or "a-b/n".
  uint64_t ParseItem(std::string_view item) const {
    if (item.empty()) Fail("empty list item");
    const size_t slash = item.find('/');
    const std::string_view range = item.substr(0, slash);
    int first = spec_.min;
    int last = spec_.max;
    if (range != "*") {
      const size_t dash = range.find('-');
      first = ParseValue(range.substr(0, dash));
      last = dash == std::string_view::npos ? first : ParseValue(range.substr(dash + 1));
      if (first > last) Fail("range " + std::string(range) + " is inverted");
    }
    int step = 1;
    if (slash != std::string_view::npos) {
      const auto parsed = ParseNumber(item.substr(slash + 1));
      if (!parsed) Fail(Quoted(item.substr(slash + 1)) + " is not a step; expected a number");
      if (*parsed == 0) Fail("step must be at least 1");
      if (range.find('-') == std::string_view::npos && range != "*") {
        Fail("a step needs a range: write */" + std::to_string(*parsed) + " or " + std::string(range) +
             "-" + std::to_string(spec_.max) + "/" + std::to_string(*parsed));
      }
      step = *parsed;
    }
    uint64_t bits = 0;
    for (int v = first; v <= last; v += step) bits |= uint64_t{1} << v;
    return bits;
  }

  int ParseValue(std::string_view text) const {
    if (text.empty()) Fail("a range needs both ends");
    if (const auto number = ParseNumber(text)) {
      if (*number < spec_.min || *number > spec_.max) {
        Fail(std::to_string(*number) + " is outside " + std::to_string(spec_.min) + "-" +
             std::to_string(spec_.max));
      }
      return *number;
    }
    for (size_t i = 0; i < spec_.names.size(); ++i) {
      if (spec_.names[i] == text) return spec_.names_from + static_cast<int>(i);
    }
    Fail(Quoted(text) + (spec_.names.empty() ? " is not a number" : " is not a number or a name"));
  }

  const CronField& spec_;
  std::string_view token_;
  const std::string& field_;
};

// Fills the calendar sets from "m h dom mon dow"; returns the expression
// normalized (lower case, single spaces).
std::string CompileCron(std::string_view expr, const std::string& field, Schedule& s) {
  std::vector<std::string> tokens;
  std::istringstream words(Lower(expr));
  for (std::string token; words >> token;) tokens.push_back(token);
  if (tokens.size() != 5) {
    throw FieldError(field, Quoted(expr) + " has " + std::to_string(tokens.size()) +
                                (tokens.size() == 1 ? " field" : " fields") +
                                "; cron needs 5: minute hour day-of-month month day-of-week");
  }
  s.minutes = CronFieldParser(kCronMinute, tokens[0], field).Parse();
  s.hours = CronFieldParser(kCronHour, tokens[1], field).Parse();
  s.days_of_month = CronFieldParser(kCronDayOfMonth, tokens[2], field).Parse();
  s.months = CronFieldParser(kCronMonth, tokens[3], field).Parse();
  const uint64_t days_of_week = CronFieldParser(kCronDayOfWeek, tokens[4], field).Parse();
  s.days_of_week = days_of_week | (days_of_week >> 7);  // 7 is Sunday, bit 0
  // Vixie cron: a field starting with "*" (also "*/2") does not restrict;
  // when both day fields restrict, a day matching either runs.
  s.day_of_month_or_week = tokens[2][0] != '*' && tokens[4][0] != '*';
  return tokens[0] + " " + tokens[1] + " " + tokens[2] + " " + tokens[3] + " " + tokens[4];
}

// ---------------------------------------------------------------------------

std::string Member(const std::string& prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : prefix + "." + std::string(name);
}

// "Does it ever run" searches from now, the future that matters, and from a
// fixed date, so that accepting a schedule does not depend on the day alone.
constexpr int64_t kReferenceTime = 1704067200;  // 2024-01-01T00:00:00Z

void RequireRuns(const Schedule& s, const std::bitset<24>& run_hours, const std::string& field) {
  if (NextRun(s, kReferenceTime) && NextRun(s, std::time(nullptr))) return;
  if (s.hours.none()) {
    throw FieldError(field, "never runs: its start hours (" + FormatHours(run_hours) +
                                ") are all outside permitted_hours (" +
                                FormatHours(s.permitted_hours) + ")");
  }
  const std::string horizon = std::to_string(kHorizonDays / 366) + " years";
  if (s.kind == ScheduleKind::kCron) {
    throw FieldError(field, "never runs: no day in " + horizon +
                                " matches the day fields (day-of-month, month, day-of-week) of " +
                                Quoted(s.cron_expr));
  }
  // Only a local time zone whose clocks skip every run time gets here.
  throw FieldError(field, "never runs: none of its times exists in the local time zone within " +
                              horizon);
}

}  // namespace

Schedule ParseSchedule(const json::value& v, const std::string& prefix) {
  if (!v.is_object()) throw FieldError(prefix, std::string("must be an object, not ") + JsonTypeName(v));
  const json::object& o = v.get_object();

  const std::string kind_field = Member(prefix, "kind");
  const json::value* kind_value = o.if_contains("kind");
  if (kind_value == nullptr) throw FieldError(kind_field, "is required: daily, every or cron");
  const std::string_view kind_name = RequireString(*kind_value, kind_field);
  Schedule s;
  std::vector<std::string_view> members = {"kind"};
  if (kind_name == "daily") {
    s.kind = ScheduleKind::kDaily;
    members.insert(members.end(), {"at", "days"});
  } else if (kind_name == "every") {
    s.kind = ScheduleKind::kEvery;
    members.insert(members.end(), {"hours", "from"});
  } else if (kind_name == "cron") {
    s.kind = ScheduleKind::kCron;
    members.insert(members.end(), {"expr"});
  } else {
    throw FieldError(kind_field, Quoted(kind_name) + " is not a kind; expected daily, every or cron");
  }
  members.push_back("permitted_hours");
  for (const auto& member : o) {
    if (std::find(members.begin(), members.end(), member.key()) == members.end()) {
      std::string known;
      for (std::string_view name : members) known += (known.empty() ? "" : ", ") + std::string(name);
      throw FieldError(Member(prefix, member.key()),
                       "unknown member; a " + Quoted(kind_name) + " schedule has " + known);
    }
  }
  auto required = [&](std::string_view name) -> const json::value& {
    const json::value* value = o.if_contains(name);
    if (value == nullptr) {
      throw FieldError(Member(prefix, name), "is required for a " + Quoted(kind_name) + " schedule");
    }
    return *value;
  };

  // Daily and every run on any date (daily's "days" aside); cron sets its own.
  s.days_of_month.set().reset(0);
  s.months.set().reset(0);
  s.days_of_week.set();
  switch (s.kind) {
    case ScheduleKind::kDaily:
      s.minute_of_day = ParseClock(required("at"), Member(prefix, "at"));
      if (const json::value* days = o.if_contains("days")) {
        s.days_of_week = ParseDays(*days, Member(prefix, "days"));
      }
      s.minutes.set(s.minute_of_day % 60);
      s.hours.set(s.minute_of_day / 60);
      break;
    case ScheduleKind::kEvery:
      s.every_hours = ParseEveryHours(required("hours"), Member(prefix, "hours"));
      if (const json::value* from = o.if_contains("from")) {
        s.minute_of_day = ParseClock(*from, Member(prefix, "from"));
      }
      s.minutes.set(s.minute_of_day % 60);
      for (int hour = s.minute_of_day / 60; hour < 24; hour += s.every_hours) s.hours.set(hour);
      break;
    case ScheduleKind::kCron:
      s.cron_expr = CompileCron(RequireString(required("expr"), Member(prefix, "expr")),
                                Member(prefix, "expr"), s);
      break;
  }

  s.permitted_hours.set();
  if (const json::value* permitted = o.if_contains("permitted_hours")) {
    s.permitted_hours = ParsePermittedHours(*permitted, Member(prefix, "permitted_hours"));
  }
  const std::bitset<24> run_hours = s.hours;
  s.hours &= s.permitted_hours;
  RequireRuns(s, run_hours, prefix);
  return s;
}

json::value ScheduleToJson(const Schedule& s) {
  json::object o;
  o["kind"] = KindName(s.kind);
  switch (s.kind) {
    case ScheduleKind::kDaily:
      o["at"] = FormatClock(s.minute_of_day);
      if (!s.days_of_week.all()) {
        json::array days;
        for (int day : kWeekOrder) {
          if (s.days_of_week[day]) days.emplace_back(kDayNames[day]);
        }
        o["days"] = std::move(days);
      }
      break;
    case ScheduleKind::kEvery:
      o["hours"] = s.every_hours;
      if (s.minute_of_day != 0) o["from"] = FormatClock(s.minute_of_day);
      break;
    case ScheduleKind::kCron:
      o["expr"] = s.cron_expr;
      break;
  }
  if (!s.permitted_hours.all()) o["permitted_hours"] = FormatHours(s.permitted_hours);
  return o;
}

std::string DescribeSchedule(const Schedule& s) {
  std::string text;
  switch (s.kind) {
    case ScheduleKind::kDaily:
      text = "daily at " + FormatClock(s.minute_of_day);
      if (!s.days_of_week.all()) text += " on " + FormatDays(s.days_of_week);
      break;
    case ScheduleKind::kEvery:
      text = s.every_hours == 1 ? "every hour" : "every " + std::to_string(s.every_hours) + " hours";
      text += " from " + FormatClock(s.minute_of_day) + " each day";
      break;
    case ScheduleKind::kCron:
      text = "cron " + Quoted(s.cron_expr);
      break;
  }
  if (!s.permitted_hours.all()) text += ", permitted hours " + FormatHours(s.permitted_hours);
  return text;
}

std::optional<int64_t> NextRun(const Schedule& s, int64_t after_unix) {
  if (s.hours.none() || s.minutes.none()) return std::nullopt;
  const time_t after = static_cast<time_t>(after_unix);
  tm local{};
  if (localtime_r(&after, &local) == nullptr) return std::nullopt;
  const int64_t first_day = DaysFromCivil(local.tm_year + 1900, local.tm_mon + 1, local.tm_mday);
  // Wall times earlier than `after`'s on its own day first occurred before
  // it, even across a DST change, so the search starts at `after`'s minute.
  const int first_minute = local.tm_hour * 60 + local.tm_min;
  const int64_t last_day = first_day + kHorizonDays;
  for (int64_t day = first_day; day <= last_day; ++day) {
    const CivilDate date = CivilFromDays(day);
    if (!s.months[date.month]) {
      day = DaysFromCivil(date.year + date.month / 12, date.month % 12 + 1, 1) - 1;
      continue;
    }
    if (!DayMatches(s, date, WeekdayFromDays(day))) continue;
    const int earliest = day == first_day ? first_minute : 0;
    for (int hour = earliest / 60; hour < 24; ++hour) {
      if (!s.hours[hour]) continue;
      for (int minute = 0; minute < 60; ++minute) {
        if (!s.minutes[minute] || hour * 60 + minute < earliest) continue;
        const auto run = FirstInstantOfWallTime(day * kSecondsPerDay + hour * 3600 + minute * 60);
        // A wall time repeated by a DST change runs once, at its first
        // occurrence; if that is not after `after_unix`, it has had its run.
        if (run && *run > after_unix) return run;
      }
    }
  }
  return std::nullopt;
}

}  // namespace ferry::coordinator
