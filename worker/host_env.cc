#include "ferry/worker/host_env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/worker/qmp_client.h"

namespace ferry::worker {

namespace {

// What Ferry did on its own host before there was a HostEnv, unchanged.
class LocalHost : public HostEnv {
 public:
  std::string name() const override { return "this host"; }

  std::vector<std::string> ListDirectory(const std::string& dir) override {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  std::optional<std::string> ReadFile(const std::string& path) override {
    try {
      return ReadWholeFile(path);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kNotFound) return std::nullopt;
      throw;
    }
  }

  void CreatePrivateFile(const std::string& dir, const std::string& name, const std::string& secret) override {
    if (::mkdir(dir.c_str(), 0700) != 0) throw ErrnoError("creating " + dir, errno);
    const std::string file = dir + "/" + name;
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) throw ErrnoError("creating " + file, errno);
    if (::fchmod(fd.get(), 0600) != 0 ||
        ::write(fd.get(), secret.data(), secret.size()) != static_cast<ssize_t>(secret.size())) {
      throw ErrnoError("writing " + file, errno);
    }
  }

  HostRemoval Remove(const std::vector<std::string>& paths) override {
    HostRemoval r;
    for (const auto& p : paths) {
      struct stat st {};
      if (::lstat(p.c_str(), &st) != 0) continue;  // not there
      int rc = S_ISDIR(st.st_mode) ? ::rmdir(p.c_str()) : ::unlink(p.c_str());
      if (rc == 0) {
        r.removed.push_back(p);
      } else if (errno != ENOENT) {
        r.failed.push_back(p + ": " + std::strerror(errno));
      }
    }
    return r;
  }

  int QemuPid(QmpClient& qmp) override { return qmp.peer_pid(); }
};

}  // namespace

std::shared_ptr<HostEnv> LocalHostEnv() {
  static const std::shared_ptr<HostEnv> local = std::make_shared<LocalHost>();
  return local;
}

}  // namespace ferry::worker
