#include "ferry/coordinator/local_repositories.h"

namespace ferry::coordinator {

LocalRepositories::LocalRepositories(const std::string& key_file)
    : key_(rpc::WorkerTokenKey::FromFile(key_file, /*create=*/true)) {}

void LocalRepositories::Set(int64_t id, const std::string& name, const std::string& location) {
  std::lock_guard lock(mu_);
  for (auto it = by_name_.begin(); it != by_name_.end();) it = it->second.first == id ? by_name_.erase(it) : ++it;
  if (!location.empty() && location[0] == '/') by_name_[name] = {id, location};
}

void LocalRepositories::Remove(int64_t id) { Set(id, "", ""); }

std::optional<std::string> LocalRepositories::Resolve(const std::string& token, const std::string& repository) const {
  if (!key_.Verify(token, repository)) return std::nullopt;
  std::lock_guard lock(mu_);
  auto it = by_name_.find(repository);
  if (it == by_name_.end()) return std::nullopt;
  return it->second.second;
}

}  // namespace ferry::coordinator
