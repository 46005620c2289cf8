#include "ferry/common/bandwidth.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <functional>
#include <thread>

#include "ferry/common/error.h"

namespace ferry {
namespace {

using std::chrono::milliseconds;
using Steady = std::chrono::steady_clock;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * 1024;

// Schedules are read in local time; the tests pin it (one process per test
// under ctest, and each test that changes it puts UTC back).
void SetTimeZone(const char* tz) {
  setenv("TZ", tz, 1);
  tzset();
}
const bool kUtc = [] {
  SetTimeZone("UTC");
  return true;
}();

// Local time; 2024-01-01 is a Monday, so days 1..7 are mon..sun.
std::time_t At(int year, int month, int day, int hour, int minute, int second = 0) {
  std::tm t{};
  t.tm_year = year - 1900;
  t.tm_mon = month - 1;
  t.tm_mday = day;
  t.tm_hour = hour;
  t.tm_min = minute;
  t.tm_sec = second;
  t.tm_isdst = -1;
  return std::mktime(&t);
}
enum Day { kMon = 1, kTue, kWed, kThu, kFri, kSat, kSun, kNextMon };
std::time_t On(int day, int hour, int minute, int second = 0) { return At(2024, 1, day, hour, minute, second); }

std::time_t Utc(int year, int month, int day, int hour, int minute) {
  std::tm t{};
  t.tm_year = year - 1900;
  t.tm_mon = month - 1;
  t.tm_mday = day;
  t.tm_hour = hour;
  t.tm_min = minute;
  return timegm(&t);
}

uint64_t Rate(const std::string& text, std::time_t t = On(kMon, 12, 0)) {
  return BandwidthSchedule::Parse(text).BytesPerSecondAt(t);
}

// The message of the kBadInput error `fn` throws ("" and a failure if none).
std::string BadInput(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}
std::string ParseError(const std::string& text) {
  return BadInput([&] { BandwidthSchedule::Parse(text); });
}

double Seconds(Steady::duration d) { return std::chrono::duration<double>(d).count(); }

// ---------------------------------------------------------------------------
// Parsing

TEST(BandwidthSchedule, Units) {
  EXPECT_EQ(Rate("1B/s"), 1u);
  EXPECT_EQ(Rate("3KB/s"), 3'000u);
  EXPECT_EQ(Rate("3kB/s"), 3'000u);
  EXPECT_EQ(Rate("50MB/s"), 50'000'000u);
  EXPECT_EQ(Rate("2GB/s"), 2'000'000'000u);
  EXPECT_EQ(Rate("1TB/s"), 1'000'000'000'000u);
  EXPECT_EQ(Rate("3KiB/s"), 3 * kKiB);
  EXPECT_EQ(Rate("100MiB/s"), 100 * kMiB);
  EXPECT_EQ(Rate("100MIB/s"), 100 * kMiB);
  EXPECT_EQ(Rate("2GiB/s"), 2 * 1024 * kMiB);
  EXPECT_EQ(Rate("1TiB/s"), 1024 * 1024 * kMiB);
  EXPECT_EQ(Rate("16bit/s"), 2u);
  EXPECT_EQ(Rate("8kbit/s"), 1'000u);
  EXPECT_EQ(Rate("100Mbit/s"), 12'500'000u);
  EXPECT_EQ(Rate("1Gbit/s"), 125'000'000u);
  EXPECT_EQ(Rate("1Tbit/s"), 125'000'000'000u);
  EXPECT_EQ(Rate("1.5MiB/s"), 1'572'864u);
  EXPECT_EQ(Rate("0.1MB/s"), 100'000u);
  EXPECT_EQ(Rate("50 MB/s"), 50'000'000u);
  EXPECT_EQ(Rate("  50MB/s  "), 50'000'000u);
}

TEST(BandwidthSchedule, Unlimited) {
  for (const char* text : {"0", "0.0", "unlimited", "Unlimited", "UNLIMITED"}) {
    BandwidthSchedule s = BandwidthSchedule::Parse(text);
    EXPECT_EQ(s, BandwidthSchedule()) << text;
    EXPECT_EQ(s.BytesPerSecondAt(On(kMon, 12, 0)), 0u) << text;
  }
  EXPECT_EQ(BandwidthSchedule().BytesPerSecondAt(On(kMon, 12, 0)), 0u);
  EXPECT_EQ(BandwidthSchedule::Fixed(5 * kMiB).BytesPerSecondAt(On(kSat, 3, 0)), 5 * kMiB);
}

TEST(BandwidthSchedule, WindowOnWeekdaysUnlimitedOutside) {
  const std::string s = "50MB/s 08:00-18:00 mon-fri";
  EXPECT_EQ(Rate(s, On(kMon, 7, 59, 59)), 0u);
  EXPECT_EQ(Rate(s, On(kMon, 8, 0)), 50'000'000u);
  EXPECT_EQ(Rate(s, On(kWed, 12, 0)), 50'000'000u);
  EXPECT_EQ(Rate(s, On(kFri, 17, 59, 59)), 50'000'000u);
  EXPECT_EQ(Rate(s, On(kFri, 18, 0)), 0u);
  EXPECT_EQ(Rate(s, On(kSat, 12, 0)), 0u);
  EXPECT_EQ(Rate(s, On(kSun, 12, 0)), 0u);
}

TEST(BandwidthSchedule, DayLists) {
  auto days = [](const std::string& text) { return BandwidthSchedule::Parse(text).windows().at(0).days; };
  // Bit 0 is Sunday.
  EXPECT_EQ(days("1MB/s 08:00-09:00 mon,wed,fri"), std::bitset<7>("0101010"));
  EXPECT_EQ(days("1MB/s 08:00-09:00 mon-wed,fri"), std::bitset<7>("0101110"));
  EXPECT_EQ(days("1MB/s 08:00-09:00 fri-mon"), std::bitset<7>("1100011"));  // wraps over the weekend
  EXPECT_EQ(days("1MB/s 08:00-09:00 Sat, SUN"), std::bitset<7>("1000001"));
  EXPECT_EQ(days("1MB/s 08:00-09:00 mon - fri"), std::bitset<7>("0111110"));
  EXPECT_EQ(days("1MB/s 08:00-09:00 tue"), std::bitset<7>("0000100"));
  EXPECT_EQ(days("1MB/s 08:00-09:00"), std::bitset<7>("1111111"));
  // Days before hours mean the same.
  EXPECT_EQ(BandwidthSchedule::Parse("1MB/s mon-fri 08:00-09:00"),
            BandwidthSchedule::Parse("1MB/s 08:00-09:00 mon-fri"));
  // Days alone: all day.
  const std::string weekend = "10MB/s sat,sun";
  EXPECT_EQ(Rate(weekend, On(kSat, 0, 0)), 10'000'000u);
  EXPECT_EQ(Rate(weekend, On(kSun, 23, 59)), 10'000'000u);
  EXPECT_EQ(Rate(weekend, On(kNextMon, 0, 0)), 0u);
  EXPECT_EQ(Rate(weekend, On(kFri, 23, 59)), 0u);
}

TEST(BandwidthSchedule, WindowAcrossMidnightBelongsToItsStartDay) {
  const std::string s = "10MB/s 22:00-06:00 fri";
  EXPECT_EQ(Rate(s, On(kFri, 21, 59)), 0u);
  EXPECT_EQ(Rate(s, On(kFri, 22, 0)), 10'000'000u);
  EXPECT_EQ(Rate(s, On(kFri, 23, 59)), 10'000'000u);
  EXPECT_EQ(Rate(s, On(kSat, 0, 0)), 10'000'000u);
  EXPECT_EQ(Rate(s, On(kSat, 5, 59)), 10'000'000u);
  EXPECT_EQ(Rate(s, On(kSat, 6, 0)), 0u);
  EXPECT_EQ(Rate(s, On(kSat, 23, 0)), 0u);  // Saturday is not listed
  EXPECT_EQ(Rate(s, On(kFri, 5, 0)), 0u);   // Thursday's night
  // Every day: each night.
  EXPECT_EQ(Rate("10MB/s 22:00-06:00", On(kMon, 3, 0)), 10'000'000u);
  EXPECT_EQ(Rate("10MB/s 22:00-06:00", On(kMon, 12, 0)), 0u);
  // An end of 00:00 is midnight: the same as 24:00.
  EXPECT_EQ(BandwidthSchedule::Parse("1MB/s 22:00-00:00"), BandwidthSchedule::Parse("1MB/s 22:00-24:00"));
  EXPECT_EQ(Rate("1MB/s 22:00-24:00", On(kMon, 23, 59)), 1'000'000u);
  EXPECT_EQ(Rate("1MB/s 22:00-24:00", On(kTue, 0, 0)), 0u);
}

TEST(BandwidthSchedule, LastMatchingWindowWinsAndTheDefaultFillsTheRest) {
  const std::string s = "200MiB/s; 50MB/s 08:00-18:00 mon-fri; 10MB/s 12:00-13:00";
  EXPECT_EQ(Rate(s, On(kMon, 12, 30)), 10'000'000u);
  EXPECT_EQ(Rate(s, On(kMon, 9, 0)), 50'000'000u);
  EXPECT_EQ(Rate(s, On(kMon, 19, 0)), 200 * kMiB);
  EXPECT_EQ(Rate(s, On(kSat, 12, 30)), 10'000'000u);
  EXPECT_EQ(Rate(s, On(kSat, 9, 0)), 200 * kMiB);
  // The other order: the weekday window, last, covers the lunch hour.
  EXPECT_EQ(Rate("10MB/s 12:00-13:00; 50MB/s 08:00-18:00 mon-fri", On(kMon, 12, 30)), 50'000'000u);
  EXPECT_EQ(Rate("10MB/s 12:00-13:00; 50MB/s 08:00-18:00 mon-fri", On(kSat, 12, 30)), 10'000'000u);
  // A later window may lift the cap.
  EXPECT_EQ(Rate("10MB/s; unlimited 12:00-13:00", On(kMon, 12, 30)), 0u);
  EXPECT_EQ(Rate("10MB/s; unlimited 12:00-13:00", On(kMon, 13, 0)), 10'000'000u);
  // Where the default stands does not matter.
  EXPECT_EQ(BandwidthSchedule::Parse("50MB/s 08:00-18:00; 200MiB/s"),
            BandwidthSchedule::Parse("200MiB/s; 50MB/s 08:00-18:00"));
}

TEST(BandwidthSchedule, BadInputNamesThePart) {
  EXPECT_EQ(ParseError("50MB/x 08:00-18:00"),
            "throttle rule '50MB/x 08:00-18:00': unknown unit 'MB/x'; expected B, KB, MB, GB, TB, KiB, MiB, GiB, "
            "TiB, bit, kbit, Mbit, Gbit or Tbit, then /s");
  EXPECT_EQ(ParseError("50MB"),
            "throttle rule '50MB': unknown unit 'MB'; expected B, KB, MB, GB, TB, KiB, MiB, "
            "GiB, TiB, bit, kbit, Mbit, Gbit or Tbit, then /s");
  EXPECT_EQ(ParseError("50mb/s"),
            "throttle rule '50mb/s': unknown unit 'mb/s'; write MB/s for bytes or Mbit/s for bits");
  EXPECT_EQ(ParseError("50Mb/s"),
            "throttle rule '50Mb/s': unknown unit 'Mb/s'; write MB/s for bytes or Mbit/s for bits");
  EXPECT_EQ(ParseError("50"),
            "throttle rule '50': '50' has no unit; expected e.g. 50MB/s, 100MiB/s, 1Gbit/s, or unlimited");
  EXPECT_EQ(ParseError("fast 08:00-18:00"),
            "throttle rule 'fast 08:00-18:00': 'fast' is not a rate; expected e.g. 50MB/s, 100MiB/s, 1Gbit/s, or "
            "unlimited");
  EXPECT_EQ(ParseError("-5MB/s"),
            "throttle rule '-5MB/s': '-5MB/s' is not a rate; expected e.g. 50MB/s, 100MiB/s, 1Gbit/s, or unlimited");
  EXPECT_EQ(ParseError("0MB/s 08:00-18:00"),
            "throttle rule '0MB/s 08:00-18:00': '0MB/s' is zero; write 'unlimited' (or 0) for no cap");
  EXPECT_EQ(ParseError("1bit/s"), "throttle rule '1bit/s': '1bit/s' is less than 1 byte per second");
  EXPECT_EQ(ParseError("9999999TiB/s"), "throttle rule '9999999TiB/s': '9999999TiB/s' is too large");
  EXPECT_EQ(ParseError("1MB/s 8:00-18:00"),
            "throttle rule '1MB/s 8:00-18:00': '8:00' is not a time; expected HH:MM, 24-hour, e.g. 08:00");
  EXPECT_EQ(ParseError("1MB/s 08:00-25:00"), "throttle rule '1MB/s 08:00-25:00': '25:00': hour 25 is outside 00-23");
  EXPECT_EQ(ParseError("1MB/s 08:60-09:00"), "throttle rule '1MB/s 08:60-09:00': '08:60': minute 60 is outside 00-59");
  EXPECT_EQ(ParseError("1MB/s 24:00-06:00"), "throttle rule '1MB/s 24:00-06:00': '24:00' can only end a time range");
  EXPECT_EQ(ParseError("1MB/s 08:00"),
            "throttle rule '1MB/s 08:00': '08:00' is not a time range; expected HH:MM-HH:MM, e.g. 08:00-18:00");
  EXPECT_EQ(ParseError("1MB/s 08:00-08:00"),
            "throttle rule '1MB/s 08:00-08:00': time range 08:00-08:00 is empty; for all day write 00:00-24:00");
  EXPECT_EQ(ParseError("1MB/s 08:00-09:00 funday"),
            "throttle rule '1MB/s 08:00-09:00 funday': 'funday' is not a day; expected mon, tue, wed, thu, fri, "
            "sat or sun, or a range like mon-fri");
  EXPECT_EQ(ParseError("1MB/s 08:00-09:00 mon-fri,wed"),
            "throttle rule '1MB/s 08:00-09:00 mon-fri,wed': day 'wed' given twice");
  EXPECT_EQ(ParseError("1MB/s 08:00-09:00 10:00-11:00"),
            "throttle rule '1MB/s 08:00-09:00 10:00-11:00': more than one time range");
  EXPECT_EQ(ParseError("1MB/s mon 08:00-09:00 fri"),
            "throttle rule '1MB/s mon 08:00-09:00 fri': more than one list of days");
  EXPECT_EQ(ParseError("1MB/s 08:00-09:00 @home"), "throttle rule '1MB/s 08:00-09:00 @home': unexpected '@home'");
  // ',' between rules: the rule separator is ';'.
  EXPECT_EQ(ParseError("100MiB/s, 50MB/s 08:00-18:00"),
            "throttle rule '100MiB/s, 50MB/s 08:00-18:00': unknown unit 'MiB/s,'; expected B, KB, MB, GB, TB, "
            "KiB, MiB, GiB, TiB, bit, kbit, Mbit, Gbit or Tbit, then /s (separate rules with ';')");
  EXPECT_EQ(ParseError("50MB/s 08:00-18:00 mon-fri, 10MB/s sat"),
            "throttle rule '50MB/s 08:00-18:00 mon-fri, 10MB/s sat': stray ',' in days 'mon-fri,' (separate rules "
            "with ';')");
  // The schedule as a whole.
  EXPECT_EQ(ParseError(""), "throttle schedule is empty; write 'unlimited' for no cap");
  EXPECT_EQ(ParseError("  "), "throttle schedule is empty; write 'unlimited' for no cap");
  EXPECT_EQ(ParseError("100MiB/s;; 50MB/s 08:00-18:00"),
            "throttle schedule '100MiB/s;; 50MB/s 08:00-18:00': rule 2 is empty");
  EXPECT_EQ(ParseError("100MiB/s; 200MiB/s"),
            "throttle schedule '100MiB/s; 200MiB/s': more than one rule without hours or days ('100MiB/s' and "
            "'200MiB/s'); keep one");
}

TEST(BandwidthSchedule, CanonicalTextRoundTrips) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"unlimited", "unlimited"},
      {"0", "unlimited"},
      {"100MiB/s", "100MiB/s"},
      {"104857600 B/s", "100MiB/s"},
      {"50000kB/s", "50MB/s"},
      {"1000KiB/s", "1000KiB/s"},  // = 1024KB/s: the smaller number
      {"100Mbit/s", "12500KB/s"},
      {"1.5MiB/s", "1536KiB/s"},
      {"1234567B/s", "1234567B/s"},
      {"50MB/s 08:00-18:00 mon-fri", "50MB/s 08:00-18:00 mon-fri"},
      {"unlimited; 50MB/s mon-fri 08:00-18:00", "50MB/s 08:00-18:00 mon-fri"},
      {"10MB/s sat,sun", "10MB/s 00:00-24:00 sat,sun"},
      {"10MB/s 22:00-00:00 SUN,mon,Wed", "10MB/s 22:00-24:00 mon,wed,sun"},
      {"1MB/s 01:00-02:00 fri-tue", "1MB/s 01:00-02:00 mon,tue,fri-sun"},
      {"1MB/s 01:00-02:00 mon-sun", "1MB/s 01:00-02:00"},
      {"10MB/s 22:00-06:00 fri", "10MB/s 22:00-06:00 fri"},
      {"50MB/s 08:00-18:00; 200MiB/s; unlimited 12:00-13:00 sat,sun",
       "200MiB/s; 50MB/s 08:00-18:00; unlimited 12:00-13:00 sat,sun"},
  };
  for (const auto& [text, canonical] : cases) {
    BandwidthSchedule s = BandwidthSchedule::Parse(text);
    EXPECT_EQ(s.ToString(), canonical) << text;
    EXPECT_EQ(BandwidthSchedule::Parse(s.ToString()), s) << text;
  }
  EXPECT_EQ(BandwidthSchedule::Fixed(0).ToString(), "unlimited");
  EXPECT_EQ(BandwidthSchedule::Fixed(20 * kMiB).ToString(), "20MiB/s");
}

TEST(BandwidthSchedule, NextChange) {
  const BandwidthSchedule office = BandwidthSchedule::Parse("50MB/s 08:00-18:00 mon-fri");
  EXPECT_EQ(office.NextChangeAfter(On(kMon, 7, 0, 30)), On(kMon, 8, 0));
  EXPECT_EQ(office.NextChangeAfter(On(kMon, 7, 59, 59)), On(kMon, 8, 0));
  EXPECT_EQ(office.NextChangeAfter(On(kMon, 8, 0)), On(kMon, 18, 0));
  EXPECT_EQ(office.NextChangeAfter(On(kFri, 19, 0)), On(kNextMon, 8, 0));
  EXPECT_EQ(BandwidthSchedule::Parse("10MB/s 22:00-06:00 fri").NextChangeAfter(On(kFri, 23, 0)), On(kSat, 6, 0));
  // Windows with the same cap back to back are one stretch.
  EXPECT_EQ(BandwidthSchedule::Parse("1MB/s 08:00-12:00; 1MB/s 12:00-18:00").NextChangeAfter(On(kMon, 9, 0)),
            On(kMon, 18, 0));
  EXPECT_EQ(BandwidthSchedule::Parse("100MiB/s").NextChangeAfter(On(kMon, 9, 0)), std::nullopt);
  EXPECT_EQ(BandwidthSchedule::Parse("1MB/s 00:00-24:00").NextChangeAfter(On(kMon, 9, 0)), std::nullopt);
}

TEST(BandwidthSchedule, FollowsTheWallClockAcrossDaylightSavingTime) {
  SetTimeZone("Europe/Berlin");
  std::tm winter{};
  const std::time_t january = Utc(2026, 1, 1, 12, 0);
  localtime_r(&january, &winter);
  if (winter.tm_gmtoff != 3600) {
    SetTimeZone("UTC");
    GTEST_SKIP() << "no time zone data for Europe/Berlin";
  }
  // 2026-03-29: 02:00 CET (01:00 UTC) becomes 03:00 CEST; 02:30 never comes,
  // so a window from 02:30 starts when the clocks jump.
  const BandwidthSchedule spring = BandwidthSchedule::Parse("10MB/s 02:30-04:00");
  EXPECT_EQ(spring.BytesPerSecondAt(Utc(2026, 3, 29, 0, 59)), 0u);
  EXPECT_EQ(spring.BytesPerSecondAt(Utc(2026, 3, 29, 1, 0)), 10'000'000u);
  EXPECT_EQ(spring.NextChangeAfter(Utc(2026, 3, 28, 23, 0)), Utc(2026, 3, 29, 1, 0));
  EXPECT_EQ(spring.NextChangeAfter(Utc(2026, 3, 29, 1, 0)), Utc(2026, 3, 29, 2, 0));  // 04:00 CEST
  // 2026-10-25: 03:00 CEST (01:00 UTC) goes back to 02:00 CET; 02:30-02:45
  // comes twice.
  const BandwidthSchedule autumn = BandwidthSchedule::Parse("10MB/s 02:30-02:45");
  EXPECT_EQ(autumn.NextChangeAfter(Utc(2026, 10, 25, 0, 0)), Utc(2026, 10, 25, 0, 30));
  EXPECT_EQ(autumn.NextChangeAfter(Utc(2026, 10, 25, 0, 30)), Utc(2026, 10, 25, 0, 45));
  EXPECT_EQ(autumn.NextChangeAfter(Utc(2026, 10, 25, 0, 45)), Utc(2026, 10, 25, 1, 30));
  EXPECT_EQ(autumn.NextChangeAfter(Utc(2026, 10, 25, 1, 30)), Utc(2026, 10, 25, 1, 45));
  SetTimeZone("UTC");
}

// ---------------------------------------------------------------------------
// The limiter, against the real clock. Bounds allow for a loaded machine:
// rates are measured as bytes over elapsed time, never from assumed sleeps.

// Calls `acquire` until `duration` has passed; bytes per second achieved.
double Push(const std::function<void()>& acquire, uint64_t piece, Steady::duration duration,
            std::atomic<uint64_t>* total = nullptr) {
  const Steady::time_point start = Steady::now();
  uint64_t bytes = 0;
  while (Steady::now() - start < duration) {
    acquire();
    bytes += piece;
    if (total) *total += piece;
  }
  return static_cast<double>(bytes) / Seconds(Steady::now() - start);
}

TEST(BandwidthLimiter, HoldsOneTaskToTheCap) {
  BandwidthLimiter limiter(BandwidthSchedule::Fixed(20 * kMiB));
  // 2 s at 20 MiB/s is 40 MiB, plus the 2 MiB burst the bucket starts with.
  const double rate = Push([&] { ASSERT_TRUE(limiter.Acquire(kMiB)); }, kMiB, milliseconds(2000));
  EXPECT_GT(rate, 0.9 * 20 * kMiB);
  EXPECT_LT(rate, 1.1 * 20 * kMiB);
}

TEST(BandwidthLimiter, TwoTasksShareTheCapEvenly) {
  BandwidthLimiter limiter(BandwidthSchedule::Fixed(20 * kMiB));
  std::atomic<uint64_t> a{0}, b{0};
  const Steady::time_point start = Steady::now();
  std::thread ta([&] { Push([&] { limiter.Acquire(kMiB); }, kMiB, milliseconds(2000), &a); });
  std::thread tb([&] { Push([&] { limiter.Acquire(kMiB); }, kMiB, milliseconds(2000), &b); });
  ta.join();
  tb.join();
  const double total = static_cast<double>(a + b);
  const double rate = total / Seconds(Steady::now() - start);
  EXPECT_GT(rate, 0.9 * 20 * kMiB);
  EXPECT_LT(rate, 1.1 * 20 * kMiB);
  EXPECT_GT(a / total, 0.35);
  EXPECT_GT(b / total, 0.35);
}

TEST(BandwidthLimiter, SmallRequestsAreNotStarvedByLargeOnes) {
  // At 4 MiB/s a 1 MiB request takes 250 ms. Served in 64 KiB slices, round
  // robin, a 4 KiB request waits about one slice (16 ms) instead.
  BandwidthLimiter limiter(BandwidthSchedule::Fixed(4 * kMiB));
  std::atomic<bool> stop{false};
  std::thread big([&] {
    while (!stop) limiter.Acquire(kMiB);
  });
  std::this_thread::sleep_for(milliseconds(100));  // the big task is queued
  int small_requests = 0;
  const Steady::time_point start = Steady::now();
  while (Steady::now() - start < milliseconds(1000)) {
    limiter.Acquire(4 * kKiB);
    ++small_requests;
  }
  stop = true;
  big.join();
  EXPECT_GE(small_requests, 20);  // whole-request FIFO would allow about 4
}

TEST(BandwidthLimiter, RateChangeTakesEffectWhileRunning) {
  BandwidthLimiter limiter(BandwidthSchedule::Fixed(10 * kMiB));
  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> stop{false};
  std::thread pusher([&] {
    while (!stop) {
      limiter.Acquire(256 * kKiB);
      bytes += 256 * kKiB;
    }
  });
  std::this_thread::sleep_for(milliseconds(1000));
  const Steady::time_point changed = Steady::now();
  const uint64_t before = bytes;
  limiter.SetRate(40 * kMiB);
  EXPECT_EQ(limiter.BytesPerSecond(), 40 * kMiB);
  std::this_thread::sleep_for(milliseconds(1000));
  const double rate = static_cast<double>(bytes - before) / Seconds(Steady::now() - changed);
  stop = true;
  pusher.join();
  EXPECT_GT(rate, 0.85 * 40 * kMiB);
  EXPECT_LT(rate, 1.15 * 40 * kMiB);
}

TEST(BandwidthLimiter, UnlimitedPassesAtOnceAndReleasesWaiters) {
  BandwidthLimiter unlimited;
  Steady::time_point start = Steady::now();
  EXPECT_TRUE(unlimited.Acquire(uint64_t{1} << 40));
  EXPECT_LT(Seconds(Steady::now() - start), 0.1);

  BandwidthLimiter limiter(BandwidthSchedule::Fixed(kKiB));
  start = Steady::now();
  std::thread waiter([&] { EXPECT_TRUE(limiter.Acquire(kMiB)); });  // 17 minutes at 1 KiB/s
  std::this_thread::sleep_for(milliseconds(100));
  limiter.SetRate(0);
  waiter.join();
  EXPECT_LT(Seconds(Steady::now() - start), 1.0);
}

TEST(BandwidthLimiter, BurstIsBoundedAfterIdling) {
  BandwidthLimiter limiter(BandwidthSchedule::Fixed(10 * kMiB));
  std::this_thread::sleep_for(milliseconds(300));  // the bucket holds 1 MiB (100 ms), not 3
  const Steady::time_point start = Steady::now();
  EXPECT_TRUE(limiter.Acquire(5 * kMiB));
  const double elapsed = Seconds(Steady::now() - start);
  EXPECT_GT(elapsed, 0.35);  // (5 - 1) MiB at 10 MiB/s is 0.4 s
  EXPECT_LT(elapsed, 1.5);
}

TEST(BandwidthLimiter, CancelStopsAWaitingAcquire) {
  BandwidthLimiter limiter(BandwidthSchedule::Fixed(kKiB));
  std::atomic<bool> cancel{false};
  const Steady::time_point start = Steady::now();
  std::thread waiter([&] { EXPECT_FALSE(limiter.Acquire(kMiB, &cancel)); });
  std::this_thread::sleep_for(milliseconds(100));
  cancel = true;
  waiter.join();
  EXPECT_LT(Seconds(Steady::now() - start), 1.0);
  // Already cancelled: false at once, even with no cap.
  BandwidthLimiter unlimited;
  EXPECT_FALSE(unlimited.Acquire(1, &cancel));
  EXPECT_FALSE(AcquireAll({&unlimited, &limiter}, 1, &cancel));
  // Others go on: a cancelled waiter leaves the queue.
  std::atomic<bool> cancel_big{false};
  BandwidthLimiter shared(BandwidthSchedule::Fixed(kMiB));
  ASSERT_TRUE(shared.Acquire(100 * kKiB));  // empty the bucket
  std::thread big([&] { EXPECT_FALSE(shared.Acquire(100 * kMiB, &cancel_big)); });
  std::this_thread::sleep_for(milliseconds(50));
  cancel_big = true;
  big.join();
  const Steady::time_point small_start = Steady::now();
  EXPECT_TRUE(shared.Acquire(64 * kKiB));
  EXPECT_LT(Seconds(Steady::now() - small_start), 0.5);
}

TEST(BandwidthLimiter, FollowsItsScheduleByTheWallClock) {
  std::atomic<std::time_t> now{On(kMon, 11, 59, 59)};
  BandwidthLimiter limiter(BandwidthSchedule::Parse("1KiB/s; unlimited 12:00-13:00"), [&] { return now.load(); });
  EXPECT_EQ(limiter.BytesPerSecond(), kKiB);
  const Steady::time_point start = Steady::now();
  std::thread waiter([&] { EXPECT_TRUE(limiter.Acquire(kMiB)); });
  std::this_thread::sleep_for(milliseconds(100));
  now = On(kMon, 12, 0);  // a waiter looks again within 50 ms
  waiter.join();
  EXPECT_LT(Seconds(Steady::now() - start), 1.0);
  EXPECT_EQ(limiter.BytesPerSecond(), 0u);
  now = On(kMon, 13, 0);
  EXPECT_EQ(limiter.BytesPerSecond(), kKiB);
  limiter.SetSchedule(BandwidthSchedule::Parse("5MiB/s"));
  EXPECT_EQ(limiter.BytesPerSecond(), 5 * kMiB);
  EXPECT_EQ(limiter.schedule().ToString(), "5MiB/s");
}

TEST(BandwidthLimiter, AcquireAllGoesAtTheSlowestLimiter) {
  BandwidthLimiter worker(BandwidthSchedule::Fixed(40 * kMiB));
  BandwidthLimiter repository(BandwidthSchedule::Fixed(20 * kMiB));
  // nullptr: no limiter at that level.
  const double rate = Push(
      [&] {
        ASSERT_TRUE(AcquireAll({&worker, nullptr, &repository}, kMiB));
      },
      kMiB, milliseconds(2000));
  EXPECT_GT(rate, 0.9 * 20 * kMiB);
  EXPECT_LT(rate, 1.12 * 20 * kMiB);  // with the repository's 2 MiB burst
}

TEST(BandwidthLimiter, WorkersShareARepositoryLimiter) {
  BandwidthLimiter worker_a(BandwidthSchedule::Fixed(40 * kMiB));
  BandwidthLimiter worker_b(BandwidthSchedule::Fixed(40 * kMiB));
  BandwidthLimiter repository(BandwidthSchedule::Fixed(20 * kMiB));
  std::atomic<uint64_t> a{0}, b{0};
  const Steady::time_point start = Steady::now();
  std::thread ta([&] { Push([&] { AcquireAll({&worker_a, &repository}, kMiB); }, kMiB, milliseconds(2000), &a); });
  std::thread tb([&] { Push([&] { AcquireAll({&worker_b, &repository}, kMiB); }, kMiB, milliseconds(2000), &b); });
  ta.join();
  tb.join();
  const double total = static_cast<double>(a + b);
  const double rate = total / Seconds(Steady::now() - start);
  EXPECT_GT(rate, 0.9 * 20 * kMiB);
  EXPECT_LT(rate, 1.12 * 20 * kMiB);
  EXPECT_GT(a / total, 0.35);
  EXPECT_GT(b / total, 0.35);
}

}  // namespace
}  // namespace ferry
