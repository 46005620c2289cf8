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
#include "ferry/common/ids.h"

namespace json = boost::json;

namespace ferry {

namespace {

constexpr char kConfigFile[] = "ferry-repository.json";

std::vector<std::string> ListDirectory(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw ErrnoError("listing " + dir, errno);
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    names.push_back(std::move(name));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

const char* SyncLevelName(SyncLevel s) { return s == SyncLevel::kFile ? "file" : "filesystem"; }

bool IsValidPointId(const std::string& id) {
  if (id.empty() || id.size() > 64 || id[0] == '.') return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '.';
  });
}

}  // namespace

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

void Repository::Init(const std::string& dir, const RepositoryConfig& config) {
  ValidateChunkSize(config.chunk_size);
  if (config.zstd_level < -7 || config.zstd_level > 19) {
    throw Error(ErrorKind::kBadInput,
                "zstd level " + std::to_string(config.zstd_level) + " is not in -7..19");
  }
  MakeDirectory(dir);
  if (!ListDirectory(dir).empty() || PathExists(dir + "/" + kConfigFile)) {
    throw Error(ErrorKind::kBadInput, "cannot create a repository in " + dir +
                                          ": the directory is not empty");
  }
  MakeDirectory(dir + "/chunks");
  MakeDirectory(dir + "/points");
  MakeDirectory(dir + "/staging");
  FsyncDirectory(dir);
  json::object o{
      {"format", kRepositoryFormat},
      {"id", config.id.empty() ? RandomHex(32) : config.id},
      {"chunk_size", config.chunk_size},
      {"zstd_level", config.zstd_level},
      {"sync_level", SyncLevelName(config.sync_level)},
      {"created_at", NowRfc3339()},
  };
  // Written last: a directory without it is not (yet) a repository.
  WriteFileAtomically(dir + "/" + kConfigFile, json::serialize(o) + "\n");
}

std::unique_ptr<Repository> Repository::Open(const std::string& dir) {
  if (!PathExists(dir)) throw Error(ErrorKind::kNotFound, "repository " + dir + " does not exist");
  std::string config_path = dir + "/" + kConfigFile;
  if (!PathExists(config_path)) {
    throw Error(ErrorKind::kBadInput,
                dir + " is not a Ferry repository (no " + kConfigFile + "; create one with ferry init)");
  }
  std::string text = ReadWholeFile(config_path);
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kCorrupt, "repository config " + config_path + ": " + why);
  };
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw bad("not a JSON object");
  const auto& o = v.as_object();
  auto str = [&](const char* key) -> std::string {
    auto it = o.find(key);
    if (it == o.end() || !it->value().is_string()) throw bad(std::string("'") + key + "' missing");
    return std::string(it->value().as_string());
  };
  auto num = [&](const char* key) -> int64_t {
    auto it = o.find(key);
    if (it == o.end() || !it->value().is_number()) throw bad(std::string("'") + key + "' missing");
    return it->value().to_number<int64_t>();
  };
  std::string format = str("format");
  if (format != kRepositoryFormat) {
    throw Error(ErrorKind::kBadInput, dir + " has repository format '" + format +
                                          "'; this Ferry reads '" + kRepositoryFormat + "'");
  }
  RepositoryConfig config;
  config.id = str("id");
  int64_t chunk_size = num("chunk_size");
  try {
    ValidateChunkSize(static_cast<uint64_t>(chunk_size));
  } catch (const Error& e) {
    throw bad(e.what());
  }
  config.chunk_size = static_cast<uint32_t>(chunk_size);
  config.zstd_level = static_cast<int>(num("zstd_level"));
  std::string sync = str("sync_level");
  if (sync == "file") {
    config.sync_level = SyncLevel::kFile;
  } else if (sync == "filesystem") {
    config.sync_level = SyncLevel::kFilesystem;
  } else {
    throw bad("unknown sync_level '" + sync + "'");
  }
  config.created_at = str("created_at");
  return std::unique_ptr<Repository>(new Repository(dir, std::move(config)));
}

Repository::Repository(std::string dir, RepositoryConfig config)
    : dir_(std::move(dir)), config_(std::move(config)) {
  chunks_ = std::make_unique<ChunkStore>(dir_ + "/chunks", config_.sync_level);
}

std::vector<std::string> Repository::ListPoints() const { return ListDirectory(dir_ + "/points"); }

