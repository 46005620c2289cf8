// An in-memory S3 store on the project's HTTP server, for the tests that
// need a bucket's behaviour without a real store: objects with a
// LastModified the test may set, ListObjectsV2 (prefix, delimiter, pages of
// 1000), HEAD, GET, PUT, DELETE, DeleteObjects (POST ?delete), and no
// Object Lock. Path-style requests to bucket "ferry-test"; signatures are
// not checked.
#pragma once

#include <atomic>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "ferry/common/retention.h"
#include "ferry/http/server.h"
#include "ferry/s3/client.h"

namespace ferry::s3::test {

class FakeS3 {
 public:
  FakeS3() {
    http::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.body_limit = 64u << 20;
    server_ = std::make_unique<http::Server>(options, [this](const http::Request& r) { return Handle(r); });
    server_->Start();
  }

  std::string Endpoint() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  BucketOptions Options() const {
    BucketOptions o;
    o.endpoint = Endpoint();
    o.bucket = "ferry-test";
    o.credentials = {"AKIDTEST", "secret", ""};
    o.retry.first_delay = std::chrono::milliseconds(1);
    o.retry.max_delay = std::chrono::milliseconds(5);
    return o;
  }

  bool Has(const std::string& key) {
    std::lock_guard lock(mu_);
    return objects_.contains(key);
  }
  size_t Count(const std::string& prefix) {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (auto it = objects_.lower_bound(prefix); it != objects_.end() && it->first.starts_with(prefix); ++it) ++n;
    return n;
  }
  // Sets the LastModified of every object under `prefix`.
  void SetModified(const std::string& prefix, int64_t unix_seconds) {
    std::lock_guard lock(mu_);
    for (auto it = objects_.lower_bound(prefix); it != objects_.end() && it->first.starts_with(prefix); ++it) {
      it->second.modified = unix_seconds;
    }
  }
  void PutObject(const std::string& key, const std::string& data) {
    std::lock_guard lock(mu_);
    objects_[key] = {data, static_cast<int64_t>(std::time(nullptr))};
  }
  // DeleteObjects refuses this key (AccessDenied), as a store does an
  // object version under Object Lock retention.
  void Retain(const std::string& key) {
    std::lock_guard lock(mu_);
    retained_.insert(key);
  }
  int delete_objects_requests() const { return delete_objects_requests_; }

 private:
  struct Object {
    std::string data;
    int64_t modified = 0;
  };

  static http::Response Xml(int status, std::string body) {
    http::Response r;
    r.status = status;
    r.body = std::move(body);
    r.content_type = "application/xml";
    return r;
  }
  static http::Response Fail(int status, const std::string& code) {
    return Xml(status, "<?xml version=\"1.0\"?><Error><Code>" + code + "</Code></Error>");
  }
  static std::string Query(const http::Request& r, const std::string& name) {
    auto it = r.query.find(name);
    return it == r.query.end() ? "" : it->second;
  }

  http::Response Handle(const http::Request& r) {
    const std::string bucket_path = "/ferry-test";
    if (r.path.rfind(bucket_path, 0) != 0) return Fail(404, "NoSuchBucket");
    std::string key = r.path.substr(bucket_path.size());
    if (!key.empty() && key[0] == '/') key.erase(0, 1);
    std::lock_guard lock(mu_);
    if (key.empty()) {
      if (r.method == "HEAD") return Xml(200, "");
      if (r.method == "PUT") return Xml(200, "");
      if (r.query.contains("object-lock")) return Fail(404, "ObjectLockConfigurationNotFoundError");
      if (r.method == "POST" && r.query.contains("delete")) return DeleteObjects(r);
      if (r.method == "GET" && Query(r, "list-type") == "2") return List(r);
      return Fail(400, "InvalidRequest");
    }
    if (r.method == "PUT") {
      objects_[key] = {r.body, static_cast<int64_t>(std::time(nullptr))};
      return Xml(200, "");
    }
    auto it = objects_.find(key);
    if (r.method == "DELETE") {
      if (it != objects_.end()) objects_.erase(it);
      return Xml(204, "");
    }
    if (it == objects_.end()) return r.method == "HEAD" ? Xml(404, "") : Fail(404, "NoSuchKey");
    if (r.method == "HEAD") return Xml(200, "");
    if (r.method == "GET") {
      http::Response out = Xml(200, it->second.data);
      out.content_type = "application/octet-stream";
      return out;
    }
    return Fail(400, "InvalidRequest");
  }

  http::Response DeleteObjects(const http::Request& r) {
    ++delete_objects_requests_;
    std::string errors;
    for (const std::string& key : XmlElements(r.body, "Key")) {
      if (retained_.contains(key)) {
        errors += "<Error><Key>" + key + "</Key><Code>AccessDenied</Code><Message>retained</Message></Error>";
        continue;
      }
      objects_.erase(key);
    }
    return Xml(200, "<?xml version=\"1.0\"?><DeleteResult>" + errors + "</DeleteResult>");
  }

  http::Response List(const http::Request& r) {
    const std::string prefix = Query(r, "prefix");
    const std::string delimiter = Query(r, "delimiter");
    const std::string token = Query(r, "continuation-token");
    std::string body = "<?xml version=\"1.0\"?><ListBucketResult>";
    std::set<std::string> prefixes;
    size_t n = 0;
    std::string last;
    bool truncated = false;
    auto it = token.empty() ? objects_.lower_bound(prefix) : objects_.upper_bound(token);
    for (; it != objects_.end() && it->first.starts_with(prefix); ++it) {
      if (n == 1000) {
        truncated = true;
        break;
      }
      const std::string& k = it->first;
      if (!delimiter.empty()) {
        size_t d = k.find(delimiter, prefix.size());
        if (d != std::string::npos) {
          prefixes.insert(k.substr(0, d + 1));
          continue;
        }
      }
      body += "<Contents><Key>" + k + "</Key><LastModified>" + FormatRfc3339(it->second.modified) +
              "</LastModified><ETag>\"e\"</ETag><Size>" + std::to_string(it->second.data.size()) + "</Size></Contents>";
      last = k;
      ++n;
    }
    for (const auto& p : prefixes) body += "<CommonPrefixes><Prefix>" + p + "</Prefix></CommonPrefixes>";
    body += std::string("<IsTruncated>") + (truncated ? "true" : "false") + "</IsTruncated>";
    if (truncated) body += "<NextContinuationToken>" + last + "</NextContinuationToken>";
    return Xml(200, body + "</ListBucketResult>");
  }

  std::mutex mu_;
  std::map<std::string, Object> objects_;
  std::set<std::string> retained_;
  std::atomic<int> delete_objects_requests_{0};
  std::unique_ptr<http::Server> server_;  // last: stopped before what it serves goes
};

}  // namespace ferry::s3::test
