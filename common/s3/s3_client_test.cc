// The S3 client against a local HTTP server that plays a store's failure
// modes a real gateway will not produce on demand (throttling, 5xx, denied
// access, paged listings, a failing multipart part); and, when
// FERRY_TEST_S3_ENDPOINT is set, against a real store
// (integration.test-s3-client runs these with a one-node Ceph RGW).
#include "ferry/s3/client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>

#include "ferry/common/error.h"
#include "ferry/http/server.h"
#include "s3_test_env.h"

namespace ferry::s3 {
namespace {

using http::Request;
using http::Response;

Response Xml(int status, const std::string& body) {
  Response r;
  r.status = status;
  r.body = body;
  r.content_type = "application/xml";
  return r;
}

Response S3Error(int status, const std::string& code) {
  return Xml(status, "<?xml version=\"1.0\"?><Error><Code>" + code + "</Code><Message>as the test wants</Message></Error>");
}

class FakeStore {
 public:
  explicit FakeStore(http::Handler handler) {
    http::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.body_limit = 64u << 20;
    server_ = std::make_unique<http::Server>(options, std::move(handler));
    server_->Start();
  }
  BucketOptions Options() const {
    BucketOptions o;
    o.endpoint = "http://127.0.0.1:" + std::to_string(server_->port());
    o.bucket = "ferry-test";
    o.credentials = {"AKIDTEST", "secret-that-must-not-show", ""};
    o.retry.first_delay = std::chrono::milliseconds(1);
    o.retry.max_delay = std::chrono::milliseconds(5);
    return o;
  }

 private:
  std::unique_ptr<http::Server> server_;
};

TEST(S3ClientTest, ThrottlingAndServerErrorsAreRetriedThenSucceed) {
  std::atomic<int> calls{0};
  std::atomic<bool> signed_ok{true};
  FakeStore store([&](const Request& r) {
    if (r.authorization.rfind("AWS4-HMAC-SHA256 Credential=AKIDTEST/", 0) != 0) signed_ok = false;
    int n = ++calls;
    if (n == 1) return S3Error(503, "SlowDown");
    if (n == 2) return S3Error(500, "InternalError");
    return Xml(200, "");
  });
  Bucket bucket(store.Options());
  bucket.Put("chunks/abc/x", std::string("data"));
  EXPECT_EQ(calls.load(), 3);
  EXPECT_TRUE(signed_ok.load());
  EXPECT_EQ(bucket.stats().retries, 2u);
  EXPECT_EQ(bucket.stats().put_requests, 3u);
}

TEST(S3ClientTest, PersistentThrottlingGivesUpAsRetryable) {
  FakeStore store([&](const Request&) { return S3Error(503, "SlowDown"); });
  BucketOptions options = store.Options();
  options.retry.attempts = 3;
  Bucket bucket(options);
  try {
    bucket.Put("k", std::string("data"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRetryable);
    EXPECT_NE(std::string(e.what()).find("gave up after 3 attempts"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("SlowDown"), std::string::npos) << e.what();
  }
}

TEST(S3ClientTest, DeniedAccessAndMissingBucketAreNamedWithoutSecrets) {
  FakeStore store([&](const Request& r) {
    if (r.path == "/ferry-test/denied") return S3Error(403, "AccessDenied");
    return S3Error(404, "NoSuchBucket");
  });
  Bucket bucket(store.Options());
  try {
    bucket.Put("denied", std::string("x"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kEnvironment);
    const std::string m = e.what();
    EXPECT_NE(m.find("s3://ferry-test/denied"), std::string::npos) << m;
    EXPECT_NE(m.find("AccessDenied"), std::string::npos) << m;
    EXPECT_EQ(m.find("secret-that-must-not-show"), std::string::npos) << m;
  }
  std::vector<uint8_t> out;
  try {
    bucket.Get("whatever", &out);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("NoSuchBucket"), std::string::npos) << e.what();
  }
}

TEST(S3ClientTest, DeleteObjectsSendsOneBatchAndReturnsOnlyRealRefusals) {
  std::atomic<int> calls{0};
  std::string body;
  std::mutex mu;
  FakeStore store([&](const Request& r) {
    ++calls;
    if (r.method != "POST" || r.path != "/ferry-test" || !r.query.contains("delete")) return S3Error(400, "InvalidRequest");
    std::lock_guard lock(mu);
    body = r.body;
    return Xml(200, "<DeleteResult><Error><Key>a&amp;b</Key><Code>AccessDenied</Code></Error>"
                    "<Error><Key>gone</Key><Code>NoSuchKey</Code></Error></DeleteResult>");
  });
  Bucket bucket(store.Options());
  std::vector<Bucket::DeleteFailure> failed = bucket.DeleteObjects({"a&b", "gone", "c"});
  EXPECT_EQ(calls.load(), 1);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].key, "a&b");
  EXPECT_EQ(failed[0].code, "AccessDenied");
  EXPECT_NE(body.find("<Quiet>true</Quiet>"), std::string::npos) << body;
  EXPECT_NE(body.find("<Object><Key>a&amp;b</Key></Object>"), std::string::npos) << body;
  EXPECT_NE(body.find("<Object><Key>c</Key></Object>"), std::string::npos) << body;
  EXPECT_TRUE(bucket.DeleteObjects({}).empty());
  EXPECT_EQ(calls.load(), 1) << "an empty batch costs no request";
  std::vector<std::string> too_many(Bucket::kDeleteBatch + 1, "k");
  EXPECT_THROW(bucket.DeleteObjects(too_many), Error);
}

TEST(S3ClientTest, AMissingKeyIsFalseNotAnError) {
  FakeStore store([&](const Request&) { return S3Error(404, "NoSuchKey"); });
  Bucket bucket(store.Options());
  std::vector<uint8_t> out;
  EXPECT_FALSE(bucket.Get("nope", &out));
  EXPECT_FALSE(bucket.Head("nope").has_value());
  bucket.Delete("nope");  // no error
}

TEST(S3ClientTest, ListingFollowsContinuationTokens) {
  std::vector<std::string> tokens;
  std::mutex mu;
  FakeStore store([&](const Request& r) {
    std::lock_guard lock(mu);
    EXPECT_EQ(r.query.at("list-type"), "2");
    EXPECT_EQ(r.query.at("prefix"), "chunks/");
    auto t = r.query.find("continuation-token");
    tokens.push_back(t == r.query.end() ? "" : t->second);
    if (t == r.query.end()) {
      return Xml(200,
                 "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>next/page=2&amp;x"
                 "</NextContinuationToken><Contents><Key>chunks/a&amp;b</Key><Size>5</Size>"
                 "<LastModified>2026-12-01T10:00:00.000Z</LastModified></Contents></ListBucketResult>");
    }
    return Xml(200,
               "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>chunks/c</Key><Size>7</Size>"
               "</Contents></ListBucketResult>");
  });
  Bucket bucket(store.Options());
  std::vector<ObjectInfo> seen;
  bucket.List("chunks/", [&](const ObjectInfo& i) { seen.push_back(i); });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].key, "chunks/a&b");
  EXPECT_EQ(seen[0].size, 5u);
  EXPECT_EQ(seen[0].last_modified, 1796119200);
  EXPECT_EQ(seen[1].key, "chunks/c");
  EXPECT_EQ(tokens, (std::vector<std::string>{"", "next/page=2&x"}));
  EXPECT_EQ(bucket.stats().list_requests, 2u);
}