RestorePointManifest Repository::LoadPoint(const std::string& id) const {
  std::string path = dir_ + "/points/" + id + "/manifest.json";
  if (!IsValidPointId(id) || !PathExists(path)) {
    throw Error(ErrorKind::kNotFound, "restore point '" + id + "' does not exist in " + dir_);
  }
  RestorePointManifest m = ManifestFromJson(ReadWholeFile(path), path);
  if (m.id != id) {
    throw Error(ErrorKind::kCorrupt, "manifest " + path + " names point '" + m.id + "'");
  }
  return m;
}

std::string Repository::IndexPath(const std::string& point_id, const DiskRecord& disk) const {
  return dir_ + "/points/" + point_id + "/" + disk.index_file;
}

// Each writer holds staging/<id>.lock for as long as staging/<id>/ exists
// (it takes the lock before creating the directory and drops it after the
// rename into points/), so a lock we can take, or a directory with no lock
// file, belongs to a writer that is gone.
std::string Repository::PointFilePath(const std::string& point_id, const std::string& file_name) const {
  return dir_ + "/points/" + point_id + "/" + file_name;
}

void Repository::RemoveAbandonedStaging() {
  const std::string staging = dir_ + "/staging/";
  std::vector<std::string> names = ListDirectory(staging);
  auto has = [&](const std::string& n) { return std::binary_search(names.begin(), names.end(), n); };
  for (const auto& name : names) {
    const std::string suffix = ".lock";
    if (name.size() > suffix.size() && name.ends_with(suffix)) {
      FileLock lock = FileLock::TryAcquire(staging + name, /*create=*/false);
      if (!lock.held()) continue;
      RemoveTree(staging + name.substr(0, name.size() - suffix.size()));
      ::unlink((staging + name).c_str());
    } else if (!has(name + ".lock")) {
      RemoveTree(staging + name);
    }
  }
}

std::unique_ptr<PointWriter> Repository::BeginPoint() {
  if (::access((dir_ + "/staging").c_str(), W_OK) != 0 ||
      ::access((dir_ + "/chunks").c_str(), W_OK) != 0) {
    throw ErrnoError("repository " + dir_ + " is not writable", errno);
  }
  RemoveAbandonedStaging();
  return std::make_unique<PointWriter>(this, NewPointId());
}

PointWriter::PointWriter(Repository* repo, std::string id)
    : repo_(repo), id_(std::move(id)), staging_dir_(repo->dir() + "/staging/" + id_) {
  lock_ = FileLock::TryAcquire(staging_dir_ + ".lock", /*create=*/true);
  if (!lock_.held()) throw Error(ErrorKind::kInternal, "staging " + staging_dir_ + " is locked");
  if (::mkdir(staging_dir_.c_str(), 0755) != 0) {
    int err = errno;
    ::unlink((staging_dir_ + ".lock").c_str());
    throw ErrnoError("repository " + repo->dir() + ": creating " + staging_dir_, err);
  }
}

PointWriter::~PointWriter() {
  try {
    if (!committed_) RemoveTree(staging_dir_);
    ::unlink((staging_dir_ + ".lock").c_str());
  } catch (...) {
    // The next writer removes what is left once our lock is gone.
  }
}

std::string PointWriter::IndexFileName(size_t disk) const {
  return "disk-" + std::to_string(disk) + ".fidx";
}

std::string PointWriter::StagingPath(const std::string& file_name) const {
  return staging_dir_ + "/" + file_name;
}

ConfigFileRecord PointWriter::AddFile(const std::string& kind, const std::string& name,
                                      const std::string& content, const std::string& origin) {
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' || name == "manifest.json") {
    throw Error(ErrorKind::kInternal, "bad point file name '" + name + "'");
  }
  WriteFileAtomically(StagingPath(name), content);
  return {kind, name, origin, Sha256(content.data(), content.size())};
}

void PointWriter::Commit(RestorePointManifest manifest) {
  manifest.id = id_;
  repo_->chunks().Sync();
  WriteFileAtomically(StagingPath("manifest.json"), ManifestToJson(manifest));
  FsyncDirectory(staging_dir_);
  std::string final_dir = repo_->dir() + "/points/" + id_;
  if (::rename(staging_dir_.c_str(), final_dir.c_str()) != 0) {
    throw ErrnoError("committing restore point " + id_ + " (renaming " + staging_dir_ + ")", errno);
  }
  committed_ = true;
  FsyncDirectory(repo_->dir() + "/points");
}

}  // namespace ferry
