#include "ferry/common/repository_key.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <random>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/repository.h"

namespace ferry {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ferry-key-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { RemoveTree(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

ErrorKind KindOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  return ErrorKind::kInternal;  // no error: the caller's expectation fails
}

std::vector<uint8_t> Compressible(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>("ferry backup "[i % 13]);
  return v;
}

std::vector<uint8_t> Random(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(RepositoryKeyTest, KeyFileRoundTripAndWrongPassphrase) {
  TempDir dir;
  const std::string path = dir.path() + "/repo.key";
  RepositoryKey key = RepositoryKey::Generate();
  key.WriteKeyFile(path, "correct horse");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string text = ReadWholeFile(path);
  EXPECT_NE(text.find("\"format\":\"ferry-key-v1\""), std::string::npos);
  EXPECT_NE(text.find("\"n\":32768"), std::string::npos);
  EXPECT_EQ(text.find(key.RecoveryText().substr(60, 10)), std::string::npos);

  RepositoryKey loaded = RepositoryKey::LoadKeyFile(path, "correct horse");
  EXPECT_EQ(loaded.Fingerprint(), key.Fingerprint());
  EXPECT_EQ(loaded.Fingerprint().size(), 32u);
  EXPECT_EQ(loaded.ChunkDigest("x", 1), key.ChunkDigest("x", 1));

  try {
    RepositoryKey::LoadKeyFile(path, "wrong horse");
    FAIL() << "a wrong passphrase was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_EQ(std::string(e.what()), "wrong passphrase for key file " + path);
  }
  // Never overwritten by accident.
  EXPECT_EQ(KindOf([&] { key.WriteKeyFile(path, "other"); }), ErrorKind::kBadInput);
  // Passphrase change: same key, new wrapping.
  loaded.WriteKeyFile(path, "new passphrase", /*replace=*/true);
  EXPECT_EQ(RepositoryKey::LoadKeyFile(path, "new passphrase").Fingerprint(), key.Fingerprint());
  EXPECT_EQ(KindOf([&] { RepositoryKey::LoadKeyFile(path, "correct horse"); }), ErrorKind::kBadInput);
  EXPECT_EQ(KindOf([&] { RepositoryKey::LoadKeyFile(dir.path() + "/none", "x"); }), ErrorKind::kNotFound);
  // The recorded fingerprint, without the passphrase.
  EXPECT_EQ(RepositoryKey::KeyFileFingerprint(path), key.Fingerprint());
  EXPECT_EQ(KindOf([&] { RepositoryKey::KeyFileFingerprint(dir.path() + "/none"); }), ErrorKind::kNotFound);
}

TEST(RepositoryKeyTest, DamagedKeyFileIsCorruptOrBadPassphrase) {
  TempDir dir;
  const std::string path = dir.path() + "/repo.key";
  RepositoryKey::Generate().WriteKeyFile(path, "pw");
  std::string text = ReadWholeFile(path);
  std::string fp_damaged = text;
  size_t at = fp_damaged.find("\"fingerprint\":\"") + 15;
  fp_damaged[at] = fp_damaged[at] == '0' ? '1' : '0';
  WriteFileAtomically(path, fp_damaged);
  EXPECT_EQ(KindOf([&] { RepositoryKey::LoadKeyFile(path, "pw"); }), ErrorKind::kCorrupt);
  WriteFileAtomically(path, "{\"format\":\"ferry-key-v1\"}");
  EXPECT_EQ(KindOf([&] { RepositoryKey::LoadKeyFile(path, "pw"); }), ErrorKind::kCorrupt);
  EXPECT_EQ(KindOf([&] { RepositoryKey::KeyFileFingerprint(path); }), ErrorKind::kCorrupt);
  WriteFileAtomically(path, "not json");
  EXPECT_EQ(KindOf([&] { RepositoryKey::KeyFileFingerprint(path); }), ErrorKind::kCorrupt);
  WriteFileAtomically(path, "{\"format\":\"ferry-key-v9\"}");
  EXPECT_EQ(KindOf([&] { RepositoryKey::LoadKeyFile(path, "pw"); }), ErrorKind::kBadInput);
}

TEST(RepositoryKeyTest, RecoveryCopyRoundTrip) {
  RepositoryKey key = RepositoryKey::Generate();
  std::string text = key.RecoveryText();
  EXPECT_NE(text.find("fingerprint: " + key.Fingerprint()), std::string::npos);
  RepositoryKey back = RepositoryKey::FromRecoveryText(text);
  EXPECT_EQ(back.Fingerprint(), key.Fingerprint());
  EXPECT_EQ(back.ChunkDigest("abc", 3), key.ChunkDigest("abc", 3));
  // One digit copied wrong: the fingerprint no longer matches.
  size_t at = text.find("key 2: ") + 7;
  text[at] = text[at] == 'a' ? 'b' : 'a';
  EXPECT_EQ(KindOf([&] { RepositoryKey::FromRecoveryText(text); }), ErrorKind::kBadInput);
  EXPECT_EQ(KindOf([&] { RepositoryKey::FromRecoveryText("key 1: abcd"); }), ErrorKind::kBadInput);
}

TEST(RepositoryKeyTest, ChunkDigestIsKeyedAndDeduplicates) {
  RepositoryKey a = RepositoryKey::Generate(), b = RepositoryKey::Generate();
  auto plain = Compressible(64 << 10);
  ChunkHasher plain_hasher, ha(&a), hb(&b);
  EXPECT_EQ(plain_hasher(plain), Sha256(plain.data(), plain.size()));
  EXPECT_EQ(ha(plain), ha(plain));  // same data, same name: dedup within one key
  EXPECT_NE(ha(plain), plain_hasher(plain));
  EXPECT_NE(ha(plain), hb(plain));  // another key names it differently
}

class EncryptedChunkTest : public ::testing::Test {
 protected:
  RepositoryKey key_ = RepositoryKey::Generate();

  std::vector<uint8_t> Encode(const std::vector<uint8_t>& plain, Digest* d, int level = 1) {
    *d = ChunkHasher(&key_)(plain);
    ChunkEncoder enc(level, &key_);
    std::vector<uint8_t> encoded;
    enc.Encode(plain, *d, &encoded);
    return encoded;
  }
  ErrorKind DecodeKind(const std::vector<uint8_t>& encoded, const Digest& d, const RepositoryKey* key) {
    ChunkDecoder dec(key);
    std::vector<uint8_t> out;
    return KindOf([&] { dec.Decode(encoded, &d, "test", &out); });
  }
};

TEST_F(EncryptedChunkTest, RoundTripCompressedAndStored) {
  for (int level : {1, 0}) {
    for (auto plain : {Compressible(1 << 20), Random(256 << 10, 3)}) {
      Digest d;
      auto encoded = Encode(plain, &d, level);
      EXPECT_EQ(std::string(encoded.begin(), encoded.begin() + 8), "FRYCHK02");
      // The plain data appears nowhere in the chunk.
      EXPECT_EQ(std::search(encoded.begin(), encoded.end(), plain.begin(), plain.begin() + 64), encoded.end());
      ChunkDecoder dec(&key_);
      std::vector<uint8_t> out;
      dec.Decode(encoded, &d, "test", &out);
      EXPECT_EQ(out, plain);
      std::vector<uint8_t> into(plain.size());
      EXPECT_EQ(dec.DecodeInto(encoded, &d, "test", into), plain.size());
      EXPECT_EQ(into, plain);
      ChunkFrame f = CheckChunkFraming(encoded, "test");  // no key needed
      EXPECT_TRUE(f.encrypted());
      EXPECT_EQ(f.plain_size, plain.size());
    }
  }
  Digest d;
  auto big = Compressible(1 << 20);
  EXPECT_LT(Encode(big, &d).size(), big.size() / 10);  // compressed before it was encrypted
}

// Rewrites the CRC so that only the authentication can catch a change.
void FixCrc(std::vector<uint8_t>* c) {
  uint32_t crc = Crc32c(c->data(), 20);
  crc = Crc32c(c->data() + kChunkHeaderSize, c->size() - kChunkHeaderSize, crc);
  for (int i = 0; i < 4; ++i) (*c)[20 + i] = static_cast<uint8_t>(crc >> (8 * i));
}

TEST_F(EncryptedChunkTest, TamperingIsCorrupt) {
  auto plain = Compressible(256 << 10);
  Digest d;
  const auto good = Encode(plain, &d);
  const size_t nonce = kChunkHeaderSize, cipher = kChunkHeaderSize + 12, tag = good.size() - 16;
  ASSERT_GT(tag, cipher + 2);
  for (size_t at : {nonce, nonce + 11, cipher, (cipher + tag) / 2, tag, good.size() - 1}) {
    auto bad = good;
    bad[at] ^= 0x01;
    EXPECT_EQ(DecodeKind(bad, d, &key_), ErrorKind::kCorrupt) << "CRC catches byte " << at;
    EXPECT_EQ(KindOf([&] { CheckChunkFraming(bad, "t"); }), ErrorKind::kCorrupt) << at;
    FixCrc(&bad);
    EXPECT_EQ(DecodeKind(bad, d, &key_), ErrorKind::kCorrupt) << "GCM catches byte " << at;
  }
  // The header is authenticated too (compression flag, CRC fixed up).
  auto header = good;
  header[8] ^= 0x01;
  FixCrc(&header);
  EXPECT_EQ(DecodeKind(header, d, &key_), ErrorKind::kCorrupt);
  // A valid chunk stored under another chunk's name.
  Digest other;
  auto other_chunk = Encode(Compressible(128 << 10), &other);
  EXPECT_EQ(DecodeKind(other_chunk, d, &key_), ErrorKind::kCorrupt);
  EXPECT_EQ(DecodeKind(good, other, &key_), ErrorKind::kCorrupt);
  // ... caught by the GCM tag itself (the digest is authenticated data), not
  // only by the digest check after decryption.
  try {
    ChunkDecoder dec(&key_);
    std::vector<uint8_t> out;
    dec.Decode(other_chunk, &d, "test", &out);
    ADD_FAILURE() << "a chunk decoded under another chunk's name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("authentication failed"), std::string::npos) << e.what();
  }
  // Another key.
  RepositoryKey stranger = RepositoryKey::Generate();
  EXPECT_EQ(DecodeKind(good, d, &stranger), ErrorKind::kCorrupt);
  // No key: not damage, a missing key.
  EXPECT_EQ(DecodeKind(good, d, nullptr), ErrorKind::kBadInput);
  // A plain chunk slipped into an encrypted repository.
  ChunkEncoder plain_enc(1);
  std::vector<uint8_t> plain_chunk;
  plain_enc.Encode(plain, &plain_chunk);
  EXPECT_EQ(DecodeKind(plain_chunk, d, &key_), ErrorKind::kCorrupt);
  EXPECT_EQ(DecodeKind(good, d, &key_), ErrorKind::kInternal);  // still fine
}

TEST(RepositoryKeyFitTest, KeyMustMatchRepository) {
  RepositoryKey key = RepositoryKey::Generate(), other = RepositoryKey::Generate();
  RepositoryConfig plain, enc;
  enc.key_fingerprint = key.Fingerprint();
  EXPECT_NO_THROW(CheckKeyFits(plain, nullptr, "/r"));
  EXPECT_NO_THROW(CheckKeyFits(enc, &key, "/r"));
  try {
    CheckKeyFits(enc, nullptr, "/r");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_EQ(std::string(e.what()), "repository /r is encrypted: give --key-file");
  }
  try {
    CheckKeyFits(enc, &other, "/r");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find(other.Fingerprint()), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(key.Fingerprint()), std::string::npos);
  }
  EXPECT_EQ(KindOf([&] { CheckKeyFits(plain, &key, "/r"); }), ErrorKind::kBadInput);
}

TEST(RepositoryKeyFitTest, EncryptedRepositoryConfigRoundTrip) {
  TempDir dir;
  RepositoryKey key = RepositoryKey::Generate();
  RepositoryConfig c;
  c.key_fingerprint = key.Fingerprint();
  Repository::Init(dir.path() + "/r", c);
  std::string text = ReadWholeFile(dir.path() + "/r/ferry-repository.json");
  EXPECT_NE(text.find("\"format\":\"ferry-repository-v3\""), std::string::npos);
  EXPECT_NE(text.find("\"encryption\":{\"cipher\":\"aes-256-gcm\",\"key_fingerprint\":\"" + key.Fingerprint()),
            std::string::npos);
  auto repo = Repository::Open(dir.path() + "/r");
  EXPECT_TRUE(repo->config().encrypted());
  EXPECT_EQ(repo->config().key_fingerprint, key.Fingerprint());
  repo->PrepareForWriting();  // never "upgrades" v3 down
  EXPECT_EQ(ReadWholeFile(dir.path() + "/r/ferry-repository.json"), text);

  Repository::Init(dir.path() + "/p", RepositoryConfig{});
  EXPECT_NE(ReadWholeFile(dir.path() + "/p/ferry-repository.json").find("ferry-repository-v2"), std::string::npos);
  EXPECT_FALSE(Repository::Open(dir.path() + "/p")->config().encrypted());
}

TEST(RepositoryKeyFitTest, DiskRecordMacBindsTheRecord) {
  RepositoryKey key = RepositoryKey::Generate();
  RestorePointManifest m;
  m.id = "p1";
  m.vm = {"vm", "uuid", "qemu"};
  DiskRecord d;
  d.name = "disk0";
  d.size = 1 << 20;
  d.chunk_size = 1 << 20;
  d.index_file = "disk-0.fidx";
  d.index_sha256 = Sha256("i", 1);
  d.index_hmac = key.DiskRecordMac(m.id, d);
  m.disks.push_back(d);
  EXPECT_NO_THROW(key.CheckManifest(m));
  RestorePointManifest swapped = m;
  swapped.disks[0].index_sha256 = Sha256("j", 1);
  EXPECT_EQ(KindOf([&] { key.CheckManifest(swapped); }), ErrorKind::kCorrupt);
  RestorePointManifest moved = m;
  moved.id = "p2";
  EXPECT_EQ(KindOf([&] { key.CheckManifest(moved); }), ErrorKind::kCorrupt);
  RestorePointManifest unsigned_record = m;
  unsigned_record.disks[0].index_hmac.clear();
  EXPECT_EQ(KindOf([&] { key.CheckManifest(unsigned_record); }), ErrorKind::kCorrupt);
  // Survives the manifest's JSON.
  RestorePointManifest back = ManifestFromJson(ManifestToJson(m), "test");
  EXPECT_NO_THROW(key.CheckManifest(back));
}

}  // namespace
}  // namespace ferry
