#include "ferry/coordinator/local_repositories.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <charconv>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"

namespace ferry::coordinator {

LocalRepositories::LocalRepositories(const std::string& key_file) {
  if (PathExists(key_file)) {
    const std::string key = ReadWholeFile(key_file);
    if (key.size() != secret_.size()) throw Error(ErrorKind::kCorrupt, key_file + " is not a 32-byte key");
    std::copy(key.begin(), key.end(), secret_.begin());
    return;
  }
  if (RAND_bytes(secret_.data(), static_cast<int>(secret_.size())) != 1) {
    throw Error(ErrorKind::kEnvironment, "no randomness for the repository service's tokens");
  }
  WriteFileAtomically(key_file, std::string(secret_.begin(), secret_.end()));
}

void LocalRepositories::Set(int64_t id, const std::string& name, const std::string& location) {
  std::lock_guard lock(mu_);
  for (auto it = by_name_.begin(); it != by_name_.end();) it = it->second.first == id ? by_name_.erase(it) : ++it;
  if (!location.empty() && location[0] == '/') by_name_[name] = {id, location};
}

void LocalRepositories::Remove(int64_t id) { Set(id, "", ""); }

std::string LocalRepositories::Mac(int64_t worker_id, int64_t repository_id) const {
  const std::string message = std::to_string(worker_id) + "/" + std::to_string(repository_id);
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()), reinterpret_cast<const uint8_t*>(message.data()),
       message.size(), mac, &length);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < length; ++i) hex += {kHex[mac[i] >> 4], kHex[mac[i] & 15]};
  return hex;
}

std::string LocalRepositories::TokenFor(int64_t worker_id, int64_t repository_id) const {
  return "frw-" + std::to_string(worker_id) + "-" + std::to_string(repository_id) + "-" + Mac(worker_id, repository_id);
}

std::optional<std::string> LocalRepositories::Resolve(const std::string& token, const std::string& repository) const {
  // frw-<worker>-<repository>-<mac>
  if (!token.starts_with("frw-")) return std::nullopt;
  const char* p = token.data() + 4;
  const char* end = token.data() + token.size();
  int64_t worker = 0, repo = 0;
  auto a = std::from_chars(p, end, worker);
  if (a.ec != std::errc() || a.ptr == end || *a.ptr != '-') return std::nullopt;
  auto b = std::from_chars(a.ptr + 1, end, repo);
  if (b.ec != std::errc() || b.ptr == end || *b.ptr != '-') return std::nullopt;
  const std::string presented(b.ptr + 1, end), expected = Mac(worker, repo);
  if (presented.size() != expected.size() || CRYPTO_memcmp(presented.data(), expected.data(), expected.size()) != 0) {
    return std::nullopt;
  }
  std::lock_guard lock(mu_);
  auto it = by_name_.find(repository);
  if (it == by_name_.end() || it->second.first != repo) return std::nullopt;
  return it->second.second;
}

}  // namespace ferry::coordinator
