#include "ferry/s3/object_repository.h"

#include <boost/url/parse.hpp>
#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/ids.h"
#include "ferry/common/log.h"
#include "ferry/common/manifest.h"
#include "ferry/s3/object_chunk_store.h"
#include "ferry/s3/object_point_store.h"

namespace ferry::s3 {
namespace {

constexpr char kConfigObject[] = "ferry-repository.json";

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string Trimmed(std::string s) {
  size_t a = s.find_first_not_of(" \t\r");
  size_t b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

Credentials ReadCredentialsFile(const std::string& path) {
  std::string text;
  try {
    text = ReadWholeFile(path);
  } catch (const Error& e) {
    throw Error(e.kind() == ErrorKind::kNotFound ? ErrorKind::kBadInput : e.kind(),
                std::string("object storage credentials: ") + e.what());
  }
  Credentials c;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    line = Trimmed(line);
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    size_t eq = line.find('=');
    if (eq == std::string::npos) {
      throw Error(ErrorKind::kBadInput, "credentials file " + path + " line " + std::to_string(n) + ": expected NAME = VALUE");
    }
    std::string name = Trimmed(line.substr(0, eq));
    std::string value = Trimmed(line.substr(eq + 1));
    if (name == "access_key" || name == "aws_access_key_id") c.access_key = value;
    else if (name == "secret_key" || name == "aws_secret_access_key") c.secret_key = value;
    else if (name == "session_token" || name == "aws_session_token") c.session_token = value;
  }
  if (c.access_key.empty() || c.secret_key.empty()) {
    throw Error(ErrorKind::kBadInput, "credentials file " + path + " needs access_key and secret_key");
  }
  return c;
}

class ObjectRepository final : public Repository {
 public:
  ObjectRepository(ObjectLocation location, RepositoryConfig config)
      : location_(std::move(location)),
        config_(std::move(config)),
        bucket_(std::make_unique<Bucket>(location_.bucket)),
        chunks_(*bucket_, location_.prefix),
        points_(OpenObjectPointStore(*bucket_, location_.prefix, chunks_, location_.lock)) {}

  ~ObjectRepository() override {
    points_.reset();
    const BucketStats s = bucket_->stats();
    // Requests per operation, for the cost figures (docs/object-storage.md); --verbose shows it.
    LogDebug("object storage " + bucket_->Describe(location_.prefix) + ": " + std::to_string(s.put_requests) + " PUT, " +
             std::to_string(s.get_requests) + " GET, " + std::to_string(s.list_requests) + " LIST, " +
             std::to_string(s.head_requests) + " HEAD, " + std::to_string(s.delete_requests) + " DELETE requests, " +
             std::to_string(s.retries) + " retries; " + std::to_string(s.bytes_sent) + " bytes sent, " +
             std::to_string(s.bytes_received) + " received");
  }

  const std::string& location() const override { return location_.url; }
  const RepositoryConfig& config() const override { return config_; }
  ChunkStore& chunks() override { return chunks_; }
  ChunkReader& chunk_reader() override { return chunks_; }
  PointStore& points() override { return *points_; }
  const PointStore& points() const override { return *points_; }
  void PrepareForWriting() override {
    if (config_.format_version < kRepositoryVersion) {
      bucket_->Put(location_.prefix + kConfigObject, RepositoryConfigToJson(config_, kRepositoryVersion));
      config_.format_version = kRepositoryVersion;
    }
  }

