#include "ferry/common/retention.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "ferry/common/error.h"
#include "ferry/common/log.h"

namespace ferry {

namespace {

constexpr int64_t kMaxCount = 100000;
constexpr int64_t kMaxWithinDays = 36500;  // a century
constexpr int64_t kDay = 86400;

// Days since 1970-01-01 of a proleptic Gregorian date, and back
// (H. Hinnant's civil-date algorithms, exact over the whole int64 range
// Ferry can meet).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

struct Civil {
  int64_t year;
  unsigned month, day;
};

Civil CivilFromDays(int64_t z) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {static_cast<int64_t>(yoe) + era * 400 + (m <= 2), m, d};
}

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

std::string Pad(int64_t v, int width) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%0*lld", width, static_cast<long long>(v));
  return buf;
}

enum class Period { kDay, kWeek, kMonth, kYear };

// The UTC period a time falls in, as the reasons name it.
std::string PeriodKey(int64_t t, Period period) {
  const int64_t days = FloorDiv(t, kDay);
  if (period == Period::kWeek) {
    // ISO 8601: weeks start on Monday; a week belongs to the year of its
    // Thursday. 1970-01-01 was a Thursday.
    const int64_t monday_based = ((days + 3) % 7 + 7) % 7;  // 0 = Monday
    const int64_t thursday = days - monday_based + 3;
    const Civil c = CivilFromDays(thursday);
    const int64_t week = (thursday - DaysFromCivil(c.year, 1, 1)) / 7 + 1;
    return Pad(c.year, 4) + "-W" + Pad(week, 2);
  }
  const Civil c = CivilFromDays(days);
  switch (period) {
    case Period::kDay: return Pad(c.year, 4) + "-" + Pad(c.month, 2) + "-" + Pad(c.day, 2);
    case Period::kMonth: return Pad(c.year, 4) + "-" + Pad(c.month, 2);
    default: return Pad(c.year, 4);
  }
}

int64_t* RuleField(RetentionPolicy* p, const std::string& rule) {
  if (rule == "keep-last") return &p->keep_last;
  if (rule == "keep-within") return &p->keep_within_days;
  if (rule == "keep-daily") return &p->keep_daily;
  if (rule == "keep-weekly") return &p->keep_weekly;
  if (rule == "keep-monthly") return &p->keep_monthly;
  if (rule == "keep-yearly") return &p->keep_yearly;
  return nullptr;
}

struct Ordered {
  size_t index;
  int64_t time;
};

}  // namespace

const std::vector<std::string>& RetentionRuleNames() {
  static const std::vector<std::string> names = {"keep-last",   "keep-within",  "keep-daily",
                                                 "keep-weekly", "keep-monthly", "keep-yearly"};
  return names;
}

void SetRetentionRule(RetentionPolicy* policy, const std::string& rule, const std::string& value) {
  int64_t* field = RuleField(policy, rule);
  if (!field) throw Error(ErrorKind::kBadInput, "'" + rule + "' is not a retention rule");
  const bool within = rule == "keep-within";
  std::string digits = value;
  if (within) {
    if (digits.empty() || digits.back() != 'd') {
      throw Error(ErrorKind::kBadInput, rule + ": '" + value + "' is not a number of days (write it as 30d)");
    }
    digits.pop_back();
  }
  const int64_t max = within ? kMaxWithinDays : kMaxCount;
  int64_t n = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || n < 1 || n > max) {
    throw Error(ErrorKind::kBadInput, rule + ": '" + value + "' is not " +
                                          (within ? "a number of days from 1d to " + std::to_string(max) + "d"
                                                  : "a count from 1 to " + std::to_string(max)));
  }
  *field = n;
}

void ValidateRetentionPolicy(const RetentionPolicy& p) {
  RetentionPolicy copy = p;
  bool any = false;
  for (const auto& rule : RetentionRuleNames()) {
    const int64_t v = *RuleField(&copy, rule);
    const int64_t max = rule == "keep-within" ? kMaxWithinDays : kMaxCount;
    if (v < 0 || v > max) {
      throw Error(ErrorKind::kBadInput, rule + ": " + std::to_string(v) + " is out of range (0 to " +
                                            std::to_string(max) + ")");
    }
    any = any || v > 0;
  }
  if (!any) {
    throw Error(ErrorKind::kBadInput, "the retention policy has no rule, so it would remove every unlocked point; give "
                                      "at least one of --keep-last, --keep-within, --keep-daily, --keep-weekly, "
                                      "--keep-monthly, --keep-yearly");
  }
}

