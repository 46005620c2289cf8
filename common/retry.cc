#include "ferry/common/retry.h"

#include <algorithm>
#include <random>
#include <thread>

#include "ferry/common/error.h"

namespace ferry {

Backoff::Backoff(RetryPolicy policy)
    : policy_(policy), start_(std::chrono::steady_clock::now()), cap_(policy.first_delay) {}

std::optional<std::chrono::milliseconds> Backoff::NextDelay() {
  if (attempts_made_ >= policy_.attempts) return std::nullopt;
  thread_local std::minstd_rand random(std::random_device{}());
  const auto cap = std::max<std::chrono::milliseconds>(cap_, std::chrono::milliseconds(1));
  std::uniform_int_distribution<int64_t> pick(cap.count() / 2, cap.count());
  std::chrono::milliseconds delay(pick(random));
  if (policy_.deadline.count() > 0 &&
      std::chrono::steady_clock::now() + delay - start_ > policy_.deadline) {
    return std::nullopt;
  }
  cap_ = std::min(cap_ * 2, policy_.max_delay);
  ++attempts_made_;
  return delay;
}

void WithRetries(const RetryPolicy& policy, const std::string& what, const std::function<void()>& attempt,
                 const std::function<void(const std::string&, std::chrono::milliseconds)>& on_retry) {
  Backoff backoff(policy);
  for (;;) {
    try {
      attempt();
      return;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kRetryable) throw;
      std::optional<std::chrono::milliseconds> delay = backoff.NextDelay();
      if (!delay) {
        throw Error(ErrorKind::kRetryable,
                    what + ": gave up after " + std::to_string(backoff.attempts_made()) + " attempts: " + e.what());
      }
      if (on_retry) on_retry(e.what(), *delay);
      std::this_thread::sleep_for(*delay);
    }
  }
}

}  // namespace ferry
