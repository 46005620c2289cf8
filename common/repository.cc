#include "ferry/common/repository.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdio>
#include <ctime>

#include "ferry/common/error.h"
#include "ferry/common/format.h"
#include "ferry/common/log.h"
#include "ferry/common/ids.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/manifest.h"
#include "ferry/common/repository_key.h"

namespace json = boost::json;

namespace ferry {

namespace {

constexpr char kConfigFile[] = "ferry-repository.json";

const char* SyncLevelName(SyncLevel s) { return s == SyncLevel::kFile ? "file" : "filesystem"; }

}  // namespace

std::string RepositoryConfigToJson(const RepositoryConfig& config, int version) {
  // An encrypted repository is v3 whatever it is written as (a v2 reader must refuse it).
  if (config.encrypted()) version = std::max(version, kEncryptedRepositoryVersion);
  json::object o{
      {"format", std::string(kRepositoryFamily) + "-v" + std::to_string(version)},
      {"id", config.id},
      {"chunk_size", config.chunk_size},
      {"zstd_level", config.zstd_level},
      {"sync_level", SyncLevelName(config.sync_level)},
      {"created_at", config.created_at},
      {"writer", WriterName()},  // optional, ignored by readers: the Ferry that wrote this file
  };
  if (config.encrypted()) {
    o["encryption"] = json::object{{"cipher", kChunkCipher}, {"key_fingerprint", config.key_fingerprint}};
  }
  return json::serialize(o) + "\n";
}

// A point id sorts by creation time, to the microsecond, because "the last
// point of a chain" is found by sorting and backups can be sub-second:
// 20261122T034210.123456Z-1a2b3c.
std::string NewPointId() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  std::tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char buf[48];
  size_t n = std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%06ldZ-", ts.tv_nsec / 1000);
  return buf + RandomHex(6);
}


void ValidateChunkSize(uint64_t chunk_size) {
  if (chunk_size < (64u << 10) || chunk_size > (16u << 20) || (chunk_size & (chunk_size - 1))) {
    throw Error(ErrorKind::kBadInput, "chunk size " + std::to_string(chunk_size) +
                                          " is not a power of two from 64 KiB to 16 MiB");
  }
}

void ValidateRepositoryConfig(const RepositoryConfig& config) {
  ValidateChunkSize(config.chunk_size);
  if (config.zstd_level < -7 || config.zstd_level > 19) {
    throw Error(ErrorKind::kBadInput, "zstd level " + std::to_string(config.zstd_level) + " is not in -7..19");
  }
}

void Repository::Init(const std::string& dir, const RepositoryConfig& config) {
  ValidateRepositoryConfig(config);
  MakeDirectory(dir);
  if (!ListDirectory(dir).empty() || PathExists(dir + "/" + kConfigFile)) {
    throw Error(ErrorKind::kBadInput, "cannot create a repository in " + dir +
                                          ": the directory is not empty");
  }
  MakeDirectory(dir + "/chunks");
  MakeDirectory(dir + "/points");
  MakeDirectory(dir + "/staging");
  MakeDirectory(dir + "/quarantine");
  FsyncDirectory(dir);
  RepositoryConfig c = config;
  if (c.id.empty()) c.id = RandomHex(32);
  c.created_at = NowRfc3339();
  // Written last: a directory without it is not (yet) a repository.
  WriteFileAtomically(dir + "/" + kConfigFile, RepositoryConfigToJson(c, kRepositoryVersion));
}

namespace {

class LocalRepository final : public Repository {
 public:
  LocalRepository(std::string dir, RepositoryConfig config)
      : dir_(std::move(dir)),
        config_(std::move(config)),
        chunks_(dir_ + "/chunks", dir_ + "/quarantine", config_.sync_level),
        points_(OpenLocalPointStore(dir_, chunks_)) {}

