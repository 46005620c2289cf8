#include "key_directory.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/log.h"
#include "ferry/common/repository.h"

namespace ferry::daemon {

namespace fs = std::filesystem;

KeyDirectory::KeyDirectory(std::string dir, std::string passphrase_file)
    : dir_(std::move(dir)), passphrase_file_(std::move(passphrase_file)) {}

std::shared_ptr<const RepositoryKey> KeyDirectory::For(const RepositoryConfig& config, const std::string& name) const {
  if (!config.encrypted()) return nullptr;
  const std::string& wanted = config.key_fingerprint;
  const std::string what = "repository " + name + " is encrypted with the key of fingerprint " + wanted;
  if (dir_.empty()) {
    throw Error(ErrorKind::kBadInput, what + ", and this worker has no key directory (option key-dir: the "
                                      "directory of its key files; docs/worker.md)");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = loaded_.find(wanted); it != loaded_.end()) return it->second;
  // Looked for on every miss: a key file copied in since serves this task.
  std::vector<std::string> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".key" && it->is_regular_file(ec)) files.push_back(it->path().string());
  }
  if (ec) throw Error(ErrorKind::kEnvironment, "key directory " + dir_ + ": " + ec.message());
  std::sort(files.begin(), files.end());
  for (const std::string& path : files) {
    std::string fingerprint;
    try {
      fingerprint = RepositoryKey::KeyFileFingerprint(path);
    } catch (const Error& e) {
      LogWarning(std::string("key directory: skipping ") + e.what());
      continue;
    }
    if (fingerprint != wanted) continue;
    std::string passphrase = ReadPassphrase(passphrase_file_, "FERRY_PASSPHRASE");
    std::optional<RepositoryKey> key;
    try {
      key = RepositoryKey::LoadKeyFile(path, passphrase);
    } catch (...) {
      OPENSSL_cleanse(passphrase.data(), passphrase.size());
      throw;
    }
    OPENSSL_cleanse(passphrase.data(), passphrase.size());
    LogInfo("repository " + name + ": key " + wanted + " from " + path);
    auto shared = std::make_shared<const RepositoryKey>(*key);
    loaded_[wanted] = shared;
    return shared;
  }
  throw Error(ErrorKind::kNotFound, what + ", and no key file in this worker's key directory " + dir_ +
                                        " (*.key) records that fingerprint: copy the repository's key file there "
                                        "(docs/worker.md)");
}

}  // namespace ferry::daemon