std::string DescribeRetentionPolicy(const RetentionPolicy& p) {
  RetentionPolicy copy = p;
  std::string out;
  for (const auto& rule : RetentionRuleNames()) {
    const int64_t v = *RuleField(&copy, rule);
    if (v == 0) continue;
    out += (out.empty() ? "" : ", ") + rule + " " + std::to_string(v) + (rule == "keep-within" ? "d" : "");
  }
  return out.empty() ? "no rule" : out;
}

int64_t ParseRfc3339(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput, "'" + text.substr(0, 64) + "' is not an RFC 3339 time (" + why + ")");
  };
  auto number = [&](size_t pos, size_t len) -> int64_t {
    if (pos + len > text.size()) throw bad("too short");
    int64_t v = 0;
    for (size_t i = pos; i < pos + len; ++i) {
      if (text[i] < '0' || text[i] > '9') throw bad("a digit expected at position " + std::to_string(i + 1));
      v = v * 10 + (text[i] - '0');
    }
    return v;
  };
  auto expect = [&](size_t pos, const char* chars) {
    if (pos >= text.size() || !std::strchr(chars, text[pos]) || text[pos] == 0) {
      throw bad(std::string("'") + chars[0] + "' expected at position " + std::to_string(pos + 1));
    }
  };
  const int64_t year = number(0, 4);
  expect(4, "-");
  const int64_t month = number(5, 2);
  expect(7, "-");
  const int64_t day = number(8, 2);
  expect(10, "Tt");
  const int64_t hour = number(11, 2);
  expect(13, ":");
  const int64_t minute = number(14, 2);
  expect(16, ":");
  const int64_t second = number(17, 2);
  size_t pos = 19;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    const size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
    if (pos == start) throw bad("digits expected after '.'");
  }
  int64_t offset = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    const int64_t sign = text[pos] == '-' ? -1 : 1;
    const int64_t oh = number(pos + 1, 2);
    expect(pos + 3, ":");
    const int64_t om = number(pos + 4, 2);
    if (oh > 23 || om > 59) throw bad("offset out of range");
    offset = sign * (oh * 3600 + om * 60);
    pos += 6;
  } else {
    throw bad("no time zone (Z or +hh:mm)");
  }
  if (pos != text.size()) throw bad("trailing characters");
  if (month < 1 || month > 12) throw bad("month out of range");
  const int64_t days_in_month =
      DaysFromCivil(month == 12 ? year + 1 : year, month == 12 ? 1 : static_cast<unsigned>(month + 1), 1) -
      DaysFromCivil(year, static_cast<unsigned>(month), 1);
  if (day < 1 || day > days_in_month) throw bad("day out of range");
  if (hour > 23 || minute > 59 || second > 60) throw bad("time of day out of range");
  const int64_t s = std::min<int64_t>(second, 59);  // a leap second counts as :59
  return DaysFromCivil(year, static_cast<unsigned>(month), static_cast<unsigned>(day)) * kDay + hour * 3600 +
         minute * 60 + s - offset;
}

std::string FormatRfc3339(int64_t t) {
  const int64_t days = FloorDiv(t, kDay), rest = t - days * kDay;
  const Civil c = CivilFromDays(days);
  return Pad(c.year, 4) + "-" + Pad(c.month, 2) + "-" + Pad(c.day, 2) + "T" + Pad(rest / 3600, 2) + ":" +
         Pad(rest / 60 % 60, 2) + ":" + Pad(rest % 60, 2) + "Z";
}

RetentionPoint RetentionPointOf(const RestorePointManifest& m, int64_t locked_until) {
  return {m.id, m.vm, m.chain, m.started_at, locked_until};
}

