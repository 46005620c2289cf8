#include "ferry/common/repository_key.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <boost/json.hpp>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/format.h"
#include "ferry/common/json_reader.h"
#include "ferry/common/repository.h"

namespace json = boost::json;

namespace ferry {

namespace {

// Fixed labels: changing one changes every key derived from it.
constexpr char kFingerprintLabel[] = "ferry key fingerprint v1";
constexpr char kHkdfSalt[] = "ferry-repository-key-v1";
constexpr char kChunkKeyInfo[] = "ferry chunk key (aes-256-gcm)";
constexpr char kIdKeyInfo[] = "ferry chunk id key (hmac-sha256)";
constexpr char kMetadataKeyInfo[] = "ferry metadata key (hmac-sha256)";
constexpr char kWrapAad[] = "ferry-key-v1 master key";

[[noreturn]] void OpenSslFailed(const char* what) {
  throw Error(ErrorKind::kInternal, std::string("OpenSSL ") + what + " failed");
}

std::string ToHex(const uint8_t* p, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[p[i] >> 4];
    out[2 * i + 1] = kHex[p[i] & 15];
  }
  return out;
}

// False unless `hex` is an even number of hex digits.
bool FromHex(std::string_view hex, std::vector<uint8_t>* out) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2) return false;
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
  return true;
}

void RandomBytes(uint8_t* p, size_t n) {
  if (RAND_bytes(p, static_cast<int>(n)) != 1) {
    throw Error(ErrorKind::kEnvironment, "OpenSSL's random generator failed");
  }
}

std::array<uint8_t, 32> HmacSha256(std::span<const uint8_t> key, const void* data, size_t size) {
  std::array<uint8_t, 32> out;
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), static_cast<const unsigned char*>(data), size,
            out.data(), &len) ||
      len != 32) {
    OpenSslFailed("HMAC-SHA256");
  }
  return out;
}

struct KdfCtxFree {
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};

// Runs OpenSSL 3's EVP_KDF `name` with `params` into `out`.
void RunKdf(const char* name, OSSL_PARAM* params, uint8_t* out, size_t size) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, name, nullptr);
  if (!kdf) OpenSslFailed(name);
  std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(EVP_KDF_CTX_new(kdf));
  EVP_KDF_free(kdf);
  if (!ctx || EVP_KDF_derive(ctx.get(), out, size, params) != 1) OpenSslFailed(name);
}

void Hkdf(std::span<const uint8_t> master, const char* info, uint8_t* out) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(master.data()), master.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(kHkdfSalt), sizeof kHkdfSalt - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info), std::strlen(info)),
      OSSL_PARAM_construct_end(),
  };
  RunKdf("HKDF", params, out, 32);
}

void Scrypt(const std::string& passphrase, std::span<const uint8_t> salt, const ScryptParams& p, uint8_t* out) {
  uint64_t n = p.n;
  uint32_t r = p.r, par = p.p;
  // 128 * N * r bytes, plus room: OpenSSL refuses above maxmem.
  uint64_t maxmem = 256 * n * r * par + (64u << 20);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, const_cast<char*>(passphrase.data()),
                                        passphrase.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size()),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
      OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r),
      OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &par),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
      OSSL_PARAM_construct_end(),
  };
  RunKdf("SCRYPT", params, out, 32);
}

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};

// AES-256-GCM; `out` gets nonce | ciphertext | tag.
void GcmSeal(std::span<const uint8_t> key, std::span<const uint8_t> aad, std::span<const uint8_t> plain,
             uint8_t* out) {
  RandomBytes(out, kChunkNonceSize);
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), out) != 1 ||
      (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) ||
      EVP_EncryptUpdate(ctx.get(), out + kChunkNonceSize, &len, plain.data(), static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out + kChunkNonceSize + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kChunkTagSize, out + kChunkNonceSize + plain.size()) !=
          1) {
    OpenSslFailed("AES-256-GCM encryption");
  }
}

