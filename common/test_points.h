// For tests of the repository layer: committed points written through the
// real point store, with chunks of given contents.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <memory>
#include <string>
#include <vector>

#include "ferry/common/chunk.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/repository.h"

namespace ferry::test {

// A fixture with a fresh local repository (64 KiB chunks) in a temporary
// directory: root_ holds it as root_/repo (dir_), repo_ is it opened.
class TempRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ferry-repo-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/repo";
    RepositoryConfig config;
    config.chunk_size = 64 << 10;
    Repository::Init(dir_, config);
    repo_ = Repository::Open(dir_);
  }
  void TearDown() override {
    repo_.reset();
    RemoveTree(root_);
  }

  std::string root_, dir_;
  std::unique_ptr<Repository> repo_;
};

// Commits a one-disk point ("disk0") whose chunks hold `texts`, in order (each
// text one chunk, at most the repository's chunk size; the disk is as long as
// they are together, each chunk padded to the chunk size but the last).
// Returns its id.
inline std::string WriteTestPoint(Repository& repo, const std::vector<std::string>& texts,
                                  const std::string& started_at = "2026-11-30T10:00:00Z", const std::string& vm = "vm",
                                  const std::string& chain = "default") {
  const uint32_t chunk_size = repo.config().chunk_size;
  StagedPointHeader h;
  h.id = NewPointId();
  h.vm = {vm, "", "qemu"};
  h.chain = chain;
  h.started_at = started_at;
  h.disks = {"disk0"};
  auto lease = repo.points().Stage(h);
  std::unique_ptr<DiskWriter> w = repo.points().WriteDisk(h.id, "disk0");
  DiskRecord rec;
  rec.size = texts.empty() ? 0 : uint64_t{chunk_size} * (texts.size() - 1) + texts.back().size();
  rec.chunk_size = chunk_size;
  rec.source_format = "raw";
  FixedIndexWriter iw(w->index_path(), rec.size, rec.chunk_size);
  ChunkEncoder enc(1);
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<uint8_t> plain(texts[i].begin(), texts[i].end());
    if (i + 1 < texts.size()) plain.resize(chunk_size, 0);
    Digest d = Sha256(plain.data(), plain.size());
    std::vector<uint8_t> encoded;
    enc.Encode(plain, &encoded);
    repo.chunks().Insert(d, encoded);
    iw.Set(i, d);
  }
  rec.index_sha256 = iw.Finish();
  w->Finish(rec);
  w.reset();  // its lock would hold the commit off
  repo.points().Commit(h.id);
  return h.id;
}

}  // namespace ferry::test
