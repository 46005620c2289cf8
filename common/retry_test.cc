#include "ferry/common/retry.h"

#include <gtest/gtest.h>

#include "ferry/common/error.h"

namespace ferry {
namespace {

using std::chrono::milliseconds;

TEST(RetryTest, DelaysDoubleUpToTheCapWithJitterInTheUpperHalf) {
  RetryPolicy policy{.attempts = 6, .first_delay = milliseconds(100), .max_delay = milliseconds(400),
                     .deadline = milliseconds(0)};
  Backoff backoff(policy);
  const int64_t caps[] = {100, 200, 400, 400, 400};
  for (int64_t cap : caps) {
    std::optional<milliseconds> d = backoff.NextDelay();
    ASSERT_TRUE(d.has_value());
    EXPECT_GE(d->count(), cap / 2);
    EXPECT_LE(d->count(), cap);
  }
  EXPECT_FALSE(backoff.NextDelay().has_value()) << "6 attempts: 5 delays";
  EXPECT_EQ(backoff.attempts_made(), 6);
}

TEST(RetryTest, TheDeadlineEndsRetriesBeforeTheAttempts) {
  RetryPolicy policy{.attempts = 100, .first_delay = milliseconds(50), .max_delay = milliseconds(50),
                     .deadline = milliseconds(120)};
  int calls = 0;
  auto start = std::chrono::steady_clock::now();
  try {
    WithRetries(policy, "putting chunk x", [&] {
      ++calls;
      throw Error(ErrorKind::kRetryable, "HTTP 503 SlowDown");
    });
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRetryable);
    EXPECT_NE(std::string(e.what()).find("putting chunk x: gave up after"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("503 SlowDown"), std::string::npos) << e.what();
  }
  EXPECT_GE(calls, 2);
  EXPECT_LE(calls, 6);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1000));
}

TEST(RetryTest, OnlyRetryableErrorsAreRetried) {
  RetryPolicy policy{.attempts = 5, .first_delay = milliseconds(1), .max_delay = milliseconds(1),
                     .deadline = milliseconds(0)};
  int calls = 0;
  EXPECT_THROW(WithRetries(policy, "x", [&] { ++calls; throw Error(ErrorKind::kEnvironment, "403 AccessDenied"); }),
               Error);
  EXPECT_EQ(calls, 1);

  calls = 0;
  std::vector<std::string> seen;
  WithRetries(
      policy, "x",
      [&] {
        if (++calls < 3) throw Error(ErrorKind::kRetryable, "reset " + std::to_string(calls));
      },
      [&](const std::string& error, milliseconds) { seen.push_back(error); });
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"reset 1", "reset 2"}));
}

}  // namespace
}  // namespace ferry
