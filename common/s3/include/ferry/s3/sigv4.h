// AWS Signature Version 4 for the S3 API (header-based authentication), as
// AWS documents it ("Authenticating Requests: Using the Authorization
// Header", "Signature Calculations for the Authorization Header").
//
//   canonical request = METHOD \n URI \n QUERY \n HEADERS \n SIGNED-HEADERS \n PAYLOAD-HASH
//   string to sign    = AWS4-HMAC-SHA256 \n DATE-TIME \n SCOPE \n hex(SHA-256(canonical request))
//   signing key       = HMAC chain "AWS4"+secret -> date -> region -> "s3" -> "aws4_request"
//
// The tests check it against AWS's published S3 examples (sigv4_test.cc).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace ferry::s3 {

struct Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // optional (temporary credentials): sent as x-amz-security-token
};

// The payload hash for requests whose body is not hashed (over TLS, which
// protects the bytes already).
inline constexpr char kUnsignedPayload[] = "UNSIGNED-PAYLOAD";

struct SignableRequest {
  std::string method;  // "GET", "PUT", ...
  std::string path;    // percent-encoded already, as it goes on the request line ("/bucket/key")
  // Query parameters, not encoded; any order. A parameter without a value
  // ("?uploads") has an empty value.
  std::vector<std::pair<std::string, std::string>> query;
  // Headers to sign besides host, x-amz-date and x-amz-content-sha256 (names
  // in any case).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string host;          // the Host header, exactly as sent
  std::string payload_hash;  // hex SHA-256 of the body, or kUnsignedPayload
};

// Adds x-amz-date, x-amz-content-sha256, (x-amz-security-token) and
// Authorization to `out`, signing `request` at `amz_date`
// ("20130524T000000Z") for `region`.
void Sign(const SignableRequest& request, const Credentials& credentials, const std::string& region,
          const std::string& amz_date, std::vector<std::pair<std::string, std::string>>* out);

// The current time as x-amz-date wants it.
std::string AmzDateNow();

// Percent-encodes as SigV4 wants: everything but A-Z a-z 0-9 - _ . ~ ; '/'
// too unless `keep_slash`.
std::string UriEncode(std::string_view s, bool keep_slash);

// Encodes `query` canonically (sorted, percent-encoded), for the request
// line as well as for signing.
std::string CanonicalQuery(std::vector<std::pair<std::string, std::string>> query);

// Hex SHA-256 of bytes.
std::string HexSha256(std::span<const uint8_t> data);
std::string HexSha256(std::string_view data);

}  // namespace ferry::s3
