// AWS's published S3 SigV4 examples ("Examples: Signature Calculations",
// Amazon S3 API reference): bucket examplebucket, us-east-1, 2013-05-24.
#include "ferry/s3/sigv4.h"

#include <gtest/gtest.h>

namespace ferry::s3 {
namespace {

const Credentials kAws{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
constexpr char kEmptyHash[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::string SignatureOf(const SignableRequest& request) {
  std::vector<std::pair<std::string, std::string>> out;
  Sign(request, kAws, "us-east-1", "20130524T000000Z", &out);
  for (const auto& [name, value] : out) {
    if (name == "Authorization") {
      EXPECT_EQ(value.rfind("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, ", 0),
                0u)
          << value;
      return value.substr(value.find("Signature=") + 10);
    }
  }
  ADD_FAILURE() << "no Authorization header";
  return "";
}

TEST(SigV4Test, GetObjectWithRange) {
  SignableRequest r{.method = "GET", .path = "/test.txt", .query = {}, .headers = {{"Range", "bytes=0-9"}},
                    .host = "examplebucket.s3.amazonaws.com", .payload_hash = kEmptyHash};
  EXPECT_EQ(SignatureOf(r), "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SigV4Test, PutObjectWithAnEncodedKeyAndExtraHeaders) {
  const std::string body = "Welcome to Amazon S3.";
  EXPECT_EQ(HexSha256(body), "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  SignableRequest r{.method = "PUT", .path = "/" + UriEncode("test$file.text", true), .query = {},
                    .headers = {{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                                {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
                    .host = "examplebucket.s3.amazonaws.com", .payload_hash = HexSha256(body)};
  EXPECT_EQ(r.path, "/test%24file.text");
  EXPECT_EQ(SignatureOf(r), "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

TEST(SigV4Test, GetBucketLifecycleWithAValuelessParameter) {
  SignableRequest r{.method = "GET", .path = "/", .query = {{"lifecycle", ""}}, .headers = {},
                    .host = "examplebucket.s3.amazonaws.com", .payload_hash = kEmptyHash};
  EXPECT_EQ(SignatureOf(r), "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

TEST(SigV4Test, ListObjectsWithParametersInAnyOrder) {
  SignableRequest r{.method = "GET", .path = "/", .query = {{"prefix", "J"}, {"max-keys", "2"}}, .headers = {},
                    .host = "examplebucket.s3.amazonaws.com", .payload_hash = kEmptyHash};
  EXPECT_EQ(SignatureOf(r), "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
  EXPECT_EQ(CanonicalQuery(r.query), "max-keys=2&prefix=J");
}

TEST(SigV4Test, EncodingKeepsOnlyUnreservedCharacters) {
  EXPECT_EQ(UriEncode("a b/c+d~e_f.g-h", false), "a%20b%2Fc%2Bd~e_f.g-h");
  EXPECT_EQ(UriEncode("a b/c", true), "a%20b/c");
  EXPECT_EQ(CanonicalQuery({{"continuation-token", "1/a=b"}}), "continuation-token=1%2Fa%3Db");
}

}  // namespace
}  // namespace ferry::s3