std::vector<RetentionDecision> Evaluate(const RetentionPolicy& policy, const std::vector<RetentionPoint>& points,
                                        int64_t now) {
  ValidateRetentionPolicy(policy);
  std::vector<RetentionDecision> out(points.size());
  std::map<std::string, std::vector<Ordered>> groups;
  for (size_t i = 0; i < points.size(); ++i) {
    const RetentionPoint& p = points[i];
    RetentionDecision& d = out[i];
    d.id = p.id;
    d.group = (p.vm.uuid.empty() ? p.vm.name : p.vm.name + " (" + p.vm.uuid + ")") + " chain " + p.chain;
    const std::string key = (p.vm.uuid.empty() ? "name:" + p.vm.name : "uuid:" + p.vm.uuid) + "\n" + p.chain;
    try {
      groups[key].push_back({i, ParseRfc3339(p.started_at)});
    } catch (const Error& e) {
      // What cannot be placed in time is never removed by a time rule.
      d.keep = true;
      d.reasons.push_back(std::string("started_at unreadable: ") + e.what());
    }
  }
  const struct {
    int64_t count;
    Period period;
    const char* label;
  } periodic[] = {{policy.keep_daily, Period::kDay, "daily "},
                  {policy.keep_weekly, Period::kWeek, "weekly "},
                  {policy.keep_monthly, Period::kMonth, "monthly "},
                  {policy.keep_yearly, Period::kYear, "yearly "}};
  for (auto& [key, members] : groups) {
    // Newest first; equal times by id (ids sort by creation).
    std::sort(members.begin(), members.end(), [&](const Ordered& a, const Ordered& b) {
      if (a.time != b.time) return a.time > b.time;
      return points[a.index].id > points[b.index].id;
    });
    auto keep = [&](const Ordered& o, std::string reason) {
      out[o.index].keep = true;
      out[o.index].reasons.push_back(std::move(reason));
    };
    for (size_t r = 0; r < members.size() && static_cast<int64_t>(r) < policy.keep_last; ++r) {
      keep(members[r], "last " + std::to_string(r + 1));
    }
    if (policy.keep_within_days > 0) {
      const int64_t cutoff = now - policy.keep_within_days * kDay;
      for (const auto& o : members) {
        if (o.time >= cutoff) keep(o, "within " + std::to_string(policy.keep_within_days) + "d");
      }
    }
    for (const auto& rule : periodic) {
      if (rule.count <= 0) continue;
      std::set<std::string> seen;
      for (const auto& o : members) {
        std::string period = PeriodKey(o.time, rule.period);
        if (seen.count(period)) continue;  // an older point of a period already kept
        if (static_cast<int64_t>(seen.size()) >= rule.count) break;
        seen.insert(period);
        keep(o, rule.label + period);
      }
    }
  }
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].locked_until > now) {
      out[i].keep = true;
      out[i].reasons.push_back("locked until " + FormatRfc3339(points[i].locked_until));
    }
  }
  return out;
}

PruneReport Prune(PointStore& store, const PruneOptions& options) {
  ValidateRetentionPolicy(options.policy);
  PruneReport report;
  PointListing listing = store.LoadAll();
  report.problems = std::move(listing.problems);
  std::vector<RetentionPoint> points;
  std::vector<std::string> started;
  for (const auto& m : listing.points) {
    if (options.vm && m.vm.name != *options.vm && m.vm.uuid != *options.vm) continue;
    if (options.chain && m.chain != *options.chain) continue;
    int64_t locked_until = 0;
    try {
      if (auto lock = store.ReadLock(m.id)) locked_until = lock->locked_until;
    } catch (const Error& e) {
      // Without its lock a point's fate is unknown: left out (and so kept),
      // and it does not count toward any rule.
      report.problems.push_back({m.id, std::string("not considered: ") + e.what()});
      continue;
    }
    points.push_back(RetentionPointOf(m, locked_until));
    started.push_back(m.started_at);
  }
  std::vector<RetentionDecision> decisions = Evaluate(options.policy, points, options.now);
  for (size_t i = 0; i < decisions.size(); ++i) {
    PruneEntry e{std::move(decisions[i]), started[i], "", false};
    if (e.decision.keep) {
      ++report.kept;
    } else if (options.dry_run) {
      e.outcome = "dry run: not removed";
    } else {
      try {
        store.Remove(e.decision.id, options.now);
        e.outcome = "removed";
        e.removed = true;
        ++report.removed;
      } catch (const Error& err) {
        // In use (a lease) or locked since the listing: it stays, and the
        // next prune decides again. Anything else stays too, reported.
        e.outcome = std::string("skipped: ") + err.what();
        ++report.skipped;
        if (err.kind() != ErrorKind::kRetryable && err.kind() != ErrorKind::kBadInput &&
            err.kind() != ErrorKind::kNotFound && !report.failure) {
          report.failure = err;
        }
        LogWarning("prune: restore point " + e.decision.id + " " + e.outcome);
      }
    }
    report.entries.push_back(std::move(e));
  }
  return report;
}

}  // namespace ferry
