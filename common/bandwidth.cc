#include "ferry/common/bandwidth.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>

#include "ferry/common/error.h"

namespace ferry {

namespace {

constexpr int kMinutesPerDay = 24 * 60;
// Monday first, as people write them; the index into kDayNames is tm_wday.
constexpr std::array<std::string_view, 7> kDayNames = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
constexpr std::array<int, 7> kMondayFirst = {1, 2, 3, 4, 5, 6, 0};
constexpr std::string_view kUnits = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, bit, kbit, Mbit, Gbit or Tbit, then /s";
constexpr std::string_view kRateExamples = "expected e.g. 50MB/s, 100MiB/s, 1Gbit/s, or unlimited";

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

std::string_view Trim(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size() && IsSpace(s[begin])) ++begin;
  size_t end = s.size();
  while (end > begin && IsSpace(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

// The multiplier from `unit` ("MiB/s") to bytes per second, or nullopt.
std::optional<long double> UnitBytes(std::string_view unit) {
  if (!unit.ends_with("/s")) return std::nullopt;
  std::string_view body = unit.substr(0, unit.size() - 2);
  auto power = [](std::string_view prefix, long double base) -> std::optional<long double> {
    constexpr std::string_view kPrefixes = "kmgt";
    if (prefix.empty()) return 1.0L;
    if (prefix.size() != 1) return std::nullopt;
    size_t k = kPrefixes.find(Lower(prefix[0]));
    if (k == std::string_view::npos) return std::nullopt;
    return std::pow(base, static_cast<long double>(k + 1));
  };
  if (Lower(body).ends_with("bit")) {
    auto p = power(body.substr(0, body.size() - 3), 1000.0L);
    if (p) return *p / 8;
    return std::nullopt;
  }
  if (!body.ends_with('B')) return std::nullopt;  // "mb/s": bytes or bits? Not guessed.
  body.remove_suffix(1);
  if (body.size() == 2 && Lower(body[1]) == 'i') return power(body.substr(0, 1), 1024.0L);
  return power(body, 1000.0L);
}

// "50MB/s"-like text for a rate: the largest unit that keeps it whole, the
// smaller number when both a binary and a decimal unit do.
std::string FormatRate(uint64_t bytes_per_second) {
  if (bytes_per_second == 0) return "unlimited";
  constexpr std::array<std::string_view, 4> kDecimal = {"KB", "MB", "GB", "TB"};
  constexpr std::array<std::string_view, 4> kBinary = {"KiB", "MiB", "GiB", "TiB"};
  uint64_t best = bytes_per_second;
  std::string_view unit = "B";
  uint64_t decimal = 1, binary = 1;
  for (size_t k = 0; k < 4; ++k) {
    decimal *= 1000;
    binary *= 1024;
    if (bytes_per_second % decimal == 0 && bytes_per_second / decimal < best) {
      best = bytes_per_second / decimal;
      unit = kDecimal[k];
    }
    if (bytes_per_second % binary == 0 && bytes_per_second / binary < best) {
      best = bytes_per_second / binary;
      unit = kBinary[k];
    }
  }
  return std::to_string(best) + std::string(unit) + "/s";
}

std::string FormatMinute(int minute) {
  const int hour = minute / 60, rest = minute % 60;
  return {static_cast<char>('0' + hour / 10), static_cast<char>('0' + hour % 10), ':',
          static_cast<char>('0' + rest / 10), static_cast<char>('0' + rest % 10)};
}

// Monday first; runs of three or more days as ranges: "mon-fri", "sat,sun".
std::string FormatDays(const std::bitset<7>& days) {
  std::string out;
  for (size_t i = 0; i < kMondayFirst.size();) {
    if (!days[kMondayFirst[i]]) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j + 1 < kMondayFirst.size() && days[kMondayFirst[j + 1]]) ++j;
    auto add = [&](std::string_view s) {
      if (!out.empty()) out += ',';
      out += s;
    };
    if (j - i >= 2) {
      add(std::string(kDayNames[kMondayFirst[i]]) + "-" + std::string(kDayNames[kMondayFirst[j]]));
    } else {
      for (size_t k = i; k <= j; ++k) add(kDayNames[kMondayFirst[k]]);
    }
    i = j + 1;
  }
  return out;
}

bool Matches(const BandwidthSchedule::Window& w, int wday, int minute) {
  if (w.start_minute < w.end_minute) {
    return w.days[wday] && minute >= w.start_minute && minute < w.end_minute;
  }
  // Crosses midnight: the evening of a listed day, or the morning after one.
  return (w.days[wday] && minute >= w.start_minute) || (w.days[(wday + 6) % 7] && minute < w.end_minute);
}

// One rule of a schedule's text; throws kBadInput naming it.
class RuleParser {
 public:
  explicit RuleParser(std::string_view rule) : rule_(rule) {}

  struct Rule {
    bool has_window = false;
    BandwidthSchedule::Window window;
  };

  Rule Parse() {
    Rule out;
    out.window.bytes_per_second = ParseRate();
    bool has_hours = false, has_days = false;
    SkipSpace();
    while (pos_ < rule_.size()) {
      if (IsDigit(rule_[pos_])) {
        if (has_hours) throw Bad("more than one time range");
        ParseHours(out.window);
        has_hours = true;
      } else if (IsAlpha(rule_[pos_])) {
        if (has_days) throw Bad("more than one list of days");
        out.window.days = ParseDays();
        has_days = true;
      } else {
        throw Bad("unexpected '" + std::string(rule_.substr(pos_)) + "'" + SeparatorHint(rule_.substr(pos_)));
      }
      SkipSpace();
    }
    out.has_window = has_hours || has_days;
    return out;
  }

 private:
  Error Bad(const std::string& detail) const {
    return Error(ErrorKind::kBadInput, "throttle rule '" + std::string(rule_) + "': " + detail);
  }
  static std::string SeparatorHint(std::string_view text) {
    return text.find(',') != std::string_view::npos || text.find(';') != std::string_view::npos
               ? " (separate rules with ';')"
               : "";
  }

  void SkipSpace() {
    while (pos_ < rule_.size() && IsSpace(rule_[pos_])) ++pos_;
  }
  std::string_view Word() {
    size_t begin = pos_;
    while (pos_ < rule_.size() && !IsSpace(rule_[pos_])) ++pos_;
    return rule_.substr(begin, pos_ - begin);
  }

  // rate := "unlimited" | "0" | number [space] unit
  uint64_t ParseRate() {
    size_t begin = pos_;
    if (pos_ < rule_.size() && IsAlpha(rule_[pos_])) {
      std::string_view word = Word();
      if (Lower(word) == "unlimited") return 0;
      throw Bad("'" + std::string(word) + "' is not a rate; " + std::string(kRateExamples));
    }
    uint64_t whole = 0;
    int whole_digits = 0;
    while (pos_ < rule_.size() && IsDigit(rule_[pos_])) {
      if (++whole_digits > 15) {
        pos_ = begin;
        throw Bad("'" + std::string(Word()) + "' is too large");
      }
      whole = whole * 10 + static_cast<uint64_t>(rule_[pos_++] - '0');
    }
    long double fraction = 0, scale = 1;
    if (whole_digits > 0 && pos_ < rule_.size() && rule_[pos_] == '.') {
      ++pos_;
      int fraction_digits = 0;
      while (pos_ < rule_.size() && IsDigit(rule_[pos_])) {
        if (++fraction_digits <= 9) {
          scale /= 10;
          fraction += scale * (rule_[pos_] - '0');
        }
        ++pos_;
      }
      if (fraction_digits == 0) whole_digits = 0;  // "5." is not a number
    }
    if (whole_digits == 0) {
      pos_ = begin;
      throw Bad("'" + std::string(Word()) + "' is not a rate; " + std::string(kRateExamples));
    }
    const long double number = static_cast<long double>(whole) + fraction;
    size_t number_end = pos_;
    SkipSpace();
    if (pos_ >= rule_.size() || !IsAlpha(rule_[pos_])) {
      if (number == 0) return 0;  // "0": no cap
      throw Bad("'" + std::string(rule_.substr(begin, number_end - begin)) + "' has no unit; " +
                std::string(kRateExamples));
    }
    std::string_view unit = Word();
    std::string rate_text(rule_.substr(begin, pos_ - begin));
    std::optional<long double> multiplier = UnitBytes(unit);
    if (!multiplier) {
      std::string lower = Lower(unit);
      if (lower == "kb/s" || lower == "mb/s" || lower == "gb/s" || lower == "tb/s") {
        std::string prefix(1, static_cast<char>(lower[0] - 'a' + 'A'));
        throw Bad("unknown unit '" + std::string(unit) + "'; write " + prefix + "B/s for bytes or " + prefix +
                  "bit/s for bits");
      }
      throw Bad("unknown unit '" + std::string(unit) + "'; expected " + std::string(kUnits) + SeparatorHint(unit));
    }
    if (number == 0) throw Bad("'" + rate_text + "' is zero; write 'unlimited' (or 0) for no cap");
    const long double bytes = std::round(number * *multiplier);
    if (bytes < 1) throw Bad("'" + rate_text + "' is less than 1 byte per second");
    if (bytes > 1e18L) throw Bad("'" + rate_text + "' is too large");
    return static_cast<uint64_t>(bytes);
  }

  // "HH:MM", 24-hour; 24:00 only as an end.
  int ParseTime(std::string_view text, bool is_end) const {
    if (text.size() != 5 || !IsDigit(text[0]) || !IsDigit(text[1]) || text[2] != ':' || !IsDigit(text[3]) ||
        !IsDigit(text[4])) {
      throw Bad("'" + std::string(text) + "' is not a time; expected HH:MM, 24-hour, e.g. 08:00");
    }
    int hour = (text[0] - '0') * 10 + (text[1] - '0');
    int minute = (text[3] - '0') * 10 + (text[4] - '0');
    if (hour == 24 && minute == 0) {
      if (!is_end) throw Bad("'24:00' can only end a time range");
      return kMinutesPerDay;
    }
    if (hour > 23) throw Bad("'" + std::string(text) + "': hour " + std::to_string(hour) + " is outside 00-23");
    if (minute > 59) {
      throw Bad("'" + std::string(text) + "': minute " + std::to_string(minute) + " is outside 00-59");
    }
    return hour * 60 + minute;
  }

  // hours := HH:MM "-" HH:MM
  void ParseHours(BandwidthSchedule::Window& window) {
    size_t begin = pos_;
    auto time_text = [&] {
      size_t from = pos_;
      while (pos_ < rule_.size() && (IsDigit(rule_[pos_]) || rule_[pos_] == ':')) ++pos_;
      return rule_.substr(from, pos_ - from);
    };
    std::string_view start = time_text();
    SkipSpace();
    if (start.find(':') == std::string_view::npos || pos_ >= rule_.size() || rule_[pos_] != '-') {
      std::string_view rest = rule_.substr(begin);
      throw Bad("'" + std::string(rest) + "' is not a time range; expected HH:MM-HH:MM, e.g. 08:00-18:00" +
                SeparatorHint(rule_.substr(0, begin)));
    }
    ++pos_;
    SkipSpace();
    std::string_view end = time_text();
    int start_minute = ParseTime(start, false);
    int end_minute = ParseTime(end, true);
    if (start_minute == end_minute) {
      throw Bad("time range " + std::string(start) + "-" + std::string(end) +
                " is empty; for all day write 00:00-24:00");
    }
    window.start_minute = start_minute;
    window.end_minute = end_minute == 0 ? kMinutesPerDay : end_minute;  // "22:00-00:00" ends at 24:00
  }

  // days := item { "," item }, item := day | day "-" day (may wrap: fri-mon)
  std::bitset<7> ParseDays() {
    size_t begin = pos_;
    while (pos_ < rule_.size() && !IsDigit(rule_[pos_])) ++pos_;
    std::string_view text = rule_.substr(begin, pos_ - begin);
    std::bitset<7> days;
    auto day = [&](std::string_view name, std::string_view item) {
      std::string lower = Lower(Trim(name));
      for (size_t d = 0; d < kDayNames.size(); ++d) {
        if (kDayNames[d] == lower) return static_cast<int>(d);
      }
      throw Bad("'" + std::string(Trim(item)) +
                "' is not a day; expected mon, tue, wed, thu, fri, sat or sun, or a range like mon-fri");
    };
    auto add = [&](int d) {
      if (days[d]) throw Bad("day '" + std::string(kDayNames[d]) + "' given twice");
      days[d] = true;
    };
    const std::string_view all = Trim(text);
    while (true) {
      size_t comma = text.find(',');
      std::string_view item = text.substr(0, comma);
      if (Trim(item).empty()) {
        // "mon-fri, 10MB/s sat": a ',' where a ';' was meant?
        throw Bad("stray ',' in days '" + std::string(all) + "'" +
                  (pos_ < rule_.size() ? " (separate rules with ';')" : ""));
      }
      size_t dash = item.find('-');
      if (dash == std::string_view::npos) {
        add(day(item, item));
      } else {
        int first = day(item.substr(0, dash), item);
        int last = day(item.substr(dash + 1), item);
        for (int d = first;; d = (d + 1) % 7) {
          add(d);
          if (d == last) break;
        }
      }
      if (comma == std::string_view::npos) break;
      text = text.substr(comma + 1);
    }
    return days;
  }

  std::string_view rule_;
  size_t pos_ = 0;
};

}  // namespace

BandwidthSchedule BandwidthSchedule::Fixed(uint64_t bytes_per_second) {
  BandwidthSchedule s;
  s.default_bytes_per_second_ = bytes_per_second;
  return s;
}

BandwidthSchedule BandwidthSchedule::Parse(std::string_view text) {
  if (Trim(text).empty()) {
    throw Error(ErrorKind::kBadInput, "throttle schedule is empty; write 'unlimited' for no cap");
  }
  auto bad = [&](const std::string& detail) {
    return Error(ErrorKind::kBadInput, "throttle schedule '" + std::string(Trim(text)) + "': " + detail);
  };
  BandwidthSchedule out;
  std::optional<std::string> default_rule;
  std::string_view rest = text;
  for (int number = 1;; ++number) {
    size_t semicolon = rest.find(';');
    std::string_view rule = Trim(rest.substr(0, semicolon));
    if (rule.empty()) throw bad("rule " + std::to_string(number) + " is empty");
    RuleParser::Rule parsed = RuleParser(rule).Parse();
    if (parsed.has_window) {
      out.windows_.push_back(parsed.window);
    } else {
      if (default_rule) {
        throw bad("more than one rule without hours or days ('" + *default_rule + "' and '" + std::string(rule) +
                  "'); keep one");
      }
      default_rule = std::string(rule);
      out.default_bytes_per_second_ = parsed.window.bytes_per_second;
    }
    if (semicolon == std::string_view::npos) break;
    rest = rest.substr(semicolon + 1);
  }
  return out;
}

std::string BandwidthSchedule::ToString() const {
  std::string out;
  if (default_bytes_per_second_ != 0 || windows_.empty()) out = FormatRate(default_bytes_per_second_);
  for (const Window& w : windows_) {
    if (!out.empty()) out += "; ";
    out += FormatRate(w.bytes_per_second) + " " + FormatMinute(w.start_minute) + "-" + FormatMinute(w.end_minute);
    if (!w.days.all()) out += " " + FormatDays(w.days);
  }
  return out;
}

uint64_t BandwidthSchedule::BytesPerSecondAt(std::time_t t) const {
  if (windows_.empty()) return default_bytes_per_second_;
  std::tm local{};
  if (localtime_r(&t, &local) == nullptr) return default_bytes_per_second_;
  const int minute = local.tm_hour * 60 + local.tm_min;
  for (auto w = windows_.rbegin(); w != windows_.rend(); ++w) {
    if (Matches(*w, local.tm_wday, minute)) return w->bytes_per_second;
  }
  return default_bytes_per_second_;
}

// The cap changes only where the local wall clock passes a window's start or
// end, or midnight (the day changes). Between two such minutes, with the UTC
// offset the same at both ends, it is constant, so we jump from boundary to
// boundary; across a change of offset (daylight saving time) we step a
// minute at a time, which finds the exact moment however the wall clock
// jumped.
std::optional<std::time_t> BandwidthSchedule::NextChangeAfter(std::time_t t) const {
  if (windows_.empty()) return std::nullopt;
  std::vector<int> boundaries = {0};
  for (const Window& w : windows_) {
    boundaries.push_back(w.start_minute);
    boundaries.push_back(w.end_minute % kMinutesPerDay);
  }
  std::sort(boundaries.begin(), boundaries.end());
  const uint64_t rate = BytesPerSecondAt(t);
  const std::time_t horizon = t + 8 * 24 * 3600;
  std::time_t s = (t >= 0 ? t / 60 : (t - 59) / 60) * 60 + 60;  // the next whole minute
  while (s <= horizon) {
    if (BytesPerSecondAt(s) != rate) return s;
    std::tm here{}, there{};
    if (localtime_r(&s, &here) == nullptr) return std::nullopt;
    const int minute = here.tm_hour * 60 + here.tm_min;
    auto next = std::upper_bound(boundaries.begin(), boundaries.end(), minute);
    const int next_minute = next == boundaries.end() ? kMinutesPerDay : *next;
    const std::time_t jump = s + (next_minute - minute) * 60 - here.tm_sec;
    if (localtime_r(&jump, &there) != nullptr && there.tm_gmtoff == here.tm_gmtoff) {
      s = jump;
    } else {
      s += 60;
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------

struct BandwidthLimiter::Waiter {
  explicit Waiter(uint64_t bytes) : remaining(bytes) {}
  uint64_t remaining;  // not yet granted
  bool done = false;
  std::condition_variable cv;
};

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);  // cancel flag and schedule
constexpr auto kMinSleep = std::chrono::milliseconds(1);       // so high caps hand out many slices per wake
constexpr uint64_t kMaxSlice = 64 * 1024;

// The burst: 100 ms of the cap (at least a byte).
double Capacity(uint64_t rate) { return std::max(1.0, static_cast<double>(rate) / 10); }
// What one waiter gets per turn: 64 KiB, or the whole burst if that is less.
uint64_t Slice(uint64_t rate) { return std::min(kMaxSlice, static_cast<uint64_t>(Capacity(rate))); }

bool Cancelled(const std::atomic<bool>* cancel) { return cancel != nullptr && cancel->load(); }

}  // namespace

BandwidthLimiter::BandwidthLimiter(BandwidthSchedule schedule, WallClock wall_clock)
    : schedule_(std::move(schedule)), wall_clock_(std::move(wall_clock)), refilled_at_(Clock::now()) {
  std::lock_guard lock(mu_);
  RefreshLocked(refilled_at_);
}

void BandwidthLimiter::RefreshLocked(Clock::time_point now) {
  if (rate_ != 0) {
    const double elapsed = std::chrono::duration<double>(now - refilled_at_).count();
    tokens_ = std::min(Capacity(rate_), tokens_ + elapsed * static_cast<double>(rate_));
  }
  refilled_at_ = now;

  const std::time_t wall = wall_clock_ ? wall_clock_() : std::time(nullptr);
  if (rate_read_at_ == wall) return;
  rate_read_at_ = wall;
  const uint64_t rate = schedule_.BytesPerSecondAt(wall);
  if (rate == rate_) return;
  if (rate_ == 0) tokens_ = Capacity(rate);  // from unlimited: a full bucket, as at the start
  rate_ = rate;
  if (rate_ != 0) tokens_ = std::min(tokens_, Capacity(rate_));
}

// Serves the queue round robin, a slice per turn, as far as the tokens go.
void BandwidthLimiter::DispatchLocked() {
  while (!queue_.empty()) {
    Waiter* w = queue_.front();
    if (rate_ == 0) {
      w->remaining = 0;
    } else {
      const uint64_t grant = std::min(w->remaining, Slice(rate_));
      if (tokens_ < static_cast<double>(grant)) break;
      tokens_ -= static_cast<double>(grant);
      w->remaining -= grant;
    }
    queue_.pop_front();
    if (w->remaining == 0) {
      w->done = true;
      w->cv.notify_one();
    } else {
      queue_.push_back(w);
    }
  }
  // The head sleeps until its slice is due: tell it to look again.
  if (!queue_.empty()) queue_.front()->cv.notify_one();
}

bool BandwidthLimiter::Acquire(uint64_t bytes, const std::atomic<bool>* cancel) {
  if (Cancelled(cancel)) return false;
  if (bytes == 0) return true;
  std::unique_lock lock(mu_);
  Clock::time_point now = Clock::now();
  RefreshLocked(now);
  if (queue_.empty() && (rate_ == 0 || tokens_ >= static_cast<double>(bytes))) {
    if (rate_ != 0) tokens_ -= static_cast<double>(bytes);
    return true;
  }

  Waiter self(bytes);
  queue_.push_back(&self);
  DispatchLocked();
  while (!self.done) {
    if (Cancelled(cancel)) {
      queue_.erase(std::find(queue_.begin(), queue_.end(), &self));
      // Give back what was granted: none of it will be sent.
      if (rate_ != 0) tokens_ = std::min(Capacity(rate_), tokens_ + static_cast<double>(bytes - self.remaining));
      DispatchLocked();
      return false;
    }
    Clock::time_point deadline = now + kPollInterval;
    if (queue_.front() == &self && rate_ != 0) {
      const double missing = static_cast<double>(std::min(self.remaining, Slice(rate_))) - tokens_;
      const auto due = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(missing / static_cast<double>(rate_)));
      deadline = std::min(deadline, now + std::max<Clock::duration>(due, kMinSleep));
    }
    self.cv.wait_until(lock, deadline);
    now = Clock::now();
    RefreshLocked(now);
    DispatchLocked();
  }
  return true;
}

void BandwidthLimiter::SetSchedule(BandwidthSchedule schedule) {
  std::lock_guard lock(mu_);
  const Clock::time_point now = Clock::now();
  RefreshLocked(now);  // tokens earned so far, at the old cap
  schedule_ = std::move(schedule);
  rate_read_at_.reset();
  RefreshLocked(now);
  DispatchLocked();
}

uint64_t BandwidthLimiter::BytesPerSecond() {
  std::lock_guard lock(mu_);
  RefreshLocked(Clock::now());
  return rate_;
}

BandwidthSchedule BandwidthLimiter::schedule() const {
  std::lock_guard lock(mu_);
  return schedule_;
}

bool AcquireAll(const std::vector<BandwidthLimiter*>& limiters, uint64_t bytes, const std::atomic<bool>* cancel) {
  std::vector<BandwidthLimiter*> chain;
  for (BandwidthLimiter* l : limiters) {
    if (l != nullptr) chain.push_back(l);
  }
  if (chain.empty()) return !Cancelled(cancel);
  if (chain.size() == 1) return chain[0]->Acquire(bytes, cancel);
  if (Cancelled(cancel)) return false;
  constexpr uint64_t kPiece = 64 * 1024;
  for (uint64_t passed = 0; passed < bytes;) {
    const uint64_t piece = std::min(kPiece, bytes - passed);
    for (BandwidthLimiter* l : chain) {
      if (!l->Acquire(piece, cancel)) return false;
    }
    passed += piece;
  }
  return true;
}

}  // namespace ferry
