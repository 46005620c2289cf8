// Ferry's one retry policy: capped exponential backoff with full jitter, for
// every client that talks to something that can be briefly unavailable (an
// object store answering 503 SlowDown, a webhook receiver, a peer that
// restarts). docs/error-policy.md, "Retries".
//
//   RetryPolicy   how many attempts, the first and the largest delay, and an
//                 overall deadline; attempts and deadline both bound it
//   Backoff       the delays of one operation: NextDelay() until it says stop
//   WithRetries   runs a function, retrying on kRetryable errors only
//
// Only kRetryable is retried: the error policy reserves it for failures a
// retry can cure (connection lost, peer busy, throttled). The jitter (a delay
// drawn uniformly from [cap/2, cap], the cap doubling per attempt) keeps many
// clients that failed together from coming back together, while still
// waiting at least half the cap, so a throttling server gets its pause.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>

namespace ferry {

struct RetryPolicy {
  int attempts = 8;                                  // including the first; 1 = no retry
  std::chrono::milliseconds first_delay{100};        // cap of the first delay
  std::chrono::milliseconds max_delay{10'000};       // cap of any delay
  std::chrono::milliseconds deadline{120'000};       // no attempt starts after this (0: none)
};

class Backoff {
 public:
  explicit Backoff(RetryPolicy policy);
  // The delay before the next attempt, or nullopt when the policy allows no
  // more (attempts used up, or the deadline would pass before it).
  std::optional<std::chrono::milliseconds> NextDelay();
  int attempts_made() const { return attempts_made_; }

 private:
  RetryPolicy policy_;
  std::chrono::steady_clock::time_point start_;
  int attempts_made_ = 1;  // the first attempt is made before any delay is asked
  std::chrono::milliseconds cap_;
};

// Runs `attempt` until it returns, retrying on ferry::Error kRetryable with
// the policy's delays. The last error is rethrown with "<what>: gave up after
// N attempts" in front; any other error is rethrown at once, unchanged.
// `on_retry` (optional) sees each error that will be retried, for logging.
void WithRetries(const RetryPolicy& policy, const std::string& what, const std::function<void()>& attempt,
                 const std::function<void(const std::string& error, std::chrono::milliseconds delay)>& on_retry = {});

}  // namespace ferry
