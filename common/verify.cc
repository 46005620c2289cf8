#include "ferry/common/verify.h"

#include <algorithm>
#include <ctime>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ferry/common/chunk.h"
#include "ferry/common/error.h"
#include "ferry/common/file_util.h"
#include "ferry/common/fixed_index.h"
#include "ferry/common/log.h"

namespace ferry {

namespace {

struct PointIndexes {
  std::unique_ptr<PointLease> lease;  // no prune removes the point while it is verified
  std::string id;
  RestorePointManifest manifest;
  std::vector<std::unique_ptr<FixedIndexReader>> indexes;  // parallel to manifest.disks
};

}  // namespace

VerifyReport VerifyRepository(Repository& repo, const VerifyOptions& options, VerifyProgress* progress) {
  VerifyReport report;
  if (options.key) {
    CheckKeyFits(repo.config(), options.key, repo.location());
  } else {
    report.ciphertext_only = repo.config().encrypted();
  }
  PointStore& store = repo.points();
  const std::optional<std::string>& point_id = options.point;
  const int64_t now = options.now > 0 ? options.now : static_cast<int64_t>(::time(nullptr));
  std::map<std::string, PointCheck> last_checks;
  if (options.skip_verified_within_s > 0) last_checks = store.LoadChecks();
  std::vector<RestorePointManifest> manifests;
  if (point_id) {
    std::vector<std::string> ids = store.List();
    if (std::find(ids.begin(), ids.end(), *point_id) == ids.end()) {
      store.Load(*point_id);  // throws kNotFound for an unknown id
    }
    try {
      manifests.push_back(store.Load(*point_id));
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kNotFound) throw;
      report.problems.push_back({*point_id, "", -1, 0, e.what()});
    }
  } else {
    PointListing all = store.LoadAll();
    for (auto& m : all.points) {
      if (!options.chain || m.chain == *options.chain) manifests.push_back(std::move(m));
    }
    for (const auto& p : all.problems) report.problems.push_back({p.entry, "", -1, 0, p.message});
  }

  // Phase 1: manifests and indexes; collect distinct chunks with their length.
  std::vector<PointIndexes> points;
  std::unordered_map<Digest, uint32_t, DigestHash> expected_length;
  for (auto& manifest : manifests) {
    PointIndexes p;
    try {
      p.lease = store.Lease(manifest.id);
    } catch (const Error& e) {
      // Removed (or being removed) since it was listed: nothing to verify.
      if (point_id || (e.kind() != ErrorKind::kNotFound && e.kind() != ErrorKind::kRetryable)) throw;
      continue;
    }
    p.id = manifest.id;
    p.manifest = std::move(manifest);
    const std::string& id = p.id;
    ++report.points;
    if (p.manifest.format_version < kManifestVersion) report.unprotected.push_back(id);
    if (options.key) {
      try {
        options.key->CheckManifest(p.manifest);
      } catch (const Error& e) {
        report.problems.push_back({id, "", -1, 0, e.what()});
      }
    }
    for (const auto& f : p.manifest.config_files) {
      try {
        store.ReadFile(id, f);
      } catch (const Error& e) {
        report.problems.push_back({id, "", -1, 0, e.what()});
      }
    }
    for (const auto& disk : p.manifest.disks) {
      ++report.disks;
      try {
        auto reader = store.OpenIndex(id, disk);
        if (reader->disk_size() != disk.size || reader->chunk_size() != disk.chunk_size) {
          throw Error(ErrorKind::kCorrupt, "index sizes do not match the manifest");
        }
        for (uint64_t i = 0; i < reader->chunk_count(); ++i) {
          Digest d = reader->At(i);
          if (!d.IsZeroMarker()) expected_length.emplace(d, reader->ChunkLength(i));
        }
        p.indexes.push_back(std::move(reader));
      } catch (const Error& e) {
        report.problems.push_back({id, disk.name, -1, 0, e.what()});
        p.indexes.push_back(nullptr);
      }
    }
    points.push_back(std::move(p));
  }

  // Known good: the chunks of points whose last check was clean and recent
  // enough, each since the latest such check (its verified_since).
  std::unordered_map<Digest, int64_t, DigestHash> known_good;
  for (const auto& p : points) {
    auto it = last_checks.find(p.id);
    if (it == last_checks.end() || !it->second.ok) continue;
    const int64_t since = it->second.verified_since;
    if (since < now - options.skip_verified_within_s) continue;
    for (const auto& index : p.indexes) {
      if (!index) continue;
      for (uint64_t i = 0; i < index->chunk_count(); ++i) {
        Digest d = index->At(i);
        if (d.IsZeroMarker()) continue;
        auto [slot, fresh] = known_good.emplace(d, since);
        if (!fresh) slot->second = std::max(slot->second, since);
      }
    }
  }