 private:
  ObjectLocation location_;
  RepositoryConfig config_;
  std::unique_ptr<Bucket> bucket_;
  ObjectChunkStore chunks_;
  std::unique_ptr<PointStore> points_;
};

}  // namespace

bool IsObjectLocation(const std::string& location) { return location.rfind("s3://", 0) == 0; }

ObjectLocation ParseObjectLocation(const std::string& url, bool resolve_credentials) {
  // The query is left out of messages: a misplaced secret would be echoed.
  const std::string shown = url.substr(0, std::min<size_t>(url.find('?'), 200));
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::kBadInput, "object storage location \"" + shown + "\": " + why +
                                           " (expected s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME)");
  };
  boost::system::result<boost::urls::url_view> parsed = boost::urls::parse_uri(url);
  if (!parsed || parsed->scheme() != "s3") throw bad("not an s3:// URL");
  if (parsed->has_userinfo()) throw bad("credentials do not go in the URL (use credentials=FILE or the environment)");
  ObjectLocation loc;
  loc.url = url;
  loc.bucket.bucket = parsed->host();
  std::string path = parsed->path();
  while (!path.empty() && path.front() == '/') path.erase(0, 1);
  while (!path.empty() && path.back() == '/') path.pop_back();
  if (path.find("//") != std::string::npos || path.find("..") != std::string::npos) throw bad("a bad prefix");
  loc.prefix = path.empty() ? "" : path + "/";
  std::string credentials_file;
  for (const auto& p : parsed->params()) {
    const std::string key = p.key;
    const std::string value = p.value;
    if (key == "endpoint") loc.bucket.endpoint = value;
    else if (key == "region") loc.bucket.region = value;
    else if (key == "style") {
      if (value != "path" && value != "virtual") throw bad("style must be path or virtual");
      loc.bucket.virtual_host = value == "virtual";
    } else if (key == "object-lock") {
      if (value != "on" && value != "off") throw bad("object-lock must be on or off");
      loc.lock.required = value == "on";
    } else if (key == "lock-mode") {
      if (value != "compliance" && value != "governance") throw bad("lock-mode must be compliance or governance");
      loc.lock.mode = value == "governance" ? RetentionMode::kGovernance : RetentionMode::kCompliance;
    } else if (key == "ca") loc.bucket.ca_file = value;
    else if (key == "credentials") credentials_file = value;
    else if (key.find("key") != std::string::npos || key.find("secret") != std::string::npos ||
             key.find("token") != std::string::npos) {
      throw bad("secrets do not go in the URL (\"" + key + "\"): use credentials=FILE or the environment");
    } else {
      throw bad("unknown parameter \"" + key + "\"");
    }
  }
  if (loc.bucket.endpoint.empty()) loc.bucket.endpoint = "https://s3." + loc.bucket.region + ".amazonaws.com";
  if (!resolve_credentials) return loc;
  if (!credentials_file.empty()) {
    loc.bucket.credentials = ReadCredentialsFile(credentials_file);
  } else if (!Env("FERRY_S3_ACCESS_KEY").empty()) {
    loc.bucket.credentials = {Env("FERRY_S3_ACCESS_KEY"), Env("FERRY_S3_SECRET_KEY"), Env("FERRY_S3_SESSION_TOKEN")};
  } else {
    loc.bucket.credentials = {Env("AWS_ACCESS_KEY_ID"), Env("AWS_SECRET_ACCESS_KEY"), Env("AWS_SESSION_TOKEN")};
  }
  if (loc.bucket.credentials.access_key.empty() || loc.bucket.credentials.secret_key.empty()) {
    throw bad("no credentials: give credentials=FILE, or set FERRY_S3_ACCESS_KEY and FERRY_S3_SECRET_KEY");
  }
  return loc;
}

void InitObjectRepository(const std::string& url, const RepositoryConfig& config) {
  ValidateRepositoryConfig(config);
  ObjectLocation loc = ParseObjectLocation(url);
  Bucket bucket(loc.bucket);
  if (!bucket.BucketExists()) {
    bucket.CreateBucket(loc.lock.required);
  } else if (loc.lock.required && !bucket.ObjectLockEnabled()) {
    throw Error(ErrorKind::kBadInput, "cannot create a repository in " + loc.url.substr(0, loc.url.find('?')) +
                                          " with object-lock=on: the bucket exists without S3 Object Lock, which is "
                                          "enabled when a bucket is created (use a new bucket)");
  }
  if (loc.lock.required && !bucket.ObjectLockEnabled()) {
    throw Error(ErrorKind::kEnvironment, "bucket " + loc.bucket.bucket + " was created, but the store reports no S3 "
                                         "Object Lock on it (the store may not support it)");
  }
  bool used = false;
  bucket.List(loc.prefix, [&](const ObjectInfo&) { used = true; });
  if (used) throw Error(ErrorKind::kBadInput, "cannot create a repository in " + url + ": objects exist under its prefix");
  RepositoryConfig c = config;
  if (c.id.empty()) c.id = RandomHex(32);
  c.created_at = NowRfc3339();
  bucket.Put(loc.prefix + kConfigObject, RepositoryConfigToJson(c, kRepositoryVersion));
}

std::unique_ptr<Repository> OpenObjectRepository(const std::string& url) {
  ObjectLocation loc = ParseObjectLocation(url);
  Bucket bucket(loc.bucket);
  std::string text;
  if (!bucket.Get(loc.prefix + kConfigObject, &text)) {
    throw Error(ErrorKind::kNotFound, "no Ferry repository at " + url + " (no " + bucket.Describe(loc.prefix + kConfigObject) +
                                          "; create one with ferry init)");
  }
  RepositoryConfig config = RepositoryConfigFromJson(text, url, bucket.Describe(loc.prefix + kConfigObject));
  return std::make_unique<ObjectRepository>(std::move(loc), std::move(config));
}

}  // namespace ferry::s3
