// The keys of encrypted repositories on a worker (docs/worker.md, "Encrypted
// repositories"): the key files in the worker's key directory (option
// key-dir), each unwrapped with the worker's passphrase (option
// passphrase-file, else $FERRY_PASSPHRASE) when a task first needs it.
//
// Source-side encryption: the key stays on the worker. The coordinator names
// a repository only; the worker reads the repository's configuration to learn
// its key's fingerprint and takes the key file that records the same one.
// Files are looked for again when none fits, so a key file copied into the
// directory serves the next task without a restart. Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ferry/common/repository_key.h"

namespace ferry {
struct RepositoryConfig;
}

namespace ferry::daemon {

class KeyDirectory {
 public:
  // No key directory: every encrypted repository is refused.
  KeyDirectory() = default;
  // `dir`: the key files, "*.key". `passphrase_file`: "" for $FERRY_PASSPHRASE.
  KeyDirectory(std::string dir, std::string passphrase_file);

  // The key for the repository `name` with configuration `config`: null for a
  // plain repository. kBadInput naming the repository and the fingerprint it
  // needs when no key file of the directory records it (or there is no
  // directory); LoadKeyFile's errors (a wrong passphrase names the file).
  std::shared_ptr<const RepositoryKey> For(const RepositoryConfig& config, const std::string& name) const;

  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::string passphrase_file_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<const RepositoryKey>> loaded_;  // by fingerprint
};

}  // namespace ferry::daemon
