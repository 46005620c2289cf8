// Reads tests/data/repo-v1 (written by Ferry 0.1, repository and manifest
// format v1, made by tests/data/make-repo-v1.sh) and tests/data/repo-v2
// (repository v2, manifest v2 with its checksum, make-repo-v2.sh) and
// tests/data/repo-v3 (encrypted: chunks FRYCHK02 under the key of
// repo-v3.key, passphrase "ferry fixture", make-repo-v3.sh), and checks
// that this version still lists, verifies and reassembles each bit-exact.
// Never regenerate a fixture to make this pass: a failure here means
// repositories of that version stopped being readable.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "ferry/common/chunk.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"
#include "ferry/common/repository_key.h"
#include "ferry/common/verify.h"

namespace ferry {
namespace {


struct Expected {
  std::string point, disk, sha256;
  uint64_t size = 0;
};

Expected ReadExpected(const std::string& fixture) {
  std::ifstream in(std::string(FERRY_TEST_DATA_DIR) + "/" + fixture + ".expected");
  Expected e;
  std::string word;
  in >> word >> e.point >> word >> e.disk >> word >> e.size >> word >> e.sha256;
  return e;
}

class FormatCompatTest : public ::testing::TestWithParam<int> {};

TEST_P(FormatCompatTest, ReadsRepositoryOfVersion) {
  const int version = GetParam();
  const std::string fixture = "repo-v" + std::to_string(version);
  Expected want = ReadExpected(fixture);
  ASSERT_FALSE(want.point.empty());
  auto repo = Repository::Open(std::string(FERRY_TEST_DATA_DIR) + "/" + fixture);
  EXPECT_EQ(repo->config().format_version, version);
  EXPECT_EQ(repo->config().chunk_size, 64u << 10);
  ASSERT_EQ(repo->points().List(), std::vector<std::string>{want.point});

  std::optional<RepositoryKey> key;
  if (version >= 3) {
    key = RepositoryKey::LoadKeyFile(std::string(FERRY_TEST_DATA_DIR) + "/" + fixture + ".key", "ferry fixture");
    EXPECT_EQ(repo->config().key_fingerprint, key->Fingerprint());
  } else {
    EXPECT_FALSE(repo->config().encrypted());
  }
  const RepositoryKey* k = key ? &*key : nullptr;
  RestorePointManifest m = repo->points().Load(want.point);
  if (k) {
    EXPECT_NO_THROW(k->CheckManifest(m));
  }
  EXPECT_EQ(m.vm.name, "fixture");
  EXPECT_EQ(m.vm.uuid, "00000000-0000-4000-8000-0000000f1e70");
  const DiskRecord* disk = m.FindDisk(want.disk);
  ASSERT_NE(disk, nullptr);
  EXPECT_EQ(disk->size, want.size);

  auto index_reader = repo->points().OpenIndex(want.point, *disk);
  const FixedIndexReader& index = *index_reader;
  ASSERT_EQ(index.chunk_count(), 17u);
  EXPECT_EQ(index.ChunkLength(16), 512u);
  EXPECT_EQ(index.At(4), index.At(9));  // the duplicate chunk is stored once
  EXPECT_TRUE(index.At(1).IsZeroMarker());

  // Reassemble the disk and compare with the source's SHA-256.
  Sha256Stream sha;
  ChunkDecoder decoder(k);
  std::vector<uint8_t> encoded, plain;
  for (uint64_t i = 0; i < index.chunk_count(); ++i) {
    Digest d = index.At(i);
    if (d.IsZeroMarker()) {
      plain.assign(index.ChunkLength(i), 0);
    } else {
      repo->chunk_reader().Read(d, &encoded);
      decoder.Decode(encoded, &d, "fixture chunk", &plain);
    }
    ASSERT_EQ(plain.size(), index.ChunkLength(i));
    sha.Update(plain.data(), plain.size());
  }
  EXPECT_EQ(sha.Finish().Hex(), want.sha256);

  VerifyOptions options(std::nullopt, 2);
  options.key = k;
  VerifyReport report = VerifyRepository(*repo, options, nullptr);
  EXPECT_TRUE(report.clean());
  EXPECT_EQ(report.chunks_checked, 3u);
  EXPECT_FALSE(report.ciphertext_only);
  if (k) {  // and without the key, as far as that goes
    VerifyReport keyless = VerifyRepository(*repo, {std::nullopt, 2}, nullptr);
    EXPECT_TRUE(keyless.clean());
    EXPECT_TRUE(keyless.ciphertext_only);
  }
  EXPECT_EQ(m.format_version, std::min(version, 2));  // repository v3 still writes manifest v2
  if (version == 1) {
    EXPECT_EQ(report.unprotected, std::vector<std::string>{want.point});  // v1: no manifest checksum
  } else {
    EXPECT_TRUE(report.unprotected.empty());
  }
}

INSTANTIATE_TEST_SUITE_P(Versions, FormatCompatTest, ::testing::Values(1, 2, 3),
                         [](const auto& info) { return "v" + std::to_string(info.param); });

}  // namespace
}  // namespace ferry