TEST(S3ClientTest, AFailedPartAbortsTheMultipartUpload) {
  std::atomic<bool> aborted{false};
  std::atomic<int> parts{0};
  FakeStore store([&](const Request& r) {
    if (r.method == "POST" && r.query.contains("uploads")) {
      return Xml(200, "<InitiateMultipartUploadResult><UploadId>up-1</UploadId></InitiateMultipartUploadResult>");
    }
    if (r.method == "PUT" && r.query.contains("partNumber")) {
      if (++parts == 2) return S3Error(400, "InvalidPart");
      Response ok = Xml(200, "");
      ok.headers.emplace_back("ETag", "\"e1\"");
      return ok;
    }
    if (r.method == "DELETE" && r.query.contains("uploadId")) {
      EXPECT_EQ(r.query.at("uploadId"), "up-1");
      aborted = true;
      return Xml(204, "");
    }
    return S3Error(400, "Unexpected");
  });
  BucketOptions options = store.Options();
  options.part_size = 5u << 20;
  options.multipart_threshold = 5u << 20;
  Bucket bucket(options);
  std::vector<uint8_t> big(12u << 20, 7);
  EXPECT_THROW(bucket.Put("big", big), Error);
  EXPECT_TRUE(aborted.load());
  EXPECT_EQ(parts.load(), 2);
}

TEST(S3ClientTest, BadOptionsAreRefusedNamingTheField) {
  BucketOptions o;
  o.endpoint = "http://127.0.0.1:1";
  o.bucket = "Bad_Bucket";
  o.credentials = {"a", "b", ""};
  EXPECT_THROW(Bucket{o}, Error);
  o.bucket = "good-bucket";
  o.credentials = {};
  try {
    Bucket b(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find("no credentials"), std::string::npos);
  }
  o.credentials = {"a", "b", ""};
  o.endpoint = "ftp://x";
  EXPECT_THROW(Bucket{o}, Error);
}

