#include "ferry/s3/client.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/log.h"
#include "ferry/common/retention.h"  // ParseRfc3339
#include "ferry/http/client.h"

#include <openssl/evp.h>

namespace ferry::s3 {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

std::string Unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t end = s.find(';', i);
    if (end == std::string_view::npos) {
      out += s[i];
      continue;
    }
    std::string_view entity = s.substr(i + 1, end - i - 1);
    if (entity == "amp") out += '&';
    else if (entity == "lt") out += '<';
    else if (entity == "gt") out += '>';
    else if (entity == "quot") out += '"';
    else if (entity == "apos") out += '\'';
    else if (!entity.empty() && entity[0] == '#') {
      unsigned long code = entity.size() > 1 && (entity[1] == 'x' || entity[1] == 'X')
                               ? std::strtoul(std::string(entity.substr(2)).c_str(), nullptr, 16)
                               : std::strtoul(std::string(entity.substr(1)).c_str(), nullptr, 10);
      if (code < 0x80) out += static_cast<char>(code);  // S3 keys of Ferry's are ASCII
      else out += '?';
    } else {
      out.append(s.substr(i, end - i + 1));
    }
    i = end;
  }
  return out;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string First(std::string_view xml, std::string_view tag) {
  std::vector<std::string> all = XmlElements(xml, tag);
  return all.empty() ? "" : all.front();
}

// What S3 says went wrong: "NoSuchBucket (The specified bucket does not exist)".
std::string S3Problem(const Bucket::Reply& reply) {
  std::string code = First(reply.body, "Code");
  std::string message = First(reply.body, "Message");
  std::string out = "HTTP " + std::to_string(reply.status);
  if (!code.empty()) out += " " + code;
  if (!message.empty()) out += " (" + message.substr(0, 200) + ")";
  return out;
}

bool IsRetryableStatus(int status) { return status == 429 || status >= 500; }

// Content-MD5: the base64 of the body's MD5 (RFC 1864), which S3 requires on
// PUT ?retention (and ?object-lock, ?lifecycle).
std::string ContentMd5(std::span<const uint8_t> body) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (EVP_Digest(body.data(), body.size(), md, &md_len, EVP_md5(), nullptr) != 1) {
    throw Error(ErrorKind::kInternal, "MD5 of a request body failed (OpenSSL)");
  }
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  const int n = EVP_EncodeBlock(b64, md, static_cast<int>(md_len));
  return std::string(reinterpret_cast<const char*>(b64), static_cast<size_t>(n));
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// Copies a response body into a byte vector. Through uint8_t pointers, not
// the string's char iterators: those make libstdc++ convert byte by byte,
// which perf of a restore from S3 showed at 14% of its samples; this is one
// memcpy into the vector's existing capacity.
void AssignBytes(const std::string& body, std::vector<uint8_t>* out) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(body.data());
  out->assign(bytes, bytes + body.size());
}

int64_t TimeOrZero(const std::string& text) {
  if (text.empty()) return 0;
  try {
    return ParseRfc3339(text);
  } catch (const Error&) {
    return 0;
  }
}

}  // namespace

std::vector<std::string> XmlElements(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  const std::string open = "<" + std::string(tag) + ">";
  const std::string close = "</" + std::string(tag) + ">";
  size_t pos = 0;
  for (;;) {
    size_t start = xml.find(open, pos);
    if (start == std::string_view::npos) break;
    start += open.size();
    size_t end = xml.find(close, start);
    if (end == std::string_view::npos) break;
    out.push_back(Unescape(xml.substr(start, end - start)));
    pos = end + close.size();
  }
  return out;
}

std::string Bucket::Reply::Header(const std::string& name) const {
  for (const auto& [n, v] : headers) {
    if (n.size() == name.size() && std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      return v;
    }
  }
  return "";
}

struct Bucket::Counters {
  std::atomic<uint64_t> put{0}, get{0}, list{0}, head{0}, del{0}, retries{0}, sent{0}, received{0};
};

// Keep-alive connections, one per request in flight; idle ones are reused.
class Bucket::Pool {
 public:
  Pool(std::string base_url, http::ClientOptions options) : base_url_(std::move(base_url)), options_(options) {}

