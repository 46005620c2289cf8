#include "ferry/rpc/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <kj/debug.h>
#include <kj/vector.h>

#include <string_view>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"

namespace ferry::rpc {
namespace {

std::string ReadPemFile(const std::string& path, const char* what) {
  if (path.empty()) throw Error(ErrorKind::kBadInput, std::string("no ") + what + " file given");
  try {
    return ReadWholeFile(path);
  } catch (const Error& e) {
    throw Error(ErrorKind::kBadInput, std::string("cannot read the ") + what + ": " + e.what());
  }
}

// The certificate blocks of a PEM file, each with its BEGIN/END lines.
std::vector<std::string> SplitPemCertificates(const std::string& pem) {
  static constexpr std::string_view kBegin = "-----BEGIN CERTIFICATE-----";
  static constexpr std::string_view kEnd = "-----END CERTIFICATE-----";
  std::vector<std::string> out;
  size_t pos = 0;
  for (;;) {
    size_t begin = pem.find(kBegin, pos);
    if (begin == std::string::npos) break;
    size_t end = pem.find(kEnd, begin);
    if (end == std::string::npos) break;
    end += kEnd.size();
    out.push_back(pem.substr(begin, end - begin) + "\n");
    pos = end;
  }
  return out;
}

// kj-tls reports OpenSSL failures as kj exceptions; this turns them into
// kBadInput naming the file.
template <typename Func>
auto ParseOrThrow(const std::string& what, Func&& func) -> decltype(func()) {
  kj::Maybe<decltype(func())> result;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { result = func(); })) {
    throw Error(ErrorKind::kBadInput,
                "invalid " + what + ": " + std::string(e->getDescription().cStr()));
  }
  KJ_IF_MAYBE(r, result) { return kj::mv(*r); }
  throw Error(ErrorKind::kInternal, "parsing " + what + " produced nothing");
}

std::string OpensslErrors() {
  std::string out;
  while (unsigned long err = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

// kj-tls does not notice a key that does not belong to the certificate (OpenSSL
// silently drops the key and every handshake then fails with "no shared
// cipher"), so check the pair here.
void CheckKeyMatchesCertificate(const std::string& cert_pem, const std::string& cert_file,
                                const std::string& key_pem, const std::string& key_file) {
  BIO* cert_bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  BIO* key_bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  X509* cert = cert_bio ? PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr) : nullptr;
  EVP_PKEY* key = key_bio ? PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr) : nullptr;
  bool match = cert != nullptr && key != nullptr && X509_check_private_key(cert, key) == 1;
  std::string why = OpensslErrors();
  X509_free(cert);
  EVP_PKEY_free(key);
  BIO_free(cert_bio);
  BIO_free(key_bio);
  if (!match) {
    throw Error(ErrorKind::kBadInput, "private key " + key_file +
                                          " does not belong to the certificate in " + cert_file +
                                          (why.empty() ? "" : " (" + why + ")"));
  }
}

// What a context borrows from its Options, kept alive with it.
struct TlsMaterial {
  kj::Maybe<kj::Own<kj::TlsKeypair>> keypair;
  kj::Vector<kj::TlsCertificate> trusted;
};

}  // namespace

kj::Own<kj::TlsContext> MakeServerTlsContext(const std::string& cert_pem_file,
                                             const std::string& key_pem_file,
                                             const ServerTlsOptions& server_options) {
  std::string cert_pem = ReadPemFile(cert_pem_file, "TLS certificate");
  std::string key_pem = ReadPemFile(key_pem_file, "TLS private key");
  if (SplitPemCertificates(cert_pem).empty()) {
    throw Error(ErrorKind::kBadInput,
                "invalid TLS certificate " + cert_pem_file + ": no PEM certificate in it");
  }
  auto cert = ParseOrThrow("TLS certificate " + cert_pem_file, [&]() {
    return kj::TlsCertificate(kj::StringPtr(cert_pem.c_str(), cert_pem.size()));
  });
  auto key = ParseOrThrow("TLS private key " + key_pem_file + " (unencrypted PEM expected)",
                          [&]() {
                            return kj::TlsPrivateKey(kj::StringPtr(key_pem.c_str(), key_pem.size()));
                          });
  CheckKeyMatchesCertificate(cert_pem, cert_pem_file, key_pem, key_pem_file);

  auto material = kj::heap<TlsMaterial>();
  auto keypair = kj::heap<kj::TlsKeypair>(kj::TlsKeypair{kj::mv(key), kj::mv(cert)});
  kj::TlsContext::Options options;
  options.minVersion = kj::TlsVersion::TLS_1_2;
  options.defaultKeypair = *keypair;
  if (server_options.timer != nullptr) {
    options.timer = *server_options.timer;
    options.acceptTimeout = server_options.accept_timeout;
  }
  material->keypair = kj::mv(keypair);
  auto context = ParseOrThrow("TLS server setup with " + cert_pem_file + " and " + key_pem_file,
                              [&]() { return kj::heap<kj::TlsContext>(kj::mv(options)); });
  return context.attach(kj::mv(material));
}

kj::Own<kj::TlsContext> MakeClientTlsContext(const std::string& ca_pem_file) {
  auto material = kj::heap<TlsMaterial>();
  kj::TlsContext::Options options;
  options.minVersion = kj::TlsVersion::TLS_1_2;
  if (!ca_pem_file.empty()) {
    std::string pem = ReadPemFile(ca_pem_file, "TLS CA certificate");
    auto blocks = SplitPemCertificates(pem);
    if (blocks.empty()) {
      throw Error(ErrorKind::kBadInput,
                  "invalid TLS CA certificate " + ca_pem_file + ": no PEM certificate in it");
    }
    // One TlsCertificate per CA: kj adds only the first certificate of each
    // to the trust store, so a bundle parsed as one chain would trust only
    // its first CA.
    for (size_t i = 0; i < blocks.size(); ++i) {
      const std::string& block = blocks[i];
      material->trusted.add(ParseOrThrow(
          "TLS CA certificate " + ca_pem_file + " (certificate " + std::to_string(i + 1) + ")",
          [&]() { return kj::TlsCertificate(kj::StringPtr(block.c_str(), block.size())); }));
    }
    options.useSystemTrustStore = false;
    options.trustedCertificates = material->trusted.asPtr();
  }
  auto context = ParseOrThrow(
      "TLS client setup" + (ca_pem_file.empty() ? std::string() : " with " + ca_pem_file),
      [&]() { return kj::heap<kj::TlsContext>(kj::mv(options)); });
  return context.attach(kj::mv(material));
}

}  // namespace ferry::rpc
