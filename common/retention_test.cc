#include "ferry/common/retention.h"

#include <gtest/gtest.h>

#include <array>
#include <ctime>
#include <map>
#include <set>

#include "ferry/common/error.h"

namespace ferry {
namespace {

// Times are written out in full in the tables below; the generated history
// is checked against an oracle that uses libc's calendar (timegm, strftime
// %G-W%V) and a different formulation of the rules, not Evaluate's code.
int64_t T(const char* rfc3339) {
  struct tm tm {};
  if (!::strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ", &tm)) ADD_FAILURE() << "bad test time " << rfc3339;
  return static_cast<int64_t>(::timegm(&tm));
}

std::string Rfc(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm;
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

RetentionPoint P(const std::string& id, const std::string& started_at, const std::string& vm = "web01",
                 const std::string& chain = "default", int64_t locked_until = 0) {
  return {id, {vm, vm == "web01" ? "" : "uuid-" + vm, "qemu"}, chain, started_at, locked_until};
}

RetentionPolicy Policy(std::initializer_list<std::pair<const char*, const char*>> rules) {
  RetentionPolicy p;
  for (const auto& [rule, value] : rules) SetRetentionRule(&p, rule, value);
  return p;
}

// id -> reasons, for the kept points only.
std::map<std::string, std::vector<std::string>> Kept(const std::vector<RetentionDecision>& decisions) {
  std::map<std::string, std::vector<std::string>> kept;
  for (const auto& d : decisions) {
    EXPECT_EQ(d.keep, !d.reasons.empty()) << d.id;
    if (d.keep) kept[d.id] = d.reasons;
  }
  return kept;
}

std::string ErrorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  return "(no error)";
}

// --- explicit tables: edges of days, weeks, months and years ---

struct EdgeCase {
  const char* name;
  std::vector<RetentionPoint> points;
  RetentionPolicy policy;
  const char* now;
  std::map<std::string, std::vector<std::string>> kept;  // everything else is removed
};

std::vector<EdgeCase> EdgeCases() {
  return {
      {"DayEdge",
       {P("a", "2026-11-29T23:59:59Z"), P("b", "2026-11-30T00:00:00Z"), P("c", "2026-11-30T12:00:00Z")},
       Policy({{"keep-daily", "2"}}),
       "2026-12-01T00:00:00Z",
       {{"c", {"daily 2026-11-30"}}, {"a", {"daily 2026-11-29"}}}},
      {"DailyCountsOnlyDaysWithPoints",
       {P("a", "2026-11-01T10:00:00Z"), P("b", "2026-11-20T10:00:00Z"), P("c", "2026-11-20T09:00:00Z"),
        P("d", "2026-11-30T10:00:00Z")},
       Policy({{"keep-daily", "3"}}),
       "2026-12-31T00:00:00Z",
       {{"d", {"daily 2026-11-30"}}, {"b", {"daily 2026-11-20"}}, {"a", {"daily 2026-11-01"}}}},
      {"IsoWeekEdgeSundayMonday",  // 2026-11-29 is a Sunday (W48), 2026-11-30 a Monday (W49)
       {P("a", "2026-11-23T00:00:00Z"), P("b", "2026-11-29T23:59:59Z"), P("c", "2026-11-30T00:00:00Z"),
        P("d", "2026-11-30T08:00:00Z")},
       Policy({{"keep-weekly", "2"}}),
       "2026-12-01T00:00:00Z",
       {{"d", {"weekly 2026-W49"}}, {"b", {"weekly 2026-W48"}}}},
      {"IsoWeek53SpansNewYear",  // 2026-12-28 (Mon) to 2027-01-03 (Sun) is 2026-W53
       {P("a", "2026-12-27T23:59:59Z"), P("b", "2026-12-28T00:00:00Z"), P("c", "2026-12-31T23:59:59Z"),
        P("d", "2027-01-01T00:00:00Z"), P("e", "2027-01-04T00:00:00Z")},
       Policy({{"keep-weekly", "3"}}),
       "2027-01-05T00:00:00Z",
       {{"e", {"weekly 2027-W01"}}, {"d", {"weekly 2026-W53"}}, {"a", {"weekly 2026-W52"}}}},
      {"NewYearForMonthsAndYears",
       {P("a", "2026-11-15T00:00:00Z"), P("b", "2026-12-31T23:59:59Z"), P("c", "2027-01-01T00:00:00Z"),
        P("d", "2027-01-01T00:00:01Z")},
       Policy({{"keep-monthly", "2"}, {"keep-yearly", "5"}}),
       "2027-01-02T00:00:00Z",
       {{"d", {"monthly 2027-01", "yearly 2027"}}, {"b", {"monthly 2026-12", "yearly 2026"}}}},
      {"MonthEdgeInALeapYear",
       {P("a", "2028-02-29T23:59:59Z"), P("b", "2028-03-01T00:00:00Z"), P("c", "2028-02-01T00:00:00Z")},
       Policy({{"keep-monthly", "1"}, {"keep-daily", "2"}}),
       "2028-03-02T00:00:00Z",
       {{"b", {"daily 2028-03-01", "monthly 2028-03"}}, {"a", {"daily 2028-02-29"}}}},
      {"KeepLastAlone",
       {P("a", "2026-01-01T00:00:00Z"), P("b", "2026-01-01T00:00:00Z"), P("c", "2026-01-02T00:00:00Z"),
        P("d", "2026-01-03T00:00:00Z")},
       Policy({{"keep-last", "3"}}),
       "2027-01-01T00:00:00Z",
       // Equal times: the later id is the newer point.
       {{"d", {"last 1"}}, {"c", {"last 2"}}, {"b", {"last 3"}}}},
      {"KeepLastMoreThanThereAre",
       {P("a", "2026-01-01T00:00:00Z"), P("b", "2026-01-02T00:00:00Z")},
       Policy({{"keep-last", "10"}}),
       "2027-01-01T00:00:00Z",
       {{"b", {"last 1"}}, {"a", {"last 2"}}}},
      {"KeepWithinAloneIsInclusiveAtTheCutoff",
       {P("a", "2026-11-20T23:59:59Z"), P("b", "2026-11-21T00:00:00Z"), P("c", "2026-11-30T00:00:00Z"),
        P("future", "2026-12-02T00:00:00Z")},
       Policy({{"keep-within", "10d"}}),
       "2026-12-01T00:00:00Z",
       {{"b", {"within 10d"}}, {"c", {"within 10d"}}, {"future", {"within 10d"}}}},
      {"RulesCombineAndEachNamesItself",
       {P("a", "2025-06-01T00:00:00Z"), P("b", "2026-10-15T00:00:00Z"), P("c", "2026-11-28T10:00:00Z"),
        P("d", "2026-11-30T10:00:00Z"), P("e", "2026-11-30T20:00:00Z")},
       Policy({{"keep-last", "1"}, {"keep-daily", "2"}, {"keep-monthly", "2"}, {"keep-yearly", "2"}}),
       "2026-12-01T00:00:00Z",
       {{"e", {"last 1", "daily 2026-11-30", "monthly 2026-11", "yearly 2026"}},
        {"c", {"daily 2026-11-28"}},
        {"b", {"monthly 2026-10"}},
        {"a", {"yearly 2025"}}}},
      {"LockedPointsAlwaysStay",
       {P("a", "2026-01-01T00:00:00Z", "web01", "default", T("2027-01-01T00:00:00Z")),
        P("b", "2026-01-02T00:00:00Z", "web01", "default", T("2026-06-01T00:00:00Z")),  // expired
        P("c", "2026-01-03T00:00:00Z")},
       Policy({{"keep-last", "1"}}),
       "2026-12-01T00:00:00Z",
       {{"c", {"last 1"}}, {"a", {"locked until 2027-01-01T00:00:00Z"}}}},
      {"VmsAndChainsAreIndependent",
       {P("w1", "2026-11-30T10:00:00Z"), P("w2", "2026-11-30T11:00:00Z"), P("d1", "2026-11-30T09:00:00Z", "db01"),
        P("d2", "2026-11-30T12:00:00Z", "db01"), P("x1", "2026-11-30T13:00:00Z", "db01", "nightly"),
        P("x2", "2026-11-30T14:00:00Z", "db01", "nightly")},
       Policy({{"keep-daily", "1"}}),
       "2026-12-01T00:00:00Z",
       {{"w2", {"daily 2026-11-30"}}, {"d2", {"daily 2026-11-30"}}, {"x2", {"daily 2026-11-30"}}}},
      {"UnreadableTimeIsKept",
       {P("a", "yesterday"), P("b", "2026-11-30T10:00:00Z"), P("c", "2026-11-30T11:00:00Z")},
       Policy({{"keep-last", "1"}}),
       "2026-12-01T00:00:00Z",
       {{"c", {"last 1"}},
        {"a", {"started_at unreadable: 'yesterday' is not an RFC 3339 time (a digit expected at position 1)"}}}},
  };
}

void PrintTo(const EdgeCase& c, std::ostream* os) { *os << c.name; }

class RetentionEdges : public ::testing::TestWithParam<EdgeCase> {};

TEST_P(RetentionEdges, KeepsExactlyTheTable) {
  const EdgeCase& c = GetParam();
  auto decisions = Evaluate(c.policy, c.points, T(c.now));
  ASSERT_EQ(decisions.size(), c.points.size());
  for (size_t i = 0; i < decisions.size(); ++i) EXPECT_EQ(decisions[i].id, c.points[i].id);  // input order
  EXPECT_EQ(Kept(decisions), c.kept);
}

INSTANTIATE_TEST_SUITE_P(Table, RetentionEdges, ::testing::ValuesIn(EdgeCases()),
                         [](const auto& info) { return std::string(info.param.name); });

// --- 400 simulated days against an independent oracle ---

struct History {
  std::vector<RetentionPoint> points;
  std::vector<int64_t> times;  // parallel
  int64_t now = 0;
};

// From 2026-06-01 (a Monday) for 400 days, through 2026-W53 and New Year:
// 0 to 3 points a day, at the day's first and last second among others,
// for two VMs, one of them with two chains.
History MakeHistory() {
  History h;
  const int64_t start = T("2026-06-01T00:00:00Z");
  const struct {
    const char* vm;
    const char* chain;
  } groups[] = {{"web01", "default"}, {"db01", "default"}, {"db01", "hourly"}};
  const int64_t offsets[] = {0, 8 * 3600 + 1800, 86399};
  uint32_t rng = 12345;
  for (int day = 0; day < 400; ++day) {
    for (size_t g = 0; g < 3; ++g) {
      for (int64_t off : offsets) {
        rng = rng * 1103515245 + 12345;
        if ((rng >> 16) % 3 == 0) continue;  // about a third of the slots are empty
        if ((day + static_cast<int>(g)) % 9 == 4) continue;  // whole days without points
        const int64_t t = start + day * 86400 + off;
        std::string id = "p" + std::to_string(h.points.size());
        h.points.push_back(P(id, Rfc(t), groups[g].vm, groups[g].chain));
        h.times.push_back(t);
      }
    }
  }
  h.now = start + 400 * 86400 + 3600;
  return h;
}

// The rules restated: a point is kept by "<rule> N" iff it is the newest of
// its period and at most N-1 newer periods of its group have points.
std::map<std::string, std::vector<std::string>> Oracle(const History& h, const RetentionPolicy& p) {
  const char* formats[] = {"%Y-%m-%d", "%G-W%V", "%Y-%m", "%Y"};
  const char* labels[] = {"daily ", "weekly ", "monthly ", "yearly "};
  const int64_t counts[] = {p.keep_daily, p.keep_weekly, p.keep_monthly, p.keep_yearly};
  const size_t n = h.points.size();
  std::vector<std::array<std::string, 4>> keys(n);
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < n; ++i) {
    time_t tt = static_cast<time_t>(h.times[i]);
    struct tm tm;
    ::gmtime_r(&tt, &tm);
    for (int r = 0; r < 4; ++r) {
      char buf[32];
      std::strftime(buf, sizeof buf, formats[r], &tm);
      keys[i][r] = buf;
    }
    groups[h.points[i].vm.name + "/" + h.points[i].chain].push_back(i);
  }
  auto newer = [&](size_t a, size_t b) {  // a is newer than b
    return h.times[a] != h.times[b] ? h.times[a] > h.times[b] : h.points[a].id > h.points[b].id;
  };
  std::map<std::string, std::vector<std::string>> kept;
  for (const auto& [name, members] : groups) {
    for (size_t i : members) {
      std::vector<std::string> reasons;
      size_t rank = 1;
      for (size_t j : members) rank += j != i && newer(j, i);
      if (static_cast<int64_t>(rank) <= p.keep_last) reasons.push_back("last " + std::to_string(rank));
      if (p.keep_within_days > 0 && h.times[i] >= h.now - p.keep_within_days * 86400) {
        reasons.push_back("within " + std::to_string(p.keep_within_days) + "d");
      }
      for (int r = 0; r < 4; ++r) {
        if (counts[r] == 0) continue;
        bool newest = true;
        std::set<std::string> newer_periods;
        for (size_t j : members) {
          if (j == i) continue;
          if (keys[j][r] == keys[i][r] && newer(j, i)) newest = false;
          if (keys[j][r] != keys[i][r] && h.times[j] > h.times[i]) newer_periods.insert(keys[j][r]);
        }
        if (newest && static_cast<int64_t>(newer_periods.size()) < counts[r]) reasons.push_back(labels[r] + keys[i][r]);
      }
      if (!reasons.empty()) kept[h.points[i].id] = reasons;
    }
  }
  return kept;
}

struct HistoryCase {
  const char* name;
  RetentionPolicy policy;
  size_t expected_kept_per_group_max;  // a loose sanity bound, beside the oracle
};

void PrintTo(const HistoryCase& c, std::ostream* os) { *os << c.name << " (" << DescribeRetentionPolicy(c.policy) << ")"; }

class RetentionHistory : public ::testing::TestWithParam<HistoryCase> {};

TEST_P(RetentionHistory, KeepsWhatTheRulesSay) {
  static const History h = MakeHistory();
  ASSERT_GT(h.points.size(), 1500u);
  const HistoryCase& c = GetParam();
  auto got = Kept(Evaluate(c.policy, h.points, h.now));
  auto want = Oracle(h, c.policy);
  EXPECT_EQ(got.size(), want.size());
  for (const auto& [id, reasons] : want) {
    auto it = got.find(id);
    if (it == got.end()) {
      ADD_FAILURE() << id << " (" << h.points[std::stoul(id.substr(1))].started_at << ") should be kept: "
                    << reasons[0];
    } else {
      EXPECT_EQ(it->second, reasons) << id;
    }
  }
  for (const auto& [id, reasons] : got) {
    if (!want.count(id)) ADD_FAILURE() << id << " should be removed, kept as " << reasons[0];
  }
  EXPECT_LE(got.size(), 3 * c.expected_kept_per_group_max);
  EXPECT_GT(got.size(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Table, RetentionHistory,
    ::testing::Values(HistoryCase{"Last5", Policy({{"keep-last", "5"}}), 5},
                      HistoryCase{"Within10d", Policy({{"keep-within", "10d"}}), 30},
                      HistoryCase{"Daily7", Policy({{"keep-daily", "7"}}), 7},
                      HistoryCase{"Weekly8", Policy({{"keep-weekly", "8"}}), 8},
                      HistoryCase{"Monthly12", Policy({{"keep-monthly", "12"}}), 12},
                      HistoryCase{"Yearly3", Policy({{"keep-yearly", "3"}}), 3},
                      HistoryCase{"Weekly60CoversW53", Policy({{"keep-weekly", "60"}}), 60},
                      HistoryCase{"Daily500MoreThanDays", Policy({{"keep-daily", "500"}}), 400},
                      HistoryCase{"Gfs", Policy({{"keep-daily", "7"}, {"keep-weekly", "4"}, {"keep-monthly", "6"},
                                                 {"keep-yearly", "2"}}),
                                  19},
                      HistoryCase{"Everything", Policy({{"keep-last", "3"}, {"keep-within", "5d"}, {"keep-daily", "10"},
                                                        {"keep-weekly", "10"}, {"keep-monthly", "10"},
                                                        {"keep-yearly", "10"}}),
                                  58}),
    [](const auto& info) { return std::string(info.param.name); });

// A hand-counted figure for one group, so that the oracle itself is checked:
// web01's points of Daily7 are the newest of its last 7 days with points.
TEST(RetentionHistoryCounts, GfsKeepsAPredictableNumber) {
  const History h = MakeHistory();
  RetentionPolicy p = Policy({{"keep-monthly", "12"}});
  std::set<std::string> months;
  size_t kept = 0;
  for (const auto& d : Evaluate(p, h.points, h.now)) {
    if (d.keep && d.group == "web01 chain default") {
      ++kept;
      months.insert(d.reasons[0]);
    }
  }
  // 2026-06 to 2027-07 is 14 months with points; 12 are kept, one point each.
  EXPECT_EQ(kept, 12u);
  EXPECT_EQ(*months.begin(), "monthly 2026-08");
  EXPECT_EQ(*months.rbegin(), "monthly 2027-07");
}

// --- the policy's parser and validator ---

TEST(RetentionPolicyParsing, AcceptsCountsAndDays) {
  RetentionPolicy p = Policy({{"keep-last", "3"}, {"keep-within", "30d"}, {"keep-yearly", "100000"}});
  EXPECT_EQ(p.keep_last, 3);
  EXPECT_EQ(p.keep_within_days, 30);
  EXPECT_EQ(p.keep_yearly, 100000);
  EXPECT_EQ(DescribeRetentionPolicy(p), "keep-last 3, keep-within 30d, keep-yearly 100000");
}

TEST(RetentionPolicyParsing, RefusesBadValuesNamingThem) {
  RetentionPolicy p;
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-daily", "0"); }), "keep-daily: '0' is not a count from 1 to 100000");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-daily", "-1"); }), "keep-daily: '-1' is not a count from 1 to 100000");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-daily", "7x"); }), "keep-daily: '7x' is not a count from 1 to 100000");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-daily", ""); }), "keep-daily: '' is not a count from 1 to 100000");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-weekly", "999999999999999999999"); }),
            "keep-weekly: '999999999999999999999' is not a count from 1 to 100000");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-within", "30"); }),
            "keep-within: '30' is not a number of days (write it as 30d)");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-within", "0d"); }),
            "keep-within: '0d' is not a number of days from 1d to 36500d");
  EXPECT_EQ(ErrorOf([&] { SetRetentionRule(&p, "keep-hourly", "3"); }), "'keep-hourly' is not a retention rule");
  RetentionPolicy none;
  EXPECT_NE(ErrorOf([&] { ValidateRetentionPolicy(none); }).find("has no rule, so it would remove every unlocked point"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { Evaluate(none, {P("a", "2026-11-30T10:00:00Z")}, 0); }).find("has no rule"), std::string::npos);
  RetentionPolicy negative;
  negative.keep_last = -2;
  EXPECT_EQ(ErrorOf([&] { ValidateRetentionPolicy(negative); }), "keep-last: -2 is out of range (0 to 100000)");
}

