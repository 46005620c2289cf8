#include "ferry/coordinator/session_webhook.h"

#include <boost/json.hpp>
#include <boost/url/parse.hpp>

#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/retention.h"
#include "ferry/common/retry.h"
#include "ferry/coordinator/database.h"
#include "ferry/http/client.h"

namespace json = boost::json;

namespace ferry::coordinator {

SessionWebhook::SessionWebhook(WebhookOptions options, std::string db_path)
    : options_(std::move(options)), db_path_(std::move(db_path)) {
  auto bad = [&](const std::string& why) { return Error(ErrorKind::kBadInput, "webhook URL '" + options_.url + "': " + why); };
  boost::system::result<boost::urls::url_view> u = boost::urls::parse_absolute_uri(options_.url);
  if (!u) throw bad(u.error().message());
  if (u->scheme() != "http" && u->scheme() != "https") throw bad("must be http:// or https://");
  if (u->host().empty()) throw bad("has no host");
  if (u->has_userinfo()) throw bad("credentials go in a token file, not the URL");
  base_ = std::string(u->scheme()) + "://" + std::string(u->encoded_host_and_port());
  target_ = std::string(u->encoded_path());
  if (target_.empty()) target_ = "/";
  if (u->has_query()) target_ += "?" + std::string(u->encoded_query());
}

SessionWebhook::~SessionWebhook() { Stop(); }

void SessionWebhook::Start() {
  thread_ = std::thread([this] { Run(); });
}

void SessionWebhook::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stop_) return;
    stop_ = true;
    if (!queue_.empty()) LogWarning("webhook: " + std::to_string(queue_.size()) + " notification(s) not sent: stopping");
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void SessionWebhook::Notify(const SessionOutcome& outcome) {
  if (!options_.states.count(outcome.state)) return;
  {
    std::lock_guard lock(mu_);
    if (stop_) return;
    if (queue_.size() >= options_.queue_limit) {
      LogWarning("webhook: queue full, the notification of session " + std::to_string(queue_.front().session_id) +
                 " dropped");
      queue_.pop_front();
    }
    queue_.push_back(outcome);
  }
  cv_.notify_all();
}

void SessionWebhook::Run() {
  std::optional<Database> db;
  for (;;) {
    SessionOutcome next;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      next = queue_.front();
      queue_.pop_front();
    }
    try {
      // Announce only what the database holds: the runner reports an end
      // inside a transaction that could still roll back.
      if (!db) db.emplace(Database::Open(db_path_, true));
      bool recorded = false;
      for (int i = 0; i < 20 && !recorded; ++i) {
        Statement s = db->Prepare("SELECT state FROM sessions WHERE id = ?");
        s.Bind(1, next.session_id);
        recorded = s.Step() && s.Text(0) == next.state;
        if (!recorded) {
          std::unique_lock lock(mu_);
          if (cv_.wait_for(lock, std::chrono::milliseconds(250), [&] { return stop_; })) return;
        }
      }
      if (!recorded) {
        LogWarning("webhook: session " + std::to_string(next.session_id) + " is not " + next.state +
                   " in the database; not announced");
        continue;
      }
      Send(next);
    } catch (const std::exception& e) {
      LogWarning(std::string("webhook: ") + e.what());
    }
  }
}

void SessionWebhook::Send(const SessionOutcome& o) {
  json::object body{{"event", "session.ended"},
                    {"coordinator", options_.coordinator},
                    {"session", json::object{{"id", o.session_id},
                                             {"kind", o.kind},
                                             {"job", o.job.empty() ? json::value(nullptr) : json::value(o.job)},
                                             {"state", o.state},
                                             {"reason", o.reason},
                                             {"ended_at", FormatRfc3339(o.ended_at / 1000)}}}};
  const std::string payload = json::serialize(body);
  std::vector<std::pair<std::string, std::string>> headers;
  if (!options_.token.empty()) headers.emplace_back("Authorization", "Bearer " + options_.token);
  http::ClientOptions client_options;
  client_options.ca_file = options_.ca_file;
  client_options.timeout = std::chrono::seconds(15);
  RetryPolicy policy;
  policy.attempts = options_.attempts;
  policy.first_delay = options_.first_backoff;
  policy.max_delay = options_.max_backoff;
  policy.deadline = std::chrono::milliseconds(0);
  Backoff backoff(policy);
  std::string last;
  for (;;) {
    try {
      http::Client client(base_, client_options);
      http::Response r = client.Send("POST", target_, payload, headers);
      if (r.status >= 200 && r.status < 300) {
        LogInfo("webhook: session " + std::to_string(o.session_id) + " (" + o.state + ") announced to " + base_);
        return;
      }
      last = "HTTP " + std::to_string(r.status);
      if (r.status != 429 && r.status < 500) break;  // the receiver refuses it: trying again will not help
    } catch (const Error& e) {
      last = e.what();
      if (e.kind() != ErrorKind::kRetryable) break;
    }
    std::optional<std::chrono::milliseconds> delay = backoff.NextDelay();
    if (!delay) break;
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, *delay, [&] { return stop_; })) return;
  }
  LogWarning("webhook: session " + std::to_string(o.session_id) + " (" + o.state + ") not announced to " + base_ +
             ": " + last);
}

}  // namespace ferry::coordinator
