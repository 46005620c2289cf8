// The coordinator's own repository service (docs/repository-service.md,
// "The coordinator's service"): it serves the repositories whose location is
// a path on the coordinator's machine, so that workers on other hosts write
// into them without a shared file system, and a single-machine setup needs no
// ferry-repository daemon.
//
// Tokens: per worker and repository, minted for each work item and never
// stored (ferry/rpc/worker_tokens.h), with a key kept in the coordinator's
// data directory (0600), so tokens held by running tasks stay good across a
// coordinator restart.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "ferry/rpc/repository_service.h"
#include "ferry/rpc/worker_tokens.h"

namespace ferry::coordinator {

class LocalRepositories final : public rpc::RepositoryCatalog {
 public:
  // `key_file`: read, or created with a new random key.
  explicit LocalRepositories(const std::string& key_file);

  // The repositories it serves: every one whose location is a path.
  void Set(int64_t id, const std::string& name, const std::string& location);
  void Remove(int64_t id);

  std::string TokenFor(int64_t worker_id, const std::string& repository) const { return key_.Mint(worker_id, repository); }
  std::optional<std::string> Resolve(const std::string& token, const std::string& repository) const override;

 private:
  const rpc::WorkerTokenKey key_;
  mutable std::mutex mu_;
  std::map<std::string, std::pair<int64_t, std::string>> by_name_;  // name -> (id, directory)
};

}  // namespace ferry::coordinator