bool GcmOpen(std::span<const uint8_t> key, std::span<const uint8_t> aad, std::span<const uint8_t> in, uint8_t* out) {
  if (in.size() < kChunkNonceSize + kChunkTagSize) return false;
  const size_t n = in.size() - kChunkNonceSize - kChunkTagSize;
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), in.data()) != 1 ||
      (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) ||
      EVP_DecryptUpdate(ctx.get(), out, &len, in.data() + kChunkNonceSize, static_cast<int>(n)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kChunkTagSize,
                          const_cast<uint8_t*>(in.data() + kChunkNonceSize + n)) != 1) {
    OpenSslFailed("AES-256-GCM decryption");
  }
  return EVP_DecryptFinal_ex(ctx.get(), out + len, &len) == 1;
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

RepositoryKey RepositoryKey::Generate() {
  RepositoryKey k;
  RandomBytes(k.master_.data(), kSize);
  k.Derive();
  return k;
}

RepositoryKey RepositoryKey::FromMaster(std::span<const uint8_t, kSize> master) {
  RepositoryKey k;
  std::memcpy(k.master_.data(), master.data(), kSize);
  k.Derive();
  return k;
}

RepositoryKey::~RepositoryKey() {
  OPENSSL_cleanse(master_.data(), kSize);
  OPENSSL_cleanse(chunk_key_.data(), kSize);
  OPENSSL_cleanse(id_key_.data(), kSize);
  OPENSSL_cleanse(metadata_key_.data(), kSize);
}

void RepositoryKey::Derive() {
  auto fp = HmacSha256(master_, kFingerprintLabel, sizeof kFingerprintLabel - 1);
  fingerprint_ = ToHex(fp.data(), 16);
  Hkdf(master_, kChunkKeyInfo, chunk_key_.data());
  Hkdf(master_, kIdKeyInfo, id_key_.data());
  Hkdf(master_, kMetadataKeyInfo, metadata_key_.data());
}

Digest RepositoryKey::ChunkDigest(const void* data, size_t size) const {
  Digest d;
  d.bytes = HmacSha256(id_key_, data, size);
  return d;
}

void RepositoryKey::SealChunk(std::span<const uint8_t> aad, std::span<const uint8_t> plain, uint8_t* out) const {
  GcmSeal(chunk_key_, aad, plain, out);
}

bool RepositoryKey::OpenChunk(std::span<const uint8_t> aad, std::span<const uint8_t> in, uint8_t* out) const {
  return GcmOpen(chunk_key_, aad, in, out);
}

std::string RepositoryKey::DiskRecordMac(const std::string& point_id, const DiskRecord& disk) const {
  // Length-prefixed fields, so no two records share their bytes.
  std::string text = "ferry disk record v1";
  auto add = [&](std::string_view field) {
    text += std::to_string(field.size()) + ":";
    text += field;
  };
  add(point_id);
  add(disk.name);
  add(std::to_string(disk.size));
  add(std::to_string(disk.chunk_size));
  add(disk.index_file);
  add(disk.index_sha256.Hex());
  auto mac = HmacSha256(metadata_key_, text.data(), text.size());
  return ToHex(mac.data(), mac.size());
}

void RepositoryKey::CheckManifest(const RestorePointManifest& m) const {
  for (const DiskRecord& d : m.disks) {
    if (d.index_hmac.empty()) {
      throw Error(ErrorKind::kCorrupt, "restore point " + m.id + " disk " + d.name +
                                           ": its record carries no index_hmac (not written with this key)");
    }
    const std::string want = DiskRecordMac(m.id, d);
    if (CRYPTO_memcmp(want.data(), d.index_hmac.data(), want.size()) != 0 || want.size() != d.index_hmac.size()) {
      throw Error(ErrorKind::kCorrupt, "restore point " + m.id + " disk " + d.name +
                                           ": index_hmac does not match (the manifest was changed, or the "
                                           "record was written with another key)");
    }
  }
}