  std::unique_ptr<http::Client> Take() {
    {
      std::lock_guard lock(mu_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    return std::make_unique<http::Client>(base_url_, options_);
  }
  void Give(std::unique_ptr<http::Client> client) {
    std::lock_guard lock(mu_);
    if (idle_.size() < 64) idle_.push_back(std::move(client));
  }

 private:
  std::string base_url_;
  http::ClientOptions options_;
  std::mutex mu_;
  std::vector<std::unique_ptr<http::Client>> idle_;
};

Bucket::Bucket(BucketOptions options) : options_(std::move(options)), counters_(std::make_unique<Counters>()) {
  auto bad = [](const std::string& why) { return Error(ErrorKind::kBadInput, "object storage: " + why); };
  const std::string& b = options_.bucket;
  // S3's bucket naming rules (3-63 of a-z 0-9 . -, starting and ending alphanumeric).
  if (b.size() < 3 || b.size() > 63 ||
      !std::all_of(b.begin(), b.end(), [](char c) { return (c >= 'a' && c <= 'z') || std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.'; }) ||
      !std::isalnum(static_cast<unsigned char>(b.front())) || !std::isalnum(static_cast<unsigned char>(b.back()))) {
    throw bad("bucket name \"" + b.substr(0, 80) + "\" is not valid (3 to 63 of a-z, 0-9, '.', '-')");
  }
  if (options_.region.empty()) throw bad("no region");
  if (options_.credentials.access_key.empty() || options_.credentials.secret_key.empty()) {
    throw bad("no credentials for bucket " + b + " (an access key and a secret key)");
  }
  if (options_.part_size < (5u << 20)) throw bad("the multipart part size must be at least 5 MiB");
  if (options_.multipart_threshold < options_.part_size) options_.multipart_threshold = options_.part_size;

  std::string base = options_.endpoint;
  while (!base.empty() && base.back() == '/') base.pop_back();
  const bool tls = base.rfind("https://", 0) == 0;
  if (!tls && base.rfind("http://", 0) != 0) throw bad("endpoint \"" + base + "\" must start with http:// or https://");
  if (options_.virtual_host) {
    const size_t host_at = base.find("://") + 3;
    base.insert(host_at, b + ".");
  } else {
    prefix_ = "/" + b;
  }
  http::ClientOptions client_options;
  client_options.ca_file = options_.ca_file;
  client_options.verify_tls = options_.verify_tls;
  client_options.timeout = options_.timeout;
  // Over TLS the transport protects the bytes; in plain HTTP the payload's
  // SHA-256 is signed, so the store rejects a body damaged in transit.
  sign_payload_ = !tls;
  host_ = http::Client(base, client_options).host_header();  // validates the URL
  pool_ = std::make_unique<Pool>(base, client_options);
}

Bucket::~Bucket() = default;

std::string Bucket::Describe(const std::string& key) const { return "s3://" + options_.bucket + "/" + key; }

BucketStats Bucket::stats() const {
  BucketStats s;
  s.put_requests = counters_->put;
  s.get_requests = counters_->get;
  s.list_requests = counters_->list;
  s.head_requests = counters_->head;
  s.delete_requests = counters_->del;
  s.retries = counters_->retries;
  s.bytes_sent = counters_->sent;
  s.bytes_received = counters_->received;
  return s;
}

Bucket::Reply Bucket::Once(const std::string& method, const std::string& key, const Headers& query,
                           std::span<const uint8_t> body, const Headers& headers) {
  SignableRequest request;
  request.method = method;
  request.path = key.empty() && !prefix_.empty() ? prefix_ : prefix_ + "/" + UriEncode(key, true);
  request.query = query;
  request.headers = headers;
  request.host = host_;
  request.payload_hash = sign_payload_ || body.empty() ? HexSha256(body) : kUnsignedPayload;
  Headers send = headers;
  Sign(request, options_.credentials, options_.region, AmzDateNow(), &send);
  if (!body.empty()) send.emplace_back("Content-Type", "application/octet-stream");
  std::string target = request.path;
  std::string q = CanonicalQuery(query);
  if (!q.empty()) target += "?" + q;

  if (method == "PUT" || method == "POST") ++counters_->put;
  else if (method == "HEAD") ++counters_->head;
  else if (method == "DELETE") ++counters_->del;
  else if (method == "GET" && key.empty()) ++counters_->list;
  else ++counters_->get;
  counters_->sent += body.size();

  std::unique_ptr<http::Client> client = pool_->Take();
  http::Response response =
      client->Send(method, target, std::string_view(reinterpret_cast<const char*>(body.data()), body.size()), send);
  pool_->Give(std::move(client));
  counters_->received += response.body.size();
  Reply reply;
  reply.status = response.status;
  reply.body = std::move(response.body);
  reply.headers = std::move(response.headers);
  return reply;
}

Bucket::Reply Bucket::Request(const std::string& method, const std::string& key, const Headers& query,
                              std::span<const uint8_t> body, const Headers& headers) {
  Reply reply;
  const std::string what = method + " " + Describe(key);
  WithRetries(
      options_.retry, what,
      [&] {
        reply = Once(method, key, query, body, headers);
        if (IsRetryableStatus(reply.status)) throw Error(ErrorKind::kRetryable, S3Problem(reply));
      },
      [&](const std::string& error, std::chrono::milliseconds delay) {
        ++counters_->retries;
        LogDebug(what + ": " + error + "; again in " + std::to_string(delay.count()) + " ms");
      });
  return reply;
}

void Bucket::ThrowFor(const Reply& reply, const std::string& what) const {
  const std::string problem = what + ": " + S3Problem(reply);
  const std::string code = First(reply.body, "Code");
  if (code == "NoSuchBucket") throw Error(ErrorKind::kNotFound, problem);
  if (reply.status == 404) throw Error(ErrorKind::kNotFound, problem);
  if (reply.status == 401 || reply.status == 403) {
    throw Error(ErrorKind::kEnvironment, problem + " (check the access key, the secret key and the bucket's policy)");
  }
  if (reply.status == 400 || reply.status == 409 || reply.status == 411 || reply.status == 413) {
    throw Error(ErrorKind::kBadInput, problem);
  }
  throw Error(ErrorKind::kEnvironment, problem);
}

const char* RetentionModeName(RetentionMode mode) {
  return mode == RetentionMode::kGovernance ? "GOVERNANCE" : "COMPLIANCE";
}

void Bucket::CreateBucket(bool object_lock) {
  Headers headers;
  if (object_lock) headers.emplace_back("x-amz-bucket-object-lock-enabled", "true");
  // AWS creates a bucket outside us-east-1 only with a location constraint
  // naming the region (IllegalLocationConstraintException without one). A
  // store whose regions are not AWS's may refuse the name
  // (InvalidLocationConstraint): then the bucket is created where the
  // endpoint puts it.
  std::string constraint;
  if (!options_.region.empty() && options_.region != "us-east-1")
    constraint = ("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>" +
                       options_.region + "</LocationConstraint></CreateBucketConfiguration>");
  Reply r = Request("PUT", "", {}, Bytes(constraint), headers);
  if (r.status / 100 != 2 && !constraint.empty() && First(r.body, "Code") == "InvalidLocationConstraint")
    r = Request("PUT", "", {}, {}, headers);
  if (r.status / 100 == 2) return;
  if (First(r.body, "Code") == "BucketAlreadyOwnedByYou") return;
  ThrowFor(r, "creating bucket " + options_.bucket);
}

bool Bucket::ObjectLockEnabled() {
  Reply r = Request("GET", "", {{"object-lock", ""}}, {}, {});
  if (r.status / 100 == 2) return First(r.body, "ObjectLockEnabled") == "Enabled";  // the root may carry an xmlns
  // 404 ObjectLockConfigurationNotFoundError: a bucket without Object Lock;
  // 404 NoSuchBucket: no bucket at all.
  if (r.status == 404 && First(r.body, "Code") != "NoSuchBucket") return false;
  if (r.status == 405 || r.status == 501) return false;  // a store without the API
  ThrowFor(r, "reading the Object Lock configuration of bucket " + options_.bucket);
}

void Bucket::SetRetention(const std::string& key, RetentionMode mode, int64_t retain_until,
                          const std::string& version_id) {
  const std::string body = std::string("<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>") +
                           RetentionModeName(mode) + "</Mode><RetainUntilDate>" + FormatRfc3339(retain_until) +
                           "</RetainUntilDate></Retention>";
  Headers query{{"retention", ""}};
  if (!version_id.empty()) query.emplace_back("versionId", version_id);
  Reply r = Request("PUT", key, query, Bytes(body), {{"Content-MD5", ContentMd5(Bytes(body))}});
  if (r.status / 100 == 2) return;
  ThrowFor(r, std::string("setting retention (") + RetentionModeName(mode) + " until " + FormatRfc3339(retain_until) +
                  ") on " + Describe(key));
}

std::optional<ObjectRetention> Bucket::GetRetention(const std::string& key, const std::string& version_id) {
  Headers query{{"retention", ""}};
  if (!version_id.empty()) query.emplace_back("versionId", version_id);
  Reply r = Request("GET", key, query, {}, {});
  if (r.status == 404 && First(r.body, "Code") != "NoSuchBucket") return std::nullopt;
  // A bucket without Object Lock: 400 InvalidRequest ("bucket object lock
  // not configured", Ceph RGW 16; AWS says the same with other words).
  if (r.status == 400 && First(r.body, "Code") == "InvalidRequest") return std::nullopt;
  if (r.status / 100 != 2) ThrowFor(r, "reading the retention of " + Describe(key));
  // <Retention xmlns=...><Mode>..</Mode><RetainUntilDate>..</RetainUntilDate></Retention>
  const std::string mode = First(r.body, "Mode");
  const std::string until = First(r.body, "RetainUntilDate");
  if (mode.empty() && until.empty()) return std::nullopt;
  ObjectRetention out;
  if (mode == "GOVERNANCE") out.mode = RetentionMode::kGovernance;
  else if (mode == "COMPLIANCE") out.mode = RetentionMode::kCompliance;
  else throw Error(ErrorKind::kEnvironment, "the retention of " + Describe(key) + " has an unknown mode \"" + mode.substr(0, 40) + "\"");
  try {
    out.retain_until = ParseRfc3339(until);
  } catch (const Error& e) {
    throw Error(ErrorKind::kEnvironment, "the retention of " + Describe(key) + ": " + e.what());
  }
  return out;
}

void Bucket::ListVersions(const std::string& prefix, const std::function<void(const ObjectVersion&)>& each) {
  std::string key_marker, version_marker;
  for (;;) {
    Headers query{{"versions", ""}, {"prefix", prefix}, {"max-keys", "1000"}};
    if (!key_marker.empty()) query.emplace_back("key-marker", key_marker);
    if (!version_marker.empty()) query.emplace_back("version-id-marker", version_marker);
    Reply r = Request("GET", "", query, {}, {});
    if (r.status / 100 != 2) ThrowFor(r, "listing the versions under " + Describe(prefix));
    // <Version> and <DeleteMarker> entries interleave, in order.
    std::string_view body = r.body;
    size_t pos = 0;
    for (;;) {
      const size_t v = body.find("<Version>", pos);
      const size_t d = body.find("<DeleteMarker>", pos);
      if (v == std::string_view::npos && d == std::string_view::npos) break;
      const bool marker = d < v;
      const std::string close = marker ? "</DeleteMarker>" : "</Version>";
      const size_t start = marker ? d : v;
      const size_t end = body.find(close, start);
      if (end == std::string_view::npos) break;
      const std::string_view entry = body.substr(start, end - start);
      ObjectVersion info;
      info.key = First(entry, "Key");
      info.version_id = First(entry, "VersionId");
      info.is_latest = First(entry, "IsLatest") == "true";
      info.delete_marker = marker;
      info.size = std::strtoull(First(entry, "Size").c_str(), nullptr, 10);
      info.last_modified = TimeOrZero(First(entry, "LastModified"));
      each(info);
      pos = end + close.size();
    }
    if (First(r.body, "IsTruncated") != "true") return;
    key_marker = First(r.body, "NextKeyMarker");
    version_marker = First(r.body, "NextVersionIdMarker");
    if (key_marker.empty()) {
      throw Error(ErrorKind::kEnvironment, "listing the versions under " + Describe(prefix) + ": truncated, but no next marker");
    }
  }
}

bool Bucket::BucketExists() {
  // HEAD on the bucket: 200 ours, 404 none, 403 not ours or bad credentials.
  Reply r = Request("HEAD", "", {}, {}, {});
  if (r.status / 100 == 2) return true;
  if (r.status == 404) return false;
  ThrowFor(r, "bucket " + options_.bucket);
}

void Bucket::Put(const std::string& key, std::span<const uint8_t> data, const Headers& headers) {
  if (data.size() > options_.multipart_threshold) {
    PutMultipart(
        key, data.size(),
        [&](uint64_t offset, std::span<uint8_t> part) { std::memcpy(part.data(), data.data() + offset, part.size()); },
        headers);
    return;
  }
  Reply r = Request("PUT", key, {}, data, headers);
  if (r.status / 100 != 2) ThrowFor(r, "writing " + Describe(key));
}

void Bucket::Put(const std::string& key, const std::string& data, const Headers& headers) {
  Put(key, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()), headers);
}

void Bucket::PutFile(const std::string& key, const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) throw ErrnoError("opening " + path, errno);
  const off_t size = ::lseek(fd.get(), 0, SEEK_END);
  if (size < 0) throw ErrnoError("sizing " + path, errno);
  auto read_at = [&](uint64_t offset, std::span<uint8_t> out) {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw ErrnoError("reading " + path, errno);
      if (n == 0) throw Error(ErrorKind::kEnvironment, path + " shrank while it was uploaded");
      done += static_cast<size_t>(n);
    }
  };
  if (static_cast<uint64_t>(size) > options_.multipart_threshold) {
    PutMultipart(key, static_cast<uint64_t>(size), read_at, {});
    return;
  }
  std::vector<uint8_t> data(static_cast<size_t>(size));
  read_at(0, data);
  Put(key, data);
}

void Bucket::PutMultipart(const std::string& key, uint64_t size,
                          const std::function<void(uint64_t, std::span<uint8_t>)>& read_part, const Headers& headers) {
  const std::string what = "writing " + Describe(key) + " in parts";
  Reply r = Request("POST", key, {{"uploads", ""}}, {}, headers);
  if (r.status / 100 != 2) ThrowFor(r, what);
  const std::string upload_id = First(r.body, "UploadId");
  if (upload_id.empty()) throw Error(ErrorKind::kEnvironment, what + ": the store sent no UploadId");
  try {
    std::string complete = "<CompleteMultipartUpload>";
    std::vector<uint8_t> part;
    int number = 1;
    for (uint64_t offset = 0; offset < size; offset += options_.part_size, ++number) {
      part.resize(static_cast<size_t>(std::min<uint64_t>(options_.part_size, size - offset)));
      read_part(offset, part);
      Reply p = Request("PUT", key, {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}}, part, {});
      if (p.status / 100 != 2) ThrowFor(p, what + " (part " + std::to_string(number) + ")");
      complete += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" + XmlEscape(p.Header("ETag")) +
                  "</ETag></Part>";
    }
    complete += "</CompleteMultipartUpload>";
    Reply c = Request("POST", key, {{"uploadId", upload_id}},
                      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(complete.data()), complete.size()), {});
    // S3 may answer 200 with an <Error> body when completing fails late.
    if (c.status / 100 != 2 || c.body.find("<Error>") != std::string::npos) ThrowFor(c, what + " (completing)");
  } catch (...) {
    try {
      Request("DELETE", key, {{"uploadId", upload_id}}, {}, {});
    } catch (const Error& e) {
      LogWarning(what + ": aborting the upload failed (the bucket's lifecycle rule for incomplete uploads removes it): " +
                 e.what());
    }
    throw;
  }
}

