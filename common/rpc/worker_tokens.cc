#include "ferry/rpc/worker_tokens.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"

namespace ferry::rpc {

namespace {
std::string Hex(const uint8_t* data, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) out += {kHex[data[i] >> 4], kHex[data[i] & 15]};
  return out;
}
}  // namespace

WorkerTokenKey WorkerTokenKey::Random() {
  WorkerTokenKey k;
  if (RAND_bytes(k.key_.data(), static_cast<int>(k.key_.size())) != 1) {
    throw Error(ErrorKind::kEnvironment, "no randomness for a repository token key");
  }
  return k;
}

WorkerTokenKey WorkerTokenKey::FromText(const std::string& text, const std::string& what) {
  const auto bad = [&] { return Error(ErrorKind::kBadInput, what + " is not a repository token key (frk- and 64 hex digits)"); };
  if (!LooksLikeKey(text) || text.size() != 4 + 64) throw bad();
  WorkerTokenKey k;
  for (size_t i = 0; i < 32; ++i) {
    unsigned v = 0;
    auto r = std::from_chars(text.data() + 4 + 2 * i, text.data() + 6 + 2 * i, v, 16);
    if (r.ec != std::errc() || r.ptr != text.data() + 6 + 2 * i) throw bad();
    k.key_[i] = static_cast<uint8_t>(v);
  }
  return k;
}

WorkerTokenKey WorkerTokenKey::FromFile(const std::string& path, bool create) {
  if (!PathExists(path)) {
    if (!create) throw Error(ErrorKind::kNotFound, "key file " + path + " does not exist");
    WorkerTokenKey k = Random();
    const std::string text = k.ToText() + "\n";
    UniqueFd fd = OpenOrThrow(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      throw ErrnoError("writing " + path, errno);
    }
    FsyncOrThrow(fd.get(), path);
    return k;
  }
  std::string text = ReadWholeFile(path);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r')) text.pop_back();
  if (text.size() == 32 && !LooksLikeKey(text)) {  // raw bytes
    WorkerTokenKey k;
    std::copy(text.begin(), text.end(), k.key_.begin());
    return k;
  }
  return FromText(text, "key file " + path);
}

std::string WorkerTokenKey::ToText() const { return "frk-" + Hex(key_.data(), key_.size()); }

std::string WorkerTokenKey::Mac(int64_t worker_id, int64_t expiry, const std::string& repository) const {
  const std::string message = std::to_string(worker_id) + "/" + std::to_string(expiry) + "/" + repository;
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), reinterpret_cast<const uint8_t*>(message.data()),
       message.size(), mac, &length);
  return Hex(mac, length);
}

std::string WorkerTokenKey::Mint(int64_t worker_id, const std::string& repository, int64_t now) const {
  const int64_t expiry = now + kWorkerTokenLifetime;
  return "frw-" + std::to_string(worker_id) + "-" + std::to_string(expiry) + "-" + Mac(worker_id, expiry, repository);
}

std::optional<int64_t> WorkerTokenKey::Verify(const std::string& token, const std::string& repository,
                                              int64_t now) const {
  if (!token.starts_with("frw-")) return std::nullopt;
  const char* p = token.data() + 4;
  const char* end = token.data() + token.size();
  int64_t worker = 0, expiry = 0;
  auto a = std::from_chars(p, end, worker);
  if (a.ec != std::errc() || a.ptr == end || *a.ptr != '-') return std::nullopt;
  auto b = std::from_chars(a.ptr + 1, end, expiry);
  if (b.ec != std::errc() || b.ptr == end || *b.ptr != '-') return std::nullopt;
  const std::string presented(b.ptr + 1, end), expected = Mac(worker, expiry, repository);
  if (presented.size() != expected.size() || CRYPTO_memcmp(presented.data(), expected.data(), expected.size()) != 0) {
    return std::nullopt;
  }
  if (expiry < now) return std::nullopt;
  return worker;
}

}  // namespace ferry::rpc