// The key file (docs/encryption.md, "Key file"):
//   {"format":"ferry-key-v1","fingerprint":"<32 hex>",
//    "kdf":{"name":"scrypt","n":32768,"r":8,"p":1,"salt":"<32 hex>"},
//    "cipher":"aes-256-gcm","wrapped_key":"<nonce|ciphertext|tag, 120 hex>"}
void RepositoryKey::WriteKeyFile(const std::string& path, const std::string& passphrase, bool replace,
                                 const ScryptParams& params) const {
  if (!replace && PathExists(path)) {
    throw Error(ErrorKind::kBadInput, "key file " + path + " already exists (never overwritten: its key may be "
                                      "the only copy)");
  }
  if (passphrase.empty()) throw Error(ErrorKind::kBadInput, "the passphrase for key file " + path + " is empty");
  std::array<uint8_t, 16> salt;
  RandomBytes(salt.data(), salt.size());
  std::array<uint8_t, 32> kek;
  Scrypt(passphrase, salt, params, kek.data());
  std::array<uint8_t, kChunkNonceSize + kSize + kChunkTagSize> wrapped;
  GcmSeal(kek, Bytes(kWrapAad), master_, wrapped.data());
  OPENSSL_cleanse(kek.data(), kek.size());
  json::object o{
      {"format", std::string(kKeyFileFamily) + "-v" + std::to_string(kKeyFileVersion)},
      {"fingerprint", fingerprint_},
      {"kdf", json::object{{"name", "scrypt"},
                           {"n", params.n},
                           {"r", params.r},
                           {"p", params.p},
                           {"salt", ToHex(salt.data(), salt.size())}}},
      {"cipher", kChunkCipher},
      {"wrapped_key", ToHex(wrapped.data(), wrapped.size())},
  };
  WriteFileAtomically(path, json::serialize(o) + "\n", 0600);
}

namespace {

// A key file's JSON object, its format checked.
json::object ReadKeyFileObject(const std::string& path) {
  if (!PathExists(path)) throw Error(ErrorKind::kNotFound, "key file " + path + " does not exist");
  std::string text = ReadWholeFile(path);
  const std::string what = "key file " + path;
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) throw Error(ErrorKind::kCorrupt, what + ": not a JSON object");
  JsonReader r(v.as_object(), "", CorruptFileFail(what));
  CheckFormatName(*r.String("format", true), kKeyFileFamily, kKeyFileVersion, what);
  return std::move(v.as_object());
}

}  // namespace

std::string RepositoryKey::KeyFileFingerprint(const std::string& path) {
  json::object o = ReadKeyFileObject(path);
  return *JsonReader(o, "", CorruptFileFail("key file " + path)).String("fingerprint", true);
}

RepositoryKey RepositoryKey::LoadKeyFile(const std::string& path, const std::string& passphrase) {
  const std::string what = "key file " + path;
  json::object o = ReadKeyFileObject(path);
  JsonReader r(o, "", CorruptFileFail(what));
  const std::string fingerprint = *r.String("fingerprint", true);
  JsonReader kdf = *r.Object("kdf", true);
  if (*kdf.String("name", true) != "scrypt") kdf.Fail("name", "is not scrypt");
  ScryptParams params;
  params.n = static_cast<uint64_t>(*kdf.Int("n", true, 1 << 14, 1 << 22));
  if (params.n & (params.n - 1)) kdf.Fail("n", "is not a power of two");
  params.r = static_cast<uint32_t>(*kdf.Int("r", true, 1, 64));
  params.p = static_cast<uint32_t>(*kdf.Int("p", true, 1, 16));
  std::vector<uint8_t> salt, wrapped;
  if (!FromHex(*kdf.String("salt", true), &salt) || salt.size() < 16) kdf.Fail("salt", "is not 16+ bytes in hex");
  if (*r.String("cipher", true) != kChunkCipher) r.Fail("cipher", "is not aes-256-gcm");
  if (!FromHex(*r.String("wrapped_key", true), &wrapped) || wrapped.size() != kChunkNonceSize + kSize + kChunkTagSize) {
    r.Fail("wrapped_key", "is not 60 bytes in hex");
  }
  std::array<uint8_t, 32> kek;
  Scrypt(passphrase, salt, params, kek.data());
  std::array<uint8_t, kSize> master;
  const bool opened = GcmOpen(kek, Bytes(kWrapAad), wrapped, master.data());
  OPENSSL_cleanse(kek.data(), kek.size());
  // The tag fails alike for a wrong passphrase and a damaged salt or wrapped
  // key; the wrong passphrase is by far the likelier.
  if (!opened) throw Error(ErrorKind::kBadInput, "wrong passphrase for key file " + path);
  RepositoryKey key = FromMaster(master);
  OPENSSL_cleanse(master.data(), master.size());
  if (key.Fingerprint() != fingerprint) {
    throw Error(ErrorKind::kCorrupt, what + ": its key does not match its fingerprint " + fingerprint);
  }
  return key;
}

