// Per-worker repository tokens (docs/repository-service.md, "Tokens"): the
// coordinator mints one for each work item, for that worker and that
// repository, and a repository service that holds the same key checks it
// without asking anyone and without storing tokens.
//
//   frw-<worker id>-<expiry, Unix seconds>-<HMAC-SHA256(key, "<worker>/<expiry>/<repository>"), hex>
//
// A token opens only the repository it names, until its expiry (items get a
// fresh one, so running tasks outlive any single token only by reconnecting
// with it: the expiry is generous, kTokenLifetime). The key is 32 random
// bytes; as text, "frk-" and 64 hex digits.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>

namespace ferry::rpc {

inline constexpr int64_t kWorkerTokenLifetime = 7 * 24 * 3600;

class WorkerTokenKey {
 public:
  static WorkerTokenKey Random();
  // "frk-<64 hex>"; kBadInput naming `what` otherwise.
  static WorkerTokenKey FromText(const std::string& text, const std::string& what);
  // The key file (raw 32 bytes or its text form); created with a new random
  // key (mode 0600) when missing and `create`.
  static WorkerTokenKey FromFile(const std::string& path, bool create);
  static bool LooksLikeKey(const std::string& text) { return text.starts_with("frk-"); }

  std::string ToText() const;
  std::string Mint(int64_t worker_id, const std::string& repository, int64_t now = std::time(nullptr)) const;
  // The worker the token was minted for, when it is genuine, unexpired and
  // for `repository`; compared in constant time.
  std::optional<int64_t> Verify(const std::string& token, const std::string& repository,
                                int64_t now = std::time(nullptr)) const;

 private:
  std::string Mac(int64_t worker_id, int64_t expiry, const std::string& repository) const;
  std::array<uint8_t, 32> key_{};
};

}  // namespace ferry::rpc