// --- against a real store -------------------------------------------------

TEST(BucketStoreTest, ObjectsRoundTripWithRangesListingAndDeletion) {
  std::optional<BucketOptions> options = RealStoreOptions();
  if (!options) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set (integration.test-s3-client sets it)";
  Bucket bucket(*options);
  bucket.CreateBucket();
  bucket.CreateBucket();  // ours already: fine
  EXPECT_TRUE(bucket.BucketExists());
  const std::string prefix = UniquePrefix();
  std::vector<uint8_t> data(3u << 20);
  std::mt19937 random(7);
  for (auto& b : data) b = static_cast<uint8_t>(random());
  bucket.Put(prefix + "a/one", data);
  bucket.Put(prefix + "a/two with space+plus", std::string("small"));
  std::vector<uint8_t> back;
  ASSERT_TRUE(bucket.Get(prefix + "a/one", &back));
  EXPECT_EQ(back, data);
  ASSERT_TRUE(bucket.GetRange(prefix + "a/one", 1000, 4096, &back));
  EXPECT_EQ(back, std::vector<uint8_t>(data.begin() + 1000, data.begin() + 5096));
  std::optional<ObjectInfo> head = bucket.Head(prefix + "a/one");
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->size, data.size());
  std::vector<std::string> keys;
  bucket.List(prefix + "a/", [&](const ObjectInfo& i) { keys.push_back(i.key); });
  EXPECT_EQ(keys, (std::vector<std::string>{prefix + "a/one", prefix + "a/two with space+plus"}));
  EXPECT_EQ(bucket.ListPrefixes(prefix), (std::vector<std::string>{prefix + "a/"}));
  bucket.Delete(prefix + "a/one");
  EXPECT_FALSE(bucket.Get(prefix + "a/one", &back));
  bucket.Delete(prefix + "a/one");  // again: fine
}

TEST(BucketStoreTest, LargeObjectsGoUpInPartsAndComeBackWhole) {
  std::optional<BucketOptions> options = RealStoreOptions();
  if (!options) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set";
  options->part_size = 5u << 20;
  options->multipart_threshold = 5u << 20;
  Bucket bucket(*options);
  bucket.CreateBucket();
  const std::string key = UniquePrefix() + "big";
  std::vector<uint8_t> data((13u << 20) + 12345);
  std::mt19937 random(9);
  for (auto& b : data) b = static_cast<uint8_t>(random());
  bucket.Put(key, data);
  EXPECT_GE(bucket.stats().put_requests, 5u) << "initiate, 3 parts, complete";
  std::vector<uint8_t> back;
  ASSERT_TRUE(bucket.Get(key, &back));
  EXPECT_EQ(back.size(), data.size());
  EXPECT_TRUE(back == data);
}

TEST(BucketStoreTest, PagedListingSeesEveryKey) {
  std::optional<BucketOptions> options = RealStoreOptions();
  if (!options) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set";
  Bucket bucket(*options);
  bucket.CreateBucket();
  const std::string prefix = UniquePrefix();
  // More than one page of 1000.
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 1010; i += 8) bucket.Put(prefix + "k" + std::to_string(10000 + i), std::string("v"));
    });
  }
  for (auto& th : threads) th.join();
  size_t n = 0;
  std::string last;
  bucket.List(prefix, [&](const ObjectInfo& i) {
    EXPECT_LT(last, i.key);
    last = i.key;
    ++n;
  });
  EXPECT_EQ(n, 1010u);
  EXPECT_GE(bucket.stats().list_requests, 2u);
}

TEST(S3ClientTest, ABucketOutsideUsEast1IsCreatedWithItsLocationConstraint) {
  std::mutex mu;
  std::vector<std::string> bodies;
  bool refuse_constraints = false;
  FakeStore store([&](const Request& r) {
    std::lock_guard lock(mu);
    bodies.push_back(r.body);
    // As a store whose region names are not AWS's.
    if (refuse_constraints && !r.body.empty()) return S3Error(400, "InvalidLocationConstraint");
    return Xml(200, "");
  });
  BucketOptions o = store.Options();
  o.region = "eu-central-1";
  Bucket(o).CreateBucket();
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_NE(bodies[0].find("<LocationConstraint>eu-central-1</LocationConstraint>"), std::string::npos) << bodies[0];
  o.region = "us-east-1";
  Bucket(o).CreateBucket();
  ASSERT_EQ(bodies.size(), 2u);
  EXPECT_EQ(bodies[1], "") << "us-east-1 takes no constraint";
  {
    std::lock_guard lock(mu);
    refuse_constraints = true;
  }
  o.region = "default";
  Bucket(o).CreateBucket();  // refused with the constraint, created without
  ASSERT_EQ(bodies.size(), 4u);
  EXPECT_EQ(bodies[3], "");
}