std::string RepositoryKey::RecoveryText() const {
  std::string hex = ToHex(master_.data(), kSize);
  std::string out = std::string(kRecoveryFamily) + "-v1\n";
  out += "fingerprint: " + fingerprint_ + "\n";
  for (int line = 0; line < 4; ++line) {
    out += "key " + std::to_string(line + 1) + ":";
    for (int g = 0; g < 4; ++g) out += " " + hex.substr(line * 16 + g * 4, 4);
    out += "\n";
  }
  OPENSSL_cleanse(hex.data(), hex.size());
  return out;
}

RepositoryKey RepositoryKey::FromRecoveryText(std::string_view text) {
  std::string hex, fingerprint;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    auto after_colon = [&] {
      std::string out;
      for (char c : line.substr(line.find(':') + 1)) {
        if (c != ' ' && c != '\t' && c != '\r') out += c;
      }
      return out;
    };
    if (line.rfind("fingerprint:", 0) == 0) {
      fingerprint = after_colon();
    } else if (line.rfind("key ", 0) == 0 && line.find(':') != std::string_view::npos) {
      hex += after_colon();
    }
  }
  std::vector<uint8_t> master;
  if (!FromHex(hex, &master) || master.size() != kSize) {
    throw Error(ErrorKind::kBadInput, "the recovery copy does not hold 64 hex digits of key (lines 'key 1:' to "
                                      "'key 4:')");
  }
  RepositoryKey key = FromMaster(std::span<const uint8_t, kSize>(master.data(), kSize));
  OPENSSL_cleanse(master.data(), master.size());
  OPENSSL_cleanse(hex.data(), hex.size());
  if (fingerprint.empty()) throw Error(ErrorKind::kBadInput, "the recovery copy has no 'fingerprint:' line");
  if (key.Fingerprint() != fingerprint) {
    throw Error(ErrorKind::kBadInput, "the recovery copy's key has fingerprint " + key.Fingerprint() +
                                          ", not the " + fingerprint + " it records: a digit was copied wrong");
  }
  return key;
}

void CheckKeyFits(const RepositoryConfig& config, const RepositoryKey* key, const std::string& location) {
  if (!config.encrypted()) {
    if (key) {
      throw Error(ErrorKind::kBadInput, "repository " + location + " is not encrypted: --key-file is for "
                                        "encrypted repositories");
    }
    return;
  }
  if (!key) throw Error(ErrorKind::kBadInput, "repository " + location + " is encrypted: give --key-file");
  if (key->Fingerprint() != config.key_fingerprint) {
    throw Error(ErrorKind::kBadInput, "the key file's key (fingerprint " + key->Fingerprint() +
                                          ") is not the key of repository " + location + " (fingerprint " +
                                          config.key_fingerprint + ")");
  }
}

std::string ReadPassphrase(const std::string& passphrase_file, const char* env) {
  std::string pass;
  if (!passphrase_file.empty()) {
    pass = ReadWholeFile(passphrase_file);
    pass = pass.substr(0, pass.find('\n'));
    if (!pass.empty() && pass.back() == '\r') pass.pop_back();
    if (pass.empty()) throw Error(ErrorKind::kBadInput, "passphrase file " + passphrase_file + " is empty");
    return pass;
  }
  if (const char* e = std::getenv(env); e && *e) return e;
  throw Error(ErrorKind::kBadInput, std::string("no passphrase for the key file: give --passphrase-file or set ") +
                                        env);
}

}  // namespace ferry
