// SessionWebhook: tells an HTTP endpoint of the sessions that end failed or
// with warnings (docs/coordinator.md, "Notifications"). One POST per
// session, JSON:
//   {"event": "session.ended", "coordinator": "<API URL>",
//    "session": {"id", "kind", "job", "state", "reason", "ended_at"}}
// sent from a thread of its own, after the session's end is read back from
// the database (an end that was rolled back is never announced), with
// retries (ferry/common/retry.h: jittered delays doubling from 1 s up to 60 s,
// 6 attempts) on connection errors,
// 429 and 5xx; any other status gives up, logged. The token, if any, goes
// as `Authorization: Bearer` and is never logged.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "ferry/coordinator/session_runner.h"

namespace ferry::coordinator {

struct WebhookOptions {
  std::string url;  // http://HOST[:PORT]/PATH or https://...
  std::string token;
  std::string ca_file;  // https: the CA to trust ("" = the system store)
  std::set<std::string> states = {"failed", "warning"};
  int attempts = 6;
  std::chrono::milliseconds first_backoff{1000};
  std::chrono::milliseconds max_backoff{60000};
  std::string coordinator;  // the API's URL, for the receiver
  size_t queue_limit = 1000;  // beyond: the oldest is dropped, logged
};

class SessionWebhook {
 public:
  // Throws Error kBadInput naming the URL when it is not http(s)://host...
  SessionWebhook(WebhookOptions options, std::string db_path);
  ~SessionWebhook();  // Stop()
  void Start();
  void Stop();  // the POST under way ends (or times out); the queue is dropped, logged
  // Quick (called under the runner's lock): queues the outcome if its state is one to announce.
  void Notify(const SessionOutcome& outcome);

 private:
  void Run();
  void Send(const SessionOutcome& outcome);

  WebhookOptions options_;
  std::string db_path_;
  std::string base_, target_;  // "https://host:port", "/path?query"
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SessionOutcome> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ferry::coordinator
