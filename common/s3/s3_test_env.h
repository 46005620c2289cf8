// The real store the tests use when integration.test-s3-client gives one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <unistd.h>

#include "ferry/s3/client.h"

namespace ferry::s3 {

inline std::optional<BucketOptions> RealStoreOptions() {
  const char* endpoint = std::getenv("FERRY_TEST_S3_ENDPOINT");
  if (!endpoint || !*endpoint) return std::nullopt;
  BucketOptions o;
  o.endpoint = endpoint;
  o.bucket = std::getenv("FERRY_TEST_S3_BUCKET") ? std::getenv("FERRY_TEST_S3_BUCKET") : "ferry-test";
  o.region = std::getenv("FERRY_TEST_S3_REGION") ? std::getenv("FERRY_TEST_S3_REGION") : "us-east-1";
  o.credentials.access_key = std::getenv("FERRY_TEST_S3_ACCESS_KEY") ? std::getenv("FERRY_TEST_S3_ACCESS_KEY") : "";
  o.credentials.secret_key = std::getenv("FERRY_TEST_S3_SECRET_KEY") ? std::getenv("FERRY_TEST_S3_SECRET_KEY") : "";
  return o;
}

// A prefix no other test run uses.
inline std::string UniquePrefix() {
  static std::atomic<int> n{0};
  return "t" + std::to_string(::getpid()) + "-" +
         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007) + "-" +
         std::to_string(n++) + "/";
}

}  // namespace ferry::s3
