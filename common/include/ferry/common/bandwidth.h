// Bandwidth caps for backup traffic: a schedule of caps by time of week
// (BandwidthSchedule) and a limiter that holds a set of tasks to it
// (BandwidthLimiter). See docs/throttling.md.
//
// Schedule text, for config files, command-line flags and JSON strings:
//
//   schedule := rule { ";" rule }
//   rule     := rate [ hours ] [ days ]       hours and days in either order
//   rate     := "unlimited" | "0" | number [ " " ] unit
//   number   := digits [ "." digits ]
//   unit     := bytes "/s" | bits "/s"
//   bytes    := B | KB | MB | GB | TB         powers of 1000
//             | KiB | MiB | GiB | TiB        powers of 1024
//   bits     := bit | kbit | Mbit | Gbit | Tbit   powers of 1000, 8 to a byte
//   hours    := HH:MM "-" HH:MM               24-hour; the end may be 24:00
//   days     := item { "," item }             item := day | day "-" day
//   day      := mon | tue | wed | thu | fri | sat | sun
//
// e.g. "200MiB/s; 50MB/s 08:00-18:00 mon-fri; unlimited 12:00-13:00 sat,sun".
// Rules are separated by ';' only (',' belongs to day lists); spaces around
// the parts are free. Unit prefixes and day names take any case, but a byte
// unit's 'B' is upper case: "mb/s" is rejected rather than guessed.
//
// Meaning: a rule with hours or days is a window; the last window that
// matches a moment gives the cap, and where none matches the rule without a
// window (the default, at most one, anywhere in the list) does, else there is
// no cap. Hours alone mean every day, days alone all day. A window whose end
// is not after its start crosses midnight and belongs to its start day:
// "22:00-06:00 fri" is Friday 22:00 to Saturday 06:00. Times are the local
// wall clock of the process (TZ; localtime_r), to the minute.
//
// Limiter design and locking: one mutex guards a token bucket and a FIFO of
// waiting Acquire calls. Bytes are handed out round robin in slices of at
// most 64 KiB (and at most 100 ms of the cap), so N waiting tasks that ask
// for a slice or more at a time each get about 1/N of the cap, however large
// their requests, and a small request waits at most one slice per task
// ahead of it. The bucket holds at most 100 ms of the cap (the burst), so an
// idle limiter does not save up. The thread at the head of the queue sleeps
// until its slice is due, the others until they are served; every waiter
// wakes at least every 50 ms to look at its cancel flag and the schedule.
// The cap is re-read from the schedule when the wall clock's second changes.
// No background thread: waiters serve the queue themselves.
#pragma once

#include <atomic>
#include <bitset>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

class BandwidthSchedule {
 public:
  // A rule with a window: its cap applies on `days` from `start_minute`
  // (minutes after midnight, 0..1439) to `end_minute` (1..1440); an end not
  // after the start crosses midnight.
  struct Window {
    uint64_t bytes_per_second = 0;  // 0: unlimited
    int start_minute = 0;
    int end_minute = 1440;
    std::bitset<7> days = 0x7f;  // bit 0 = Sunday, as tm_wday

    bool operator==(const Window&) const = default;
  };

  // No cap at any time.
  BandwidthSchedule() = default;
  // `bytes_per_second` at all times; 0: no cap.
  static BandwidthSchedule Fixed(uint64_t bytes_per_second);
  // The text form above. Throws kBadInput naming the rule at fault:
  // "throttle rule '50MB/x 08:00-18:00': unknown unit 'MB/x'; expected ...".
  static BandwidthSchedule Parse(std::string_view text);

  // Canonical text: the default first (left out when unlimited, unless it
  // is all there is), then the windows in order; rates in the largest unit
  // that keeps them whole; days Monday first. Parse(ToString()) == *this.
  std::string ToString() const;

  // The cap at `t` in local time, bytes per second; 0: unlimited.
  uint64_t BytesPerSecondAt(std::time_t t) const;
  // The first moment after `t` at which the cap differs from the cap at
  // `t`, or nullopt if it does not change within 8 days (so never).
  std::optional<std::time_t> NextChangeAfter(std::time_t t) const;

  uint64_t default_bytes_per_second() const { return default_bytes_per_second_; }
  const std::vector<Window>& windows() const { return windows_; }

  bool operator==(const BandwidthSchedule&) const = default;

 private:
  uint64_t default_bytes_per_second_ = 0;
  std::vector<Window> windows_;
};

// Holds the tasks that share it (threads of one worker, or everyone writing
// to one repository) to the cap of its schedule, fairly (design above).
// Thread-safe. Destroy it only when no Acquire is running.
class BandwidthLimiter {
 public:
  // Seconds since the epoch, for the schedule; tests pass their own. Called
  // with the limiter's lock held: it must not call the limiter.
  using WallClock = std::function<std::time_t()>;

  // `wall_clock`: nullptr for time(). The bucket starts full.
  explicit BandwidthLimiter(BandwidthSchedule schedule = {}, WallClock wall_clock = nullptr);
  BandwidthLimiter(const BandwidthLimiter&) = delete;
  BandwidthLimiter& operator=(const BandwidthLimiter&) = delete;

  // Blocks until `bytes` may pass. Returns false, having let nothing pass,
  // if `*cancel` is true on entry or becomes true while waiting.
  bool Acquire(uint64_t bytes, const std::atomic<bool>* cancel = nullptr);

  // Replace the schedule (or set a fixed cap, 0: unlimited) while tasks
  // run; waiting tasks go on at the new cap at once.
  void SetSchedule(BandwidthSchedule schedule);
  void SetRate(uint64_t bytes_per_second) { SetSchedule(BandwidthSchedule::Fixed(bytes_per_second)); }

  // The cap now, bytes per second; 0: unlimited.
  uint64_t BytesPerSecond();
  BandwidthSchedule schedule() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Waiter;  // one blocked Acquire call

  void RefreshLocked(Clock::time_point now);
  void DispatchLocked();

  mutable std::mutex mu_;
  BandwidthSchedule schedule_;
  WallClock wall_clock_;
  std::optional<std::time_t> rate_read_at_;  // the wall-clock second rate_ is for
  uint64_t rate_ = 0;                        // bytes per second; 0: unlimited
  double tokens_ = 0;                        // unused while unlimited
  Clock::time_point refilled_at_;
  std::deque<Waiter*> queue_;  // round-robin order; the front is served next
};

// Lets `bytes` pass every limiter in `limiters` (nullptr entries are
// skipped), e.g. {&worker_limit, &repository_limit}: in pieces of 64 KiB
// through each in turn, so the slowest one sets the pace and none waits for
// a whole large request on another. Returns false if cancelled; pieces that
// passed some of the limiters by then stay counted there.
bool AcquireAll(const std::vector<BandwidthLimiter*>& limiters, uint64_t bytes,
                const std::atomic<bool>* cancel = nullptr);

}  // namespace ferry