TEST(S3ClientTest, ObjectLockCallsHaveTheShapeS3Wants) {
  std::mutex mu;
  std::vector<Request> seen;
  FakeStore store([&](const Request& r) {
    {
      std::lock_guard lock(mu);
      seen.push_back(r);
    }
    if (r.query.count("object-lock")) {
      if (r.path == "/ferry-test") {
        return Xml(200, "<?xml version=\"1.0\"?><ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                        "<ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>");
      }
      return S3Error(404, "ObjectLockConfigurationNotFoundError");
    }
    if (r.query.count("retention") && r.method == "GET") {
      if (r.path == "/ferry-test/none") return S3Error(404, "NoSuchObjectLockConfiguration");
      return Xml(200, "<Retention><Mode>GOVERNANCE</Mode><RetainUntilDate>2030-01-02T03:04:05.000Z</RetainUntilDate></Retention>");
    }
    if (r.query.count("versions")) {
      if (!r.query.count("key-marker")) {
        return Xml(200, "<ListVersionsResult><IsTruncated>true</IsTruncated><NextKeyMarker>a</NextKeyMarker>"
                        "<NextVersionIdMarker>v1</NextVersionIdMarker>"
                        "<DeleteMarker><Key>a</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest></DeleteMarker>"
                        "<Version><Key>a</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><Size>5</Size>"
                        "<LastModified>2026-12-01T00:00:00.000Z</LastModified></Version></ListVersionsResult>");
      }
      if (r.query.at("key-marker") != "a" || r.query.at("version-id-marker") != "v1") return S3Error(400, "InvalidArgument");
      return Xml(200, "<ListVersionsResult><IsTruncated>false</IsTruncated>"
                      "<Version><Key>b</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><Size>7</Size></Version>"
                      "</ListVersionsResult>");
    }
    return Xml(200, "");
  });
  Bucket bucket(store.Options());
  EXPECT_TRUE(bucket.ObjectLockEnabled());
  BucketOptions other = store.Options();
  other.bucket = "no-lock-here";
  EXPECT_FALSE(Bucket(other).ObjectLockEnabled());

  bucket.SetRetention("chunks/abc/x", RetentionMode::kCompliance, 1893456000, "v9");  // 2030-01-01T00:00:00Z
  {
    std::lock_guard lock(mu);
    const Request& put = seen.back();
    EXPECT_EQ(put.method, "PUT");
    EXPECT_EQ(put.path, "/ferry-test/chunks/abc/x");
    EXPECT_EQ(put.query.count("retention"), 1u);
    EXPECT_EQ(put.query.at("versionId"), "v9");
    EXPECT_NE(put.body.find("<Mode>COMPLIANCE</Mode><RetainUntilDate>2030-01-01T00:00:00Z</RetainUntilDate>"),
              std::string::npos)
        << put.body;
    // S3 requires Content-MD5 on PUT ?retention; it is signed.
    EXPECT_NE(put.authorization.find("content-md5"), std::string::npos) << "SignedHeaders: " << put.authorization;
  }
  std::optional<ObjectRetention> r = bucket.GetRetention("chunks/abc/x");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->mode, RetentionMode::kGovernance);
  EXPECT_EQ(r->retain_until, 1893553445);  // 2030-01-02T03:04:05Z
  EXPECT_FALSE(bucket.GetRetention("none").has_value());

  std::vector<ObjectVersion> versions;
  bucket.ListVersions("", [&](const ObjectVersion& v) { versions.push_back(v); });
  ASSERT_EQ(versions.size(), 3u);
  EXPECT_TRUE(versions[0].delete_marker && versions[0].is_latest);
  EXPECT_EQ(versions[0].version_id, "v2");
  EXPECT_FALSE(versions[1].delete_marker);
  EXPECT_EQ(versions[1].version_id, "v1");
  EXPECT_EQ(versions[1].size, 5u);
  EXPECT_EQ(versions[1].last_modified, 1796083200);
  EXPECT_EQ(versions[2].key, "b");
}

TEST(BucketStoreTest, WrongSecretIsDeniedClearly) {
  std::optional<BucketOptions> options = RealStoreOptions();
  if (!options) GTEST_SKIP() << "FERRY_TEST_S3_ENDPOINT not set";
  options->credentials.secret_key = "not-the-secret";
  Bucket bucket(*options);
  try {
    bucket.Put("x", std::string("y"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kEnvironment) << e.what();
    EXPECT_NE(std::string(e.what()).find("403"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ferry::s3