bool Bucket::Get(const std::string& key, std::vector<uint8_t>* out) {
  std::string body;
  if (!Get(key, &body)) return false;
  AssignBytes(body, out);
  return true;
}

bool Bucket::Get(const std::string& key, std::string* out) {
  Reply r = Request("GET", key, {}, {}, {});
  if (r.status == 404 && First(r.body, "Code") != "NoSuchBucket") return false;
  if (r.status / 100 != 2) ThrowFor(r, "reading " + Describe(key));
  *out = std::move(r.body);
  return true;
}

bool Bucket::GetRange(const std::string& key, uint64_t offset, uint64_t length, std::vector<uint8_t>* out) {
  if (length == 0) {
    out->clear();
    return Head(key).has_value();
  }
  Reply r = Request("GET", key, {}, {},
                    {{"Range", "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1)}});
  if (r.status == 404 && First(r.body, "Code") != "NoSuchBucket") return false;
  if (r.status != 206 && r.status != 200) ThrowFor(r, "reading " + Describe(key));
  if (r.status == 200) {  // the store ignored the range: cut it here
    if (offset >= r.body.size()) r.body.clear();
    else r.body = r.body.substr(offset, length);
  }
  AssignBytes(r.body, out);
  return true;
}

bool Bucket::GetFile(const std::string& key, const std::string& path) {
  std::vector<uint8_t> data;
  if (!Get(key, &data)) return false;
  WriteFileAtomically(path, std::string(reinterpret_cast<const char*>(data.data()), data.size()));
  return true;
}

std::optional<ObjectInfo> Bucket::Head(const std::string& key) {
  Reply r = Request("HEAD", key, {}, {}, {});
  if (r.status == 404) return std::nullopt;
  if (r.status / 100 != 2) ThrowFor(r, "looking up " + Describe(key));
  ObjectInfo info;
  info.key = key;
  info.size = std::strtoull(r.Header("Content-Length").c_str(), nullptr, 10);
  info.etag = r.Header("ETag");
  return info;
}

void Bucket::Delete(const std::string& key) {
  Reply r = Request("DELETE", key, {}, {}, {});
  if (r.status / 100 == 2 || (r.status == 404 && First(r.body, "Code") != "NoSuchBucket")) return;
  ThrowFor(r, "deleting " + Describe(key));
}

std::vector<Bucket::DeleteFailure> Bucket::DeleteObjects(const std::vector<std::string>& keys) {
  if (keys.empty()) return {};
  if (keys.size() > kDeleteBatch) {
    throw Error(ErrorKind::kInternal, "DeleteObjects: " + std::to_string(keys.size()) + " keys in one request (at most " +
                                          std::to_string(kDeleteBatch) + ")");
  }
  std::string body = "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>";
  for (const auto& k : keys) body += "<Object><Key>" + XmlEscape(k) + "</Key></Object>";
  body += "</Delete>";
  Reply r = Request("POST", "", {{"delete", ""}}, Bytes(body), {{"Content-MD5", ContentMd5(Bytes(body))}});
  const std::string what = "deleting " + std::to_string(keys.size()) + " objects from " + Describe(keys.front()) + "...";
  if (r.status / 100 != 2) ThrowFor(r, what);
  // <DeleteResult><Error><Key>..</Key><Code>..</Code><Message>..</Message></Error>...</DeleteResult>
  std::vector<DeleteFailure> failed;
  for (const std::string& e : XmlElements(r.body, "Error")) {
    DeleteFailure f{First(e, "Key"), First(e, "Code")};
    if (f.code == "NoSuchKey") continue;
    failed.push_back(std::move(f));
  }
  return failed;
}

void Bucket::List(const std::string& prefix, const std::function<void(const ObjectInfo&)>& each) {
  std::string token;
  for (;;) {
    Headers query{{"list-type", "2"}, {"prefix", prefix}, {"max-keys", "1000"}};
    if (!token.empty()) query.emplace_back("continuation-token", token);
    Reply r = Request("GET", "", query, {}, {});
    if (r.status / 100 != 2) ThrowFor(r, "listing " + Describe(prefix));
    for (const std::string& contents : XmlElements(r.body, "Contents")) {
      ObjectInfo info;
      info.key = First(contents, "Key");
      info.size = std::strtoull(First(contents, "Size").c_str(), nullptr, 10);
      info.etag = First(contents, "ETag");
      const std::string modified = First(contents, "LastModified");
      try {
        info.last_modified = modified.empty() ? 0 : ParseRfc3339(modified);
      } catch (const Error&) {
        info.last_modified = 0;
      }
      each(info);
    }
    if (First(r.body, "IsTruncated") != "true") return;
    token = First(r.body, "NextContinuationToken");
    if (token.empty()) throw Error(ErrorKind::kEnvironment, "listing " + Describe(prefix) + ": truncated, but no continuation token");
  }
}

std::vector<std::string> Bucket::ListPrefixes(const std::string& prefix) {
  std::vector<std::string> out;
  std::string token;
  for (;;) {
    Headers query{{"list-type", "2"}, {"prefix", prefix}, {"delimiter", "/"}, {"max-keys", "1000"}};
    if (!token.empty()) query.emplace_back("continuation-token", token);
    Reply r = Request("GET", "", query, {}, {});
    if (r.status / 100 != 2) ThrowFor(r, "listing " + Describe(prefix));
    for (const std::string& common : XmlElements(r.body, "CommonPrefixes")) out.push_back(First(common, "Prefix"));
    if (First(r.body, "IsTruncated") != "true") return out;
    token = First(r.body, "NextContinuationToken");
    if (token.empty()) throw Error(ErrorKind::kEnvironment, "listing " + Describe(prefix) + ": truncated, but no continuation token");
  }
}

}  // namespace ferry::s3