TEST(Rfc3339, ParsesWhatManifestsHoldAndRefusesTheRest) {
  EXPECT_EQ(ParseRfc3339("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(ParseRfc3339("2026-11-30T23:59:59Z"), T("2026-11-30T23:59:59Z"));
  EXPECT_EQ(ParseRfc3339("2026-11-30T23:59:59.123456Z"), T("2026-11-30T23:59:59Z"));
  EXPECT_EQ(ParseRfc3339("2026-12-01T01:00:00+02:00"), T("2026-11-30T23:00:00Z"));
  EXPECT_EQ(ParseRfc3339("2028-02-29T00:00:00Z"), T("2028-02-29T00:00:00Z"));
  EXPECT_EQ(FormatRfc3339(T("2026-12-31T23:59:59Z")), "2026-12-31T23:59:59Z");
  for (const char* bad : {"", "2026-11-30", "2026-11-30T23:59:59", "2026-13-01T00:00:00Z", "2027-02-29T00:00:00Z",
                          "2026-11-30T24:00:00Z", "2026-11-30T23:59:59Zjunk", "2026-11-30 23:59:59Z"}) {
    EXPECT_NE(ErrorOf([&] { ParseRfc3339(bad); }).find("is not an RFC 3339 time"), std::string::npos) << bad;
  }
}

}  // namespace
}  // namespace ferry