  const std::string& location() const override { return dir_; }
  const RepositoryConfig& config() const override { return config_; }
  ChunkStore& chunks() override { return chunks_; }
  ChunkReader& chunk_reader() override { return chunks_; }
  PointStore& points() override { return *points_; }
  const PointStore& points() const override { return *points_; }

  void PrepareForWriting() override {
    for (const char* sub : {"/staging", "/chunks", "/points"}) {
      if (::access((dir_ + sub).c_str(), W_OK) != 0) {
        throw ErrnoError("repository " + dir_ + " is not writable (" + dir_ + sub + ")", errno);
      }
    }
    if (config_.format_version < kRepositoryVersion) {
      WriteFileAtomically(dir_ + "/" + kConfigFile, RepositoryConfigToJson(config_, kRepositoryVersion));
      LogInfo("repository " + dir_ + " upgraded from format v" + std::to_string(config_.format_version) + " to v" +
              std::to_string(kRepositoryVersion) + " (Ferry 0.1 no longer opens it)");
      config_.format_version = kRepositoryVersion;
    }
  }

 private:
  std::string dir_;
  RepositoryConfig config_;
  LocalChunkStore chunks_;
  std::unique_ptr<PointStore> points_;
};

}  // namespace

RepositoryConfig RepositoryConfigFromJson(const std::string& text, const std::string& location,
                                         const std::string& config_path) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kCorrupt, "repository config " + config_path + ": " + why);
  };
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw bad("not a JSON object");
  JsonReader r(v.as_object(), "", CorruptFileFail("repository config " + config_path));
  RepositoryConfig config;
  try {
    config.format_version =
        CheckFormatName(*r.String("format", true), kRepositoryFamily, kNewestRepositoryVersion, "repository " + location);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kCorrupt) throw;  // a newer format
    throw Error(ErrorKind::kBadInput, location + " is not a Ferry repository: " + e.what());
  }
  config.id = *r.String("id", true);
  // Wide ranges here; the real limits are ValidateRepositoryConfig's, as on init.
  config.chunk_size = static_cast<uint32_t>(*r.Int("chunk_size", true, 0, UINT32_MAX));
  config.zstd_level = static_cast<int>(*r.Int("zstd_level", true, -1000, 1000));
  try {
    ValidateRepositoryConfig(config);
  } catch (const Error& e) {
    throw bad(e.what());
  }
  std::string sync = *r.String("sync_level", true);
  if (sync == "file") {
    config.sync_level = SyncLevel::kFile;
  } else if (sync == "filesystem") {
    config.sync_level = SyncLevel::kFilesystem;
  } else {
    throw bad("unknown sync_level '" + sync + "'");
  }
  config.created_at = *r.String("created_at", true);
  // v3 and "encryption" go together: a plain repository's config never
  // names a key, an encrypted one always does.
  if (std::optional<JsonReader> enc = r.Object("encryption", false)) {
    if (config.format_version < kEncryptedRepositoryVersion) throw bad("\"encryption\" in a v2 repository");
    if (*enc->String("cipher", true) != kChunkCipher) throw bad("unknown cipher (not aes-256-gcm)");
    config.key_fingerprint = *enc->String("key_fingerprint", true);
    if (config.key_fingerprint.size() != 32) throw bad("key_fingerprint is not 32 hex digits");
  } else if (config.format_version >= kEncryptedRepositoryVersion) {
    throw bad("a v3 repository without \"encryption\"");
  }
  return config;
}

std::unique_ptr<Repository> Repository::Open(const std::string& dir) {
  if (!PathExists(dir)) throw Error(ErrorKind::kNotFound, "repository " + dir + " does not exist");
  std::string config_path = dir + "/" + kConfigFile;
  if (!PathExists(config_path)) {
    throw Error(ErrorKind::kBadInput,
                dir + " is not a Ferry repository (no " + kConfigFile + "; create one with ferry init)");
  }
  RepositoryConfig config = RepositoryConfigFromJson(ReadWholeFile(config_path), dir, config_path);
  return std::make_unique<LocalRepository>(dir, std::move(config));
}


}  // namespace ferry