  // Phase 2: read every distinct chunk once (but those known good), in parallel.
  std::vector<std::pair<Digest, uint32_t>> work;
  work.reserve(expected_length.size());
  for (const auto& entry : expected_length) {
    if (!known_good.count(entry.first)) work.push_back(entry);
  }
  report.chunks_skipped = expected_length.size() - work.size();
  if (progress) progress->chunks_total = work.size();
  std::unordered_map<Digest, std::string, DigestHash> bad;
  std::mutex bad_mu;
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> bytes{0};
  auto check = [&] {
    ChunkDecoder decoder(options.key);
    std::vector<uint8_t> encoded, plain;
    for (size_t i; (i = next++) < work.size();) {
      if (options.cancel && options.cancel->load()) break;
      const auto& [digest, length] = work[i];
      try {
        // A damaged chunk is quarantined here, so no backup reuses it.
        if (report.ciphertext_only) {
          FetchChunkFraming(repo.chunk_reader(), digest, length, &encoded);
          bytes += length;
        } else {
          FetchChunk(repo.chunk_reader(), decoder, digest, length, &encoded, &plain);
          bytes += plain.size();
        }
      } catch (const Error& e) {
        std::lock_guard lock(bad_mu);
        bad.emplace(digest, e.what());
      }
      if (progress) ++progress->chunks_done;
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < std::max(1u, options.threads); ++t) pool.emplace_back(check);
  for (auto& t : pool) t.join();
  if (options.cancel && options.cancel->load()) throw Error(ErrorKind::kInterrupted, "verify interrupted");
  report.chunks_checked = work.size();
  report.bytes_checked = bytes;

  // Phase 3: name every reference to a bad chunk.
  if (!bad.empty()) {
    for (const auto& p : points) {
      for (size_t di = 0; di < p.indexes.size(); ++di) {
        if (!p.indexes[di]) continue;
        const FixedIndexReader& index = *p.indexes[di];
        for (uint64_t i = 0; i < index.chunk_count(); ++i) {
          auto it = bad.find(index.At(i));
          if (it == bad.end()) continue;
          report.problems.push_back({p.id, p.manifest.disks[di].name, static_cast<int64_t>(i),
                                     i * index.chunk_size(), it->second});
        }
      }
    }
  }

  // Each point's result: its problems, and since when its chunks are known good.
  std::map<std::string, std::pair<uint64_t, std::string>> problems_of;  // point -> (count, first)
  for (const auto& problem : report.problems) {
    auto& [count, first] = problems_of[problem.point];
    if (count++ != 0) continue;
    if (!problem.disk.empty()) first = "disk " + problem.disk;
    if (problem.chunk >= 0) first += " chunk " + std::to_string(problem.chunk) + " (offset " + std::to_string(problem.offset) + ")";
    first += (first.empty() ? "" : ": ") + problem.message;
  }
  for (const auto& p : points) {
    PointCheck c;
    c.point = p.id;
    c.checked_at = now;
    c.verified_since = now;
    std::unordered_map<Digest, bool, DigestHash> seen;  // distinct chunks of this point
    for (const auto& index : p.indexes) {
      if (!index) continue;
      for (uint64_t i = 0; i < index->chunk_count(); ++i) {
        Digest d = index->At(i);
        if (d.IsZeroMarker() || !seen.emplace(d, true).second) continue;
        auto good = known_good.find(d);
        if (good == known_good.end()) {
          ++c.chunks_read;
        } else {
          ++c.chunks_skipped;
          c.verified_since = std::min(c.verified_since, good->second);
        }
      }
    }
    if (auto it = problems_of.find(p.id); it != problems_of.end()) {
      c.ok = false;
      c.problems = it->second.first;
      c.first_problem = it->second.second;
    }
    if (options.record) {
      try {
        store.RecordCheck(c);
      } catch (const Error& e) {
        LogWarning("recording the check of restore point " + p.id + ": " + e.what());
      }
    }
    report.checks.push_back(std::move(c));
  }
  return report;
}

}  // namespace ferry
